"""What a trader reads off the newest column (MODEL.md section 9): zones, skew, magnet, intensity.

Works on plain arrays (one column of long and short heat per row, the row edges, the price) so
the service and the pictures can use it on any column; `zones` is the face over a Heatmap.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

SKEW_LABEL_AT = 0.15


@dataclass(frozen=True)
class Zone:
    """A maximal run of adjacent kept rows on one side: shorts above the price, longs below."""
    side: str  # "short" (above: squeeze zone) or "long" (below: flush zone)
    price_low: float
    price_high: float
    peak_price: float
    notional: float
    intensity: float
    distance_pct: float
    proximity: float


@dataclass
class ZoneReport:
    price: float
    above: list[Zone]
    below: list[Zone]
    total_above: float
    total_below: float
    skew: float
    skew_label: str
    magnet: Zone | None
    v_max: float
    cumulative_long: np.ndarray = field(repr=False)   # per row: long heat from the price down to the row
    cumulative_short: np.ndarray = field(repr=False)  # per row: short heat from the price up to the row


def row_centres(price_edges: np.ndarray) -> np.ndarray:
    """Each row's geometric centre, sqrt(lo * hi) computed as lo * sqrt(hi / lo) so it cannot overflow."""
    return price_edges[:-1] * np.sqrt(price_edges[1:] / price_edges[:-1])


def proximity_weight(distance_pct, d0: float):
    """1 / (1 + |d| / d0): how much a level's distance from the price discounts it."""
    return 1.0 / (1.0 + np.abs(distance_pct) / d0)


def check_options(threshold: float, top: int, proximity_pct: float, window_pct: float) -> None:
    if not (isinstance(threshold, (int, float)) and 0 <= threshold < 1):
        raise ValueError(f"threshold must be in [0, 1), got {threshold!r}")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 0:
        raise ValueError(f"top must be a non-negative integer, got {top!r}")
    if not (isinstance(proximity_pct, (int, float)) and math.isfinite(proximity_pct) and proximity_pct > 0):
        raise ValueError(f"proximity_pct must be finite and > 0, got {proximity_pct!r}")
    if not (isinstance(window_pct, (int, float)) and math.isfinite(window_pct) and window_pct > 0):
        raise ValueError(f"window_pct must be finite and > 0, got {window_pct!r}")


def _runs(heat: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each maximal run of kept rows: its start and stop rows [start, stop), its notional, and its peak
    row (the first of its hottest), all at once."""
    edges = np.diff(np.concatenate(([0], kept.astype(np.int8), [0])))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
    if not len(starts):
        return starts, stops, np.empty(0), starts
    rows = np.flatnonzero(kept)
    values = heat[rows]
    first = np.concatenate(([0], np.cumsum(stops - starts)[:-1]))   # where each run begins in `rows`
    run = np.repeat(np.arange(len(starts)), stops - starts)
    hottest_first = np.lexsort((-values, run))                       # by run, hottest first, stable
    return starts, stops, np.add.reduceat(values, first), rows[hottest_first[first]]


def column_zones(long_heat: np.ndarray, short_heat: np.ndarray, price_edges: np.ndarray, price: float, *,
                 threshold: float = 0.2, top: int = 5, proximity_pct: float = 2.0,
                 window_pct: float = 10.0) -> ZoneReport:
    """The zone report of one column of heat at the current price."""
    check_options(threshold, top, proximity_pct, window_pct)
    if not (math.isfinite(price) and price > 0):
        raise ValueError(f"price must be finite and > 0, got {price!r}")
    long_heat = np.asarray(long_heat, dtype=np.float64)
    short_heat = np.asarray(short_heat, dtype=np.float64)
    centres = row_centres(price_edges)
    above, below = centres > price, centres < price
    v_max = float(max(long_heat.max(initial=0.0), short_heat.max(initial=0.0)))
    distance = 100.0 * (centres - price) / price
    weight = proximity_weight(distance, proximity_pct)
    sides = {}
    kept_total = {"short": 0.0, "long": 0.0}
    near = {"short": 0.0, "long": 0.0}
    for side, heat, mask in (("short", short_heat, above), ("long", long_heat, below)):
        kept = mask & (heat > 0) & (heat >= threshold * v_max)
        kept_total[side] = float(heat[kept].sum())
        inside = kept & (np.abs(distance) <= window_pct)
        near[side] = float((heat[inside] * weight[inside]).sum())
        sides[side] = (heat, *_runs(heat, kept))

    def zone(side: str, i: int) -> Zone:
        heat, starts, stops, notional, peaks = sides[side]
        peak = int(peaks[i])
        return Zone(side=side, price_low=float(price_edges[starts[i]]), price_high=float(price_edges[stops[i]]),
                    peak_price=float(centres[peak]), notional=float(notional[i]), intensity=float(heat[peak] / v_max),
                    distance_pct=float(distance[peak]), proximity=float(weight[peak]))

    def by_notional(side: str) -> list[Zone]:   # ties keep the order of price, as a stable sort does
        return [zone(side, int(i)) for i in np.argsort(-sides[side][3], kind="stable")[:top]]

    up, down = near["short"], near["long"]
    skew = (up - down) / (up + down) if up + down > 0 else 0.0
    label = "UP" if skew > SKEW_LABEL_AT else "DOWN" if skew < -SKEW_LABEL_AT else "BALANCED"
    pull = np.concatenate([sides[s][3] * weight[sides[s][4]] for s in ("short", "long")])
    magnet = None
    if len(pull):   # the first zone (shorts, then longs, by price) of the largest notional x proximity
        i = int(np.argmax(pull))
        n_short = len(sides["short"][3])
        magnet = zone("short", i) if i < n_short else zone("long", i - n_short)
    cum_short = np.where(above, np.cumsum(np.where(above, short_heat, 0.0)), 0.0)
    cum_long = np.where(below, np.cumsum(np.where(below, long_heat, 0.0)[::-1])[::-1], 0.0)
    return ZoneReport(price=float(price), above=by_notional("short"), below=by_notional("long"),
                      total_above=kept_total["short"], total_below=kept_total["long"], skew=float(skew),
                      skew_label=label, magnet=magnet, v_max=v_max, cumulative_long=cum_long,
                      cumulative_short=cum_short)


def zones(heatmap, price: float | None = None, *, threshold: float = 0.2, top: int = 5,
          proximity_pct: float = 2.0, window_pct: float = 10.0) -> ZoneReport:
    """MODEL.md section 9 on the newest column of a Heatmap, at `price` (default: the last close)."""
    price = heatmap.price if price is None else float(price)
    return column_zones(heatmap.long[:, -1], heatmap.short[:, -1], heatmap.price_edges, price,
                        threshold=threshold, top=top, proximity_pct=proximity_pct, window_pct=window_pct)


def intensity(heatmap, boost: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Display intensity (heat / v_max)^boost in [0, 1] for the long and short grids.

    v_max is the largest cell of the whole view, both sides, so columns compare with each other.
    Boost changes how heat looks, never the notional figures or the zones.
    """
    if not (isinstance(boost, (int, float)) and 0 < boost <= 1):
        raise ValueError(f"boost must be in (0, 1], got {boost!r}")
    v_max = max(float(heatmap.long.max(initial=0.0)), float(heatmap.short.max(initial=0.0)))
    if v_max <= 0:
        return np.zeros_like(heatmap.long), np.zeros_like(heatmap.short)
    return (heatmap.long / v_max) ** boost, (heatmap.short / v_max) ** boost
