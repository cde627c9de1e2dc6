"""The bundled recorded Binance HYPEUSDT data and the crash of 2025-10-10, plus the local command."""
from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime, timezone

import numpy as np
import pytest

from heatsvc.model import bars as barlib
from heatsvc import datasets
from heatsvc.model import engine


def ms(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


@pytest.fixture(scope="module")
def recorded():
    return datasets.recorded_bars()


def test_recorded_data_loads_and_validates(recorded):
    b = barlib.check(recorded, market="binance:HYPEUSDT")
    t = b["time_ms"]
    assert len(t) == 5184 and t[0] == ms(2025, 9, 28) and t[-1] == ms(2025, 10, 15, 23, 55)
    assert (np.diff(t) == barlib.STEP_MS).all()
    assert np.isfinite(b["open_interest"]).sum() >= 5180
    assert b["low"].min() == 21.029
    crash = int(np.argmin(b["low"]))
    assert barlib.format_time(t[crash]) == "2025-10-10T21:20:00Z"
    # the metrics row stamped X is the open interest at the end of the bar opening at X - 5 min
    rows = datasets.read_rows(datasets.METRICS_FILE)
    stamp = next(r for r in rows if r["create_time"] == "2025-10-01 12:05:00")
    i = int(np.searchsorted(t, ms(2025, 10, 1, 12, 0)))
    assert b["open_interest"][i] == float(stamp["sum_open_interest"])


def test_crash_sweeps_the_long_book(recorded):
    """7d view ending 2025-10-11: the crash columns hold the week's largest long sweep, at least the whole
    long book that stood below the pre-crash price. (They also sweep shorts: positions opened during the
    fall are squeezed by the rebound inside the same columns.)"""
    keep = recorded["time_ms"] < ms(2025, 10, 11)
    h = engine.compute_heatmap({k: v[keep] for k, v in recorded.items()}, lookback="7d", market="binance:HYPEUSDT")
    crash = np.flatnonzero((h.column_times >= ms(2025, 10, 10, 20)) & (h.column_times < ms(2025, 10, 10, 22)))
    before = crash[0] - 1
    pre_price = h.candles[before, 3]
    centres = h.row_centres
    long_below = h.long[centres < pre_price, before].sum() + h.off_range_long[before]
    assert long_below > 0
    assert h.swept_long[crash].sum() >= 0.9 * long_below
    assert int(np.argmax(h.swept_long)) in crash, "the week's largest long sweep is the crash"
    assert h.candles[crash, 2].min() == 21.029


def test_by_the_crash_low_the_week_of_longs_is_swept(recorded):
    """One column per bar, ending at the bar of the low (21:20): the long book of the week, tens of
    millions of USDT an hour earlier, has been swept whole; with that bar's own opening removed,
    no long is left anywhere, shown rows or off-range."""
    end = recorded["time_ms"] <= ms(2025, 10, 10, 21, 20)
    b = {k: v[end].copy() for k, v in recorded.items()}
    assert b["low"][-1] == 21.029
    b["open_interest"][-1] = b["open_interest"][-2]  # the crash bar opens nothing
    h = engine.compute_heatmap(b, lookback="7d", columns=2016, market="binance:HYPEUSDT")
    hour_before = h.long[:, -13].sum() + h.off_range_long[-13]
    assert hour_before > 1e7
    assert h.swept_long[-12:].sum() >= hour_before * 0.99  # what decays in that hour is not swept
    assert h.long[:, -1].sum() == 0 and h.off_range_long[-1] == 0


def test_falls_in_open_interest_never_empty_the_book(recorded):
    """Model v2: a fall in open interest closes its share of the market, so over the 14 days to the data's
    end (one column per bar, the crash included) the book is never emptied after its first deposit."""
    h = engine.compute_heatmap(recorded, lookback="14d", columns=4032, market="binance:HYPEUSDT")
    book = h.long.sum(0) + h.short.sum(0) + h.off_range_long + h.off_range_short
    first = int(np.argmax(book > 0))
    assert book[first] > 0 and (book[first:] > 0).all()
    assert h.balance.closed < 0.5 * h.balance.deposited


def test_heatmap_command_prints_zones_and_writes_json(tmp_path):
    out = tmp_path / "zones.json"
    proc = subprocess.run([sys.executable, "-m", "heatsvc", "heatmap", "--end", "2025-10-10T21:00Z",
                           "--lookback", "3d", "--json", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "not a forecast" in proc.stdout and "binance:HYPEUSDT" in proc.stdout
    report = json.loads(out.read_text())
    assert report["data_time"] == "2025-10-10T20:55:00Z"
    assert report["above"] and all(z["peak_price"] > report["price"] for z in report["above"])
    assert report["below"] and all(z["peak_price"] < report["price"] for z in report["below"])


@pytest.mark.parametrize("argv, message", [
    (["--lookback", "2w"], "lookback '2w' is unknown"),
    (["--data", "nowhere.parquet"], "--data: 'nowhere.parquet' is not 'recorded'"),
    (["--end", "yesterday"], "not an ISO time"),
    (["--rows", "0"], "rows must be"),
])
def test_heatmap_command_bad_input(argv, message):
    proc = subprocess.run([sys.executable, "-m", "heatsvc.cli", "heatmap", *argv], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and message in proc.stderr


def test_synthetic_markets_cover_a_year_and_move_together():
    a = datasets.synthetic_bars("ETHUSDT", "binance")
    b = datasets.synthetic_bars("ETHUSDT", "okx")
    barlib.check(a)
    barlib.check(b)
    assert len(a["time_ms"]) == 365 * 288 and (a["time_ms"] == b["time_ms"]).all()
    assert np.corrcoef(np.diff(np.log(a["close"])), np.diff(np.log(b["close"])))[0, 1] > 0.9
    assert not np.allclose(a["open_interest"], b["open_interest"])
