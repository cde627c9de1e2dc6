"""The backtest's parts on hand-made inputs whose answers are worked out here, not by the code under test."""
from __future__ import annotations

import math

import numpy as np
import pytest

from heatsvc.backtest import run, scoring, sensitivity, truth
from heatsvc.model import engine

HOUR = 3_600_000
STEP = 300_000


# ---- scores --------------------------------------------------------------------------------------------

def test_ranks_share_the_average_rank_on_ties():
    assert scoring.ranks(np.array([3, 1, 2, 2, 5])).tolist() == [4, 1, 2.5, 2.5, 5]


def test_a_perfect_predictor_scores_one_and_a_reversed_one_minus_one():
    happened = np.array([0.0, 1, 4, 9, 16, 25])
    perfect = np.sqrt(happened)           # same order, different scale: Spearman 1
    assert scoring.spearman(perfect, happened) == pytest.approx(1.0)
    assert scoring.spearman(-perfect, happened) == pytest.approx(-1.0)
    assert scoring.score(2 * happened, happened) == pytest.approx((1.0, 1.0))
    rho, cos = scoring.score(perfect[::-1], happened)
    assert rho == pytest.approx(-1.0)
    # cosine of (5,4,3,2,1,0) with (0,1,4,9,16,25): 0+4+12+18+16+0 = 50 over sqrt(55) * sqrt(979)
    assert cos == pytest.approx(50 / math.sqrt(55 * 979))


def test_spearman_with_ties_matches_the_hand_computed_value():
    # ranks (1, 2.5, 2.5, 4) against (1, 2, 3, 4): 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert scoring.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(3 / math.sqrt(10))


def test_a_constant_predictor_is_handled_and_scores_zero_rank_correlation():
    happened = np.array([0.0, 1.0, 3.0])
    assert math.isnan(scoring.spearman(np.ones(3), happened))
    rho, cos = scoring.score(np.ones(3), happened)
    assert rho == 0.0
    assert cos == pytest.approx(4 / math.sqrt(3 * 10))
    assert scoring.score(np.zeros(3), happened) == (0.0, 0.0)


def test_what_happened_must_vary_to_be_scored():
    assert not scoring.scorable(np.array([2.0, 2.0, 2.0]))
    assert not scoring.scorable(np.array([1.0]))
    assert scoring.scorable(np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match="truth"):
        scoring.score(np.arange(3.0), np.zeros(3))


# ---- the bootstrap -------------------------------------------------------------------------------------

def test_blocks_cover_the_series_with_a_shorter_last_block():
    boot = scoring.BlockBootstrap(10, 3, resamples=5, seed=1)
    assert boot.lengths.tolist() == [3, 3, 3, 1]
    assert boot.starts.min() >= 0 and boot.starts.max() <= 7
    # a constant series has the same mean in every resample
    assert np.allclose(boot.means(np.full(10, 0.25)), 0.25)


def test_bootstrap_spread_of_the_mean_of_iid_noise_is_sigma_over_root_n():
    n = 4800
    x = np.random.default_rng(3).normal(0.0, 1.0, n)
    boot = scoring.BlockBootstrap(n, 24, resamples=2000, seed=4)
    assert np.std(boot.means(x)) == pytest.approx(1 / math.sqrt(n), rel=0.12)
    ci = boot.interval(x)
    assert ci["n"] == n and ci["mean"] == pytest.approx(x.mean())
    # 95 % interval of a normal mean: about +-1.96 standard errors
    assert ci["high"] - ci["low"] == pytest.approx(2 * 1.96 / math.sqrt(n), rel=0.15)


def test_blocks_capture_the_long_run_variance_of_an_autocorrelated_series():
    # AR(1) with phi = 0.6 and unit innovations: var(mean) = 1 / (n (1 - phi)^2); the variance of one
    # value is 1 / (1 - phi^2), which an iid bootstrap (blocks of 1) would wrongly use instead.
    n, phi = 24_000, 0.6
    e = np.random.default_rng(5).normal(0.0, 1.0, n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - phi ** 2)
    for i in range(1, n):
        x[i] = phi * x[i - 1] + e[i]
    blocked = np.std(scoring.BlockBootstrap(n, 48, resamples=2000, seed=6).means(x))
    iid = np.std(scoring.BlockBootstrap(n, 1, resamples=2000, seed=6).means(x))
    assert blocked == pytest.approx(1 / ((1 - phi) * math.sqrt(n)), rel=0.15)
    assert iid == pytest.approx(1 / math.sqrt((1 - phi ** 2) * n), rel=0.15)


def test_unscored_times_are_left_out_of_each_mean():
    x = np.array([1.0, np.nan, 3.0, np.nan, 5.0, 7.0])
    boot = scoring.BlockBootstrap(6, 2, resamples=200, seed=7)
    ci = boot.interval(x)
    assert ci["mean"] == pytest.approx(4.0) and ci["n"] == 4
    assert 1.0 <= ci["low"] <= ci["high"] <= 7.0
    assert boot.interval(np.full(6, np.nan))["mean"] is None


def test_verdict_claims_only_what_the_interval_excludes():
    assert scoring.verdict({"mean": 0.1, "low": 0.01, "high": 0.2}) == "above"
    assert scoring.verdict({"mean": -0.1, "low": -0.2, "high": -0.01}) == "below"
    assert scoring.verdict({"mean": 0.1, "low": -0.01, "high": 0.2}) == "no difference shown"
    assert scoring.verdict({"mean": 0.6, "low": 0.45, "high": 0.7}, null=0.5) == "no difference shown"


# ---- the magnet test -----------------------------------------------------------------------------------

def test_magnet_above_touched_before_its_mirror():
    # price 100, magnet 105, mirror 95: the third bar reaches 106, the fourth falls to 94
    high, low = [101, 103, 106, 104], [99, 98, 97, 94]
    assert scoring.magnet_outcome(np.array(high), np.array(low), 100.0, 105.0) == 1.0


def test_mirror_touched_first_scores_zero():
    high, low = [101, 103, 106, 104], [99, 94, 97, 96]
    assert scoring.magnet_outcome(np.array(high), np.array(low), 100.0, 105.0) == 0.0


def test_magnet_below_and_ties_and_misses():
    # magnet 96 below, mirror 104 above
    assert scoring.magnet_outcome(np.array([101, 102]), np.array([97, 95.5]), 100.0, 96.0) == 1.0
    assert scoring.magnet_outcome(np.array([104, 102]), np.array([97, 95.5]), 100.0, 96.0) == 0.0
    assert scoring.magnet_outcome(np.array([101, 104.5]), np.array([99, 95]), 100.0, 96.0) == 0.5
    assert math.isnan(scoring.magnet_outcome(np.array([101, 102]), np.array([99, 98]), 100.0, 96.0))
    assert math.isnan(scoring.magnet_outcome(np.array([101]), np.array([99]), 100.0, 100.0))


# ---- what happened -------------------------------------------------------------------------------------

GRID = truth.Grid(p_lo=100.0, log_rho=math.log(1.01), rows=12)


def centre(row: int) -> float:
    return 100.0 * 1.01 ** (row + 0.5)


def test_grid_rows_match_the_engine_definition():
    assert [GRID.row(centre(r)) for r in (0, 5, 11, 14)] == [0, 5, 11, 14]
    assert GRID.row(99.5) == -1                  # ln(0.995) / ln(1.01) = -0.5
    assert GRID.row(99.0) == -2                  # ln(0.99) / ln(1.01) = -1.01
    edges = 100.0 * 1.01 ** np.arange(13)
    assert truth.Grid.from_edges(edges).row(centre(7)) == 7


def test_proxy_spreads_each_falling_bar_over_the_rows_it_newly_traded():
    price = centre(5)
    high = np.array([centre(7), centre(6), centre(9), centre(9), centre(13)])
    low = np.array([centre(5), centre(3), centre(2), centre(2), centre(4)])
    close = np.array([50.0, 60.0, 100.0, 70.0, 10.0])
    doi = np.array([-10.0, 5.0, -3.0, -100.0, -4.0])
    out = truth.proxy(GRID, price, high, low, close, doi)
    # bar 0: rows 6, 7 newly traded, 10 x 50 = 500 -> 250 each; bar 1: rows 4, 3 but open interest rose;
    # bar 2: rows 8, 9 above and 2 below, 3 x 100 = 300 -> 100 each; bar 3: nothing new;
    # bar 4: rows 10..13, 4 x 10 = 40 -> 10 each, rows 12 and 13 beyond the 12 shown rows
    expected = np.zeros(12)
    expected[[6, 7]] = 250.0
    expected[[2, 8, 9]] = 100.0
    expected[[10, 11]] = 10.0
    assert out.values.tolist() == pytest.approx(expected.tolist())
    assert np.flatnonzero(out.traded).tolist() == [2, 3, 4, 6, 7, 8, 9, 10, 11]
    assert out.total == pytest.approx(840.0)
    assert out.off_grid == pytest.approx(20.0)


def test_open_interest_change_skips_missing_values():
    oi = np.array([np.nan, 10.0, np.nan, 8.0, 9.0])
    assert run.open_interest_change(oi).tolist() == [0.0, 0.0, 0.0, -2.0, 1.0]


def test_realised_counts_shorts_above_and_longs_below_on_newly_traded_rows():
    price = centre(5)
    high, low = np.array([centre(8)]), np.array([centre(3)])
    events = truth.Realised(
        time_ms=np.array([10, 20, 30, 40, 50]), side=np.array([-1, 1, 1, -1, -1]),
        price=np.array([centre(7), centre(7), centre(4), centre(10), centre(6)]),
        notional=np.array([1.0, 2.0, 3.0, 4.0, 5.0]), spans=np.array([[0, 60]]))
    out = truth.realised(GRID, price, high, low, events, events.between(0, 60))
    expected = np.zeros(12)
    expected[7], expected[4], expected[6] = 1.0, 3.0, 5.0   # the long above and the short beyond row 8 are out
    assert out.values.tolist() == expected.tolist()
    assert np.flatnonzero(out.traded).tolist() == [3, 4, 6, 7, 8]
    assert events.between(20, 40).tolist() == [1, 2]


def test_realised_coverage_must_be_whole():
    ev = truth.Realised(*(np.empty(0) for _ in range(4)), spans=np.array([[0, 100], [100, 200], [250, 400]]))
    assert ev.covers(10, 200)
    assert not ev.covers(150, 260)
    assert ev.covers(260, 400)
    assert not ev.covers(300, 401)


# ---- baselines, deciles, evaluation times, mixes -------------------------------------------------------

def test_volume_profile_spreads_each_bar_over_its_rows():
    high = np.array([centre(4), centre(3)])
    low = np.array([centre(2), centre(3)])
    profile = run.volume_profile(GRID, high, low, np.array([30.0, 5.0]))
    assert profile.tolist() == pytest.approx([0, 0, 10, 15, 10, 0, 0, 0, 0, 0, 0, 0])


def test_decile_shares_of_a_perfect_ranking():
    happened = np.arange(20.0)
    share, rows = run.decile_shares(happened, happened)
    # decile d holds rows 2d and 2d + 1: (4d + 1) of the total 190
    assert share.tolist() == pytest.approx([(4 * d + 1) / 190 for d in range(10)])
    assert rows.tolist() == pytest.approx([0.1] * 10)


def test_evaluation_times_wait_one_lookback_and_need_a_whole_horizon():
    t = np.arange(0, 5 * 24 * HOUR, STEP, dtype=np.int64)      # five days of bars from time 0
    t = np.delete(t, np.flatnonzero((t >= 80 * HOUR) & (t < 81 * HOUR)))   # a one-hour gap
    s = run.Settings(horizon_ms=24 * HOUR, every_ms=HOUR)
    times, index, skipped = run.evaluation_times(t, 24 * HOUR, s)
    assert times[0] == 24 * HOUR                   # after one day of warm-up
    assert times[-1] == 96 * HOUR                  # the last whole horizon ends with the data
    assert (t[index] == times - STEP).all()
    # t_k = 81 h has no bar closing at it (the bar 80:55 is missing); 57 h .. 80 h have the gap in their horizon
    assert skipped == {"no bar closing at t_k": 1, "gap in the horizon": 24}
    assert len(times) == 73 - 25


def test_durations_and_lookbacks_are_checked():
    assert run.parse_duration("24h", "--horizon") == 24 * HOUR
    assert run.parse_duration("30m", "--every") == 30 * 60_000
    for bad in ("24", "1x", "7m", "0h", "-1h"):
        with pytest.raises(ValueError, match="--every"):
            run.parse_duration(bad, "--every")
    assert run.parse_lookbacks("1d, 3d,7d") == ["1d", "3d", "7d"]
    with pytest.raises(ValueError, match="'5d' is unknown"):
        run.parse_lookbacks("1d,5d")
    with pytest.raises(ValueError, match="twice"):
        run.parse_lookbacks("1d,1d")


def test_the_declared_mixes_are_valid_and_distinct():
    assert len(sensitivity.MIXES) >= 5 and sensitivity.MIXES[0].name == sensitivity.DEFAULT
    assert sensitivity.MIXES[0].tiers == engine.DEFAULT_TIERS
    assert len({m.tiers for m in sensitivity.MIXES}) == len(sensitivity.MIXES)
    for mix in sensitivity.MIXES:
        assert sum(t.weight for t in mix.params.tiers) == pytest.approx(1.0)
    assert sensitivity.choose({"default": 0.1, "fast-decay": 0.2, "no-decay": 0.2}) == "fast-decay"
    assert sensitivity.choose({"default": 0.1, "fast-decay": 0.05}) == "default"


def test_halves_leave_a_horizon_between_them():
    times = np.arange(0, 100 * HOUR, HOUR)
    first, second = sensitivity.halves(times, 24 * HOUR, HOUR)
    # split at (0 + 99 h + 24 h) / 2 = 61 h (whole hours): first t + 24 h <= 61 h, second t >= 61 h
    assert first.sum() == 38 and second.sum() == 39
    assert times[first].max() + 24 * HOUR <= times[second].min()
