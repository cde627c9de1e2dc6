"""Market discovery: every trading USDT linear perpetual listed by each exchange (over the replay
exchange's real HTTP dialects, Bybit's cursor paging included), selected by pattern and by rank of
24 h quote volume; configuration of patterns and `top`."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from heatsvc.config import parse
from heatsvc.datasets import synthetic_bars
from heatsvc.discovery import discover, is_pattern, select
from heatsvc.exchanges import Listing, make_client
from heatsvc.replay import ReplayExchange

END = 1_760_572_800_000
DAY = 86_400_000
NOW = END - DAY // 2
SYMBOLS = [f"C{k:02d}USDT" for k in range(12)]


def test_select_by_pattern_rank_and_name():
    listings = [Listing("BTCUSDT", 9e9), Listing("ETHUSDT", 5e9), Listing("1000PEPEUSDT", 7e8),
                Listing("DOGEUSDT", float("nan")), Listing("XRPUSDT", 1e9)]
    assert select(listings, ["*"], top=2) == ("BTCUSDT", "ETHUSDT")
    assert select(listings, ["1000*", "SOLUSDT"]) == ("1000PEPEUSDT", "SOLUSDT")   # names kept as written
    assert select(listings, ["*USDT"], top=4) == ("1000PEPEUSDT", "BTCUSDT", "ETHUSDT", "XRPUSDT")   # NaN last
    assert select(listings, ["BTCUSDT"]) == ("BTCUSDT",)
    assert is_pattern("*USDT") and is_pattern("BTC?USDT") and not is_pattern("BTCUSDT")


def test_config_takes_patterns_and_top():
    c = parse({"exchanges": {"bybit": {"symbols": ["*usdt", "BTCUSDT"], "top": 50}}}, env={})
    (ex,) = c.exchanges
    assert ex.symbols == ("*USDT", "BTCUSDT") and ex.top == 50
    with pytest.raises(ValueError, match="exchanges.bybit.top"):
        parse({"exchanges": {"bybit": {"symbols": ["*"], "top": 0}}}, env={})
    with pytest.raises(ValueError, match="exchanges.bybit.symbols"):
        parse({"exchanges": {"bybit": {"symbols": ["BTC/USDT"]}}}, env={})


@pytest.fixture(scope="module")
def universe():
    data = {f"{e}:{s}": synthetic_bars(s, e, days=2, end_ms=END) for e in ("binance", "bybit", "okx") for s in SYMBOLS}
    with ReplayExchange(datasets=data, start_ms=NOW) as rx:
        yield rx


def quote_24h(rx, market):
    """A market's 24 h quote volume from its bars (the ranking discovery must reproduce): the closed bars
    of the last 24 h; the forming bar, opened at NOW, has traded nothing yet. OKX's tickers carry no quote
    volume: its base volume (volCcy24h) times the last price stands in."""
    b = rx.bars(market)
    sel = (b["time_ms"] > NOW - DAY) & (b["time_ms"] < NOW)
    if market.startswith("okx:"):
        return float(np.sum(b["volume"][sel])) * rx.series(market).price(NOW)
    return float(np.sum(b["quote_volume"][sel]))


@pytest.mark.parametrize("exchange", ["binance", "bybit", "okx"])
def test_every_exchange_lists_its_perpetuals_and_top_n_by_volume(universe, exchange):
    extra = {"archive_url": universe.archive_url()} if exchange == "binance" else {}
    config = parse({"exchanges": {exchange: {"symbols": ["C0*"], "top": 4, "base_url": universe.base_url(exchange),
                                             **extra}}}, env={})

    async def run():
        c = make_client(exchange, universe.base_url(exchange), now_ms=universe.now_ms, **extra)
        if exchange == "bybit":
            c.INSTRUMENTS_PER_CALL = 5           # 12 instruments: three pages
        try:
            return await c.list_perpetuals(), await discover(config, {exchange: c})
        finally:
            await c.aclose()
    listings, found = asyncio.run(run())
    assert sorted(x.symbol for x in listings) == SYMBOLS            # XAUUSDT (TRADIFI) and quarterlies left out
    volumes = {x.symbol: x.quote_volume for x in listings}
    for s in SYMBOLS:
        assert volumes[s] == pytest.approx(quote_24h(universe, f"{exchange}:{s}"), rel=1e-3)
    ranked = sorted((s for s in SYMBOLS if s.startswith("C0")), key=lambda s: -quote_24h(universe, f"{exchange}:{s}"))
    assert found.exchanges[0].symbols == tuple(sorted(ranked[:4]))
    if exchange == "bybit":
        pages = universe.request_counts("bybit")[("bybit", "/v5/market/instruments-info")]
        assert pages == 2 * 3                    # listed twice (list_perpetuals, then discover), 3 pages each
