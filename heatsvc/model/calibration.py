"""The estimate held against the measurement (MODEL.md section 16): shape similarity, the notional
above and below the price, zone overlap, and the model's tier weights against the measured
leverage mix, with tier weights fitted to that mix.

Pure and without I/O. Both books are read on one grid: the view's price rows, the estimate's newest
column (the book as it stands) against the measured map of the same rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .engine import ModelParams, Tier
from .measured import SIDES, MeasuredMap
from .zones import column_zones


@dataclass
class Comparison:
    cosine: dict[str, float]                # per side, and "both" (the two sides' rows stacked); NaN if a book is empty
    estimated: dict[str, float]             # "above"/"below": short heat above and long heat below the price
    measured: dict[str, float]
    zone_overlap: dict[str, float]          # per side, Jaccard of the rows the top zones cover (NaN: no zones in either)
    captured: dict[str, float]              # per side, share of the measured notional inside the estimate's zones
    tiers: list[tuple[float, float, float]]  # (leverage, model weight, measured weight) per tier
    unmatched: float                        # measured notional at leverage below 1 (NaN weights if all of it)
    fitted: ModelParams | None              # the model's tiers with the measured weights (None: nothing to fit)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine similarity of two non-negative vectors; NaN when either is all zero."""
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    return float(a @ b) / (na * nb) if na > 0 and nb > 0 else math.nan


def zone_rows(report, price_edges: np.ndarray, side: str) -> set[int]:
    """The rows covered by a zone report's zones on one side."""
    rows: set[int] = set()
    for z in (report.above if side == "short" else report.below):
        start = int(np.searchsorted(price_edges, z.price_low, side="left"))
        stop = int(np.searchsorted(price_edges, z.price_high, side="left"))
        rows.update(range(start, stop))
    return rows


def tier_mix(mix: dict[float, tuple[float, float]], tiers) -> tuple[np.ndarray, float]:
    """Measured notional per tier, each leverage to the tier nearest in log leverage; and the notional
    at leverage below 1 (a position that cannot be liquidated by price alone is no tier's)."""
    logs = np.log([t.leverage for t in tiers])
    out = np.zeros(len(tiers))
    unmatched = 0.0
    for leverage, (lng, sht) in mix.items():
        if leverage < 1:
            unmatched += lng + sht
            continue
        out[int(np.argmin(np.abs(logs - math.log(leverage))))] += lng + sht
    return out, unmatched


def fit_tiers(params: ModelParams, mix: dict[float, tuple[float, float]]) -> ModelParams:
    """The model's tiers (leverage, margin, half-life kept) weighted by the measured mix."""
    notional, _ = tier_mix(mix, params.tiers)
    total = notional.sum()
    if not total > 0:
        raise ValueError("no measured notional at leverage >= 1 to fit tier weights to")
    weights = notional / total
    weights[-1] = 1.0 - weights[:-1].sum()   # the sum is exactly 1 as ModelParams asks
    tiers = tuple(Tier(t.leverage, max(float(w), 0.0), t.maintenance_margin, t.half_life_days)
                  for t, w in zip(params.tiers, weights))
    return replace(params, tiers=tiers)


def compare(long_heat, short_heat, measured: MeasuredMap, price: float, params: ModelParams, *,
            threshold: float = 0.2, top: int = 5) -> Comparison:
    """The estimated book (rows of one column on measured.price_edges) against the measured map."""
    est = {"long": np.asarray(long_heat, dtype=np.float64), "short": np.asarray(short_heat, dtype=np.float64)}
    edges = measured.price_edges
    if any(len(v) != len(edges) - 1 for v in est.values()):
        raise ValueError(f"the estimate has {len(est['long'])} rows, the measured map {len(edges) - 1}")
    meas = {"long": measured.long, "short": measured.short}
    centres = np.sqrt(edges[:-1] * edges[1:])
    above, below = centres > price, centres < price

    def split(book):
        return {"above": float(book["short"][above].sum()), "below": float(book["long"][below].sum())}

    cos = {s: cosine(est[s], meas[s]) for s in SIDES}
    cos["both"] = cosine(np.concatenate([est["long"], est["short"]]), np.concatenate([meas["long"], meas["short"]]))
    zones_est = column_zones(est["long"], est["short"], edges, price, threshold=threshold, top=top)
    zones_meas = column_zones(meas["long"], meas["short"], edges, price, threshold=threshold, top=top)
    overlap, captured = {}, {}
    for s in SIDES:
        e, m = zone_rows(zones_est, edges, s), zone_rows(zones_meas, edges, s)
        overlap[s] = len(e & m) / len(e | m) if e | m else math.nan
        total = float(meas[s].sum())
        captured[s] = float(meas[s][sorted(e)].sum()) / total if total > 0 else math.nan
    notional, unmatched = tier_mix(measured.leverage_mix, params.tiers)
    total = notional.sum()
    weights = notional / total if total > 0 else np.full(len(notional), math.nan)
    tiers = [(t.leverage, t.weight, float(w)) for t, w in zip(params.tiers, weights)]
    fitted = fit_tiers(params, measured.leverage_mix) if total > 0 else None
    return Comparison(cos, split(est), split(meas), overlap, captured, tiers, unmatched, fitted)
