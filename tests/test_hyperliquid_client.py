"""The Hyperliquid client on bodies Hyperliquid really sent (tests/fixtures/hyperliquid/, sources in
tests/fixtures/SOURCES.md), served from a loopback HTTP server: metaAndAssetCtxs (listing, ranking,
delisted assets with nulls, open-interest samples), candleSnapshot, clearinghouseState positions,
the 429 `null` throttle, and the weight budget. Every number asserted is the one the body states."""
from __future__ import annotations

import asyncio
import json
import math
import time

import numpy as np
import pytest

from fixture_server import Answer, fixture, server, with_client  # noqa: F401 (server: a fixture)
from heatsvc.exchanges import ExchangeError, ExchangeUnavailable
from heatsvc.exchanges.hyperliquid.client import candle_weight
from heatsvc.exchanges.hyperliquid.flow import TakerFlow, Trade
from heatsvc.exchanges.hyperliquid.oi import OiSamples
from heatsvc.exchanges.hyperliquid.weights import WeightWindow
from heatsvc.model.bars import STEP_MS

INFO = "/info"
META = fixture("hyperliquid/meta-and-asset-ctxs-mainnet-prefix.json")
STATE = fixture("hyperliquid/clearinghouse-state.json")
CANDLES = fixture("hyperliquid/candle-snapshot-kpepe-1h.json")


def run(coro):
    return asyncio.run(coro)


def hl(url: str, work, **kw):
    """`work(client)` with a Hyperliquid client at `url`."""
    return with_client("hyperliquid", url, work, **kw)


def test_listing_skips_delisted_and_ranks_by_day_notional_volume(server):
    server.route(INFO + "#metaAndAssetCtxs", Answer(200, META))
    listings = run(hl(server.url, lambda c: c.list_perpetuals(), now_ms=lambda: 1_788_490_000_000))
    assert {x.symbol: x.quote_volume for x in listings} == {
        "BTC": 4490636711.4322738647, "ETH": 1275317514.6673593521, "ATOM": 1148752.838546}
    seen = server.seen[0]
    assert seen.body == {"type": "metaAndAssetCtxs"}, "POST /info with the type in a JSON body"


def test_samples_record_open_interest_and_mark_of_live_coins_only(server):
    server.route(INFO + "#metaAndAssetCtxs", Answer(200, META))

    async def work(c):
        await c.sample()
        return c.samples
    samples = run(hl(server.url, work, now_ms=lambda: 1_788_490_000_000))
    assert samples.latest("BTC") == (1_788_490_000_000, 36295.80812, 80639.0)
    assert samples.latest("ETH") == (1_788_490_000_000, 897134.8736000003, 2499.93)
    assert samples.latest("MATIC") is None, "delisted: no sample"


def test_sdk_doc_example_without_optional_fields_parses(server):
    server.route(INFO + "#metaAndAssetCtxs", Answer(200, fixture("hyperliquid/meta-and-asset-ctxs-sdk-example.json")))

    async def work(c):
        await c.check_symbol("BTC")
        with pytest.raises(ExchangeError, match="HYPEUSDT"):
            await c.check_symbol("HYPEUSDT")
        return c.samples.latest("BTC")
    assert run(hl(server.url, work, now_ms=lambda: 5)) == (5, 0.22168, 28429.3)


def test_delisted_coin_is_refused(server):
    server.route(INFO + "#metaAndAssetCtxs", Answer(200, META))
    with pytest.raises(ExchangeError, match="delisted"):
        run(hl(server.url, lambda c: c.check_symbol("MATIC"), now_ms=lambda: 1))


def test_clearinghouse_state_positions_are_the_body_values(server):
    server.route(INFO + "#clearinghouseState", Answer(200, STATE))
    user = "0x5e9ee1089755c3435139848e47e6635505d5a13a"
    positions, read_ms = run(hl(server.url, lambda c: c.clearinghouse_state(user), now_ms=lambda: 77))
    assert server.seen[0].body == {"type": "clearinghouseState", "user": user}
    by_coin = {p.coin: p for p in positions}
    assert len(positions) == 12 and read_ms == 77, "the 2023 body has no `time`: our clock stamps it"
    btc = by_coin["BTC"]
    assert (btc.size, btc.entry_px, btc.position_value, btc.leverage, btc.leverage_type, btc.liquidation_px,
            btc.margin_used, btc.side) == (-0.00785, 26951.0, 211.64542, 20.0, "cross", 173198.69592357, 10.582271,
                                           "short")
    eth = by_coin["ETH"]
    assert (eth.size, eth.liquidation_px, eth.side) == (0.1334, None, "long"), "cross, far from liquidation: null"
    assert sum(p.liquidation_px is None for p in positions) == 7


def test_candles_become_bars_with_missing_open_interest_and_taker_share(server):
    server.route(INFO + "#candleSnapshot", Answer(200, CANDLES))
    rows = json.loads(CANDLES)
    first, last = rows[0]["t"], rows[-1]["t"]

    async def work(c):
        return await c.fetch_bars("kPEPE", first, last + STEP_MS)
    bars = run(hl(server.url, work, now_ms=lambda: last + 3_600_000))
    assert server.seen[0].body == {"type": "candleSnapshot", "req": {"coin": "kPEPE", "interval": "5m",
                                                                     "startTime": first, "endTime": last + STEP_MS - 1}}
    assert bars["time_ms"].tolist() == [r["t"] for r in rows]
    assert bars["close"][0] == 0.001604 and bars["high"][0] == 0.001616 and bars["volume"][0] == 520665683.0
    assert np.isnan(bars["open_interest"]).all(), "no samples yet: missing, never zero"
    assert np.isnan(bars["taker_buy_volume"]).all(), "no trades stream heard: the model's neutral rule"


def test_429_null_holds_the_host_and_retries(server):
    server.route(INFO + "#metaAndAssetCtxs", Answer(429, fixture("hyperliquid/429-null.txt")), Answer(200, META))

    async def work(c):
        import heatsvc.exchanges.hyperliquid.client as hl
        hl_throttle = hl.THROTTLE_S
        hl.THROTTLE_S = 0.3
        try:
            started = time.monotonic()
            listings = await c.list_perpetuals()
            return listings, time.monotonic() - started, c.hold_reason, c.retries
        finally:
            hl.THROTTLE_S = hl_throttle
    listings, took, reason, retries = run(hl(server.url, work))
    assert len(listings) == 3
    times = server.times(INFO + "#metaAndAssetCtxs")
    assert len(times) == 2 and times[1] - times[0] >= 0.29, "waited out the hold before asking again"
    assert "HTTP 429" in reason and retries["rate limited"] == 1


def test_repeated_429_holds_longer_each_time_and_gives_up(server):
    server.route(INFO + "#metaAndAssetCtxs", Answer(429, b"null"))

    async def work(c):
        import heatsvc.exchanges.hyperliquid.client as hl
        saved = hl.THROTTLE_S
        hl.THROTTLE_S = 0.05
        try:
            with pytest.raises(ExchangeUnavailable, match="429"):
                await c.list_perpetuals()
        finally:
            hl.THROTTLE_S = saved
    run(hl(server.url, work, max_retries=3))
    t = server.times(INFO + "#metaAndAssetCtxs")
    gaps = np.diff(t)
    assert len(t) == 4 and gaps[1] > gaps[0] * 1.6 and gaps[2] > gaps[1] * 1.6, gaps


def test_a_request_hyperliquid_refuses_is_not_retried(server):
    server.route(INFO + "#clearinghouseState", Answer(422, b"Failed to deserialize the JSON body into the target type",
                                                      content_type="text/plain"))
    with pytest.raises(ExchangeError, match="422"):
        run(hl(server.url, lambda c: c.clearinghouse_state("0xnot-an-address")))
    assert server.count(INFO + "#clearinghouseState") == 1


def test_weight_window_never_exceeds_its_limit():
    clock = [0.0]
    w = WeightWindow(100, 60.0, clock=lambda: clock[0])

    async def go():
        granted = []
        for k in range(30):
            t = await asyncio.wait_for(w.acquire(20), 0.05) if w.used() + 20 <= 100 else None
            if t is None:
                clock[0] += 7.0           # time passes; nothing more fits until the oldest expire
                continue
            t.release()
            granted.append(clock[0])
        return granted
    granted = run(go())
    for t0 in granted:   # at most 5 x 20 weight in any 60 s
        assert sum(t0 <= t < t0 + 60 for t in granted) <= 5
    assert len(granted) > 5
    with pytest.raises(ValueError, match="never fit"):
        run(w.acquire(101))


def test_candle_weight_settles_to_what_was_returned(server):
    server.route(INFO + "#candleSnapshot", Answer(200, CANDLES))
    n = len(json.loads(CANDLES))

    async def work(c):
        await c.candles("kPEPE", 0, 10 * STEP_MS)
        return c.budget.spent
    assert run(hl(server.url, work, now_ms=lambda: 10 * STEP_MS)) == candle_weight(n) == 21


def test_oi_stamp_is_the_last_sample_at_or_before_the_close():
    s = OiSamples()
    t0 = 1_000 * STEP_MS
    for minute, oi in [(1, 10.0), (4, 11.0), (5, 12.0), (11, 13.0)]:     # minute 5 = the first bar's close
        s.add("HYPE", t0 + minute * 60_000, oi, 1.0)
    got = s.stamp("HYPE", [t0, t0 + STEP_MS, t0 + 2 * STEP_MS, t0 + 3 * STEP_MS])
    assert got[0] == 12.0, "the sample exactly at the close counts"
    assert math.isnan(got[1]), "no sample during the second bar: missing, not the older 12"
    assert got[2] == 13.0 and math.isnan(got[3])
    s.add("HYPE", t0 + 7 * 60_000, 20.0, 1.0)          # an archive row arriving late
    assert s.stamp("HYPE", [t0 + STEP_MS])[0] == 20.0
    s.add("HYPE", t0 + 8 * 60_000, float("nan"), 1.0)
    assert s.count("HYPE") == 5


def test_taker_share_needs_the_whole_bar_covered():
    f = TakerFlow()
    t0 = 2_000 * STEP_MS
    f.add([Trade("HYPE", t0 + 1_000, 10.0, 3.0, "buy", "0xa", "0xb"),
           Trade("HYPE", t0 + 2_000, 12.0, 1.0, "sell", "0xc", "0xd"),
           Trade("HYPE", t0 + STEP_MS + 5, 11.0, 2.0, "buy", "0xa", "0xb")])
    f.cover(t0 - 10, t0 + STEP_MS + 100)
    share, vwap = f.columns("HYPE", [t0, t0 + STEP_MS])
    assert share[0] == 0.75 and vwap[0] == (30.0 + 12.0) / 4
    assert math.isnan(share[1]), "the second bar was not heard to its end"
