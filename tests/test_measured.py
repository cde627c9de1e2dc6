"""The measured liquidation map and the estimate-against-measurement comparison, worked by hand."""
import math

import numpy as np
import pytest

from heatsvc.model.calibration import compare, fit_tiers, tier_mix
from heatsvc.model.engine import ModelParams
from heatsvc.model.measured import measured_map
from heatsvc.model.positions import Position, PositionSnapshot


def pos(user, size, liq, value, leverage=10.0, kind="isolated"):
    return Position(user, "HYPE", size, 40.0, value, leverage, kind, liq)


def snap(positions, oi=100.0, mark=40.0):
    return PositionSnapshot("HYPE", 1_700_000_000_000, positions, oi, mark, accounts_known=7, accounts_read=5,
                            oldest_read_ms=1_699_999_990_000)


EDGES = np.array([30.0, 35.0, 40.0, 45.0, 50.0])


def test_positions_land_in_the_row_of_their_liquidation_price():
    m = measured_map(snap([pos("a", 2, 36.0, 80), pos("b", 1, 35.0, 40), pos("c", -3, 44.9, 120),
                           pos("d", 1, 29.0, 40), pos("e", -1, None, 40, kind="cross"), pos("f", 1, 50.0, 40)]),
                     EDGES)
    assert m.long.tolist() == [0, 120, 0, 0]          # 36 and 35 (a row's lower edge is inside it)
    assert m.short.tolist() == [0, 0, 120, 0]
    assert m.off_range == {"long": 80, "short": 0}    # 29 below the grid, 50 is the top edge: outside
    assert m.unpriced == {"long": 0, "short": 40}
    assert m.size == {"long": 5, "short": 4}
    assert m.coverage == {"long": 0.05, "short": 0.04}
    assert m.sides_ratio == pytest.approx(0.09)
    assert m.leverage_mix == {10.0: (200.0, 160.0)}
    assert (m.positions, m.accounts_read, m.accounts_known) == (6, 5, 7)


def test_unknown_open_interest_is_unknown_coverage_not_zero():
    m = measured_map(snap([pos("a", 1, 36.0, 40)], oi=None), EDGES)
    assert math.isnan(m.coverage["long"]) and math.isnan(m.sides_ratio)


def test_bad_grids_and_positions_are_refused_with_the_reason():
    with pytest.raises(ValueError, match="ascending"):
        measured_map(snap([]), [40.0, 30.0])
    with pytest.raises(ValueError, match="liquidationPx"):
        pos("a", 1, -3.0, 40)
    with pytest.raises(ValueError, match="size"):
        pos("a", 0, 30.0, 40)


def test_an_estimate_equal_to_the_measurement_scores_one_and_overlaps_whole():
    m = measured_map(snap([pos("a", 2, 36.0, 80, 5), pos("c", -3, 44.9, 120, 25), pos("d", 1, 31.0, 10, 50)]),
                     EDGES)
    c = compare(m.long.copy(), m.short.copy(), m, 40.0, ModelParams())
    assert c.cosine["long"] == pytest.approx(1) and c.cosine["both"] == pytest.approx(1)
    assert c.estimated == c.measured == {"above": 120.0, "below": 90.0}
    assert c.zone_overlap == {"long": 1.0, "short": 1.0}
    assert c.captured["short"] == 1.0


def test_an_estimate_in_other_rows_scores_zero():
    m = measured_map(snap([pos("a", 2, 36.0, 80), pos("c", -3, 44.9, 120)]), EDGES)
    c = compare(np.array([50.0, 0, 0, 0]), np.array([0, 0, 0, 70.0]), m, 40.0, ModelParams())
    assert c.cosine["long"] == 0 and c.cosine["short"] == 0
    assert c.zone_overlap == {"long": 0.0, "short": 0.0}
    assert c.captured == {"long": 0.0, "short": 0.0}
    assert c.estimated == {"above": 70.0, "below": 50.0}


def test_tier_weights_fit_the_measured_leverage_mix():
    mix = {3.0: (30.0, 0.0), 10.0: (10.0, 20.0), 20.0: (0.0, 40.0), 40.0: (0.0, 0.0), 0.5: (5.0, 0.0)}
    params = ModelParams()   # tiers 5, 10, 25, 50, 100
    notional, unmatched = tier_mix(mix, params.tiers)
    assert notional.tolist() == [30.0, 30.0, 40.0, 0.0, 0.0]   # 3 -> 5, 20 -> 25 (nearest in log leverage)
    assert unmatched == 5.0
    fitted = fit_tiers(params, mix)
    assert [t.weight for t in fitted.tiers] == pytest.approx([0.3, 0.3, 0.4, 0, 0])
    assert [t.leverage for t in fitted.tiers] == [t.leverage for t in params.tiers]
    with pytest.raises(ValueError, match="no measured notional"):
        fit_tiers(params, {0.5: (1.0, 0.0)})


def test_snapshots_survive_the_store_and_the_latest_at_a_time_is_found(tmp_path):
    from heatsvc.measured_store import MeasuredStore
    positions = [pos("a", 2.5, 36.0, 80, 5), pos("c", -3, None, 120, 25, kind="cross")]
    with MeasuredStore(tmp_path / "s.sqlite3") as store:
        store.add(snap(positions))
        later = snap(positions[:1], oi=None)
        later.time_ms += 60_000
        store.add(later)
    with MeasuredStore(tmp_path / "s.sqlite3") as store:
        assert store.times("HYPE") == [1_700_000_000_000, 1_700_000_060_000]
        first = store.at("HYPE", 1_700_000_059_999)
        assert [(p.size, p.entry_px, p.position_value, p.leverage, p.leverage_type, p.liquidation_px)
                for p in first.positions] == [(2.5, 40.0, 80.0, 5.0, "isolated", 36.0), (-3.0, 40.0, 120.0, 25.0, "cross", None)]
        assert (first.open_interest, first.mark_px, first.accounts_known, first.accounts_read) == (100.0, 40.0, 7, 5)
        assert store.at("HYPE").open_interest is None and len(store.at("HYPE").positions) == 1
        assert store.at("HYPE", 1_699_999_999_999) is None and store.at("BTC") is None
        assert store.prune(1_700_000_000_001) == 1 and store.times("HYPE") == [1_700_000_060_000]
