"""Where timeframes agree (MODEL.md section 14): price intervals where top zones of several lookbacks
of one market overlap, read at one current price."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .zones import Zone, ZoneReport


@dataclass(frozen=True)
class Level:
    """A maximal interval on one side covered by top zones of the same lookbacks (at least two)."""
    side: str               # "short" (above the price) or "long" (below)
    price_low: float
    price_high: float
    lookbacks: tuple[str, ...]
    score: int              # how many lookbacks agree
    notional: float         # the sum of their zones' notional
    zones: tuple[Zone, ...]


def confluence(reports: Mapping[str, ZoneReport], min_score: int = 2) -> list[Level]:
    """The confluence levels of several lookbacks' reports (same market, same price), sorted by score,
    then notional. Within a level the set of agreeing zones is the same throughout; where a third
    lookback's zone begins inside an overlap of two, that part is a level of its own."""
    if isinstance(min_score, bool) or not isinstance(min_score, int) or min_score < 2:
        raise ValueError(f"min_score must be an integer >= 2, got {min_score!r}")
    levels = []
    for side, pick in (("short", lambda r: r.above), ("long", lambda r: r.below)):
        zones = [(lb, z) for lb, report in reports.items() for z in pick(report)]
        points = sorted({p for _, z in zones for p in (z.price_low, z.price_high)})
        current, start = (), None
        for lo, hi in zip(points, points[1:]):
            covering = tuple((lb, z) for lb, z in zones if z.price_low <= lo and hi <= z.price_high)
            if covering != current:
                if len(current) >= min_score:
                    levels.append(_level(side, start, lo, current))
                current, start = covering, lo
        if len(current) >= min_score:
            levels.append(_level(side, start, points[-1], current))
    return sorted(levels, key=lambda v: (-v.score, -v.notional))


def _level(side: str, low: float, high: float, covering: tuple) -> Level:
    return Level(side=side, price_low=low, price_high=high, lookbacks=tuple(lb for lb, _ in covering),
                 score=len({lb for lb, _ in covering}), notional=sum(z.notional for _, z in covering),
                 zones=tuple(z for _, z in covering))
