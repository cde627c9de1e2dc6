"""The measured liquidation map: real positions' notional at their real liquidation prices, on the
price rows of a view, beside the model's estimate (MODEL.md section 16).

Pure and without I/O. A position the exchange gives no liquidation price is kept apart (unpriced),
never placed on the grid; open interest unknown means coverage unknown (NaN), never zero.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .positions import PositionSnapshot

SIDES = ("long", "short")


@dataclass
class MeasuredMap:
    """Per side, the notional (quote currency, at the mark) liquidated in each price row."""
    coin: str
    time_ms: int
    price: float                    # mark price of the snapshot (NaN: unknown)
    price_edges: np.ndarray         # rows + 1 ascending prices, row r covers [edges[r], edges[r+1])
    long: np.ndarray                # notional of long positions whose liquidation price is in the row
    short: np.ndarray
    off_range: dict[str, float]     # per side, priced notional outside the rows
    unpriced: dict[str, float]      # per side, notional of positions without a liquidation price
    size: dict[str, float]          # per side, measured size in coins (priced and unpriced)
    leverage_mix: dict[float, tuple[float, float]]   # leverage -> (long notional, short notional)
    open_interest: float            # the exchange's open interest in coins (NaN: unknown)
    accounts_known: int
    accounts_read: int
    positions: int
    oldest_read_ms: int | None

    @property
    def coverage(self) -> dict[str, float]:
        """Per side, measured size over open interest (MODEL.md section 16: open interest is one side)."""
        oi = self.open_interest
        ok = oi > 0 and math.isfinite(oi)
        return {s: self.size[s] / oi if ok else math.nan for s in SIDES}

    @property
    def sides_ratio(self) -> float:
        """(long size + short size) / open interest: about 2 at full coverage if open interest counts
        one side, about 1 if it counts both; how the data settles that question."""
        oi = self.open_interest
        return (self.size["long"] + self.size["short"]) / oi if oi > 0 and math.isfinite(oi) else math.nan


def measured_map(snapshot: PositionSnapshot, price_edges) -> MeasuredMap:
    """Place every priced position of the snapshot in the row holding its liquidation price."""
    edges = np.asarray(price_edges, dtype=np.float64)
    if edges.ndim != 1 or len(edges) < 2 or not np.all(np.diff(edges) > 0) or not edges[0] > 0:
        raise ValueError("price_edges must be at least two positive prices, strictly ascending")
    rows = len(edges) - 1
    grid = {s: np.zeros(rows) for s in SIDES}
    off = dict.fromkeys(SIDES, 0.0)
    unpriced = dict.fromkeys(SIDES, 0.0)
    size = dict.fromkeys(SIDES, 0.0)
    mix: dict[float, list[float]] = {}
    for p in snapshot.positions:
        side = p.side
        size[side] += abs(p.size)
        mix.setdefault(float(p.leverage), [0.0, 0.0])[SIDES.index(side)] += p.position_value
        if p.liquidation_px is None:
            unpriced[side] += p.position_value
            continue
        r = int(np.searchsorted(edges, p.liquidation_px, side="right")) - 1
        if 0 <= r < rows:
            grid[side][r] += p.position_value
        else:
            off[side] += p.position_value
    price = snapshot.mark_px if snapshot.mark_px is not None else math.nan
    oi = snapshot.open_interest if snapshot.open_interest is not None else math.nan
    return MeasuredMap(snapshot.coin, snapshot.time_ms, float(price), edges, grid["long"], grid["short"], off,
                       unpriced, size, {k: tuple(v) for k, v in sorted(mix.items())}, float(oi),
                       snapshot.accounts_known, snapshot.accounts_read, len(snapshot.positions),
                       snapshot.oldest_read_ms)

