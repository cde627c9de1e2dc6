"""The scores of MODEL.md section 15, as pure functions on arrays: rank correlation, cosine, the
moving-block bootstrap and the magnet test. No model, no data: everything here can be checked by hand.
"""
from __future__ import annotations

import math

import numpy as np

LEVEL = 0.95


def ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of x, ties sharing their average rank (what Spearman's rho needs)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    first = np.concatenate(([True], sorted_x[1:] != sorted_x[:-1]))
    starts = np.flatnonzero(first)
    stops = np.append(starts[1:], len(x))
    out = np.empty(len(x))
    out[order] = np.repeat((starts + stops + 1) / 2.0, stops - starts)
    return out


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; NaN when either series is constant (it is then undefined)."""
    dx = np.asarray(x, dtype=np.float64) - np.mean(x)
    dy = np.asarray(y, dtype=np.float64) - np.mean(y)
    denom = math.sqrt(float(dx @ dx) * float(dy @ dy))
    return float(dx @ dy / denom) if denom > 0 else math.nan


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (average ranks for ties); NaN when either series is constant."""
    return pearson(ranks(x), ranks(y))


def cosine(x: np.ndarray, y: np.ndarray) -> float:
    """Cosine similarity; NaN when either vector is all zeros."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    denom = math.sqrt(float(x @ x) * float(y @ y))
    return float(x @ y / denom) if denom > 0 else math.nan


def scorable(truth: np.ndarray) -> bool:
    """An evaluation time is scored only if what happened varies over at least two rows."""
    truth = np.asarray(truth)
    return len(truth) >= 2 and bool(np.ptp(truth) > 0)


def score(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(Spearman, cosine) of a predictor against what happened, on the rows being scored.

    What happened must be scorable. A predictor that is constant (Spearman undefined) or all zeros
    (cosine undefined) carries no information about where things happen, so it scores 0: leaving
    those times out would flatter a model that predicts nothing where the price went.
    """
    if not scorable(truth):
        raise ValueError("truth: what happened must vary over at least two rows to be scored")
    rho, cos = spearman(predicted, truth), cosine(predicted, truth)
    return (0.0 if math.isnan(rho) else rho), (0.0 if math.isnan(cos) else cos)


class BlockBootstrap:
    """Moving-block bootstrap over a time-ordered series of n values (Kuensch 1989).

    Each resample is ceil(n / block) blocks of consecutive values with uniformly drawn starts,
    cut to n values. All series summarised by one instance share the same resamples, so the
    interval of a difference is the interval of the paired per-time differences. NaN values
    (times not scored) stay in their place in the blocks and are left out of each mean.
    """

    def __init__(self, n: int, block: int, resamples: int = 2000, seed: int = 15):
        if n < 1 or block < 1 or resamples < 1:
            raise ValueError(f"bootstrap: n, block and resamples must be >= 1, got {n}, {block}, {resamples}")
        self.n, self.block, self.resamples = n, min(block, n), resamples
        count = -(-n // self.block)
        rng = np.random.default_rng(seed)
        self.starts = rng.integers(0, n - self.block + 1, size=(resamples, count))
        self.lengths = np.full(count, self.block)
        self.lengths[-1] = n - self.block * (count - 1)

    def means(self, series: np.ndarray) -> np.ndarray:
        """The mean of each resample (NaN where a resample holds no value)."""
        x = np.asarray(series, dtype=np.float64)
        if len(x) != self.n:
            raise ValueError(f"bootstrap: series has {len(x)} values, expected {self.n}")
        valid = ~np.isnan(x)
        sums = np.concatenate(([0.0], np.cumsum(np.where(valid, x, 0.0))))
        counts = np.concatenate(([0], np.cumsum(valid)))
        stops = self.starts + self.lengths
        total = (sums[stops] - sums[self.starts]).sum(axis=1)
        n = (counts[stops] - counts[self.starts]).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, total / np.maximum(n, 1), np.nan)

    def interval(self, series: np.ndarray, level: float = LEVEL) -> dict:
        """Mean of the series, its percentile interval at `level`, and the number of values."""
        x = np.asarray(series, dtype=np.float64)
        n = int(np.sum(~np.isnan(x)))
        if n == 0:
            return {"mean": None, "low": None, "high": None, "n": 0}
        means = self.means(x)
        means = means[~np.isnan(means)]
        tail = 100 * (1 - level) / 2
        low, high = np.percentile(means, [tail, 100 - tail])
        return {"mean": float(np.nanmean(x)), "low": float(low), "high": float(high), "n": n}


def magnet_outcome(high: np.ndarray, low: np.ndarray, price: float, magnet: float) -> float:
    """Did the path touch the magnet's peak before the mirror price (same distance on the other side)?

    `high`, `low` are the horizon's bars in order. 1 when the magnet is touched first, 0 when the
    mirror is, 0.5 when one bar touches both (order inside a bar is unknown), NaN when neither is
    touched or the magnet sits at the price.
    """
    if not (math.isfinite(magnet) and magnet != price):
        return math.nan
    mirror = 2 * price - magnet
    high, low = np.asarray(high), np.asarray(low)
    if magnet > price:
        hit_magnet, hit_mirror = high >= magnet, low <= mirror
    else:
        hit_magnet, hit_mirror = low <= magnet, high >= mirror
    first_magnet = int(np.argmax(hit_magnet)) if hit_magnet.any() else len(high)
    first_mirror = int(np.argmax(hit_mirror)) if hit_mirror.any() else len(high)
    if first_magnet == first_mirror:
        return math.nan if first_magnet == len(high) else 0.5
    return 1.0 if first_magnet < first_mirror else 0.0


def verdict(interval: dict, null: float = 0.0) -> str:
    """'above' or 'below' when the interval excludes `null`, else 'no difference shown'."""
    if interval["mean"] is None:
        return "not scored"
    if interval["low"] > null:
        return "above"
    if interval["high"] < null:
        return "below"
    return "no difference shown"
