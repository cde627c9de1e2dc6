"""The refresher against the replay exchange over real HTTP, on the replay's stepped clock:
backfill, periodic refresh, the forming bar, subscribers, health, restart without refetching,
gaps retried once faults stop, and one exchange failing while the others carry on."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest

from heatsvc.model.bars import STEP_MS
from heatsvc.datasets import synthetic_bars
from heatsvc.exchanges import make_client
from heatsvc.exchanges.okx import LIMITS
from heatsvc.refresher import MarketUpdated, Refresher
from heatsvc.replay import Limits, ReplayExchange
from heatsvc.store import Store

END = 1_760_572_800_000
DAY = 86_400_000
NOW = END - DAY + 150_000
CUR = NOW // STEP_MS * STEP_MS
MARKETS = ["binance:BTCUSDT", "bybit:BTCUSDT", "okx:BTCUSDT"]
FAST = dict(timeout_s=2.0, backoff_s=0.01, backoff_cap_s=0.1, max_retries=6, max_wait_s=1.0, ban_probe_s=0.5)


def datasets():
    out = {m: synthetic_bars("BTCUSDT", m.split(":")[0], days=3, end_ms=END) for m in MARKETS}
    bad = synthetic_bars("ETHUSDT", "binance", days=3, end_ms=END)
    bad["low"][500] = bad["high"][500] * 2             # low above the body
    out["binance:ETHUSDT"] = bad
    return out


@pytest.fixture()
def replay():
    fast_okx = {path: (400, 2.0) for path in Limits().okx_requests}
    with ReplayExchange(datasets=datasets(), start_ms=NOW, limits=Limits(okx_requests=fast_okx)) as rp:
        yield rp


def clients(replay, **kw):
    out = {}
    for e in ("binance", "bybit", "okx"):
        extra = {"archive_url": replay.archive_url()} if e == "binance" else {}
        if e == "okx":
            extra["limits"] = {path: 200 for path in LIMITS}
        out[e] = make_client(e, replay.base_url(e), now_ms=replay.now_ms, seed=1, **{**FAST, **extra, **kw})
    return out


async def close(cs):
    for c in cs.values():
        await c.aclose()


def closed_match(store, replay, market, start, end):
    got = store.load(market, start, end)
    ref = replay.bars(market)
    sel = (ref["time_ms"] >= start) & (ref["time_ms"] < end)
    assert np.array_equal(got["time_ms"], ref["time_ms"][sel]), market
    np.testing.assert_allclose(got["close"], ref["close"][sel], rtol=1e-9)
    np.testing.assert_allclose(got["volume"], ref["volume"][sel], rtol=1e-9)
    return got, {f: v[sel] for f, v in ref.items()}


def test_backfill_refresh_and_publish(replay, tmp_path):
    async def main():
        cs = clients(replay)
        store = Store(tmp_path / "s.sqlite3")
        r = Refresher(store, cs, MARKETS, interval_s=3600, history_days=1.5, now_ms=replay.now_ms)
        q = r.subscribe()
        await r.start()
        await r.wait_ready(timeout=60)
        start = (CUR - int(1.5 * DAY)) // STEP_MS * STEP_MS
        for m in MARKETS:
            got, ref = closed_match(store, replay, m, start, CUR)
            np.testing.assert_allclose(got["open_interest"][-288:], ref["open_interest"][-288:], rtol=1e-9)
            assert store.last_time(m) == CUR                      # the forming bar is stored too
            forming = store.load(m, CUR, CUR + STEP_MS)
            assert forming["volume"][0] < replay.bars(m)["volume"][replay.bars(m)["time_ms"] == CUR][0]
        updates = [q.get_nowait() for _ in range(q.qsize())]
        assert sorted(u.market for u in updates) == sorted(MARKETS)
        assert all(u.version == 1 and u.last_bar_ms == CUR and u.bars_changed and u.price > 0 for u in updates)
        health = r.health()
        assert all(h.status == "ok" and h.ready and h.lag_s == 0 and h.consecutive_failures == 0
                   for h in health.values()), health

        replay.step(12 * 60_000)                                  # two bars close, a third is forming
        for m in MARKETS:
            await r.refresh(m)
        new_cur = CUR + 2 * STEP_MS
        for m in MARKETS:
            closed_match(store, replay, m, CUR, new_cur)          # the old forming bar is now final
            assert store.last_time(m) == new_cur
        updates = [q.get_nowait() for _ in range(q.qsize())]
        assert {u.version for u in updates} == {2} and all(u.bars_changed for u in updates)
        await r.stop()
        store.close()
        await close(cs)
    asyncio.run(main())


def test_restart_resumes_without_refetching(replay, tmp_path):
    async def run_once(steps_ms):
        replay.step(steps_ms)
        cs = clients(replay)
        store = Store(tmp_path / "s.sqlite3")
        r = Refresher(store, cs, ["binance:BTCUSDT", "bybit:BTCUSDT"], interval_s=3600, history_days=2,
                      now_ms=replay.now_ms)
        await r.start()
        await r.wait_ready(timeout=60)
        await r.stop()
        n = store.count("binance:BTCUSDT")
        store.close()
        await close(cs)
        return n

    first = asyncio.run(run_once(0))
    first_counts = replay.request_counts()
    replay.reset_counters()
    second = asyncio.run(run_once(3 * STEP_MS))
    counts = replay.request_counts()
    assert second == first + 3
    assert first_counts[("binance", "/futures/data/openInterestHist")] == 2      # 2 days, 500 rows a call
    assert first_counts[("bybit", "/v5/market/open-interest")] == 3               # 200 rows a call
    assert counts[("binance", "/fapi/v1/klines")] == 2          # the new closed bars + the forming bar
    assert counts[("bybit", "/v5/market/kline")] == 2
    assert counts[("binance", "/futures/data/openInterestHist")] == 1
    assert sum(counts.values()) <= 14


def test_faults_skip_then_fill_and_other_exchanges_carry_on(replay, tmp_path):
    replay.faults.exchanges = ("bybit",)
    replay.faults.rate_5xx = 0.5
    replay.faults.seed = 11

    async def main():
        cs = clients(replay, max_retries=0)
        store = Store(tmp_path / "s.sqlite3")
        r = Refresher(store, cs, MARKETS, interval_s=0.2, history_days=2, chunk_days=0.25, now_ms=replay.now_ms,
                      gap_attempts=100)
        await r.start()
        await r.wait_ready("binance:BTCUSDT", timeout=60)
        await r.wait_ready("okx:BTCUSDT", timeout=60)
        await r.wait_ready("bybit:BTCUSDT", timeout=60)
        during = r.health()
        replay.faults.rate_5xx = 0.0
        start = (CUR - 2 * DAY) // STEP_MS * STEP_MS
        for _ in range(200):                                   # the refresh loop retries the gaps
            await asyncio.sleep(0.1)
            if not store.gaps("bybit:BTCUSDT", start, CUR) and not r.health()["bybit:BTCUSDT"].skipped:
                break
        after = r.health()
        await r.stop()
        for m in MARKETS:
            got, ref = closed_match(store, replay, m, start, CUR)
            np.testing.assert_allclose(got["open_interest"][-288:], ref["open_interest"][-288:], rtol=1e-9)
        store.close()
        await close(cs)
        return during, after

    during, after = asyncio.run(main())
    bybit = during["bybit:BTCUSDT"]
    assert bybit.skipped and bybit.missing_bars > 0 and bybit.status == "degraded", bybit
    assert "HTTP 5" in bybit.last_error
    assert during["binance:BTCUSDT"].status == "ok" and not during["binance:BTCUSDT"].skipped
    assert after["bybit:BTCUSDT"].status == "ok" and not after["bybit:BTCUSDT"].skipped


def test_unknown_symbol_fails_alone_and_bad_rows_are_counted(replay, tmp_path):
    async def main():
        cs = clients(replay)
        store = Store(tmp_path / "s.sqlite3")
        r = Refresher(store, cs, ["binance:ETHUSDT", "bybit:NOPEUSDT"], interval_s=3600, history_days=2,
                      now_ms=replay.now_ms)
        await r.start()
        await r.wait_ready("binance:ETHUSDT", timeout=60)
        await asyncio.sleep(0.2)
        health = r.health()
        await r.stop()
        n = store.count("binance:ETHUSDT")
        store.close()
        await close(cs)
        return health, n

    health, n = asyncio.run(main())
    eth, nope = health["binance:ETHUSDT"], health["bybit:NOPEUSDT"]
    assert eth.rejected_rows == 1 and n == 2 * 288 - 1 + 1     # one row dropped, the forming bar kept
    assert eth.missing_bars == 1 and eth.status == "degraded"   # the rejected bar is a gap, retried later
    assert eth.skipped[0].startswith("2025-10-14T17:40:00Z")
    assert nope.status == "failing" and not nope.ready and "NOPEUSDT" in nope.last_error


def test_slow_subscriber_keeps_the_newest_updates(replay, tmp_path):
    async def main():
        cs = clients(replay)
        store = Store(tmp_path / "s.sqlite3")
        r = Refresher(store, cs, ["binance:BTCUSDT"], interval_s=3600, history_days=0.5, now_ms=replay.now_ms,
                      queue_size=2)
        slow, other = r.subscribe(), r.subscribe()
        await r.start()
        await r.wait_ready(timeout=60)
        for _ in range(4):
            replay.step(60_000)
            await r.refresh("binance:BTCUSDT")
        r.unsubscribe(other)
        await r.refresh("binance:BTCUSDT")
        got = [slow.get_nowait() for _ in range(slow.qsize())]
        await r.stop()
        store.close()
        await close(cs)
        return got, other.qsize()

    got, other_size = asyncio.run(main())
    assert [u.version for u in got] == [5, 6]
    assert all(isinstance(u, MarketUpdated) for u in got)
    assert other_size == 2


def test_bad_configuration_is_refused(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    with pytest.raises(ValueError, match="no client for exchange 'kraken'"):
        Refresher(store, {}, ["kraken:BTCUSDT"])
    with pytest.raises(ValueError, match="exchange:SYMBOL"):
        Refresher(store, {}, ["BTCUSDT"])
    with pytest.raises(ValueError, match="interval_s"):
        Refresher(store, {}, [], interval_s=0)
    store.close()


def test_a_missing_archive_day_is_a_gap_refetched_not_zeros(tmp_path):
    # Binance HYPE-like market with 34 days: the oldest days' open interest comes from the daily archive.
    # One archived day has no snapshots at all (the archive answers 404 for it), like a file not published yet.
    bars = synthetic_bars("BTCUSDT", "binance", days=34, end_ms=END)
    hole = (bars["time_ms"] >= END - 33 * DAY) & (bars["time_ms"] < END - 32 * DAY)
    bars["open_interest"][hole] = np.nan
    with ReplayExchange(datasets={"binance:BTCUSDT": bars}, start_ms=NOW) as rp:
        async def main():
            cs = clients(rp)
            store = Store(tmp_path / "s.sqlite3")
            r = Refresher(store, cs, ["binance:BTCUSDT"], interval_s=3600, history_days=33.5, now_ms=rp.now_ms,
                          chunk_days=5)
            await r.start()
            await r.wait_ready("binance:BTCUSDT", timeout=60)
            health = r.health()["binance:BTCUSDT"]
            day = store.load("binance:BTCUSDT", END - 33 * DAY, END - 32 * DAY)
            await r.stop()
            store.close()
            await close(cs)
            return health, day

        health, day = asyncio.run(main())
    assert len(day["time_ms"]) == 288 and np.isnan(day["open_interest"]).all()   # stored bars, no zeros
    assert health.status == "degraded" and health.missing_bars == 288, health   # owed: retried later
    assert any(s.startswith("2025-09-13T00:00:00Z") for s in health.skipped), health.skipped


def test_a_delisted_market_stops_refreshing_and_keeps_its_history(tmp_path):
    data = {f"bybit:{s}": synthetic_bars(s, "bybit", days=2, end_ms=END) for s in ("BTCUSDT", "ETHUSDT")}
    with ReplayExchange(datasets=data, start_ms=NOW) as rp:
        async def main():
            cs = {"bybit": clients(rp)["bybit"]}
            store = Store(tmp_path / "s.sqlite3")
            r = Refresher(store, cs, list(data), interval_s=3600, history_days=1, now_ms=rp.now_ms, relist_s=None)
            await r.start()
            await r.wait_ready(timeout=60)
            kept = store.count("bybit:ETHUSDT")
            rp.delist("bybit:ETHUSDT")
            await r.check_listings()
            sent = sum(rp.request_counts("bybit").values())
            rp.step(10 * 60_000)
            await r.refresh("bybit:ETHUSDT")                      # nothing asked for a delisted market
            unsent = sum(rp.request_counts("bybit").values()) - sent
            await r.refresh("bybit:BTCUSDT")
            during = r.health()
            rp.delisted.clear()                                   # listed again
            await r.check_listings()
            await r.refresh("bybit:ETHUSDT")
            after = r.health()
            counts = kept, store.count("bybit:ETHUSDT")
            await r.stop()
            store.close()
            await close(cs)
            return unsent, during, after, counts

        unsent, during, after, (kept, later) = asyncio.run(main())
    eth = during["bybit:ETHUSDT"]
    assert unsent == 0 and eth.status == "failing" and eth.last_error.startswith("delisted: ETHUSDT"), eth
    assert during["bybit:BTCUSDT"].status == "ok"
    assert kept == 288 + 1 and later > kept                     # history kept; refreshed again once relisted
    assert after["bybit:ETHUSDT"].status == "ok", after["bybit:ETHUSDT"]
