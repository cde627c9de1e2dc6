"""Engine results as heatsvc.v1 messages: grids as little-endian float32 bytes, times as Timestamps."""
from __future__ import annotations

import numpy as np
from google.protobuf import duration_pb2, timestamp_pb2

from ..model import zones as zonelib
from ..model.confluence import Level
from ..model.engine import Heatmap, ModelParams
from ..model.events import KINDS, ZoneEvent
from ..v1 import heatmap_service_pb2 as pb
from .views import GridOpts, ViewKey, ZoneOpts

SIDES = {"short": pb.ZONE_SIDE_SHORT, "long": pb.ZONE_SIDE_LONG}
SKEW = {"UP": pb.SKEW_LABEL_UP, "DOWN": pb.SKEW_LABEL_DOWN, "BALANCED": pb.SKEW_LABEL_BALANCED}
EVENT_KINDS = {name: getattr(pb, f"ZONE_EVENT_KIND_{name}") for name in KINDS}
STATUS = {"loading": pb.MARKET_STATUS_LOADING, "ok": pb.MARKET_STATUS_OK,
          "degraded": pb.MARKET_STATUS_DEGRADED, "failing": pb.MARKET_STATUS_FAILING}


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromMilliseconds(int(ms))
    return ts


def grid(values: np.ndarray) -> pb.Grid:
    """rows x columns as row-major little-endian float32."""
    rows, columns = values.shape
    return pb.Grid(rows=rows, columns=columns, data=np.ascontiguousarray(values, dtype="<f4").tobytes())


def parameters(params: ModelParams) -> pb.ModelParameters:
    step = duration_pb2.Duration()
    step.FromMilliseconds(params.step_ms)
    return pb.ModelParameters(
        tiers=[pb.Tier(leverage=t.leverage, weight=t.weight, maintenance_margin=t.maintenance_margin,
                       half_life_days=t.half_life_days) for t in params.tiers],
        step=step, range_margin=params.mu)


def heatmap(key: ViewKey, hm: Heatmap, opts: GridOpts) -> pb.Heatmap:
    """The whole view as a message; candles, intensity and tiers only when asked."""
    v_max = max(float(hm.long.max(initial=0.0)), float(hm.short.max(initial=0.0)))
    msg = pb.Heatmap(
        market=key.market, markets=hm.markets, lookback=key.lookback, long_notional=grid(hm.long),
        short_notional=grid(hm.short),
        price_edges=hm.price_edges.tolist(), column_times=[timestamp(t) for t in hm.column_times.tolist()],
        bars_per_column=hm.bars_per_column, swept_long=hm.swept_long.tolist(), swept_short=hm.swept_short.tolist(),
        off_range_long=hm.off_range_long.tolist(), off_range_short=hm.off_range_short.tolist(),
        current_price=hm.price, data_time=timestamp(hm.time_end_ms), parameters=parameters(hm.params), v_max=v_max)
    if opts.candles:
        c = hm.candles
        msg.candles.CopyFrom(pb.Candles(open=c[:, 0].tolist(), high=c[:, 1].tolist(), low=c[:, 2].tolist(),
                                        close=c[:, 3].tolist()))
    if opts.intensity:
        long_i, short_i = zonelib.intensity(hm, opts.boost)
        msg.long_intensity.CopyFrom(grid(long_i))
        msg.short_intensity.CopyFrom(grid(short_i))
    if opts.tiers and hm.per_tier_long is not None:
        for j in range(hm.per_tier_long.shape[0]):
            msg.tiers.add(tier=j, long_notional=grid(hm.per_tier_long[j]), short_notional=grid(hm.per_tier_short[j]))
    return msg


def zone(z: zonelib.Zone) -> pb.Zone:
    return pb.Zone(side=SIDES[z.side], price_low=z.price_low, price_high=z.price_high, peak_price=z.peak_price,
                   notional=z.notional, intensity=z.intensity, distance_pct=z.distance_pct,
                   proximity_weight=z.proximity)


def read_zones(hm: Heatmap, price: float, opts: ZoneOpts) -> zonelib.ZoneReport:
    """MODEL.md section 9 on the view's newest column at `price`."""
    return zonelib.column_zones(hm.long[:, -1], hm.short[:, -1], hm.price_edges, price,
                                threshold=opts.threshold, top=opts.top)


def zone_report(key: ViewKey, hm: Heatmap, price: float, opts: ZoneOpts,
                rep: zonelib.ZoneReport | None = None) -> pb.ZoneReport:
    """The zone report message, with the outward cumulative curves (`rep` when already read)."""
    rep = read_zones(hm, price, opts) if rep is None else rep
    centres = hm.row_centres
    below = np.flatnonzero(centres < price)[::-1]
    above = np.flatnonzero(centres > price)
    msg = pb.ZoneReport(
        market=key.market, lookback=key.lookback, price=rep.price, above=[zone(z) for z in rep.above],
        below=[zone(z) for z in rep.below], total_above=rep.total_above, total_below=rep.total_below,
        skew=rep.skew, skew_label=SKEW[rep.skew_label], v_max=rep.v_max,
        long_curve=pb.LiquidationCurve(price=centres[below].tolist(), notional=rep.cumulative_long[below].tolist()),
        short_curve=pb.LiquidationCurve(price=centres[above].tolist(), notional=rep.cumulative_short[above].tolist()),
        data_time=timestamp(hm.time_end_ms), threshold=opts.threshold)
    if rep.magnet is not None:
        msg.magnet.CopyFrom(zone(rep.magnet))
    return msg


def zone_event(ev: ZoneEvent, key: ViewKey, index: int, data_time_ms: int, price: float) -> pb.ZoneEvent:
    msg = pb.ZoneEvent(kind=EVENT_KINDS[ev.kind], market=key.market, lookback=key.lookback,
                       data_time=timestamp(data_time_ms), price=price, view_index=index)
    if ev.zone is not None:
        msg.zone.CopyFrom(zone(ev.zone))
    if ev.previous is not None:
        msg.previous_zone.CopyFrom(zone(ev.previous))
    if ev.kind == "SKEW_FLIPPED":
        msg.skew_label, msg.previous_skew_label = SKEW[ev.skew_label], SKEW[ev.previous_skew_label]
    if ev.kind == "PRICE_NEAR":
        msg.distance_pct = ev.distance_pct
    return msg


def confluence_level(level: Level) -> pb.ConfluenceLevel:
    return pb.ConfluenceLevel(side=SIDES[level.side], price_low=level.price_low, price_high=level.price_high,
                              lookbacks=level.lookbacks, score=level.score, notional=level.notional)
