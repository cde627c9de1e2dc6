"""The engine against MODEL.md: three backends cross-checked on random markets, the balance of
section 6, hand-worked cases, aggregates and input validation."""
from __future__ import annotations

import math
from datetime import timedelta

import numpy as np
import pytest

from heatsvc.model import engine
from heatsvc.model.engine import ModelParams, Tier, compute_aggregate, compute_heatmap
from markets import STEP, T0, random_market

BACKENDS = ("cython", "numpy", "python")
GRIDS = ("long", "short", "swept_long", "swept_short", "off_range_long", "off_range_short")


def assert_agree(a, b, what=""):
    scale = max(np.abs(a.long).max(), np.abs(a.short).max(), 1e-300)
    for name in ("long", "short", "off_range_long", "off_range_short"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=0, atol=1e-9 * scale,
                                   err_msg=f"{what}: {name}")
    swept = max(a.swept_long.max(), a.swept_short.max(), 1e-300)
    for name in ("swept_long", "swept_short"):
        np.testing.assert_allclose(getattr(b, name), getattr(a, name), rtol=0, atol=1e-9 * swept,
                                   err_msg=f"{what}: {name}")
    np.testing.assert_array_equal(b.candles, a.candles, err_msg=f"{what}: candles")
    np.testing.assert_array_equal(b.price_edges, a.price_edges)
    np.testing.assert_array_equal(b.column_times, a.column_times)
    if a.per_tier_long is not None:
        np.testing.assert_allclose(b.per_tier_long, a.per_tier_long, rtol=0, atol=1e-9 * scale)
        np.testing.assert_allclose(b.per_tier_short, a.per_tier_short, rtol=0, atol=1e-9 * scale)
    for name in ("deposited", "decayed", "swept", "closed", "book"):
        x, y = getattr(a.balance, name), getattr(b.balance, name)
        assert abs(x - y) <= 1e-9 * max(a.balance.deposited, 1e-300), f"{what}: balance.{name} {x} != {y}"


def assert_balanced(h):
    bal = h.balance
    assert abs(bal.residual) <= 1e-9 * max(bal.deposited, 1e-300), bal
    for part in (bal.decayed, bal.swept, bal.closed, bal.book):
        assert part >= -1e-9 * max(bal.deposited, 1e-300)


def random_view(rng):
    """Random view options, including single tiers, infinite half-lives and windows past the data."""
    tiers = engine.DEFAULT_TIERS
    pick = rng.integers(0, 4)
    if pick == 1:
        tiers = (Tier(float(rng.uniform(1.5, 150)), 1.0, 0.004, math.inf),)
    elif pick == 2:
        tiers = tuple(Tier(t.leverage, t.weight, t.maintenance_margin, math.inf) for t in tiers)
    elif pick == 3:
        tiers = (Tier(3, 0.5, 0.0, 0.01), Tier(20, 0.5, 0.01, 0.2))
    lookback = timedelta(minutes=5 * int(rng.integers(1, 500)))
    return dict(lookback=lookback, columns=int(rng.integers(1, 40)), rows=int(rng.integers(1, 40)),
                params=ModelParams(tiers=tiers), per_tier=bool(rng.integers(0, 2)),
                include_partial=bool(rng.integers(0, 2)))


@pytest.mark.parametrize("seed", range(60))
def test_backends_agree_on_random_markets(seed):
    rng = np.random.default_rng(1000 + seed)
    bars = random_market(seed, n=int(rng.integers(2, 300)))
    view = random_view(rng)
    results = {b: compute_heatmap(bars, backend=b, **view) for b in BACKENDS}
    for b in ("cython", "numpy"):
        assert_agree(results["python"], results[b], f"seed {seed} {b}")
    for h in results.values():
        assert_balanced(h)
        assert (h.long >= 0).all() and (h.short >= 0).all()


@pytest.mark.parametrize("price", [1e-6, 1e-3, 1.0, 1e3, 1e6])
def test_backends_agree_across_price_scales(price):
    bars = random_market(7, n=200, price=price)
    results = {b: compute_heatmap(bars, lookback="1d", columns=24, rows=30, backend=b) for b in BACKENDS}
    assert_agree(results["python"], results["cython"], f"price {price}")
    assert_agree(results["python"], results["numpy"], f"price {price}")
    assert results["python"].balance.deposited > 0


def test_backends_agree_on_a_market_spanning_twelve_decades():
    bars = random_market(3, n=240, price=1e-6)
    growth = np.exp(np.linspace(0, math.log(1e12), 240))
    for f in ("open", "high", "low", "close"):
        bars[f] = bars[f] * growth
    bars["quote_volume"] = bars["quote_volume"] * growth
    results = {b: compute_heatmap(bars, lookback="3d", columns=16, rows=25, backend=b) for b in BACKENDS}
    assert results["python"].price_edges[-1] / results["python"].price_edges[0] > 1e10
    assert_agree(results["python"], results["cython"])
    assert_agree(results["python"], results["numpy"])


def test_backends_agree_on_a_long_market_with_explicit_range():
    bars = random_market(11, n=3000, price=250.0)
    lo, hi = float(np.nanmin(bars["low"])), float(np.nanmax(bars["high"]))
    kwargs = dict(lookback="12h", columns=50, rows=60, price_range=(lo * 1.05, hi * 0.97))
    a = compute_heatmap(bars, backend="numpy", **kwargs)
    b = compute_heatmap(bars, backend="cython", **kwargs)
    assert_agree(a, b)
    assert a.off_range_long.max() > 0 or a.off_range_short.max() > 0


def test_backends_agree_when_prices_sit_on_row_edges():
    """Lows and highs exactly on, and one ulp either side of, the grid's row edges: the kernel's
    edge-price walk must round them as the reference's logarithm does."""
    bars = random_market(21, n=250, price=100.0)
    p_lo, p_hi, rows = 80.0, 125.0, 45
    log_rho = math.log(p_hi / p_lo) / rows
    rng = np.random.default_rng(21)
    for i in range(1, 250):
        for field, pick in (("low", min), ("high", max)):
            k = math.floor(math.log(bars[field][i] / p_lo) / log_rho) + int(rng.integers(0, 2))
            edge = p_lo * math.exp(k * log_rho) * [1.0, 1 + 2.3e-16, 1 - 1.2e-16][int(rng.integers(0, 3))]
            bars[field][i] = pick(edge, bars["open"][i], bars["close"][i])
    kwargs = dict(lookback="1d", columns=40, rows=rows, price_range=(p_lo, p_hi))
    results = {b: compute_heatmap(bars, backend=b, **kwargs) for b in BACKENDS}
    assert results["python"].swept_long.sum() > 0 and results["python"].swept_short.sum() > 0
    for b in ("cython", "numpy"):
        assert_agree(results["python"], results[b], b)


@pytest.mark.parametrize("half_life_days", [0.01, 1e-4])
def test_backends_agree_when_a_tier_decays_past_the_float_range(half_life_days):
    """A tier whose decay underflows doubles within the window: the kernel folds its scale back into
    the cells (every 16 bars, or every bar when one bar's decay is that steep) and still agrees."""
    bars = random_market(4, n=3000, price=30.0)
    params = ModelParams(tiers=(Tier(20, 0.5, 0.004, half_life_days), Tier(4, 0.5, 0.004, math.inf)))
    kwargs = dict(lookback="14d", columns=60, rows=50, params=params, per_tier=True)
    a = compute_heatmap(bars, backend="numpy", **kwargs)
    b = compute_heatmap(bars, backend="cython", **kwargs)
    assert 2.0 ** -(14 / half_life_days) == 0.0, "one scale over the window would underflow"
    assert_agree(a, b)
    assert b.per_tier_long[0, :, -1].sum() > 0, "the fast tier still holds what the last bars opened"


def test_several_lookbacks_in_one_call_equal_one_call_each():
    bars = random_market(17, n=3000, price=5.0)
    lookbacks = ["12h", "1d", "3d", "7d", timedelta(hours=5)]
    many = engine.compute_heatmaps(bars, lookbacks=lookbacks, columns=37, rows=41, per_tier=True)
    assert list(many) == lookbacks
    for lb in lookbacks:
        one = compute_heatmap(bars, lookback=lb, columns=37, rows=41, per_tier=True)
        for name in ("long", "short", "swept_long", "swept_short", "off_range_long", "off_range_short",
                     "candles", "price_edges", "column_times", "per_tier_long", "per_tier_short"):
            np.testing.assert_array_equal(getattr(many[lb], name), getattr(one, name), err_msg=f"{lb} {name}")
        assert many[lb].balance == one.balance and many[lb].lookback_ms == one.lookback_ms


def test_several_lookbacks_check_what_they_are_given():
    bars = random_market(17, n=300, price=5.0)
    with pytest.raises(ValueError, match="at least one lookback"):
        engine.compute_heatmaps(bars, lookbacks=[])
    with pytest.raises(ValueError, match="lookback '2w' is unknown"):
        engine.compute_heatmaps(bars, lookbacks=["1d", "2w"])
    bars["high"][-5] = bars["low"][-5] * 0.5  # inside the 1d window: found by the one check of the longest
    with pytest.raises(ValueError, match=r"bar 20\d\d-.*high .* below"):
        engine.compute_heatmaps(bars, lookbacks=["12h", "1d"])


def test_one_bar_window_and_window_longer_than_data():
    bars = random_market(5, n=30)
    one = {b: compute_heatmap(bars, lookback=timedelta(minutes=5), columns=5, rows=10, backend=b) for b in BACKENDS}
    assert one["python"].columns == 1
    assert_agree(one["python"], one["cython"])
    long = {b: compute_heatmap(bars, lookback="1Y", columns=288, rows=20, backend=b) for b in ("python", "cython")}
    h = long["python"]
    assert h.columns == 288
    assert np.isnan(h.candles[0]).all(), "columns before the data have no candle"
    assert h.long[:, 0].sum() == 0 and h.short[:, 0].sum() == 0
    assert_agree(h, long["cython"])


def test_columns_follow_the_contract():
    bars = random_market(9, n=400)
    bars["time_ms"] = T0 + STEP * np.arange(400)
    h = compute_heatmap(bars, lookback=timedelta(minutes=5 * 100), columns=30, rows=10)
    n = math.ceil(100 / 30)
    assert h.bars_per_column == n and h.columns == math.ceil(100 / n)
    start = bars["time_ms"][-1] - 99 * STEP
    np.testing.assert_array_equal(h.column_times, start + STEP * n * np.arange(h.columns))
    first = bars["time_ms"] >= start
    idx = np.flatnonzero(first)[:n]
    assert h.candles[0, 0] == bars["open"][idx[0]]
    assert h.candles[0, 1] == bars["high"][idx].max()
    assert h.candles[0, 2] == bars["low"][idx].min()
    assert h.candles[0, 3] == bars["close"][idx[-1]]
    assert h.time_end_ms == bars["time_ms"][-1] and h.price == bars["close"][-1]
    h2 = compute_heatmap(bars, lookback=timedelta(minutes=5 * 100), columns=30, rows=10, include_partial=False)
    assert h2.time_end_ms == bars["time_ms"][-2]


# ---- hand-worked cases -------------------------------------------------------------------------

ONE_TIER = ModelParams(tiers=(Tier(10, 1.0, 0.004, math.inf),))


def bars_from(rows):
    """Bars from (open, high, low, close, volume, taker_buy, quote, oi) tuples, one per step."""
    a = np.array(rows, dtype=float)
    n = len(a)
    return {"time_ms": T0 + STEP * np.arange(n), "open": a[:, 0], "high": a[:, 1], "low": a[:, 2],
            "close": a[:, 3], "volume": a[:, 4], "taker_buy_volume": a[:, 5], "quote_volume": a[:, 6],
            "open_interest": a[:, 7]}


def expected_rows(price, p_lo, p_hi, rows):
    """The two rows and shares MODEL.md section 6 step 4 gives to a deposit at `price`."""
    u = math.log(price / p_lo) / (math.log(p_hi / p_lo) / rows)
    k0 = math.floor(u - 0.5)
    phi = u - 0.5 - k0
    return k0, 1 - phi, phi


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_bar_one_tier_deposit_lands_where_the_formula_says(backend):
    # bar 0 is before the window and gives OI_prev; bar 1 opens 10 units at VWAP 100.
    bars = bars_from([(100, 101, 99, 100, 10, 5, 1000, 1000), (100, 101, 99, 100, 10, 7, 1000, 1010)])
    p_lo, p_hi, rows = 80.0, 120.0, 40
    h = compute_heatmap(bars, lookback=timedelta(minutes=5), columns=1, rows=rows, price_range=(p_lo, p_hi),
                        params=ONE_TIER, backend=backend)
    e, lam, notional = 100.0, 0.7, 10 * 100.0  # taker share 0.7, no ratio
    for side, share, price in (("long", lam, e * 0.9 / 0.996), ("short", 1 - lam, e * 1.1 / 1.004)):
        k0, w0, w1 = expected_rows(price, p_lo, p_hi, rows)
        want = np.zeros(rows)
        want[k0], want[k0 + 1] = share * notional * w0, share * notional * w1
        np.testing.assert_allclose(getattr(h, side)[:, 0], want, rtol=1e-12, atol=1e-9)
    assert h.balance.deposited == pytest.approx(notional)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_wick_through_the_level_sweeps_exactly_it(backend):
    p_lo, p_hi, rows = 80.0, 120.0, 40
    liq = 100 * 0.9 / 0.996
    k0, _, _ = expected_rows(liq, p_lo, p_hi, rows)
    edge_k0 = p_lo * (p_hi / p_lo) ** (k0 / rows)
    above = p_lo * (p_hi / p_lo) ** ((k0 + 2) / rows)  # the deposit holds rows k0 and k0 + 1
    rows_in = [(100, 101, 99, 100, 10, 5, 1000, 1000), (100, 101, 99, 100, 10, 5, 1000, 1010),
               (100, 101, above * 1.001, 100, 10, 5, 1000, 1010),   # misses the level: nothing swept
               (100, 101, edge_k0 * 0.999, 100, 10, 5, 1000, 1010)]  # wicks through both rows of it
    h = compute_heatmap(bars_from(rows_in), lookback=timedelta(minutes=15), columns=3, rows=rows,
                        price_range=(p_lo, p_hi), params=ONE_TIER, backend=backend)
    long_deposit = 0.5 * 10 * 100.0
    assert h.swept_long[1] == 0 and h.long[:, 1].sum() == pytest.approx(long_deposit)
    assert h.swept_long[2] == pytest.approx(long_deposit, rel=1e-12)
    assert h.long[:, 2].sum() == 0
    assert h.short[:, 2].sum() == pytest.approx(long_deposit), "shorts above are untouched"


def fall_in_open_interest(backend, last_bar):
    """Two deposits (500 + 1000 per side at 10x), then `last_bar`; the view's three columns."""
    rows_in = [(100, 101, 99, 100, 10, 5, 1000, 1000),
               (100, 101, 99, 100, 10, 5, 1000, 1010),            # +10 OI: 500 long, 500 short
               (100, 101, 99, 100, 10, 5, 1000, 1030),            # +20 OI: 1000 long, 1000 short
               last_bar]
    return compute_heatmap(bars_from(rows_in), lookback=timedelta(minutes=15), columns=3, rows=40,
                           price_range=(80.0, 120.0), params=ONE_TIER, backend=backend)


def long_level_edge():
    """The lower edge of the row holding the 10x longs opened at 100 (their deposit's lower row)."""
    k0, _, _ = expected_rows(100 * 0.9 / 0.996, 80.0, 120.0, 40)
    return 80.0 * (120.0 / 80.0) ** (k0 / 40)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fall_in_open_interest_closes_only_the_residual(backend):
    low = long_level_edge() * 0.999
    # sweeps the 1500 of longs; OI -12 at close 100 => Q 1200 < 1500 swept: no residual to close
    h = fall_in_open_interest(backend, (100, 101, low, 100, 10, 5, 1000, 1018))
    assert h.swept_long[2] == pytest.approx(1500)
    assert h.short[:, 2].sum() == pytest.approx(1500) and h.balance.closed == 0
    # OI -30 => Q 3000, X = 3000 - 1500 = 1500 of the market's OI_prev * close = 1030 * 100
    h = fall_in_open_interest(backend, (100, 101, low, 100, 10, 5, 1000, 1000))
    f = 1 - 1500 / (1030 * 100)
    np.testing.assert_allclose(h.short[:, 2], h.short[:, 1] * f, rtol=1e-12)
    assert h.balance.closed == pytest.approx(1500 * (1 - f), rel=1e-12)
    assert_balanced(h)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fall_in_open_interest_closes_its_share_of_the_market_from_every_cell(backend):
    # nothing swept; OI 1030 -> 927 at close 104: X = 103 * 104 closes 103 * 104 / (1030 * 104) = 10 %
    h = fall_in_open_interest(backend, (100, 104, 99.5, 104, 10, 5, 1000, 927))
    assert h.swept_long[2] == 0 and h.swept_short[2] == 0
    np.testing.assert_allclose(h.long[:, 2], h.long[:, 1] * 0.9, rtol=1e-12)
    np.testing.assert_allclose(h.short[:, 2], h.short[:, 1] * 0.9, rtol=1e-12)
    assert h.balance.closed == pytest.approx(0.1 * 3000, rel=1e-12)
    assert_balanced(h)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fall_of_the_whole_open_interest_closes_everything(backend):
    # OI 1030 -> 0 with nothing swept: X = 1030 * 100 is the whole market, so every cell closes
    h = fall_in_open_interest(backend, (100, 101, 99.5, 100, 10, 5, 1000, 0))
    assert h.long[:, 2].sum() == 0 and h.short[:, 2].sum() == 0
    assert h.balance.closed == pytest.approx(3000, rel=1e-12) and h.balance.book == 0
    assert_balanced(h)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_fall_after_unknown_open_interest_closes_nothing(backend):
    # the first known OI has no OI_prev: no change of open interest, so nothing opens or closes
    bars = bars_from([(100, 101, 99, 100, 10, 5, 1000, math.nan), (100, 101, 99, 100, 10, 5, 1000, 1000),
                      (100, 101, 99, 100, 10, 5, 1000, 900)])
    h = compute_heatmap(bars, lookback=timedelta(minutes=15), columns=3, rows=40, price_range=(80.0, 120.0),
                        params=ONE_TIER, backend=backend)
    assert h.balance.deposited == 0 and h.balance.closed == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_decay_halves_a_tier_after_one_half_life(backend):
    half_life_bars = 12
    params = ModelParams(tiers=(Tier(10, 0.5, 0.004, half_life_bars * 5 / 1440), Tier(5, 0.5, 0.004, math.inf)))
    first = [(100, 100.5, 99.5, 100, 10, 5, 1000, 1000), (100, 100.5, 99.5, 100, 10, 5, 1000, 1010)]
    flat = [(100, 100.5, 99.5, 100, 10, 5, 1000, 1010)] * half_life_bars
    h = compute_heatmap(bars_from(first + flat), lookback=timedelta(minutes=5 * (1 + half_life_bars)),
                        columns=1 + half_life_bars, rows=40, price_range=(70, 130), params=params,
                        backend=backend, per_tier=True)
    start, end = h.per_tier_long[:, :, 0].sum(axis=1), h.per_tier_long[:, :, -1].sum(axis=1)
    assert end[0] == pytest.approx(start[0] / 2, rel=1e-12)
    assert end[1] == pytest.approx(start[1], rel=1e-12)
    assert h.balance.decayed == pytest.approx((start[0] + h.per_tier_short[0, :, 0].sum()) / 2, rel=1e-12)


def on_axis(bars, agg):
    """One market's book on an aggregate's grid and time axis (MODEL.md section 8), by the reference."""
    view = engine._prepare(engine.barlib.check(bars), end_ms=agg.time_end_ms, span_ms=agg.lookback_ms,
                           columns=agg.columns, rows=agg.rows,
                           price_range=(agg.price_edges[0], agg.price_edges[-1]), params=agg.params, per_tier=False)
    return engine._run(view, "python")


def test_aggregate_is_the_sum_of_markets_on_one_grid():
    a, b = random_market(21, n=250, price=100.0), random_market(22, n=250, price=100.0)
    b["time_ms"] = b["time_ms"] - b["time_ms"][-1] + a["time_ms"][-1] - 3 * STEP  # b ends 3 bars earlier
    agg = compute_aggregate({"binance:X": a, "bybit:X": b}, lookback="12h", columns=20, rows=30)
    assert agg.time_end_ms == a["time_ms"][-1] and agg.markets == ("binance:X", "bybit:X")
    start = agg.time_end_ms - agg.lookback_ms + STEP
    lows = [m["low"][m["time_ms"] >= start].min() for m in (a, b)]
    highs = [m["high"][(m["time_ms"] >= start) & (m["time_ms"] <= agg.time_end_ms)].max() for m in (a, b)]
    assert agg.price_edges[0] == pytest.approx(min(lows) * 0.95) and agg.price_edges[-1] == pytest.approx(max(highs) * 1.05)
    parts = [on_axis(m, agg) for m in (a, b)]
    for name in GRIDS:
        np.testing.assert_allclose(getattr(agg, name), parts[0][name] + parts[1][name], rtol=1e-9,
                                   atol=1e-9 * agg.long.max(), err_msg=name)


def test_aggregate_of_identical_markets_doubles():
    a = random_market(23, n=200, price=50.0)
    agg = compute_aggregate({"binance:Y": a, "okx:Y": a}, lookback="12h", columns=10, rows=20)
    one = compute_heatmap(a, lookback="12h", columns=10, rows=20)
    np.testing.assert_allclose(agg.long, 2 * one.long, rtol=1e-12)
    np.testing.assert_array_equal(agg.candles, one.candles)


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("change, match", [
    (lambda b: b.update(close=b["close"][:-1]), "close has"),
    (lambda b: b.pop("open_interest"), "missing required field"),
    (lambda b: b.update(colour=b["close"]), "unknown field"),
    (lambda b: b["time_ms"].__setitem__(5, b["time_ms"][4]), "not strictly increasing"),
    (lambda b: b["time_ms"].__setitem__(5, b["time_ms"][5] + 1), "not aligned"),
    (lambda b: b["high"].__setitem__(7, b["open"][7] * 0.5), r"bar 20\d\d-.*high .* below max\(open, close\)"),
    (lambda b: b["low"].__setitem__(7, b["high"][7] * 2), "low .* above min"),
    (lambda b: b["close"].__setitem__(3, np.nan), "close nan is not a finite positive price"),
    (lambda b: b["open"].__setitem__(3, -1.0), "open -1 is not a finite positive price"),
    (lambda b: b["volume"].__setitem__(3, -1.0), "volume -1 is negative"),
    (lambda b: b["open_interest"].__setitem__(3, -5.0), "open_interest -5 is negative"),
])
def test_bad_bars_are_rejected_with_market_time_and_field(change, match):
    bars = random_market(31, n=40)
    bars["open_interest"] = np.nan_to_num(bars["open_interest"], nan=1000.0)
    change(bars)
    with pytest.raises(ValueError, match=match):
        compute_heatmap(bars, lookback="1d", market="binance:TEST")


def test_bad_bar_error_names_market_and_time():
    bars = random_market(32, n=40)
    bars["low"][9] = bars["high"][9] * 3
    with pytest.raises(ValueError) as err:
        compute_heatmap(bars, lookback="1d", market="okx:ABC")
    assert "okx:ABC" in str(err.value) and engine.barlib.format_time(bars["time_ms"][9]) in str(err.value)


@pytest.mark.parametrize("kwargs, match", [
    (dict(lookback="2w"), "lookback '2w' is unknown"),
    (dict(lookback=timedelta(minutes=7)), "multiple of the 300 s step"),
    (dict(lookback="1d", rows=0), "rows must be"),
    (dict(lookback="1d", rows=10_001), "rows must be"),
    (dict(lookback="1d", columns=0), "columns must be"),
    (dict(lookback="1d", columns=2.5), "columns must be"),
    (dict(lookback="1d", price_range=(10, 5)), "price_range"),
    (dict(lookback="1d", price_range=(0, 5)), "price_range"),
    (dict(lookback="1d", price_range=(1, math.inf)), "price_range"),
    (dict(lookback="1d", price_range=(1e3, 1.0001e3)), "too fine"),
    (dict(lookback="1d", price_range=(1e-13, 1.0)), r"1e-12 <= low < high <= 1e\+12"),
    (dict(lookback="1d", price_range=(1.0, 1e13)), r"1e-12 <= low < high <= 1e\+12"),
    (dict(lookback="1d", price_range=(math.nan, 1.0)), "price_range"),
    (dict(lookback="1d", backend="fortran"), "backend 'fortran' is unknown"),
])
def test_bad_view_options_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compute_heatmap(random_market(33, n=50, price=1.0), **kwargs)


@pytest.mark.parametrize("make, match", [
    (lambda: Tier(1.0, 1.0), "leverage must be > 1"),
    (lambda: Tier(math.nan, 1.0), "leverage must be finite"),
    (lambda: Tier(10, 1.0, 0.2), "maintenance_margin"),
    (lambda: Tier(10, 1.0, 0.004, -1), "half_life_days"),
    (lambda: Tier(10, 1.0, 0.004, math.nan), "half_life_days"),
    (lambda: ModelParams(tiers=(Tier(10, 0.5),)), "weights must sum to 1"),
    (lambda: ModelParams(tiers=()), "tiers"),
    (lambda: ModelParams(mu=math.inf), "mu"),
    (lambda: ModelParams(step_ms=0), "step_ms"),
])
def test_bad_parameters_are_rejected(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_the_kernel_releases_the_gil():
    """While one thread computes, another keeps running Python: its longest stall stays far below
    the length of one computation (which is what it would wait if the kernel held the GIL)."""
    import sys
    import threading
    import time

    from heatsvc import datasets
    bars = datasets.synthetic_bars("BTCUSDT", days=365)
    kwargs = dict(lookback="1Y", columns=4000, rows=600, per_tier=True)
    started = time.perf_counter()
    compute_heatmap(bars, **kwargs)
    one_call = time.perf_counter() - started
    done = threading.Event()
    worker = threading.Thread(target=lambda: (compute_heatmap(bars, **kwargs), done.set()))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    try:
        last, stall = time.perf_counter(), 0.0
        worker.start()
        while not done.is_set():
            now = time.perf_counter()
            stall, last = max(stall, now - last), now
        worker.join()
    finally:
        sys.setswitchinterval(interval)
    assert one_call > 0.02, "the computation must be long enough to tell"
    assert stall < one_call / 2, (stall, one_call)
