"""Regressions the soak (bench/test_soak.py) found in the refresher, on the replay's stepped clock:
bars that close while a refresh runs, and statistics an exchange publishes late, must still end up
in the store with their closed values."""
from __future__ import annotations

import asyncio
import contextlib
import time

import numpy as np

from heatsvc.model.bars import STEP_MS
from heatsvc.datasets import synthetic_bars
from heatsvc.exchanges import make_client
from heatsvc.refresher import Refresher
from heatsvc.replay import ReplayExchange, Series
from heatsvc.store import Store

END = 1_760_572_800_000
DAY = 86_400_000
CUR = (END - DAY) // STEP_MS * STEP_MS
FAST = {"timeout_s": 2.0, "backoff_s": 0.01, "backoff_cap_s": 0.1, "max_retries": 3, "max_wait_s": 1.0,
        "ban_probe_s": 0.5}
FIELDS = ("open", "high", "low", "close", "volume", "open_interest")


def closed_bars_match(store: Store, replay: ReplayExchange, market: str, start: int, end: int) -> None:
    """Every bar with open time in [start, end) is stored once, with the exchange's closed values."""
    got = store.load(market, start, end)
    ref = replay.bars(market)
    sel = (ref["time_ms"] >= start) & (ref["time_ms"] < end)
    assert got["time_ms"].tolist() == ref["time_ms"][sel].tolist(), market
    for f in FIELDS:
        np.testing.assert_allclose(got[f], ref[f][sel], rtol=1e-9, err_msg=f"{market} {f}")


@contextlib.asynccontextmanager
async def refreshing(tmp_path, market: str, start_ms: int, *, bars: dict | None = None, clock_lag_ms: int = 0,
                     **kw):
    """The replay exchange serving `bars` (default: 3 synthetic days) as `market`, its client, a store and
    a started, ready refresher whose clock runs `clock_lag_ms` behind the exchange's: yields (replay, store,
    refresher)."""
    exchange, symbol = market.split(":")
    if bars is None:
        bars = synthetic_bars(symbol, exchange, days=3, end_ms=END)
    with ReplayExchange(datasets={market: bars}, start_ms=start_ms) as replay:
        extra = {"archive_url": replay.archive_url()} if exchange == "binance" else {}
        client = make_client(exchange, replay.base_url(exchange), now_ms=replay.now_ms, **extra, **FAST)
        store = Store(tmp_path / "s.sqlite3")
        r = Refresher(store, {exchange: client}, [market], interval_s=3600, history_days=1,
                      now_ms=lambda: replay.now_ms() - clock_lag_ms, **kw)
        try:
            await r.start()
            await r.wait_ready(timeout=60)
            yield replay, store, r
        finally:
            await r.stop()
            await client.aclose()
            store.close()


def test_bars_closing_while_a_refresh_runs_are_stored_closed(tmp_path):
    # The refresher's clock a minute behind the exchange's: each refresh starts in the previous bar
    # while the exchange already forms the next one, as when a refresh straddles a bar's close.
    market = "binance:BTCUSDT"

    async def main():
        async with refreshing(tmp_path, market, CUR + 30_000, clock_lag_ms=60_000) as (replay, store, r):
            for _ in range(4):
                replay.step(STEP_MS)
                await r.refresh(market)
            forming = store.last_time(market)
            assert forming == CUR + 4 * STEP_MS                      # the exchange's forming bar
            closed_bars_match(store, replay, market, CUR - 12 * STEP_MS, forming)
            assert r.health()[market].status == "ok"

    asyncio.run(main())


def test_statistics_published_late_replace_the_forming_values(tmp_path):
    # The exchange's open-interest snapshot of a bar arrives only after the bar's first refresh as
    # a closed bar (the replay's dataset lacks it, then gains it): the refresh after the next close
    # must store it instead of keeping the forming bar's provisional open interest.
    market = "bybit:BTCUSDT"
    full = synthetic_bars("BTCUSDT", "bybit", days=3, end_ms=END)
    late = {k: v.copy() for k, v in full.items()}
    i = int(np.searchsorted(full["time_ms"], CUR))
    late["open_interest"][i] = np.nan

    async def main():
        async with refreshing(tmp_path, market, CUR + 150_000, bars=late) as (replay, store, r):
            replay.step(STEP_MS)
            await r.refresh(market)                                   # bar CUR closed, no snapshot yet
            replay._series[market] = Series(market, full)           # the snapshot is published late
            replay.step(STEP_MS)
            await r.refresh(market)
            closed_bars_match(store, replay, market, CUR - 12 * STEP_MS, CUR + 2 * STEP_MS)

    asyncio.run(main())


def test_a_closed_bar_missing_from_answers_is_a_gap_until_refetched(tmp_path):
    # The exchange answers with empty histories (every row missing) for longer than the gap retries
    # last: the forming bar stored before must count as missing (degraded), not as a closed bar,
    # and once answers are whole again the bars fill in and the health is ok again.
    market = "binance:BTCUSDT"

    async def main():
        async with refreshing(tmp_path, market, CUR + 150_000, gap_attempts=2) as (replay, store, r):
            replay.faults.missing_rate = 1.0
            replay.step(STEP_MS)
            for _ in range(4):                                       # more than gap_attempts
                await r.refresh(market)
                h = r.health()[market]
                assert h.status == "degraded" and h.missing_bars == 1, h
            replay.faults.missing_rate = 0.0
            replay.step(STEP_MS)
            await r.refresh(market)
            closed_bars_match(store, replay, market, CUR - 12 * STEP_MS, CUR + 2 * STEP_MS)
            h = r.health()[market]
            assert h.status == "ok" and h.missing_bars == 0, h

    asyncio.run(main())


def test_health_counts_a_gap_while_it_is_being_refetched(tmp_path):
    # Health read while a gap's retry waits for the exchange (here: slow answers) must still count it.
    market = "binance:BTCUSDT"

    async def main():
        async with refreshing(tmp_path, market, CUR + 150_000) as (replay, store, r):
            replay.faults.missing_rate = 1.0
            replay.step(STEP_MS)
            await r.refresh(market)
            assert r.health()[market].missing_bars == 1
            replay.faults.latency_s = 0.05
            refresh = asyncio.create_task(r.refresh(market))
            seen = []
            for _ in range(400):                       # bounded: 400 x 5 ms
                seen.append(r.health()[market].missing_bars)
                if refresh.done():
                    break
                await asyncio.sleep(0.005)
            await refresh
            assert len(seen) > 10 and set(seen) == {1}, seen

    asyncio.run(main())


def test_a_market_lagging_behind_is_degraded_until_refreshed(tmp_path):
    # Refreshes that stop coming (or keep coming late) without failing still leave the data stale.
    market = "binance:BTCUSDT"

    async def main():
        async with refreshing(tmp_path, market, CUR + 150_000) as (replay, store, r):
            assert r.health()[market].status == "ok"
            limit_bars = int(r.lag_limit_s * 1000 // STEP_MS)
            replay.step(limit_bars * STEP_MS)                       # exactly at the limit: still ok
            assert r.health()[market].status == "ok"
            replay.step(STEP_MS)
            h = r.health()[market]
            assert h.status == "degraded" and h.lag_s > r.lag_limit_s, h
            await r.refresh(market)
            h = r.health()[market]
            assert h.status == "ok" and h.lag_s == 0, h

    asyncio.run(main())


def test_demo_clients_run_on_the_replay_clock(tmp_path):
    # `heatsvc serve --demo` across a UTC midnight: Binance open interest of the recent bars comes from
    # the API window (the last 30 days of the replay clock), not from a cached, half-written daily
    # archive as when the clients read the wall clock.
    from demo_process import read_until, running

    store_path = tmp_path / "demo.sqlite3"
    market = "binance:BTCUSDT"
    midnight = 1_760_140_800_000                                   # 2025-10-11T00:00Z
    with running(store_path, "--demo-history-days", "0.5", "--demo-start", "2025-10-10T23:50:00Z",
                 "--demo-speed", "150", "--metrics-listen", "127.0.0.1:0") as proc:
        read_until(proc, "serving heatsvc.v1 on")
        for _ in range(300):                                       # bounded: 300 x 0.1 s
            with Store(store_path) as store:
                if (store.last_time(market) or 0) >= midnight + 4 * STEP_MS:
                    break
            time.sleep(0.1)
    with Store(store_path) as store:
        got = store.load(market, midnight - 3 * STEP_MS, midnight + 3 * STEP_MS)
    ref = synthetic_bars("BTCUSDT", "binance")
    i = np.searchsorted(ref["time_ms"], got["time_ms"])
    assert len(got["time_ms"]) == 6
    np.testing.assert_allclose(got["open_interest"], ref["open_interest"][i], rtol=1e-9)
