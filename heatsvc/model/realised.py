"""Realised liquidations per column of a view (MODEL.md section 12): what the exchanges reported,
beside the model's estimated sweeps, with the share of each column the recorder actually covered.

Time the recorder was not connected is missing, never zero: a column it never covered has NaN
notional and coverage 0; a partly covered column has the notional it saw and its coverage.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


SIDES = ("long", "short")


@dataclass(frozen=True)
class Liquidation:
    """One observed liquidation (MODEL.md section 12): the side is the liquidated position's."""
    market: str        # "exchange:SYMBOL"
    time_ms: int       # the exchange's event time
    side: str          # "long" or "short"
    price: float       # average fill price when given, else the order's price (quote currency)
    quantity: float    # base units

    def __post_init__(self):
        if self.side not in SIDES:
            raise ValueError(f"{self.market}: liquidation side must be long or short, got {self.side!r}")
        if not (self.price > 0 and self.quantity > 0) or self.price == float("inf") or self.quantity == float("inf"):
            raise ValueError(f"{self.market}: liquidation price and quantity must be finite and > 0, "
                             f"got {self.price!r} x {self.quantity!r}")

    @property
    def notional(self) -> float:
        return self.price * self.quantity


@dataclass
class RealisedSeries:
    long: np.ndarray       # notional of liquidated longs per column, quote currency (NaN: not covered)
    short: np.ndarray      # notional of liquidated shorts per column
    coverage: np.ndarray   # fraction of each column's span the recorder was connected, in [0, 1]


def merge_spans(spans) -> np.ndarray:
    """Connected spans [start_ms, end_ms) as a sorted (n, 2) array of disjoint intervals."""
    spans = np.asarray(spans, dtype=np.int64).reshape(-1, 2)
    if (spans[:, 1] < spans[:, 0]).any():
        raise ValueError("coverage spans must have end_ms >= start_ms")
    spans = spans[np.argsort(spans[:, 0], kind="stable")]
    merged: list[list[int]] = []
    for start, end in spans.tolist():
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        elif end > start:
            merged.append([start, end])
    return np.array(merged, dtype=np.int64).reshape(-1, 2)


def realised_columns(column_times: np.ndarray, column_ms: int, event_times: np.ndarray, event_long: np.ndarray,
                     event_notional: np.ndarray, spans) -> RealisedSeries:
    """Sum the events (times in ms, True where the liquidated position was long, notional) into the
    columns [t, t + column_ms) of a view, and the recorder's connected `spans` into each column's coverage."""
    column_times = np.asarray(column_times, dtype=np.int64)
    times = np.asarray(event_times, dtype=np.int64)
    is_long = np.asarray(event_long, dtype=bool)
    notional = np.asarray(event_notional, dtype=np.float64)
    if not (len(times) == len(is_long) == len(notional)):
        raise ValueError("event_times, event_long and event_notional must have the same length")
    if column_ms <= 0:
        raise ValueError(f"column_ms must be positive, got {column_ms}")
    n = len(column_times)
    starts, ends = column_times, column_times + column_ms
    col = np.searchsorted(starts, times, side="right") - 1
    inside = (col >= 0) & (times < ends[np.clip(col, 0, max(n - 1, 0))]) if n else np.zeros(len(times), bool)
    long = np.bincount(col[inside & is_long], notional[inside & is_long], minlength=n)[:n].astype(np.float64)
    short = np.bincount(col[inside & ~is_long], notional[inside & ~is_long], minlength=n)[:n].astype(np.float64)
    covered = np.zeros(n)
    for lo, hi in merge_spans(spans).tolist():   # each span adds its overlap with every column
        covered += np.clip(np.minimum(ends, hi) - np.maximum(starts, lo), 0, None)
    coverage = np.minimum(covered / column_ms, 1.0)
    missing = coverage == 0
    long[missing] = np.nan
    short[missing] = np.nan
    return RealisedSeries(long=long, short=short, coverage=coverage)
