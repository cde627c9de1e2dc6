"""Where timeframes agree (MODEL.md section 14): price intervals where top zones of several lookbacks
of one market overlap, read at one current price."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .zones import Zone, ZoneReport


@dataclass(frozen=True)
class Level:
    """A maximal interval on one side where top zones of at least two lookbacks overlap."""
    side: str               # "short" (above the price) or "long" (below)
    price_low: float
    price_high: float
    lookbacks: tuple[str, ...]
    score: int              # how many lookbacks agree
    notional: float         # the sum of their zones' notional
    zones: tuple[Zone, ...]


def confluence(reports: Mapping[str, ZoneReport], min_score: int = 2) -> list[Level]:
    """The confluence levels of several lookbacks' reports (same market, same price), sorted by score,
    then notional. A level is a maximal interval where at least `min_score` lookbacks' top zones cover
    every price; its lookbacks are every one whose zone meets it, its score their count, its notional
    the sum of those zones' notional."""
    if isinstance(min_score, bool) or not isinstance(min_score, int) or min_score < 2:
        raise ValueError(f"min_score must be an integer >= 2, got {min_score!r}")
    levels = []
    for side, pick in (("short", lambda r: r.above), ("long", lambda r: r.below)):
        zones = [(lb, z) for lb, report in reports.items() for z in pick(report)]
        points = sorted({p for _, z in zones for p in (z.price_low, z.price_high)})
        run, start = [], None    # the zones of the level being built, and where it starts
        for lo, hi in zip(points, points[1:]):
            covering = [(lb, z) for lb, z in zones if z.price_low <= lo and hi <= z.price_high]
            if len({lb for lb, _ in covering}) >= min_score:
                if start is None:
                    start, run = lo, []
                run += [c for c in covering if c not in run]
                end = hi
            elif start is not None:
                levels.append(_level(side, start, end, run, reports))
                start = None
        if start is not None:
            levels.append(_level(side, start, end, run, reports))
    return sorted(levels, key=lambda v: (-v.score, -v.notional))


def _level(side: str, low: float, high: float, covering: list, reports: Mapping[str, ZoneReport]) -> Level:
    lookbacks = tuple(lb for lb in reports if any(lb == c for c, _ in covering))
    return Level(side=side, price_low=low, price_high=high, lookbacks=lookbacks, score=len(lookbacks),
                 notional=sum(z.notional for _, z in covering), zones=tuple(z for _, z in covering))
