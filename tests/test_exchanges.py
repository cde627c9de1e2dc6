"""Exchange clients against the replay exchange over real loopback HTTP: paging and limits, the
Binance archive beyond 30 days, newest-first dialects, the forming bar, every fault knob, and
validation of bad rows at the door."""
from __future__ import annotations

import asyncio
import io
import logging
import time
import zipfile

import numpy as np
import pytest

from heatsvc.model.bars import FIELDS, STEP_MS, format_time
from heatsvc.datasets import synthetic_bars
from heatsvc.exchanges import ExchangeError, ExchangeUnavailable, make_client
from heatsvc.exchanges.binance import read_metrics_archive
from heatsvc.exchanges.okx import LIMITS, inst_id
from heatsvc.replay import Faults, Limits, ReplayExchange

END = 1_760_572_800_000
DAY = 86_400_000
NOW = END - DAY + 150_000          # half-way through a bar: it is forming
CUR = NOW // STEP_MS * STEP_MS
EXCHANGES = ("binance", "bybit", "okx")
FAST = dict(timeout_s=2.0, backoff_s=0.01, backoff_cap_s=0.1, max_retries=10, max_wait_s=1.0, ban_probe_s=0.5,
            ban_floor_s=0.0)   # Bybit's documented 10-minute floor, off for the replay's short bans


def datasets():
    out = {"binance:BTCUSDT": synthetic_bars("BTCUSDT", "binance", days=36, end_ms=END)}
    for e in ("bybit", "okx"):
        out[f"{e}:BTCUSDT"] = synthetic_bars("BTCUSDT", e, days=3, end_ms=END)
    bad = synthetic_bars("ETHUSDT", "binance", days=3, end_ms=END)
    bad["high"][388] = bad["low"][388] * 0.5            # high below the body (row 100 of the last day)
    bad["volume"][488] = -1.0
    out["binance:ETHUSDT"] = bad
    return out


@pytest.fixture(scope="module")
def replay():
    fast_okx = {path: (400, 2.0) for path in Limits().okx_requests}
    with ReplayExchange(datasets=datasets(), start_ms=NOW, faults=Faults(retry_after_s=1, ban_s=1.0, timeout_s=3.0),
                        limits=Limits(okx_requests=fast_okx)) as rp:
        yield rp


@pytest.fixture()
def faults(replay):
    yield replay.faults
    for name, value in Faults(retry_after_s=1, ban_s=1.0, timeout_s=3.0).__dict__.items():
        setattr(replay.faults, name, value)
    replay.set_time(NOW)
    replay.reset_counters()


def client(replay, exchange, **kw):
    extra = {"archive_url": replay.archive_url()} if exchange == "binance" else {}
    if exchange == "okx":
        extra["limits"] = {path: 200 for path in LIMITS}
    return make_client(exchange, replay.base_url(exchange), now_ms=replay.now_ms, seed=1, **{**FAST, **extra, **kw})


def run(coro):
    return asyncio.run(coro)


async def fetch(replay, exchange, start, end, symbol="BTCUSDT", **kw):
    c = client(replay, exchange, **kw)
    try:
        return await c.fetch_bars(symbol, start, end), c
    finally:
        await c.aclose()


def expected(replay, market, start, end):
    ref = replay.bars(market)
    sel = (ref["time_ms"] >= start) & (ref["time_ms"] < end)
    return {f: v[sel] for f, v in ref.items()}


def check_prices(got, ref):
    assert np.array_equal(got["time_ms"], ref["time_ms"])
    for f in ("open", "high", "low", "close", "volume", "quote_volume"):
        np.testing.assert_allclose(got[f], ref[f], rtol=1e-9, err_msg=f)


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_fetch_bars_match_the_exchange(replay, faults, exchange):
    start = CUR - 2 * DAY + 7 * STEP_MS
    got, c = run(fetch(replay, exchange, start, CUR))
    ref = expected(replay, f"{exchange}:BTCUSDT", start, CUR)
    assert len(got["time_ms"]) == 2 * 288 - 7
    check_prices(got, ref)
    assert got["time_ms"][-1] == CUR - STEP_MS            # closed bars only: the forming bar is not there
    np.testing.assert_allclose(got["open_interest"], ref["open_interest"], rtol=1e-9)
    np.testing.assert_allclose(got["long_short_ratio"], ref["long_short_ratio"], rtol=1e-3)
    if exchange == "binance":
        np.testing.assert_allclose(got["taker_buy_volume"], ref["taker_buy_volume"], rtol=1e-9)
    else:
        assert np.isnan(got["taker_buy_volume"]).all()   # Bybit and OKX klines carry no taker-buy volume
    assert sum(c.retries.values()) == 0


def test_paging_respects_each_exchange_page_size(replay, faults):
    start = CUR - 2 * DAY
    run(fetch(replay, "bybit", start, CUR))
    counts = replay.request_counts("bybit")
    assert counts[("bybit", "/v5/market/kline")] == 1                # 576 bars, 1000 a page
    assert counts[("bybit", "/v5/market/open-interest")] == 3       # 200 a page
    replay.reset_counters()
    run(fetch(replay, "okx", start, CUR))
    assert replay.request_counts("okx")[("okx", "/api/v5/market/history-candles")] == 2   # 300 a page


def test_binance_open_interest_older_than_30_days_comes_from_the_archive(replay, faults):
    start = CUR - 35 * DAY
    got, c = run(fetch(replay, "binance", start, CUR))
    ref = expected(replay, "binance:BTCUSDT", start, CUR)
    check_prices(got, ref)
    np.testing.assert_allclose(got["open_interest"], ref["open_interest"], rtol=1e-9)
    np.testing.assert_allclose(got["long_short_ratio"], ref["long_short_ratio"], rtol=1e-4)  # API: 4 decimals
    counts = replay.request_counts("binance-archive")
    assert 5 <= sum(counts.values()) <= 7                 # one zip per day older than the API's 30 days
    assert c.requests["/fapi/v1/klines"] == 7             # 10,080 bars, 1,500 a call
    assert c.max_used_weight <= 2400


def test_archive_quirks_zeros_are_missing_not_zero(faults):
    ds = {"binance:BTCUSDT": synthetic_bars("BTCUSDT", "binance", days=40, end_ms=END)}
    with ReplayExchange(datasets=ds, start_ms=NOW, archive_quirks=True) as rp:
        start = CUR - 39 * DAY
        got, _ = run(fetch(rp, "binance", start, CUR - 31 * DAY))
        ref = expected(rp, "binance:BTCUSDT", start, CUR - 31 * DAY)
        oi = got["open_interest"]
        assert np.isnan(oi).sum() > 0                      # skipped and zeroed rows are missing...
        assert not (oi == 0).any()                         # ...never an open interest of 0
        known = ~np.isnan(oi)
        np.testing.assert_allclose(oi[known], ref["open_interest"][known], rtol=1e-9)
        assert known.mean() > 0.9


def test_archive_zip_bomb_is_refused():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("BTCUSDT-metrics-2025-01-01.csv", b"0" * (20 << 20))
    data = buf.getvalue()
    assert len(data) < 100_000
    with pytest.raises(ExchangeError, match="inflate"):
        read_metrics_archive(data)


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_forming_bar_open_interest_and_price(replay, faults, exchange):
    async def live():
        c = client(replay, exchange)
        try:
            return await c.fetch_live("BTCUSDT")
        finally:
            await c.aclose()
    bars, oi, price = run(live())
    full = expected(replay, f"{exchange}:BTCUSDT", CUR, CUR + STEP_MS)
    assert bars["time_ms"].tolist() == [CUR]
    assert bars["volume"][0] == pytest.approx(full["volume"][0] / 2, rel=1e-6)   # half-way through the bar
    assert bars["open_interest"][0] == pytest.approx(oi)
    assert price == pytest.approx(bars["close"][0], rel=1e-6)
    prev_oi = expected(replay, f"{exchange}:BTCUSDT", CUR - STEP_MS, CUR)["open_interest"][0]
    lo, hi = sorted((prev_oi, full["open_interest"][0]))
    assert lo <= oi <= hi


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_unknown_symbol_is_a_clear_error(replay, faults, exchange):
    async def check():
        c = client(replay, exchange)
        try:
            await c.check_symbol("BTCUSDT")
            with pytest.raises(ExchangeError, match="NOPEUSDT"):
                await c.check_symbol("NOPEUSDT")
        finally:
            await c.aclose()
    run(check())


def test_okx_instrument_ids():
    assert inst_id("BTCUSDT") == "BTC-USDT-SWAP"
    with pytest.raises(ExchangeError, match="quote"):
        inst_id("BTCEUR")


FAULTS = {
    "rate_5xx": dict(rate_5xx=0.4),
    "malformed": dict(malformed_rate=0.4),
    "truncated": dict(truncated_rate=0.4),
    "rate_429": dict(rate_429=0.3),
    "rate_1008": dict(rate_1008=0.4),          # Binance only; the others answer normally
    "timeout": dict(timeout_rate=0.3, timeout_s=3.0),
    "latency": dict(latency_s=0.02),
}


@pytest.mark.parametrize("exchange", EXCHANGES)
@pytest.mark.parametrize("knob", list(FAULTS))
def test_transient_faults_are_retried_to_the_right_answer(replay, faults, exchange, knob):
    for name, value in FAULTS[knob].items():
        setattr(faults, name, value)
    faults.seed = 7
    start = CUR - 2 * DAY
    got, c = run(fetch(replay, exchange, start, CUR, timeout_s=1.0))
    ref = expected(replay, f"{exchange}:BTCUSDT", start, CUR)
    check_prices(got, ref)
    np.testing.assert_allclose(got["open_interest"], ref["open_interest"], rtol=1e-9)
    if knob != "latency" and (knob != "rate_1008" or exchange == "binance"):
        assert sum(c.retries.values()) > 0, c.retries


def test_archive_faults_are_retried(replay, faults):
    faults.exchanges = ("binance-archive",)
    faults.malformed_rate = 0.6
    faults.rate_5xx = 0.3
    faults.seed = 3
    start = CUR - 34 * DAY
    got, c = run(fetch(replay, "binance", start, CUR - 30 * DAY))
    ref = expected(replay, "binance:BTCUSDT", start, CUR - 30 * DAY)
    np.testing.assert_allclose(got["open_interest"], ref["open_interest"], rtol=1e-9)
    assert sum(c.retries.values()) > 0


def test_duplicates_absorbed_and_missing_rows_leave_gaps(replay, faults):
    faults.duplicate_rate = 0.3
    start = CUR - DAY
    got, _ = run(fetch(replay, "bybit", start, CUR))
    check_prices(got, expected(replay, "bybit:BTCUSDT", start, CUR))
    faults.duplicate_rate, faults.missing_rate = 0.0, 0.1
    got, _ = run(fetch(replay, "bybit", start, CUR))
    ref = expected(replay, "bybit:BTCUSDT", start, CUR)
    assert 200 < len(got["time_ms"]) < 288
    assert np.all(np.diff(got["time_ms"]) > 0)
    at = np.searchsorted(ref["time_ms"], got["time_ms"])
    np.testing.assert_allclose(got["close"], ref["close"][at], rtol=1e-9)


@pytest.mark.parametrize("exchange", EXCHANGES)
def test_ban_stops_requests_and_marks_degraded(replay, faults, exchange):
    faults.rate_418 = 1.0
    faults.ban_s = 2.0

    async def banned():
        c = client(replay, exchange, max_retries=2)
        try:
            with pytest.raises(ExchangeUnavailable):
                await c.fetch_bars("BTCUSDT", CUR - DAY, CUR)
            sent = sum(replay.request_counts(exchange).values())
            if exchange != "okx":                   # OKX bans look like 429s: retried with backoff
                assert c.degraded
                with pytest.raises(ExchangeUnavailable, match="banned"):
                    await c.fetch_bars("BTCUSDT", CUR - DAY, CUR)
                assert sum(replay.request_counts(exchange).values()) == sent   # nothing sent while banned
            faults.rate_418 = 0.0
            await asyncio.sleep(faults.ban_s + 0.3)     # the server's ban and ours have both run out
            got = await c.fetch_bars("BTCUSDT", CUR - DAY, CUR)
            assert len(got["time_ms"]) == 288
            assert not c.degraded
        finally:
            await c.aclose()
    run(banned())


def test_binance_slows_down_before_the_weight_limit(faults):
    ds = {"binance:BTCUSDT": synthetic_bars("BTCUSDT", "binance", days=2, end_ms=END)}
    with ReplayExchange(datasets=ds, start_ms=NOW, limits=Limits(binance_weight=60)) as rp:
        async def many():
            while time.time() % 60 > 50:         # keep clear of the minute boundary
                await asyncio.sleep(0.5)
            c = client(rp, "binance", weight_limit=60)
            try:
                for _ in range(9):               # 9 x weight 5 = 45, under 80 % of 60
                    await c.request("/fapi/v1/klines", {"symbol": "BTCUSDT", "interval": "5m", "limit": 1000},
                                    weight=5)
                used = c.used_weight
                with pytest.raises(asyncio.TimeoutError):
                    await asyncio.wait_for(c.pace("/fapi/v1/klines", 5), timeout=0.3)   # the 10th waits
                return used
            finally:
                await c.aclose()
        assert run(many()) == 45                 # learnt from X-MBX-USED-WEIGHT-1M
        assert sum(rp.limited_counts("binance").values()) == 0


def test_bad_rows_are_dropped_logged_and_counted(replay, faults, caplog):
    start = CUR - DAY
    with caplog.at_level(logging.WARNING, logger="heatsvc.exchanges"):
        got, c = run(fetch(replay, "binance", start, CUR, symbol="ETHUSDT"))
    ref = expected(replay, "binance:ETHUSDT", start, CUR)
    bad_times = {int(ref["time_ms"][100]), int(ref["time_ms"][200])}
    assert len(got["time_ms"]) == 288 - 2
    assert not bad_times & set(got["time_ms"].tolist())
    assert c.rejected["ETHUSDT"] == 2
    text = caplog.text
    assert "binance:ETHUSDT" in text and "high" in text and "volume" in text
    assert all(format_time(t) in text for t in bad_times)
    assert set(got) == set(FIELDS)


def test_rejected_rows_are_counted_once_however_often_refetched(replay, faults):
    from prometheus_client import REGISTRY

    def counted():
        return REGISTRY.get_sample_value("heatsvc_rejected_rows_total", {"market": "binance:ETHUSDT"}) or 0.0

    async def refetch():
        c = client(replay, "binance")
        try:
            for _ in range(3):                    # a gap refetched: the same two bad rows come back each time
                got = await c.fetch_bars("ETHUSDT", CUR - DAY, CUR)
                assert len(got["time_ms"]) == 288 - 2
            return c.rejected["ETHUSDT"]
        finally:
            await c.aclose()
    before = counted()
    assert run(refetch()) == 2
    assert counted() - before == 2


def test_short_kline_windows_weigh_what_they_ask_for(replay, faults):
    # an hour of bars asks for limit 12 (weight 1), not the page's 1,500 (weight 10)
    got, c = run(fetch(replay, "binance", CUR - 12 * STEP_MS, CUR))
    assert len(got["time_ms"]) == 12
    assert c.max_used_weight == 1                     # as X-MBX-USED-WEIGHT-1M reports it
