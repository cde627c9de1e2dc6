"""The replay exchange's liquidation streams (heatsvc.replay.streams): events consistent with the replayed
bars (the recorded HYPEUSDT crash included), the three dialects read by the real recorders over WebSocket
on 127.0.0.1 into the store, and the faults (dropped connections, malformed frames, silence)."""
from __future__ import annotations

import asyncio

import numpy as np

from heatsvc.config import ExchangeConfig
from heatsvc.liquidation_store import LiquidationStore
from heatsvc.model.bars import STEP_MS
from heatsvc.recording import Recording
from heatsvc.replay import DEFAULT_START_MS, ReplayExchange
from heatsvc.replay.okx import okx_ct_val
from heatsvc.replay.streams import StreamFaults, StreamServer, market_events

HOUR = 3_600_000
CRASH_MS = DEFAULT_START_MS + 21 * HOUR + 20 * 60_000   # 2025-10-10T21:20Z


def test_events_trade_where_the_bars_did_and_crowd_the_crash():
    replay = ReplayExchange()
    series = replay.series("binance:HYPEUSDT")
    crash = market_events(series, 0, CRASH_MS - HOUR // 2, CRASH_MS + HOUR // 2)
    calm = market_events(series, 0, CRASH_MS - 7 * HOUR, CRASH_MS - 6 * HOUR)
    crash_notional = crash["price"] * crash["quantity"]
    calm_notional = calm["price"] * calm["quantity"]
    assert len(crash["price"]) > 4 * len(calm["price"]) > 0, "more events in the fast move"
    assert np.median(crash_notional) > 3 * np.median(calm_notional), "and bigger ones"
    bar = np.searchsorted(series.t, crash["time_ms"], side="right") - 1
    assert (crash["price"] >= series.l[bar] - 1e-9).all() and (crash["price"] <= series.h[bar] + 1e-9).all()
    falling = series.c[bar] < series.o[bar]
    assert crash["long"][falling].mean() > 0.7 and crash["long"][~falling].mean() < 0.3
    again = market_events(series, 0, CRASH_MS - HOUR // 2, CRASH_MS + HOUR // 2)
    assert all(np.array_equal(crash[k], again[k]) for k in crash), "the same bars give the same events"


async def record(replay, streams, *, until, options=None, store=None, steps=None):
    """Recorders for the three exchanges at the replay streams, while `steps` moves the clock, until `until(rec)`."""
    exchanges = [ExchangeConfig(ex, tuple(m.partition(":")[2] for m in replay.markets() if m.startswith(ex)),
                                ws_url=streams.url(ex)) for ex in ("binance", "bybit", "okx")]
    sizes = {s: okx_ct_val(s) for s in ("BTCUSDT", "ETHUSDT")}
    rec = Recording(store, exchanges, flush_interval_s=0.05, contract_sizes=sizes, now_ms=replay.now_ms,
                    recorder_options=options or {"silence_s": 5.0, "backoff_s": 0.05, "max_backoff_s": 0.2})
    rec.start()
    while not all(r.connections for r in rec.recorders.values()):
        await asyncio.sleep(0.02)
    for _ in steps or ():
        replay.step(STEP_MS)
        await asyncio.sleep(0.06)
    while not until(rec):
        await asyncio.sleep(0.05)
    await rec.stop()
    return rec


def test_the_recorders_read_all_three_dialects_into_the_store(tmp_path):
    replay = ReplayExchange(start_ms=CRASH_MS - HOUR // 2)
    store = LiquidationStore(tmp_path / "s.sqlite3")
    with replay, StreamServer(replay) as streams:
        rec = asyncio.run(record(replay, streams, store=store, steps=range(12),
                                 until=lambda r: streams.sent_through_ms == replay.now_ms()
                                 and all(r.recorders[ex].events == streams.events_sent[ex] > 0
                                                     for ex in r.recorders)
                                 and r.committed == sum(streams.events_sent.values())))
    assert all(s.malformed == 0 and s.events > 0 for s in rec.status().values()), rec.status()
    for market in replay.markets():
        got = store.load(market, 0, 2**62)
        series = replay.series(market)
        bar = np.searchsorted(series.t, got["time_ms"], side="right") - 1
        assert len(got["price"]) > 0, market
        assert (got["price"] >= series.l[bar] * 0.999).all() and (got["price"] <= series.h[bar] * 1.001).all()
        if market.startswith("binance:"):
            seconds = got["time_ms"] // 1000
            assert len(np.unique(seconds)) == len(seconds), "Binance: at most one a symbol a second"
        if market.startswith("okx:"):
            contracts = got["quantity"] / okx_ct_val(market.partition(":")[2])
            assert np.allclose(contracts, np.round(contracts)), "OKX sizes are whole contracts x ctVal"
    hype = store.load("binance:HYPEUSDT", 0, 2**62)
    assert (hype["price"] * hype["quantity"]).sum() > 1e6, "the crash liquidates millions"
    spans = store.spans("okx", 0, 2**62)   # heard from its subscription answer, before the clock moved
    assert len(spans) == 1 and spans[0][1] - spans[0][0] >= 11 * STEP_MS
    store.close()


def test_dropped_connections_malformed_frames_and_silence_reach_the_recorders(tmp_path):
    replay = ReplayExchange(start_ms=CRASH_MS - HOUR // 2, speed=600.0)
    store = LiquidationStore(tmp_path / "s.sqlite3")
    faults = StreamFaults(drop_after_s=0.3, malformed_rate=0.5)
    options = {"silence_s": 0.4, "backoff_s": 0.02, "max_backoff_s": 0.05}
    with replay, StreamServer(replay, faults=faults) as streams:
        rec = asyncio.run(record(replay, streams, store=store, options=options,
                                 until=lambda r: all(s.reconnects >= 2 and s.malformed >= 1 and s.events >= 1
                                                     for s in r.status().values())))
        assert streams.dropped >= 6
        faults.drop_after_s, faults.malformed_rate, faults.silent = None, 0.0, True
        silent = asyncio.run(record(replay, streams, store=store, options=options,
                                    until=lambda r: all("no sign of life" in s.last_error
                                                        for s in r.status().values())))
    assert all(s.events == 0 and s.covered_s == 0 for s in silent.status().values()), "silence covers nothing"
    assert all(s.reconnects >= 2 for s in rec.status().values())
    store.close()


def test_the_demo_records_realised_liquidations_from_the_replay_streams(tmp_path):
    import time

    import httpx
    import grpc
    from demo_process import read_until, running
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with running(tmp_path / "demo.sqlite3", "--demo-history-days", "0.5", "--demo-start", "2025-10-10T21:00:00Z",
                 "--demo-speed", "300", "--metrics-listen", "127.0.0.1:0") as proc:
        lines = read_until(proc, "Prometheus metrics at")
        url = next(line for line in lines if "Prometheus metrics at" in line).split()[-1]
        port = next(line for line in lines if "serving heatsvc.v1" in line).split(" on ")[1].split()[0]
        line = proc.stdout.readline()
        assert "recording liquidations from binance, bybit, okx" in line, line
        events = {}
        while not all(events.get(ex, 0) > 0 for ex in ("binance", "bybit", "okx")):
            time.sleep(0.2)
            for row in httpx.get(url, timeout=10).text.splitlines():
                if row.startswith("heatsvc_liquidation_events{"):
                    events[row.split('"')[1]] = float(row.split()[-1])
        with grpc.insecure_channel(port) as channel:
            check = health_pb2_grpc.HealthStub(channel).Check
            while check(health_pb2.HealthCheckRequest(service="liquidations:binance")).status != 1:
                time.sleep(0.1)   # SERVING once live
    store = LiquidationStore(tmp_path / "demo.sqlite3")
    got = store.load("binance:HYPEUSDT", 0, 2**62)
    assert len(got["time_ms"]) > 0 and len(store.spans("binance", 0, 2**62)) >= 1
    store.close()
