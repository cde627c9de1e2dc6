"""Recording realised liquidations (heatsvc.recording): the [liquidations] config, recorders batching into
the store against real WebSocket servers on 127.0.0.1, state and counters in the metrics (silence shows),
and a recorder killed with SIGKILL mid-stream losing nothing it committed, the time after it missing."""
from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import websockets
from prometheus_client import REGISTRY

from heatsvc.config import ExchangeConfig, parse
from heatsvc.liquidation_store import LiquidationStore
from heatsvc.model.realised import realised_columns
from heatsvc.recording import Recording


def test_liquidations_config_and_ws_urls_like_the_base_urls():
    config = parse({"liquidations": {"enabled": True, "retention_days": 7, "flush_interval_s": 0.5,
                                     "flush_events": 100},
                    "exchanges": {"bybit": {"ws_url": "ws://127.0.0.1:1/file"}, "okx": {}}},
                   env={"HEATSVC_OKX_WS_URL": "ws://127.0.0.1:2/env"})
    lc = config.liquidations
    assert (lc.enabled, lc.retention_days, lc.flush_interval_s, lc.flush_events) == (True, 7.0, 0.5, 100)
    urls = {ex.name: ex.ws_url for ex in config.exchanges}
    assert urls == {"bybit": "ws://127.0.0.1:1/file", "okx": "ws://127.0.0.1:2/env"}
    assert parse({}, env={}).liquidations.enabled is False
    assert parse({}, env={}).exchanges[0].ws_url.startswith("wss://fstream.binance.com/market/")
    for bad, message in (({"flush_events": 0}, "liquidations.flush_events"),
                         ({"retention_days": -1}, "liquidations.retention_days"),
                         ({"enabled": "yes"}, "liquidations.enabled"), ({"flush": 1}, "unknown key")):
        with pytest.raises(ValueError, match=message):
            parse({"liquidations": bad}, env={})


class Liquidator:
    """A Bybit-dialect server on 127.0.0.1 in its own thread: after a subscription it sends one
    liquidation every `every_s` (event time = wall clock, price rising by one each), or nothing when silent."""

    def __init__(self, every_s: float = 0.01, silent_after: int | None = None):
        self.every_s, self.silent_after = every_s, silent_after
        self.sent: list[tuple[int, float]] = []
        self.ready = threading.Event()
        self.stop = None
        self.thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _handler(self, ws):
        msg = json.loads(await ws.recv())
        assert msg["op"] == "subscribe"
        await ws.send(json.dumps({"success": True, "op": "subscribe"}))
        while True:
            if self.silent_after is not None and len(self.sent) >= self.silent_after:
                await ws.wait_closed()
                return
            t, price = int(time.time() * 1000), 100.0 + len(self.sent)
            self.sent.append((t, price))
            await ws.send(json.dumps({"topic": "allLiquidation.BTCUSDT", "type": "snapshot", "ts": t, "data": [
                {"T": t, "s": "BTCUSDT", "S": "Buy" if len(self.sent) % 2 else "Sell", "v": "0.5", "p": str(price)}]}))
            await asyncio.sleep(self.every_s)

    async def _main(self):
        self.stop, self.loop = asyncio.Event(), asyncio.get_running_loop()
        async with websockets.serve(self._handler, "127.0.0.1", 0) as server:
            self.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
            self.ready.set()
            await self.stop.wait()

    def __enter__(self):
        self.thread.start()
        self.ready.wait(30)
        return self

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)


def test_recording_batches_into_the_store_and_shows_silence(tmp_path):
    store = LiquidationStore(tmp_path / "s.sqlite3")
    statuses = []

    async def main(url):
        async def on_status(status):
            statuses.append(status["bybit"].state)
        rec = Recording(store, [ExchangeConfig("bybit", ("BTCUSDT",), ws_url=url)], flush_interval_s=0.1,
                        flush_events=5, on_status=on_status,
                        recorder_options={"silence_s": 0.5, "backoff_s": 0.05, "max_backoff_s": 0.1})
        committed = []
        rec.listeners.append(committed.extend)
        rec.start()
        while rec.committed < 20:
            await asyncio.sleep(0.05)
        await rec.flush()
        reach = store.spans("bybit", 0, 2**62)[-1][1]
        assert reach >= max(e.time_ms for e in committed), \
            "coverage keeps up with the committed events, not SPAN_FLUSH_S (30 s) behind"
        live = rec.status()["bybit"]
        while rec.status()["bybit"].state not in ("silent", "backoff"):   # the server stops talking
            await asyncio.sleep(0.05)
        await rec._publish()
        await rec.stop()
        return rec, live, committed

    with Liquidator(every_s=0.005, silent_after=30) as server:
        rec, live, committed = asyncio.run(main(server.url))
    assert live.state == "live" and live.events >= 20
    got = store.load("bybit:BTCUSDT", 0, 2**62)
    assert sorted(got["price"].tolist()) == [p for _, p in server.sent], "every event sent is stored once"
    assert len(committed) == 30 and {e.side for e in committed} == {"long", "short"}
    status = rec.status()["bybit"]
    assert status.state in ("silent", "backoff") and status.covered_s > 0 and status.events == 30
    assert "live" in statuses
    sample = REGISTRY.get_sample_value
    assert sample("heatsvc_liquidation_events", {"exchange": "bybit"}) == 30
    assert sample("heatsvc_liquidation_recorder_state", {"exchange": "bybit", "heatsvc_liquidation_recorder_state":
                                                         status.state}) == 1
    assert sample("heatsvc_liquidation_covered_seconds", {"exchange": "bybit"}) == pytest.approx(status.covered_s)
    spans = store.spans("bybit", 0, 2**62)
    assert len(spans) >= 1 and spans[0][0] <= server.sent[0][0] + 1000
    store.close()


RECORDER = """
import asyncio, sys
import heatsvc.exchanges.streams as streams
from heatsvc.config import ExchangeConfig
from heatsvc.liquidation_store import LiquidationStore
from heatsvc.recording import Recording
streams.SPAN_FLUSH_S = 0.2          # report the growing span often, so the kill falls after some coverage

async def main():
    rec = Recording(LiquidationStore(sys.argv[1]), [ExchangeConfig("bybit", ("BTCUSDT",), ws_url=sys.argv[2])],
                    flush_interval_s=0.1, flush_events=1000)
    rec.listeners.append(lambda batch: print(rec.committed, flush=True))
    rec.start()
    await asyncio.Event().wait()

asyncio.run(main())
"""


def test_a_recorder_killed_mid_stream_loses_nothing_committed_and_the_gap_is_missing(tmp_path):
    path = tmp_path / "s.sqlite3"
    with Liquidator(every_s=0.002) as server:
        proc = subprocess.Popen([sys.executable, "-c", RECORDER, str(path), server.url], stdout=subprocess.PIPE,
                                text=True)
        committed = 0
        for _ in range(15):
            committed = int(proc.stdout.readline())
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        killed_ms = int(time.time() * 1000)
        time.sleep(0.3)   # the server goes on: what it sends now is never heard
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()
    store = LiquidationStore(path)
    got = store.load("bybit:BTCUSDT", 0, 2**62)
    sent = dict((p, t) for t, p in server.sent)
    assert committed > 0 and len(got["price"]) >= committed, "every batch reported committed is stored"
    assert len(set(got["price"].tolist())) == len(got["price"]) and set(got["price"].tolist()) <= set(sent)
    assert len(got["price"]) < len(server.sent), "what was sent after the kill is not there"
    spans = store.spans("bybit", 0, 2**62)
    assert len(spans) >= 1 and spans[-1][1] <= killed_ms
    start = int(spans[0][0]) // 1000 * 1000
    columns = np.arange(start, killed_ms + 5000, 1000)
    realised = realised_columns(columns, 1000, got["time_ms"], got["long"], got["price"] * got["quantity"], spans)
    after = columns >= killed_ms
    assert after.any() and (realised.coverage[after] == 0).all() and np.isnan(realised.long[after]).all()
    assert np.nanmax(realised.coverage) > 0.5 and np.nansum(realised.long) > 0
    store.close()
