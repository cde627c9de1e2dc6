"""Parameter sensitivity out of sample: a family of tier mixes declared before any result, chosen on
the first half of the evaluation times and judged on the second half only.

The tier mix (MODEL.md section 3: leverages, weights, half-lives) is the model's largest assumption.
Each alternative changes one of the three from the contract's defaults, so a difference can be read.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model.engine import DEFAULT_TIERS, ModelParams, Tier

DEFAULT = "default"
CRITERION = ("proxy", "spearman")  # what the choice on the first half maximises: mean Spearman vs the proxy


@dataclass(frozen=True)
class Mix:
    """A named tier mix and, in words, how it differs from the defaults."""
    name: str
    change: str
    tiers: tuple[Tier, ...]

    @property
    def params(self) -> ModelParams:
        return ModelParams(tiers=self.tiers)


def _tiers(leverages, weights, half_lives) -> tuple[Tier, ...]:
    return tuple(Tier(lev, w, 0.004, h) for lev, w, h in zip(leverages, weights, half_lives))


_LEV = [t.leverage for t in DEFAULT_TIERS]
_W = [t.weight for t in DEFAULT_TIERS]
_H = [t.half_life_days for t in DEFAULT_TIERS]

# Declared before any backtest was run (it is part of the code, and the report prints it first).
MIXES = (
    Mix(DEFAULT, "the contract's table (MODEL.md section 3)", DEFAULT_TIERS),
    Mix("low-leverage", "leverages 3, 5, 10, 20, 50 instead of 5, 10, 25, 50, 100",
        _tiers([3, 5, 10, 20, 50], _W, _H)),
    Mix("high-leverage-weight", "weights 0.05, 0.15, 0.25, 0.30, 0.25 (more on 50x and 100x)",
        _tiers(_LEV, [0.05, 0.15, 0.25, 0.30, 0.25], _H)),
    Mix("equal-weights", "weights 0.2 on every tier", _tiers(_LEV, [0.2] * 5, _H)),
    Mix("fast-decay", "half-lives halved: 15, 7, 2.5, 1, 0.5 days", _tiers(_LEV, _W, [h / 2 for h in _H])),
    Mix("no-decay", "no decay: every half-life infinite", _tiers(_LEV, _W, [math.inf] * 5)),
)


def halves(times: np.ndarray, horizon_ms: int, every_ms: int) -> tuple[np.ndarray, np.ndarray]:
    """Masks of the first and second half of evaluation times, with a gap of one horizon between them
    so that no bar is what happened for both: first-half horizons end before the second half starts."""
    times = np.asarray(times)
    a, b = int(times[0]), int(times[-1])
    split = a + (b - a + horizon_ms) // 2 // every_ms * every_ms
    return times + horizon_ms <= split, times >= split


def choose(first_half_means: dict[str, float]) -> str:
    """The mix with the highest first-half mean of the criterion (ties: the earlier declared)."""
    best = DEFAULT
    for mix in MIXES:
        value = first_half_means.get(mix.name)
        if value is not None and value > first_half_means.get(best, -math.inf):
            best = mix.name
    return best
