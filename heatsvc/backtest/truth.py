"""What happened after an evaluation time (MODEL.md section 15), per row of the view's price grid.

Two sources: realised liquidations recorded by heatsvc (MODEL.md section 12), used where the recorder
covered the whole horizon, and the OI-destroyed proxy built from the horizon's bars, used otherwise.
Both only count rows the price newly traded in the horizon; rows it never reached score nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    """The log-spaced rows of a view (MODEL.md section 2), extended beyond 0..rows-1 with the same rho."""
    p_lo: float
    log_rho: float
    rows: int

    @classmethod
    def from_edges(cls, edges: np.ndarray) -> "Grid":
        rows = len(edges) - 1
        return cls(float(edges[0]), math.log(float(edges[-1]) / float(edges[0])) / rows, rows)

    def row(self, price):
        """row(p) = floor(ln(p / p_lo) / ln rho), as the engine computes it (an int or an int array)."""
        if np.ndim(price) == 0:
            return math.floor(math.log(price / self.p_lo) / self.log_rho)
        return np.floor(np.log(np.asarray(price) / self.p_lo) / self.log_rho).astype(np.int64)

    def centres(self) -> np.ndarray:
        return self.p_lo * np.exp(self.log_rho * (np.arange(self.rows) + 0.5))


@dataclass
class Outcome:
    """What happened over one horizon, on the shown rows: the value per row, the rows newly traded,
    and the part of the total that fell on rows outside the shown grid (not scored)."""
    values: np.ndarray
    traded: np.ndarray
    total: float
    off_grid: float


def _first_reach(reach: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For a non-decreasing running extreme (in rows), the first bar whose extreme reaches each row."""
    return np.searchsorted(reach, rows, side="left")


def _on_grid(grid: Grid, rows: np.ndarray, values: np.ndarray) -> Outcome:
    shown = (rows >= 0) & (rows < grid.rows)
    out = np.zeros(grid.rows)
    traded = np.zeros(grid.rows, dtype=bool)
    out[rows[shown]] = values[shown]
    traded[rows[shown]] = True
    return Outcome(out, traded, float(values.sum()), float(values[~shown].sum()))


def traded_rows(grid: Grid, price: float, high: np.ndarray, low: np.ndarray):
    """Rows the horizon newly traded, above and below the row of the price, and for each the index
    of the bar that first reached it (the bar that newly traded it)."""
    r0 = grid.row(price)
    up = np.maximum.accumulate(np.maximum(grid.row(high), r0))
    down = np.minimum.accumulate(np.minimum(grid.row(low), r0))
    rows_up = np.arange(r0 + 1, up[-1] + 1) if len(up) else np.empty(0, np.int64)
    rows_down = np.arange(down[-1], r0) if len(down) else np.empty(0, np.int64)
    return (rows_up, _first_reach(up, rows_up)), (rows_down, _first_reach(-down, -rows_down)), up, down, r0


def proxy(grid: Grid, price: float, high: np.ndarray, low: np.ndarray, close: np.ndarray,
          doi: np.ndarray) -> Outcome:
    """The OI-destroyed proxy: each horizon bar that newly trades rows (reaches a new high or low
    since the evaluation time, by row) while open interest falls spreads -dOI * close evenly over
    the rows it newly traded. `doi` is each bar's change of open interest (0 where unknown)."""
    (rows_up, bar_up), (rows_down, bar_down), up, down, r0 = traded_rows(grid, price, high, low)
    before_up = np.concatenate(([r0], up[:-1]))
    before_down = np.concatenate(([r0], down[:-1]))
    new = (up - before_up) + (before_down - down)
    mass = np.where((doi < 0) & (new > 0), -doi * close, 0.0)
    density = np.divide(mass, new, out=np.zeros_like(mass), where=new > 0)
    rows = np.concatenate((rows_down, rows_up))
    return _on_grid(grid, rows, density[np.concatenate((bar_down, bar_up))])


@dataclass
class Realised:
    """Recorded liquidations of one market (MODEL.md section 12) and the spans [start, end) in ms the
    recorder was connected. side is +1 for a liquidated long, -1 for a liquidated short."""
    time_ms: np.ndarray
    side: np.ndarray
    price: np.ndarray
    notional: np.ndarray
    spans: np.ndarray  # (m, 2), sorted, non-overlapping

    def covers(self, start_ms: int, end_ms: int) -> bool:
        """Full coverage: the recorder was connected through all of [start_ms, end_ms)."""
        at = start_ms
        for a, b in self.spans:
            if a > at:
                break
            at = max(at, int(b))
            if at >= end_ms:
                return True
        return False

    def between(self, start_ms: int, end_ms: int) -> np.ndarray:
        """Indices of the events in [start_ms, end_ms)."""
        return np.flatnonzero((self.time_ms >= start_ms) & (self.time_ms < end_ms))


def realised(grid: Grid, price: float, high: np.ndarray, low: np.ndarray, events: Realised,
             index: np.ndarray) -> Outcome:
    """Realised liquidations of the horizon per newly traded row: liquidated shorts above the price and
    liquidated longs below it, the sides the predicted heat speaks for (the events `index` selects)."""
    (rows_up, _), (rows_down, _), _, _, r0 = traded_rows(grid, price, high, low)
    rows = np.concatenate((rows_down, rows_up))
    per_row = dict.fromkeys(rows.tolist(), 0.0)
    event_rows = grid.row(events.price[index]) if len(index) else np.empty(0, np.int64)
    for r, side, amount in zip(event_rows.tolist(), events.side[index].tolist(), events.notional[index].tolist()):
        if r in per_row and ((r > r0 and side < 0) or (r < r0 and side > 0)):
            per_row[r] += amount
    return _on_grid(grid, rows, np.array([per_row[r] for r in rows.tolist()]))


def load_realised(store, market: str) -> Realised | None:
    """The recorded liquidations of a market in a store, or None when the store has none.

    The bar store does not record liquidations yet (issue 13 adds the recorder); until it does, every
    horizon falls back to the proxy. This is the one place the recorded events will be read from.
    """
    return None
