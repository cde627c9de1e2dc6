"""The SQLite bar store: idempotent upserts, missing values never overwrite known ones, retention,
gaps, concurrent readers, and durability against SIGKILL in the middle of writing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

from heatsvc.model.bars import FIELDS, STEP_MS
from heatsvc.datasets import synthetic_bars
from heatsvc.store import Store

END = 1_760_572_800_000
MARKET = "binance:BTCUSDT"


def same(a, b) -> bool:
    return all(np.array_equal(a[f], b[f], equal_nan=True) for f in FIELDS)


def part(bars, sl):
    return {f: v[sl].copy() for f, v in bars.items()}


@pytest.fixture()
def store(tmp_path):
    s = Store(tmp_path / "bars.sqlite3")
    yield s
    s.close()


def test_roundtrip_sorted_and_idempotent(store):
    bars = synthetic_bars("BTCUSDT", days=2, end_ms=END)
    shuffled = part(bars, np.random.default_rng(1).permutation(len(bars["time_ms"])))
    assert store.upsert(MARKET, shuffled) == len(bars["time_ms"])
    store.upsert(MARKET, bars)
    store.upsert(MARKET, part(bars, slice(100, 200)))
    loaded = store.load(MARKET)
    assert same(loaded, bars)
    assert loaded["time_ms"].dtype == np.int64 and loaded["close"].dtype == np.float64
    assert store.count(MARKET) == len(bars["time_ms"])
    assert store.last_time(MARKET) == bars["time_ms"][-1]
    assert store.markets() == [MARKET]


def test_load_range_and_empty(store):
    bars = synthetic_bars("ETHUSDT", days=1, end_ms=END)
    store.upsert("bybit:ETHUSDT", bars)
    t = bars["time_ms"]
    window = store.load("bybit:ETHUSDT", int(t[10]), int(t[20]))
    assert np.array_equal(window["time_ms"], t[10:20])
    empty = store.load("okx:ETHUSDT")
    assert set(empty) == set(FIELDS) and all(len(v) == 0 for v in empty.values())
    assert store.last_time("okx:ETHUSDT") is None


def test_missing_never_overwrites_known_but_fills_missing(store):
    bars = synthetic_bars("BTCUSDT", days=1, end_ms=END)
    first = part(bars, slice(None))
    first["open_interest"][:50] = np.nan
    first["long_short_ratio"][:50] = np.nan
    store.upsert(MARKET, first)
    later = part(bars, slice(None))
    later["open_interest"][50:] = np.nan          # a later answer missing what we already know
    later["taker_buy_volume"][:] = np.nan
    store.upsert(MARKET, later)
    loaded = store.load(MARKET)
    assert np.array_equal(loaded["open_interest"], bars["open_interest"])      # filled and kept
    assert np.array_equal(loaded["taker_buy_volume"], bars["taker_buy_volume"])
    assert np.array_equal(loaded["long_short_ratio"], bars["long_short_ratio"])  # filled later


def test_later_prices_replace_a_forming_bar(store):
    bars = synthetic_bars("BTCUSDT", days=1, end_ms=END)
    forming = part(bars, slice(-1, None))
    forming["close"] = forming["open"].copy()
    forming["high"] = np.maximum(forming["open"], forming["close"])
    forming["low"] = np.minimum(forming["open"], forming["close"])
    store.upsert(MARKET, forming)
    store.upsert(MARKET, part(bars, slice(-1, None)))
    assert store.load(MARKET)["close"][-1] == bars["close"][-1]


def test_retention_counts_back_from_newest_bar(tmp_path):
    with Store(tmp_path / "r.sqlite3", retention_days=2) as s:
        bars = synthetic_bars("BTCUSDT", days=5, end_ms=END)
        s.upsert(MARKET, bars)
        t = s.load(MARKET)["time_ms"]
        assert t[-1] == bars["time_ms"][-1]
        assert t[0] >= bars["time_ms"][-1] - 2 * 86_400_000
        assert len(t) == 2 * 288 + 1


def test_gaps(store):
    bars = synthetic_bars("BTCUSDT", days=1, end_ms=END)
    t = bars["time_ms"]
    keep = np.ones(len(t), bool)
    keep[10:13] = False
    keep[100] = False
    store.upsert(MARKET, part(bars, keep))
    assert store.gaps(MARKET, int(t[0]), int(t[-1]) + STEP_MS) == [(int(t[10]), int(t[13])), (int(t[100]), int(t[101]))]
    assert store.gaps(MARKET, int(t[0]) - 2 * STEP_MS, int(t[5])) == [(int(t[0]) - 2 * STEP_MS, int(t[0]))]
    assert store.gaps("okx:BTCUSDT", 0, 3 * STEP_MS) == [(0, 3 * STEP_MS)]


def test_bad_input_is_refused_with_a_clear_error(store, tmp_path):
    bars = synthetic_bars("BTCUSDT", days=1, end_ms=END)
    bad = part(bars, slice(0, 3))
    bad["time_ms"] = bad["time_ms"] + 1
    with pytest.raises(ValueError, match="not aligned"):
        store.upsert(MARKET, bad)
    with pytest.raises(ValueError, match="missing required"):
        store.upsert(MARKET, {"time_ms": bars["time_ms"]})
    with pytest.raises(ValueError, match="retention_days"):
        Store(tmp_path / "x.sqlite3", retention_days=0)
    assert store.count(MARKET) == 0


def test_marks(store):
    assert store.mark(MARKET, "no_data_before") is None
    store.set_mark(MARKET, "no_data_before", 123)
    assert store.mark(MARKET, "no_data_before") == 123


def test_a_year_loads_whole(store):
    bars = synthetic_bars("BTCUSDT", days=365, end_ms=END)
    bars["open_interest"][::5] = np.nan
    store.upsert(MARKET, bars)
    loaded = store.load(MARKET)
    assert len(loaded["time_ms"]) == 105_120
    assert same(loaded, bars)


def test_readers_on_other_threads_while_writing(store):
    bars = synthetic_bars("BTCUSDT", days=3, end_ms=END)
    n = len(bars["time_ms"])
    seen, errors = [], []

    def reader():
        try:
            for _ in range(30):
                got = store.load(MARKET)
                seen.append(len(got["time_ms"]))
                assert np.all(np.diff(got["time_ms"]) > 0)
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(0, n, 96):
        store.upsert(MARKET, part(bars, slice(i, i + 96)))
    for t in threads:
        t.join()
    assert not errors
    assert seen == sorted(seen) or all(s <= n for s in seen)
    assert same(store.load(MARKET), bars)


WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from heatsvc.datasets import synthetic_bars
    from heatsvc.store import Store
    store = Store(sys.argv[1])
    bars = synthetic_bars("BTCUSDT", days=30, end_ms=1_760_572_800_000)
    n = len(bars["time_ms"])
    for i in range(0, n, 50):
        store.upsert("binance:BTCUSDT", {f: v[i:i + 50] for f, v in bars.items()})
        print(min(i + 50, n), flush=True)
    print("done", flush=True)
""")


def test_sigkill_while_writing_loses_nothing_committed(tmp_path):
    path = tmp_path / "kill.sqlite3"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True, env=env)
    committed = 0
    try:
        for line in proc.stdout:
            if line.strip() == "done":
                break
            committed = int(line)
            if committed >= 2000:
                proc.send_signal(signal.SIGKILL)
                break
    finally:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL
    assert committed >= 2000
    with Store(path) as reopened:
        loaded = reopened.load(MARKET)
        n = len(loaded["time_ms"])
        assert n >= committed
        assert n % 50 == 0 or n == 30 * 288     # whole transactions only
        expected = synthetic_bars("BTCUSDT", days=30, end_ms=END)
        assert same(loaded, {f: v[:n] for f, v in expected.items()})
        assert reopened._db().execute("PRAGMA integrity_check").fetchone()[0] == "ok"
