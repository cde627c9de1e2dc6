"""The heat model of MODEL.md, the one place it runs.

`compute_heatmap` validates the bars, fixes the view (window, columns, price grid) and hands it to one
of three interchangeable backends that must agree on every cell: "cython" (the shipped kernel),
"numpy" (per-bar loop, each step vectorised over the book) and "python" (a plain loop written
straight from MODEL.md, for tests). The result is an estimate of where leveraged positions would be
force-closed: market-risk context, never a price forecast.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta

import numpy as np

from . import bars as barlib
from .zones import ZoneReport, intensity, row_centres, zones  # noqa: F401  (part of the engine's public face)

DAY_MS = 86_400_000
LOOKBACKS = {
    "12h": DAY_MS // 2, "1d": DAY_MS, "3d": 3 * DAY_MS, "7d": 7 * DAY_MS, "14d": 14 * DAY_MS,
    "1M": 30 * DAY_MS, "3M": 90 * DAY_MS, "6M": 180 * DAY_MS, "1Y": 365 * DAY_MS,
}
MAX_ROWS = 10_000
MAX_COLUMNS = 10_000
MAX_TIERS = 32  # the kernel's per-tier scratch arrays are this long
MAX_BOOK_ROWS = 500_000  # internal rows (shown + off-range); bounds memory and time of one view
MIN_PRICE, MAX_PRICE = 1e-12, 1e12  # an explicit price range lies inside (far beyond it, float products overflow)
BACKENDS = ("cython", "numpy", "python")


@dataclass(frozen=True)
class Tier:
    """One leverage tier of MODEL.md section 3: leverage, weight, maintenance margin rate, half-life."""
    leverage: float
    weight: float
    maintenance_margin: float = 0.004
    half_life_days: float = math.inf

    def __post_init__(self):
        for name in ("leverage", "weight", "maintenance_margin"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"tier {name} must be finite, got {getattr(self, name)}")
        if self.leverage <= 1:
            raise ValueError(f"tier leverage must be > 1, got {self.leverage}")
        if self.weight < 0:
            raise ValueError(f"tier weight must be >= 0, got {self.weight}")
        if not 0 <= self.maintenance_margin < 1 / self.leverage:
            raise ValueError(f"tier maintenance_margin must be in [0, 1/leverage) = [0, {1 / self.leverage:g}),"
                             f" got {self.maintenance_margin}")
        if math.isnan(self.half_life_days) or self.half_life_days <= 0:
            raise ValueError(f"tier half_life_days must be > 0 (inf allowed), got {self.half_life_days}")

    def long_liquidation(self, entry: float) -> float:
        """MODEL.md section 4, isolated margin: price at which a long opened at `entry` is liquidated."""
        return entry * (1 - 1 / self.leverage) / (1 - self.maintenance_margin)

    def short_liquidation(self, entry: float) -> float:
        return entry * (1 + 1 / self.leverage) / (1 + self.maintenance_margin)


DEFAULT_TIERS = (
    Tier(5, 0.15, 0.004, 30), Tier(10, 0.30, 0.004, 14), Tier(25, 0.25, 0.004, 5),
    Tier(50, 0.20, 0.004, 2), Tier(100, 0.10, 0.004, 1),
)


@dataclass(frozen=True)
class ModelParams:
    """The model's parameters (MODEL.md sections 1-3); the defaults are the contract's."""
    tiers: tuple[Tier, ...] = DEFAULT_TIERS
    step_ms: int = barlib.STEP_MS
    mu: float = 0.05

    def __post_init__(self):
        object.__setattr__(self, "tiers", tuple(self.tiers))
        if not 1 <= len(self.tiers) <= MAX_TIERS:
            raise ValueError(f"params.tiers: between 1 and {MAX_TIERS} tiers are required, got {len(self.tiers)}")
        if not all(isinstance(t, Tier) for t in self.tiers):
            raise ValueError("params.tiers: every tier must be a heatsvc.model.engine.Tier")
        total = sum(t.weight for t in self.tiers)
        if abs(total - 1) > 1e-9:
            raise ValueError(f"params.tiers: weights must sum to 1, got {total:.12g}")
        if not isinstance(self.step_ms, int) or self.step_ms <= 0:
            raise ValueError(f"params.step_ms must be a positive integer, got {self.step_ms!r}")
        if not (math.isfinite(self.mu) and 0 <= self.mu < 1):
            raise ValueError(f"params.mu must be in [0, 1), got {self.mu}")

    def decay_factors(self) -> np.ndarray:
        """Per tier, the factor one bar's decay multiplies by: 2^(-step / H)."""
        step_days = self.step_ms / DAY_MS
        return np.array([2.0 ** (-step_days / t.half_life_days) for t in self.tiers])


@dataclass
class View:
    """A fixed view, ready for a backend: the window's bars, its columns and its price grid.

    Internal rows k = row + offset; k in [0, book_rows) holds every price the window can deposit at.
    """
    bars: dict[str, np.ndarray]   # the window's bars, normalised
    oi_prev: float                # last known open interest before the window (NaN if none)
    columns: int
    bars_per_column: int
    start_ms: int
    p_lo: float
    p_hi: float
    rows: int
    log_rho: float
    offset: int
    book_rows: int
    params: ModelParams
    per_tier: bool

    @property
    def column(self) -> np.ndarray:
        """int64, the column of each window bar (the kernel tracks it from the times itself)."""
        return (self.bars["time_ms"] - self.start_ms) // (self.params.step_ms * self.bars_per_column)

    def row_of(self, price: float) -> int:
        """MODEL.md section 2: row(p) = floor(ln(p / p_lo) / ln rho), computed the same way everywhere."""
        return math.floor(math.log(price / self.p_lo) / self.log_rho)


@dataclass
class Balance:
    """Where the notional went (MODEL.md section 6): deposited = decayed + swept + closed + book."""
    deposited: float
    decayed: float
    swept: float
    closed: float
    book: float

    @property
    def residual(self) -> float:
        return self.deposited - self.decayed - self.swept - self.closed - self.book


@dataclass
class Heatmap:
    """A computed view. Grids are rows x columns, row 0 = lowest price, notional in quote currency."""
    long: np.ndarray
    short: np.ndarray
    price_edges: np.ndarray
    column_times: np.ndarray
    candles: np.ndarray
    swept_long: np.ndarray
    swept_short: np.ndarray
    off_range_long: np.ndarray
    off_range_short: np.ndarray
    balance: Balance
    params: ModelParams
    lookback_ms: int
    bars_per_column: int
    time_end_ms: int
    price: float
    per_tier_long: np.ndarray | None = None
    per_tier_short: np.ndarray | None = None
    markets: tuple[str, ...] = field(default=())

    @property
    def rows(self) -> int:
        return self.long.shape[0]

    @property
    def columns(self) -> int:
        return self.long.shape[1]

    @property
    def row_centres(self) -> np.ndarray:
        return row_centres(self.price_edges)


def lookback_ms(lookback: str | timedelta, step_ms: int) -> int:
    """A lookback name of MODEL.md section 7 or a timedelta, in milliseconds (a whole number of steps)."""
    if isinstance(lookback, timedelta):
        ms = lookback // timedelta(milliseconds=1)
        if ms <= 0 or ms % step_ms:
            raise ValueError(f"lookback {lookback} must be a positive multiple of the {step_ms // 1000} s step")
        return ms
    if lookback not in LOOKBACKS:
        raise ValueError(f"lookback {lookback!r} is unknown; use one of {', '.join(LOOKBACKS)} or a timedelta")
    return LOOKBACKS[lookback]


def _check_shape(rows: int, columns: int) -> None:
    for name, value, top in (("rows", rows, MAX_ROWS), ("columns", columns, MAX_COLUMNS)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= top:
            raise ValueError(f"{name} must be an integer in [1, {top}], got {value!r}")


def _check_price_range(price_range) -> tuple[float, float]:
    try:
        lo, hi = (float(x) for x in price_range)
    except (TypeError, ValueError):
        raise ValueError(f"price_range must be a pair (low, high), got {price_range!r}") from None
    if not MIN_PRICE <= lo < hi <= MAX_PRICE:  # NaN fails too
        raise ValueError(f"price_range must satisfy {MIN_PRICE:g} <= low < high <= {MAX_PRICE:g}, got ({lo}, {hi})")
    return lo, hi


def _window(b: dict[str, np.ndarray], end_ms: int, span_ms: int, step_ms: int):
    """The window's slice [i0, i1) of the bars, and the last open interest known before it."""
    t = b["time_ms"]
    start_ms = end_ms - span_ms + step_ms
    i0 = int(np.searchsorted(t, start_ms, "left"))
    i1 = int(np.searchsorted(t, end_ms, "right"))
    before = b["open_interest"][:i0]
    known = np.flatnonzero(np.isfinite(before[-64:]))
    if len(known):
        oi_prev = float(before[-64:][known[-1]])
    else:
        known = np.flatnonzero(np.isfinite(before))
        oi_prev = float(before[known[-1]]) if len(known) else math.nan
    return start_ms, i0, i1, oi_prev


def _default_range(window: dict[str, np.ndarray], mu: float) -> tuple[float, float]:
    return float(window["low"].min()) * (1 - mu), float(window["high"].max()) * (1 + mu)


def _checked(bars, market: str, step_ms: int) -> dict[str, np.ndarray]:
    """Normalised bars with checked times; their values are checked where they reach the model."""
    return barlib.check_times(barlib.normalize(bars), market=market, step_ms=step_ms)


def _prepare(b, *, end_ms, span_ms, columns, rows, price_range, params, per_tier, market="bars",
             check=True) -> View:
    """The view of one lookback; check=False when the caller has checked a window holding this one."""
    step = params.step_ms
    start_ms, i0, i1, oi_prev = _window(b, end_ms, span_ms, step)
    window = {k: v[i0:i1] for k, v in b.items()}
    if check:
        barlib.check_values(window, market=market)
    if oi_prev < 0:
        raise ValueError(f"{market}: open_interest before the window is negative ({oi_prev:g})")
    slots = span_ms // step
    per_col = -(-slots // columns)
    ncols = -(-slots // per_col)
    if price_range is None:
        if i1 == i0:
            raise ValueError("the window holds no bars, so it has no default price range")
        price_range = _default_range(window, params.mu)
    p_lo, p_hi = price_range
    log_rho = math.log(p_hi / p_lo) / rows
    k_lo, k_hi = 0, rows - 1
    if i1 > i0:
        lowest = float(window["low"].min()) * min((1 - 1 / t.leverage) / (1 - t.maintenance_margin) for t in params.tiers)
        highest = float(window["high"].max()) * max((1 + 1 / t.leverage) / (1 + t.maintenance_margin) for t in params.tiers)
        u_lo, u_hi = math.log(lowest / p_lo) / log_rho, math.log(highest / p_lo) / log_rho
        if max(-u_lo, u_hi - rows) > MAX_BOOK_ROWS:
            raise ValueError(f"price_range ({p_lo:g}, {p_hi:g}) with {rows} rows is too fine for the window's "
                             f"prices ({lowest:g} to {highest:g}): the book would exceed {MAX_BOOK_ROWS} rows")
        k_lo, k_hi = min(0, math.floor(u_lo) - 2), max(rows - 1, math.floor(u_hi) + 2)
    if k_hi - k_lo + 1 > MAX_BOOK_ROWS:
        raise ValueError(f"price_range ({p_lo:g}, {p_hi:g}) with {rows} rows is too fine for the window's "
                         f"prices: the book would need {k_hi - k_lo + 1} rows (at most {MAX_BOOK_ROWS})")
    return View(bars=window, oi_prev=oi_prev, columns=ncols, bars_per_column=per_col,
                start_ms=start_ms, p_lo=p_lo, p_hi=p_hi, rows=rows, log_rho=log_rho, offset=-k_lo,
                book_rows=k_hi - k_lo + 1, params=params, per_tier=per_tier)


def _run_all(views: list[View], backend: str) -> list[dict]:
    """The backend's result for each view; the kernel runs them all in one release of the GIL."""
    if backend == "cython":
        from . import _kernel
        return _kernel.evolve_views(views)
    if backend == "numpy":
        from . import engine_numpy
        return [engine_numpy.evolve(v) for v in views]
    if backend == "python":
        from . import engine_python
        return [engine_python.evolve(v) for v in views]
    raise ValueError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")


def _run(view: View, backend: str) -> dict:
    return _run_all([view], backend)[0]


def _setup(lookbacks: tuple, columns, rows, price_range, params, backend):
    """Checked parameters, the lookbacks' spans in ms, and the checked price range."""
    params = ModelParams() if params is None else params
    if not isinstance(params, ModelParams):
        raise ValueError(f"params must be a heatsvc.model.engine.ModelParams, got {type(params).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend {backend!r} is unknown; use one of {', '.join(BACKENDS)}")
    _check_shape(rows, columns)
    spans = [lookback_ms(lb, params.step_ms) for lb in lookbacks]
    if price_range is not None:
        price_range = _check_price_range(price_range)
    return params, spans, price_range


def _included(b: dict[str, np.ndarray], include_partial: bool, market: str) -> dict[str, np.ndarray]:
    """Drop the newest bar when the caller counts it as still forming and asks to leave it out."""
    if include_partial:
        return b
    if len(b["time_ms"]) < 2:
        raise ValueError(f"{market}: include_partial=False leaves no closed bar")
    return {k: v[:-1] for k, v in b.items()}


def _finish(view: View, raw: dict, span: int, end_ms: int, price: float, markets=()) -> Heatmap:
    edges = view.p_lo * np.exp(view.log_rho * np.arange(view.rows + 1))
    edges[-1] = view.p_hi
    step = view.params.step_ms
    times = view.start_ms + step * view.bars_per_column * np.arange(view.columns, dtype=np.int64)
    return Heatmap(long=raw["long"], short=raw["short"], price_edges=edges, column_times=times,
                   candles=raw["candles"], swept_long=raw["swept_long"], swept_short=raw["swept_short"],
                   off_range_long=raw["off_range_long"], off_range_short=raw["off_range_short"],
                   balance=Balance(**raw["balance"]), params=view.params, lookback_ms=span,
                   bars_per_column=view.bars_per_column, time_end_ms=end_ms, price=price,
                   per_tier_long=raw.get("per_tier_long"), per_tier_short=raw.get("per_tier_short"),
                   markets=tuple(markets))


def compute_heatmap(bars: Mapping[str, np.ndarray], *, lookback: str | timedelta, columns: int = 288,
                    rows: int = 400, price_range: tuple[float, float] | None = None,
                    params: ModelParams | None = None, backend: str = "cython",
                    include_partial: bool = True, per_tier: bool = False, market: str = "bars") -> Heatmap:
    """The heatmap of one market (MODEL.md sections 2-7) over the lookback ending at its newest bar.

    `bars` maps the field names of heatsvc.model.bars.FIELDS to equal-length arrays. With
    include_partial=False the newest bar is taken as still forming and left out. Bad input raises
    ValueError naming the field (and for bars, the market and time); bar values are checked for
    every bar that reaches the model (the window), times for all bars.
    """
    return compute_heatmaps(bars, lookbacks=(lookback,), columns=columns, rows=rows, price_range=price_range,
                            params=params, backend=backend, include_partial=include_partial,
                            per_tier=per_tier, market=market)[lookback]


def compute_heatmaps(bars: Mapping[str, np.ndarray], *, lookbacks, columns: int = 288, rows: int = 400,
                     price_range: tuple[float, float] | None = None, params: ModelParams | None = None,
                     backend: str = "cython", include_partial: bool = True, per_tier: bool = False,
                     market: str = "bars") -> dict:
    """Several lookbacks of one market at once, as {lookback: Heatmap}, each as compute_heatmap gives it.

    The bars are normalised and checked once (the longest window holds every other), and the cython
    backend runs every view in one release of the GIL: what the service does for each new bar.
    """
    lookbacks = tuple(lookbacks)
    if not lookbacks:
        raise ValueError("lookbacks: at least one lookback is required")
    params, spans, price_range = _setup(lookbacks, columns, rows, price_range, params, backend)
    b = _included(_checked(bars, market, params.step_ms), include_partial, market)
    end_ms = int(b["time_ms"][-1])
    _, i0, i1, _ = _window(b, end_ms, max(spans), params.step_ms)
    barlib.check_values({k: v[i0:i1] for k, v in b.items()}, market=market)
    views = [_prepare(b, end_ms=end_ms, span_ms=span, columns=columns, rows=rows, price_range=price_range,
                      params=params, per_tier=per_tier, market=market, check=False) for span in spans]
    price = float(b["close"][-1])
    return {lb: _finish(view, raw, span, end_ms, price, (market,))
            for lb, span, view, raw in zip(lookbacks, spans, views, _run_all(views, backend))}


def compute_aggregate(bars_by_market: Mapping[str, Mapping[str, np.ndarray]], *, lookback: str | timedelta,
                      columns: int = 288, rows: int = 400, price_range: tuple[float, float] | None = None,
                      params: ModelParams | None = None, backend: str = "cython",
                      include_partial: bool = True, per_tier: bool = False) -> Heatmap:
    """MODEL.md section 8: one symbol over several exchanges on one grid and one time axis.

    The grid is the union of the markets' default ranges (unless given), the window ends at the
    newest bar of any market, and each cell is the sum of the markets' books. Column candles take
    the highest high, the lowest low and the mean open and close of the markets with bars there.
    """
    if not bars_by_market:
        raise ValueError("bars_by_market: at least one market is required")
    params, (span,), price_range = _setup((lookback,), columns, rows, price_range, params, backend)
    checked = {m: _included(_checked(b, m, params.step_ms), include_partial, m) for m, b in bars_by_market.items()}
    end_ms = max(int(b["time_ms"][-1]) for b in checked.values())
    if price_range is None:
        ranges = []
        for b in checked.values():
            _, i0, i1, _ = _window(b, end_ms, span, params.step_ms)
            if i1 > i0:
                ranges.append(_default_range({k: v[i0:i1] for k, v in b.items()}, params.mu))
        if not ranges:
            raise ValueError("the window holds no bars in any market")
        price_range = (min(r[0] for r in ranges), max(r[1] for r in ranges))
    views = [_prepare(b, end_ms=end_ms, span_ms=span, columns=columns, rows=rows, price_range=price_range,
                      params=params, per_tier=per_tier, market=market) for market, b in checked.items()]
    results = _run_all(views, backend)
    total = {key: sum(r[key] for r in results) for key in ("long", "short", "swept_long", "swept_short",
                                                           "off_range_long", "off_range_short")}
    if per_tier:
        total["per_tier_long"] = sum(r["per_tier_long"] for r in results)
        total["per_tier_short"] = sum(r["per_tier_short"] for r in results)
    total["balance"] = {k: sum(r["balance"][k] for r in results) for k in results[0]["balance"]}
    stack = np.stack([r["candles"] for r in results])
    with warnings.catch_warnings():  # all-NaN columns (no market has bars there) stay NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        total["candles"] = np.column_stack([np.nanmean(stack[:, :, 0], 0), np.nanmax(stack[:, :, 1], 0),
                                            np.nanmin(stack[:, :, 2], 0), np.nanmean(stack[:, :, 3], 0)])
    price = float(np.mean([b["close"][-1] for b in checked.values()]))
    return _finish(views[0], total, span, end_ms, price, tuple(checked))

