"""The store of recorded liquidations and coverage: deduplication, spans, retention, and a writer
killed with SIGKILL mid-stream losing nothing it committed."""
from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys

import numpy as np

from heatsvc.liquidation_store import LiquidationStore
from heatsvc.model.realised import Liquidation, realised_columns

MIN = 60_000


def liq(t, side="long", price=100.0, qty=1.0, market="bybit:BTCUSDT"):
    return Liquidation(market, t, side, price, qty)


def test_events_are_stored_once_and_read_back_by_time(tmp_path):
    store = LiquidationStore(tmp_path / "s.sqlite3")
    assert store.add([liq(3 * MIN), liq(1 * MIN, "short", 99.5, 2.0), liq(2 * MIN)]) == 3
    assert store.add([liq(3 * MIN), liq(4 * MIN, market="okx:BTCUSDT")]) == 1, "a repeated message is stored once"
    got = store.load("bybit:BTCUSDT", 0, 10 * MIN)
    assert got["time_ms"].tolist() == [MIN, 2 * MIN, 3 * MIN] and got["long"].tolist() == [False, True, True]
    assert got["price"].tolist() == [99.5, 100.0, 100.0] and got["quantity"].tolist() == [2.0, 1.0, 1.0]
    assert store.load("bybit:BTCUSDT", 2 * MIN, 3 * MIN)["time_ms"].tolist() == [2 * MIN]
    store.close()


def test_coverage_spans_grow_merge_and_clip(tmp_path):
    store = LiquidationStore(tmp_path / "s.sqlite3")
    store.cover("bybit", 0, 5 * MIN)
    store.cover("bybit", 0, 7 * MIN)           # the same connection, reported again as it grows
    store.cover("bybit", 0, 6 * MIN)           # an older report never shortens it
    store.cover("bybit", 6 * MIN, 9 * MIN)     # a reconnect that overlaps
    store.cover("bybit", 20 * MIN, 25 * MIN)
    store.cover("okx", 0, 30 * MIN)
    np.testing.assert_array_equal(store.spans("bybit", MIN, 22 * MIN), [[MIN, 9 * MIN], [20 * MIN, 22 * MIN]])
    spans = store.spans("bybit", 0, 30 * MIN)
    r = realised_columns(np.arange(3) * 10 * MIN, 10 * MIN, [MIN], [True], [5.0], spans)
    np.testing.assert_allclose(r.coverage, [0.9, 0.0, 0.5])
    assert np.isnan(r.long[1]) and r.long[0] == 5.0
    assert store.prune(10 * MIN) == 0 and len(store.spans("bybit", 0, 30 * MIN)) == 1
    store.close()


WRITER = """
import sys
from heatsvc.liquidation_store import LiquidationStore
from heatsvc.model.realised import Liquidation
store = LiquidationStore(sys.argv[1])
batch = 0
while True:
    store.add([Liquidation("binance:BTCUSDT", batch * 1000 + i, "long", 100.0 + i, 1.0) for i in range(100)])
    store.cover("binance", 0, batch)
    batch += 1
    print(batch, flush=True)
"""


def test_a_writer_killed_mid_stream_loses_nothing_it_committed(tmp_path):
    path = tmp_path / "s.sqlite3"
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    for _ in range(20):
        committed = int(proc.stdout.readline())
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    n = db.execute("SELECT count(*) FROM liquidations").fetchone()[0]
    db.close()
    assert n % 100 == 0 and n >= committed * 100, "whole batches only, and every reported one"
    store = LiquidationStore(path)
    assert len(store.load("binance:BTCUSDT", 0, 10**12)["time_ms"]) == n
    store.close()
