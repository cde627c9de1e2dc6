"""Realised liquidations per column (MODEL.md section 12) on hand-made events and coverage spans."""
import numpy as np
import pytest

from heatsvc.model.realised import merge_spans, realised_columns

MIN = 60_000
COLUMNS = np.arange(4) * 10 * MIN          # four columns of ten minutes from t = 0


def test_events_sum_into_their_columns_by_side():
    times = [0, 9 * MIN, 10 * MIN, 25 * MIN, 39 * MIN + 59_999, 40 * MIN, -1]   # the last two lie outside
    is_long = [True, False, True, True, False, True, True]
    notional = [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    r = realised_columns(COLUMNS, 10 * MIN, times, is_long, notional, [(0, 40 * MIN)])
    np.testing.assert_array_equal(r.long, [1.0, 4.0, 8.0, 0.0])
    np.testing.assert_array_equal(r.short, [2.0, 0.0, 0.0, 16.0])
    np.testing.assert_array_equal(r.coverage, [1, 1, 1, 1])


def test_time_not_covered_is_missing_not_zero():
    spans = [(5 * MIN, 15 * MIN), (12 * MIN, 20 * MIN), (35 * MIN, 36 * MIN)]   # overlapping spans merge
    r = realised_columns(COLUMNS, 10 * MIN, [6 * MIN], [True], [3.0], spans)
    np.testing.assert_allclose(r.coverage, [0.5, 1.0, 0.0, 0.1])
    assert r.long[0] == 3.0 and r.long[1] == 0.0 and r.long[3] == 0.0
    assert np.isnan(r.long[2]) and np.isnan(r.short[2]), "a column never covered is missing"


def test_spans_are_merged_and_checked():
    np.testing.assert_array_equal(merge_spans([(5, 9), (1, 3), (2, 4), (9, 12), (20, 20)]), [[1, 4], [5, 12]])
    assert merge_spans([]).shape == (0, 2)
    with pytest.raises(ValueError, match="end_ms >= start_ms"):
        merge_spans([(5, 1)])
    with pytest.raises(ValueError, match="same length"):
        realised_columns(COLUMNS, 10 * MIN, [1, 2], [True], [1.0, 2.0], [])
