"""Zones of MODEL.md section 9 on hand-made columns."""
from __future__ import annotations

import numpy as np
import pytest

from heatsvc.model.zones import column_zones, proximity_weight, row_centres

# 20 rows, each 1 % wide around 100: centres are geometric means of the edges
EDGES = 90.0 * 1.01 ** np.arange(21)
CENTRES = row_centres(EDGES)
PRICE = float(EDGES[10])  # the boundary between rows 9 and 10: rows 0-9 below, 10-19 above


def column(values: dict[int, float]) -> np.ndarray:
    col = np.zeros(20)
    for row, v in values.items():
        col[row] = v
    return col


def test_threshold_runs_and_ranking():
    short = column({11: 50, 12: 100, 13: 30, 15: 10, 17: 80, 18: 40})
    long = column({2: 60, 3: 60, 5: 25, 8: 19})
    r = column_zones(long, short, EDGES, PRICE, threshold=0.2)
    # v_max = 100, so rows under 20 are dropped: 15 (10) and 8 (19); 13 (30) stays
    assert [round(z.notional) for z in r.above] == [180, 120]
    top = r.above[0]
    assert (top.price_low, top.price_high) == (EDGES[11], EDGES[14])
    assert top.peak_price == CENTRES[12] and top.intensity == 1.0
    assert top.distance_pct == pytest.approx(100 * (CENTRES[12] - PRICE) / PRICE)
    assert [round(z.notional) for z in r.below] == [120, 25]
    assert r.total_above == 300 and r.total_below == 145
    assert r.below[1].intensity == 0.25


def test_sides_only_count_on_their_side_of_the_price():
    short = column({3: 100})   # short heat below the price is not an upside zone
    long = column({15: 100})   # long heat above the price is not a downside zone
    r = column_zones(long, short, EDGES, PRICE)
    assert r.above == [] and r.below == [] and r.magnet is None
    assert r.skew == 0 and r.skew_label == "BALANCED"


def test_top_n_keeps_the_largest_by_notional():
    short = column({11: 30, 13: 90, 15: 60, 17: 100})
    r = column_zones(np.zeros(20), short, EDGES, PRICE, top=2)
    assert [z.peak_price for z in r.above] == [CENTRES[17], CENTRES[13]]
    assert r.total_above == 280, "totals count every kept row, not only the top zones"


@pytest.mark.parametrize("short_heat, long_heat, label", [
    (100, 10, "UP"), (10, 100, "DOWN"), (50, 50, "BALANCED"), (56, 44, "BALANCED"), (60, 40, "UP")])
def test_skew_label(short_heat, long_heat, label):
    short = column({10: short_heat})  # rows 10 and 9: half a row above and below the price
    long = column({9: long_heat})
    r = column_zones(long, short, EDGES, PRICE, threshold=0.0)
    up = short_heat * proximity_weight(100 * (CENTRES[10] - PRICE) / PRICE, 2.0)
    down = long_heat * proximity_weight(100 * (CENTRES[9] - PRICE) / PRICE, 2.0)
    assert r.skew == pytest.approx((up - down) / (up + down), rel=1e-12)
    assert r.skew_label == label


def test_skew_ignores_heat_beyond_the_window():
    short = column({19: 100})  # about +9 % away
    long = column({9: 10})
    assert column_zones(long, short, EDGES, PRICE, threshold=0, window_pct=5).skew == -1.0
    assert column_zones(long, short, EDGES, PRICE, threshold=0, window_pct=10).skew > 0


def test_magnet_weighs_notional_by_proximity():
    short = column({10: 40, 19: 100})
    r = column_zones(np.zeros(20), short, EDGES, PRICE, threshold=0.1)
    near, far = CENTRES[10], CENTRES[19]
    w = lambda p: proximity_weight(100 * (p - PRICE) / PRICE, 2.0)  # noqa: E731
    assert 40 * w(near) > 100 * w(far)
    assert r.magnet.peak_price == near
    r = column_zones(np.zeros(20), short, EDGES, PRICE, threshold=0.1, proximity_pct=50)
    assert r.magnet.peak_price == far, "a wide proximity scale lets the bigger, farther zone win"


def test_cumulative_curves_run_outward_from_the_price():
    short = column({11: 1, 12: 2, 14: 3})
    long = column({8: 5, 5: 1})
    r = column_zones(long, short, EDGES, PRICE)
    assert r.cumulative_short[11] == 1 and r.cumulative_short[12] == 3 and r.cumulative_short[19] == 6
    assert r.cumulative_long[9] == 0 and r.cumulative_long[8] == 5 and r.cumulative_long[0] == 6
    assert r.cumulative_short[:10].sum() == 0 and r.cumulative_long[10:].sum() == 0


@pytest.mark.parametrize("kwargs, match", [
    (dict(threshold=1.0), "threshold"), (dict(threshold=-0.1), "threshold"), (dict(top=-1), "top"),
    (dict(proximity_pct=0), "proximity_pct"), (dict(window_pct=float("nan")), "window_pct")])
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        column_zones(np.zeros(20), np.zeros(20), EDGES, PRICE, **kwargs)


def test_row_centres_are_geometric_means_that_never_overflow():
    np.testing.assert_allclose(row_centres(EDGES), np.sqrt(EDGES[:-1] * EDGES[1:]), rtol=1e-15)
    for edges in (np.array([1e-200, 3e-200, 9e-200]), np.array([1e305, 1e306, 1.7e308])):  # products under-/overflow
        centres = row_centres(edges)
        assert (centres > edges[:-1]).all() and (centres < edges[1:]).all()
        np.testing.assert_allclose(np.log(centres), (np.log(edges[:-1]) + np.log(edges[1:])) / 2, rtol=1e-14)
