"""What changed in a view since its previous data version (MODEL.md section 13): zone events.

Pure functions of two zone reports (read with the same threshold and top N) and the price range traded
between them, so a trading system is told what changed instead of diffing zone lists itself. The
PRICE_NEAR hysteresis is the only state: the caller keeps one NearState per view and passes it back.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from .zones import Zone, ZoneReport

KINDS = ("ZONE_NEW", "ZONE_SWEPT", "PRICE_NEAR", "MAGNET_CHANGED", "SKEW_FLIPPED")  # in the order emitted
NEAR_PCT = 1.0


@dataclass(frozen=True)
class Traded:
    """The price range traded after the previous report's data time, up to this report's."""
    high: float
    low: float


@dataclass(frozen=True)
class ZoneEvent:
    """One event. `zone` is the zone concerned (for ZONE_SWEPT, as it was); `previous` the previous
    magnet (MAGNET_CHANGED); labels for SKEW_FLIPPED; the distance to the nearer edge for PRICE_NEAR."""
    kind: str
    zone: Zone | None = None
    previous: Zone | None = None
    skew_label: str = ""
    previous_skew_label: str = ""
    distance_pct: float = math.nan


@dataclass
class NearState:
    """PRICE_NEAR hysteresis of one view: the zones that fired, as (side, low, high), disarmed until the
    price is again beyond twice the distance from them."""
    disarmed: list[tuple[str, float, float]] = field(default_factory=list)


def edge_distance_pct(zone: Zone, price: float) -> float:
    """Distance in % from the price to the zone's nearer edge (0 inside the zone)."""
    return 100.0 * max(0.0, zone.price_low - price, price - zone.price_high) / price


def _top(report: ZoneReport) -> list[Zone]:
    return [*report.above, *report.below]


def _holds(zone: Zone, price: float) -> bool:
    return zone.price_low <= price <= zone.price_high


def _overlaps(zone: Zone, side: str, low: float, high: float) -> bool:
    return zone.side == side and zone.price_low <= high and low <= zone.price_high


def first_near_state(report: ZoneReport, near_pct: float = NEAR_PCT) -> NearState:
    """The state of a view's first report: zones already near the price count as told, so a
    subscriber is not greeted by alerts for what it can read off the snapshot."""
    return NearState([(z.side, z.price_low, z.price_high) for z in _top(report)
                      if edge_distance_pct(z, report.price) <= near_pct])


def zone_events(prev: ZoneReport, cur: ZoneReport, traded: Traded | None, state: NearState,
                near_pct: float = NEAR_PCT) -> tuple[list[ZoneEvent], NearState]:
    """MODEL.md section 13: the events from `prev` to `cur`, and the view's next PRICE_NEAR state.

    `traded` is None when no bar closed between the two reports (nothing can have been swept).
    """
    if not (math.isfinite(near_pct) and near_pct > 0):
        raise ValueError(f"near_pct must be finite and > 0, got {near_pct!r}")
    events = []
    before = _top(prev)
    for z in _top(cur):
        if not any(p.side == z.side and _holds(p, z.peak_price) for p in before):
            events.append(ZoneEvent("ZONE_NEW", zone=z))
    if traded is not None:
        for p in before:
            if (traded.high >= p.peak_price) if p.side == "short" else (traded.low <= p.peak_price):
                events.append(ZoneEvent("ZONE_SWEPT", zone=p))
    disarmed = []
    for side, low, high in state.disarmed:   # a fired zone stays told until the price leaves 2d % of it
        match = next((z for z in _top(cur) if _overlaps(z, side, low, high)), None)
        if match is not None and edge_distance_pct(match, cur.price) <= 2 * near_pct:
            disarmed.append((side, match.price_low, match.price_high))
    for z in _top(cur):
        d = edge_distance_pct(z, cur.price)
        if d <= near_pct and not any(_overlaps(z, *entry) for entry in disarmed):
            events.append(ZoneEvent("PRICE_NEAR", zone=z, distance_pct=d))
            disarmed.append((z.side, z.price_low, z.price_high))
    a, b = prev.magnet, cur.magnet
    if (a is None) != (b is None) or (a is not None and (a.side != b.side or not _holds(a, b.peak_price))):
        events.append(ZoneEvent("MAGNET_CHANGED", zone=b, previous=a))
    if prev.skew_label != cur.skew_label:
        events.append(ZoneEvent("SKEW_FLIPPED", skew_label=cur.skew_label, previous_skew_label=prev.skew_label))
    return events, NearState(disarmed)
