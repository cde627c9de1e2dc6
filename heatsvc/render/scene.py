"""One view as plain arrays, from the engine or from the API: what every picture is drawn from."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

from ..model import zones as zonelib

# ---- the scene: one view as plain arrays ---------------------------------------------------------

@dataclass
class Scene:
    """One view, from the engine or the API: grids (rows x columns, row 0 = lowest price), axes and zones."""
    market: str                    # "binance:HYPEUSDT", "all:BTCUSDT", or a bars file's label
    markets: tuple[str, ...]
    lookback: str
    long: np.ndarray               # estimated long liquidation notional per cell, quote currency
    short: np.ndarray
    long_intensity: np.ndarray     # (cell / v_max)^boost, heatsvc.model.zones.intensity
    short_intensity: np.ndarray
    price_edges: np.ndarray        # rows + 1, log-spaced
    column_times: np.ndarray       # ms, column start
    column_ms: int
    candles: np.ndarray            # columns x (open, high, low, close), NaN where a column has no bars
    swept_long: np.ndarray         # estimated liquidations per column
    swept_short: np.ndarray
    price: float                   # the current price the zones are read at
    time_end_ms: int               # open time of the newest bar
    bars_per_column: int
    step_ms: int
    boost: float
    zones: zonelib.ZoneReport
    leverages: tuple[float, ...]
    tier_long: np.ndarray | None = None    # tiers x rows: the newest column per tier
    tier_short: np.ndarray | None = None
    realised_long: np.ndarray | None = None    # recorded liquidations per column, NaN where not heard
    realised_short: np.ndarray | None = None

    @property
    def rows(self) -> int:
        return self.long.shape[0]

    @property
    def columns(self) -> int:
        return self.long.shape[1]

    @property
    def v_max(self) -> float:
        return max(float(self.long.max(initial=0.0)), float(self.short.max(initial=0.0)))

    def row_coord(self, price):
        """MODEL.md section 2: u(p) = ln(p / p_lo) / ln(rho), the y coordinate of every drawing."""
        lo, hi = self.price_edges[0], self.price_edges[-1]
        return np.log(np.asarray(price, dtype=np.float64) / lo) / math.log(hi / lo) * self.rows


def scene_from_heatmap(hm, *, market: str, lookback: str, boost: float = 1.0, threshold: float = 0.2,
                       top: int = 3, price: float | None = None) -> Scene:
    """A Scene of an engine Heatmap: intensity and zones from heatsvc.model.zones, nothing recomputed here."""
    long_i, short_i = zonelib.intensity(hm, boost)
    report = zonelib.zones(hm, price, threshold=threshold, top=top)
    tiers = (None, None) if hm.per_tier_long is None else (hm.per_tier_long[:, :, -1], hm.per_tier_short[:, :, -1])
    return Scene(market=market, markets=tuple(hm.markets), lookback=lookback, long=hm.long, short=hm.short,
                 long_intensity=long_i, short_intensity=short_i, price_edges=hm.price_edges,
                 column_times=hm.column_times, column_ms=hm.params.step_ms * hm.bars_per_column,
                 candles=hm.candles, swept_long=hm.swept_long, swept_short=hm.swept_short, price=report.price,
                 time_end_ms=hm.time_end_ms, bars_per_column=hm.bars_per_column, step_ms=hm.params.step_ms,
                 boost=boost, zones=report, leverages=tuple(t.leverage for t in hm.params.tiers),
                 tier_long=tiers[0], tier_short=tiers[1])


def scene_from_response(resp, *, boost: float = 1.0) -> Scene:
    """A Scene of a heatsvc.v1 GetHeatmapResponse (asked with candles and intensity): float32 grids,
    Timestamps and the server's zone report become the arrays the local path has."""
    from ..client import grid_array
    from ..v1 import heatmap_service_pb2 as pb

    h, z = resp.heatmap, resp.zones
    edges = np.array(h.price_edges, dtype=np.float64)
    rows = len(edges) - 1
    sides = {pb.ZONE_SIDE_SHORT: "short", pb.ZONE_SIDE_LONG: "long"}

    def zone(m) -> zonelib.Zone:
        return zonelib.Zone(side=sides[m.side], price_low=m.price_low, price_high=m.price_high,
                            peak_price=m.peak_price, notional=m.notional, intensity=m.intensity,
                            distance_pct=m.distance_pct, proximity=m.proximity_weight)

    def per_row(curve) -> np.ndarray:
        out = np.zeros(rows)
        out[np.searchsorted(edges, np.array(curve.price), "right") - 1] = curve.notional
        return out

    report = zonelib.ZoneReport(
        price=z.price, above=[zone(m) for m in z.above], below=[zone(m) for m in z.below],
        total_above=z.total_above, total_below=z.total_below, skew=z.skew,
        skew_label=pb.SkewLabel.Name(z.skew_label).removeprefix("SKEW_LABEL_"),
        magnet=zone(z.magnet) if z.HasField("magnet") else None, v_max=z.v_max,
        cumulative_long=per_row(z.long_curve), cumulative_short=per_row(z.short_curve))
    long, short = grid_array(h.long_notional).astype(np.float64), grid_array(h.short_notional).astype(np.float64)
    columns = long.shape[1]
    if h.HasField("candles"):
        c = h.candles
        candles = np.column_stack([c.open, c.high, c.low, c.close]).astype(np.float64)
    else:
        candles = np.full((columns, 4), np.nan)
    if h.HasField("long_intensity"):
        long_i, short_i = grid_array(h.long_intensity), grid_array(h.short_intensity)
    else:  # the same function the server uses, on the grids it sent
        long_i, short_i = zonelib.intensity(_Grids(long, short), boost)
    tiers = sorted(h.tiers, key=lambda t: t.tier)
    step_ms = h.parameters.step.ToMilliseconds()
    return Scene(
        market=h.market, markets=tuple(h.markets), lookback=h.lookback, long=long, short=short,
        long_intensity=long_i, short_intensity=short_i, price_edges=edges,
        column_times=np.array([t.ToMilliseconds() for t in h.column_times], dtype=np.int64),
        column_ms=step_ms * h.bars_per_column, candles=candles,
        swept_long=np.array(h.swept_long), swept_short=np.array(h.swept_short), price=z.price,
        time_end_ms=h.data_time.ToMilliseconds(), bars_per_column=h.bars_per_column, step_ms=step_ms,
        boost=boost, zones=report, leverages=tuple(t.leverage for t in h.parameters.tiers),
        tier_long=np.stack([grid_array(t.long_notional)[:, -1] for t in tiers]) if tiers else None,
        tier_short=np.stack([grid_array(t.short_notional)[:, -1] for t in tiers]) if tiers else None,
        realised_long=np.array(h.realised_long) if len(h.realised_long) == columns else None,
        realised_short=np.array(h.realised_short) if len(h.realised_short) == columns else None)


@dataclass
class _Grids:
    long: np.ndarray
    short: np.ndarray


# ---- text ----------------------------------------------------------------------------------------------

def utc(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def describe_market(scene: Scene) -> tuple[str, str]:
    """(pair, exchange) for titles; an "all:" view is the aggregate of its exchanges."""
    exchange, sep, symbol = scene.market.partition(":")
    if not sep:
        return scene.market, "bars file"
    if exchange == "all":
        parts = sorted({m.partition(":")[0] for m in scene.markets})
        return symbol, f"aggregate ({' + '.join(parts)})" if parts else "aggregate"
    return symbol, exchange.capitalize()


