"""Zone events (MODEL.md section 13) and confluence (section 14) on hand-made zone reports."""
from __future__ import annotations

import numpy as np
import pytest

from heatsvc.model.confluence import confluence
from heatsvc.model.events import KINDS, NearState, Traded, first_near_state, zone_events
from heatsvc.model.zones import Zone, ZoneReport


def zone(side: str, low: float, high: float, notional: float = 1e6, peak: float | None = None) -> Zone:
    peak = (low + high) / 2 if peak is None else peak
    return Zone(side=side, price_low=low, price_high=high, peak_price=peak, notional=notional, intensity=1.0,
                distance_pct=0.0, proximity=1.0)


def report(price: float, above=(), below=(), magnet=None, label="BALANCED") -> ZoneReport:
    above, below = list(above), list(below)
    magnet = magnet if magnet is not None else max(above + below, key=lambda z: z.notional, default=None)
    return ZoneReport(price=price, above=above, below=below, total_above=0.0, total_below=0.0, skew=0.0,
                      skew_label=label, magnet=magnet, v_max=1.0, cumulative_long=np.zeros(1),
                      cumulative_short=np.zeros(1))


def kinds(events) -> list[str]:
    return [e.kind for e in events]


UP = zone("short", 110, 112)        # a squeeze zone 10 % above 100
DOWN = zone("long", 88, 90, 2e6)    # a flush zone 10 % below 100


def test_an_unchanged_report_has_no_events():
    r = report(100, [UP], [DOWN])
    events, state = zone_events(r, r, Traded(high=101, low=99), first_near_state(r))
    assert events == [] and state.disarmed == []


def test_a_new_zone_is_one_whose_peak_lies_in_no_previous_zone_of_its_side():
    prev = report(100, [UP], [DOWN])
    moved = zone("short", 111, 113)             # overlaps UP, peak 112 inside it: the same zone
    fresh = zone("short", 120, 121, 5e5)        # nowhere before
    other_side = zone("long", 109, 111.5)       # a long zone where a short one was: new on its side
    cur = report(100, [moved, fresh], [DOWN, other_side], magnet=DOWN)
    events, _ = zone_events(prev, cur, None, NearState())
    assert kinds(events) == ["ZONE_NEW", "ZONE_NEW"]
    assert [e.zone for e in events] == [fresh, other_side]


def test_a_previous_zone_is_swept_when_its_peak_trades():
    prev = report(100, [UP], [DOWN])
    cur = report(100, [], [DOWN], magnet=DOWN)
    events, _ = zone_events(prev, cur, Traded(high=110.99, low=99), NearState())
    assert "ZONE_SWEPT" not in kinds(events), "the high stopped short of the peak (111)"
    events, _ = zone_events(prev, cur, Traded(high=111.0, low=99), NearState())
    swept = [e for e in events if e.kind == "ZONE_SWEPT"]
    assert [e.zone for e in swept] == [UP]
    events, _ = zone_events(prev, report(95, [UP]), Traded(high=100, low=89), NearState())
    assert [e.zone for e in events if e.kind == "ZONE_SWEPT"] == [DOWN]
    assert "ZONE_SWEPT" not in kinds(zone_events(prev, cur, None, NearState())[0]), "no bar, no sweep"


def test_price_near_fires_once_and_rearms_only_beyond_twice_the_distance():
    r = lambda price: report(price, [UP], [DOWN])  # noqa: E731
    state = first_near_state(r(100))
    assert state.disarmed == []
    path = [(100, []), (109.0, ["PRICE_NEAR"]), (109.5, []), (108.0, []),   # 0.92 %: fired; 1.9 %: still told
            (107.6, []), (109.2, ["PRICE_NEAR"])]                           # 2.2 %: re-armed, so it fires again
    prev = r(100)
    for price, want in path:
        cur = r(price)
        events, state = zone_events(prev, cur, None, state)
        assert kinds(events) == want, price
        prev = cur
    near = zone_events(r(100), r(109.0), None, NearState())[0][0]
    assert near.zone == UP and near.distance_pct == pytest.approx(100 * (110 - 109) / 109)


def test_price_near_on_both_sides_and_inside_a_zone():
    prev = report(100, [UP], [DOWN])
    cur = report(89.5, [UP], [DOWN])   # inside the flush zone: distance 0
    events, state = zone_events(prev, cur, Traded(high=100, low=89.5), NearState())
    near = [e for e in events if e.kind == "PRICE_NEAR"]
    assert [e.zone for e in near] == [DOWN] and near[0].distance_pct == 0
    assert state.disarmed == [("long", 88, 90)]


def test_a_first_report_does_not_alert_for_zones_already_near():
    r = report(109.5, [UP], [DOWN])
    state = first_near_state(r)
    assert state.disarmed == [("short", 110, 112)]
    assert zone_events(r, r, None, state)[0] == []


def test_magnet_changes_when_its_peak_leaves_the_previous_magnet_zone_or_its_side_changes():
    big_up = zone("short", 111, 113, 3e6, peak=112.5)
    prev = report(100, [UP], [DOWN], magnet=UP)
    same = report(100, [big_up], [DOWN], magnet=big_up)           # peak 112.5 outside [110, 112]
    events, _ = zone_events(prev, same, None, NearState())
    changed = [e for e in events if e.kind == "MAGNET_CHANGED"]
    assert len(changed) == 1 and changed[0].zone == big_up and changed[0].previous == UP
    inside = zone("short", 109, 111.5, 3e6, peak=111.5)
    assert "MAGNET_CHANGED" not in kinds(zone_events(prev, report(100, [inside], [DOWN], magnet=inside),
                                                     None, NearState())[0])
    flipped = zone("long", 110, 112, peak=111)                     # same prices, other side
    assert "MAGNET_CHANGED" in kinds(zone_events(prev, report(100, [], [flipped], magnet=flipped),
                                                 None, NearState())[0])
    gone = zone_events(prev, report(100), None, NearState())[0]
    assert [e for e in gone if e.kind == "MAGNET_CHANGED"][0].zone is None


def test_skew_flip_and_the_order_of_kinds():
    prev = report(100, [UP], [DOWN], label="DOWN")
    fresh = zone("short", 100.5, 101, 9e6)
    cur = report(100.4, [fresh], [DOWN], label="UP")
    events, _ = zone_events(prev, cur, Traded(high=111.2, low=99.9), NearState())
    assert kinds(events) == ["ZONE_NEW", "ZONE_SWEPT", "PRICE_NEAR", "MAGNET_CHANGED", "SKEW_FLIPPED"]
    assert kinds(events) == sorted(kinds(events), key=KINDS.index)
    flip = events[-1]
    assert (flip.previous_skew_label, flip.skew_label) == ("DOWN", "UP")


def test_bad_distance_is_refused():
    r = report(100, [UP])
    with pytest.raises(ValueError, match="near_pct"):
        zone_events(r, r, None, NearState(), near_pct=0)


def test_confluence_levels_are_maximal_overlaps_of_two_or_more_lookbacks():
    reports = {
        "1d": report(100, [zone("short", 105, 110, 1.0)], [zone("long", 90, 95, 4.0)]),
        "7d": report(100, [zone("short", 107, 115, 2.0)], [zone("long", 80, 85, 5.0)]),
        "1M": report(100, [zone("short", 108, 109, 3.0), zone("short", 120, 125, 9.0)], [zone("long", 94, 96, 6.0)]),
    }
    levels = confluence(reports)
    got = [(v.side, v.price_low, v.price_high, v.lookbacks, v.score, v.notional) for v in levels]
    assert got == [
        ("short", 107, 110, ("1d", "7d", "1M"), 3, 6.0),   # two or three agree all along 107-110
        ("long", 94, 95, ("1d", "1M"), 2, 10.0),
    ]
    assert levels[0].zones == (reports["1d"].above[0], reports["7d"].above[0], reports["1M"].above[0])
    assert [v.price_low for v in confluence(reports, min_score=3)] == [108]


def test_confluence_of_disjoint_or_single_lookbacks_is_empty_and_options_are_checked():
    assert confluence({"1d": report(100, [zone("short", 105, 110)])}) == []
    assert confluence({"1d": report(100, [zone("short", 105, 106)]), "7d": report(100, [zone("short", 106, 107)])}) == []
    assert confluence({}) == []
    with pytest.raises(ValueError, match="min_score"):
        confluence({}, min_score=1)
