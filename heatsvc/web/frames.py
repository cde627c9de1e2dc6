"""What the gateway sends a browser: one binary frame per grid, JSON for everything else.

Binary grid frame (little-endian), for one browser's subscription:

    offset  size  field
    0       4     magic b"HSG1"
    4       4     uint32 subscription id (the browser's own counter: stale frames are dropped)
    8       4     uint32 sequence (the upstream StreamHeatmap sequence)
    12      2     uint16 rows
    14      2     uint16 columns
    16      8     float64 v_max: notional of intensity 255 (the selected tiers' largest cell)
    24      4     float32 boost
    28      4     reserved (0)
    32      r*c   uint8 long intensity, row-major, row 0 = lowest price
    32+r*c  r*c   uint8 short intensity

Intensity is round(255 * (cell / v_max) ** boost), as engine.intensity computes it, so a 400 x 288
view costs 230 KB instead of the 922 KB of float32 notional. The page reads a cell's notional back
as v_max * (i / 255) ** (1 / boost) (approximate: quantised to 256 levels); exact notional comes
from the CSV export.

JSON messages (text frames), each an object with "type":

    markets   every market served and aggregate, lookbacks, tiers (ListMarkets), token_required
    view      axes, candles, estimated liquidations and, where the recorder ran, realised ones with their
              coverage (null: not heard), price, data time of the subscription's view
    zones     the zone report (MODEL.md section 9) of the view at the current price
    status    the upstream state of the subscription: "ok", "waiting" (reconnecting), "error"
    error     a refused browser message or an upstream error, with "message" (and "field")
    events    the view's most recent zone events (StreamZoneEvents: new, swept, neared zones, magnet, skew)

The page ignores types it does not know, so new kinds slot in without a protocol change.

Every JSON message of a subscription carries "sub" so the page can ignore what is stale.
"""
from __future__ import annotations

import json
import math
import struct

import numpy as np

from ..v1 import heatmap_service_pb2 as pb

MAGIC = b"HSG1"
HEADER = struct.Struct("<4sIIHHdfI")
SKEW = {pb.SKEW_LABEL_UP: "up", pb.SKEW_LABEL_DOWN: "down", pb.SKEW_LABEL_BALANCED: "balanced"}
SIDE = {pb.ZONE_SIDE_SHORT: "short", pb.ZONE_SIDE_LONG: "long"}


def grid(g: pb.Grid) -> np.ndarray:
    """A float32 grid message as a (rows, columns) array."""
    return np.frombuffer(g.data, dtype="<f4").reshape(g.rows, g.columns)


def intensity(cells: np.ndarray, v_max: float, boost: float) -> np.ndarray:
    """uint8 display intensity of notional cells: round(255 * (cell / v_max) ** boost)."""
    if not v_max > 0:
        return np.zeros(cells.shape, dtype=np.uint8)
    x = np.clip(cells / np.float32(v_max), 0.0, 1.0, dtype=np.float32)
    if boost != 1.0:
        np.power(x, np.float32(boost), out=x)
    return np.rint(x * 255.0).astype(np.uint8)


def grid_frame(sub: int, sequence: int, long: np.ndarray, short: np.ndarray, boost: float) -> bytes:
    """The binary frame of one view's grids for one tier selection (`long`, `short`: notional)."""
    v_max = float(max(long.max(initial=0.0), short.max(initial=0.0)))
    rows, columns = long.shape
    header = HEADER.pack(MAGIC, sub & 0xFFFFFFFF, sequence & 0xFFFFFFFF, rows, columns, v_max, boost, 0)
    return b"".join((header, intensity(long, v_max, boost).tobytes(), intensity(short, v_max, boost).tobytes()))


def parse_frame(data: bytes) -> dict:
    """The fields of a grid frame (for tests and benchmarks)."""
    magic, sub, seq, rows, columns, v_max, boost, _ = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a grid frame")
    n = rows * columns
    body = np.frombuffer(data, dtype=np.uint8, offset=HEADER.size)
    return {"sub": sub, "sequence": seq, "rows": rows, "columns": columns, "v_max": v_max, "boost": boost,
            "long": body[:n].reshape(rows, columns), "short": body[n:2 * n].reshape(rows, columns)}


def _num(x: float):
    """A float for JSON: NaN and infinities become null (JSON has neither)."""
    return x if math.isfinite(x) else None


def _nums(xs) -> list:
    return [_num(float(x)) for x in xs]


def zone(z: pb.Zone) -> dict:
    return {"side": SIDE.get(z.side, ""), "low": z.price_low, "high": z.price_high, "peak": z.peak_price,
            "notional": z.notional, "intensity": z.intensity, "distance_pct": z.distance_pct}


def zones(sub: int, sequence: int, rep: pb.ZoneReport) -> str:
    """The zone report as JSON: top zones each side, totals, skew and label, magnet, cumulative curves."""
    return json.dumps({
        "type": "zones", "sub": sub, "seq": sequence, "market": rep.market, "lookback": rep.lookback,
        "price": rep.price, "threshold": rep.threshold, "v_max": rep.v_max,
        "above": [zone(z) for z in rep.above], "below": [zone(z) for z in rep.below],
        "total_above": rep.total_above, "total_below": rep.total_below, "skew": rep.skew,
        "skew_label": SKEW.get(rep.skew_label, ""), "magnet": zone(rep.magnet) if rep.HasField("magnet") else None,
        "long_curve": {"price": list(rep.long_curve.price), "notional": list(rep.long_curve.notional)},
        "short_curve": {"price": list(rep.short_curve.price), "notional": list(rep.short_curve.notional)},
        "data_time": rep.data_time.ToMilliseconds(),
    }, separators=(",", ":"))


def view(sub: int, sequence: int, hm: pb.Heatmap, gateway_time: float) -> str:
    """Axes, candles and estimated liquidations of a heatmap as JSON (the grids go in the frame).
    `gateway_time` (Unix seconds) is when the gateway got the update: benchmarks time delivery from it."""
    c = hm.candles
    return json.dumps({
        "type": "view", "sub": sub, "seq": sequence, "market": hm.market, "lookback": hm.lookback,
        "markets": list(hm.markets), "price_edges": list(hm.price_edges),
        "column_times": [t.ToMilliseconds() for t in hm.column_times], "bars_per_column": hm.bars_per_column,
        "candles": {"open": _nums(c.open), "high": _nums(c.high), "low": _nums(c.low), "close": _nums(c.close)},
        "swept_long": _nums(hm.swept_long), "swept_short": _nums(hm.swept_short),
        "realised_long": _nums(hm.realised_long), "realised_short": _nums(hm.realised_short),
        "coverage": _nums(hm.coverage),
        "current_price": hm.current_price, "data_time": hm.data_time.ToMilliseconds(), "v_max": hm.v_max,
        "tiers": [{"leverage": t.leverage, "weight": t.weight} for t in hm.parameters.tiers],
        "gateway_time": gateway_time,
    }, separators=(",", ":"))


def markets(resp: pb.ListMarketsResponse, token_required: bool) -> str:
    return json.dumps({
        "type": "markets",
        "markets": [{"market": m.market, "aggregate": m.aggregate, "status": pb.MarketStatus.Name(m.status)
                     .removeprefix("MARKET_STATUS_").lower()} for m in resp.markets],
        "lookbacks": list(resp.lookbacks),
        "tiers": [{"leverage": t.leverage, "weight": t.weight} for t in resp.parameters.tiers],
        "token_required": token_required,
    }, separators=(",", ":"))


def event(ev: pb.ZoneEvent) -> dict:
    """One zone event (MODEL.md section 13) as JSON."""
    return {"kind": pb.ZoneEventKind.Name(ev.kind).removeprefix("ZONE_EVENT_KIND_"),
            "data_time": ev.data_time.ToMilliseconds(), "price": ev.price,
            "zone": zone(ev.zone) if ev.HasField("zone") else None,
            "previous_zone": zone(ev.previous_zone) if ev.HasField("previous_zone") else None,
            "skew_label": SKEW.get(ev.skew_label, ""), "previous_skew_label": SKEW.get(ev.previous_skew_label, ""),
            "distance_pct": ev.distance_pct}


def events(sub: int, recent: list[dict]) -> str:
    """The view's most recent zone events, newest last (a browser that skipped a state still sees them)."""
    return json.dumps({"type": "events", "sub": sub, "events": recent}, separators=(",", ":"))


def status(sub: int, state: str, message: str = "") -> str:
    return json.dumps({"type": "status", "sub": sub, "state": state, "message": message})


def error(message: str, field: str = "", sub: int | None = None) -> str:
    return json.dumps({"type": "error", "sub": sub, "field": field, "message": message})


def csv_rows(hm: pb.Heatmap):
    """The view as CSV lines: one per (column, row) cell with any heat, exact notional."""
    yield "column_time_utc,price_low,price_high,long_notional,short_notional\n"
    long, short = grid(hm.long_notional), grid(hm.short_notional)
    edges = list(hm.price_edges)
    times = [t.ToJsonString() for t in hm.column_times]
    for c, t in enumerate(times):
        lines = [f"{t},{edges[r]:.10g},{edges[r + 1]:.10g},{long[r, c]:.6g},{short[r, c]:.6g}\n"
                 for r in np.flatnonzero((long[:, c] > 0) | (short[:, c] > 0))]
        yield "".join(lines)
