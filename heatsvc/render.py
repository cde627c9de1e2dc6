"""`heatsvc render`: the heatmap, the liquidation map and the estimated-liquidations bars as PNG.

A thin layer over the model: local bars go through heatsvc.model.engine, a running server's answer comes
through the heatsvc.v1 API, and both become one Scene of plain arrays that the drawing functions
turn into a picture (matplotlib Figure on the Agg canvas, no pyplot state). What it draws are
estimated liquidation levels: market-risk context, not a forecast.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import textwrap
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import cm, colors, dates as mdates, ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from .model import bars as barlib
from . import datasets
from .model import zones as zonelib
from .client import add_connection_arguments, money, price_text

DAY_MS = 86_400_000
CAPTION = "estimated liquidation levels, market-risk context, not a forecast"
HEAT_CMAP = "viridis"                      # perceptual: dark violet (no heat) to bright yellow (hottest)
SHORT_COLOUR, LONG_COLOUR = "#0ecb81", "#f6465d"   # shorts squeezed above (green), longs flushed below (red)
REALISED_COLOUR = "#f0c419"   # realised liquidations (recorded, MODEL.md section 12), outlined over the estimate
PRICE_LINE = "#ffffff"
THEMES = {
    "dark": {"bg": "#0d1117", "fg": "#d7dce2", "muted": "#8b949e", "grid": "#2d333b", "line": "#ffffff"},
    "light": {"bg": "#ffffff", "fg": "#1f2328", "muted": "#57606a", "grid": "#d0d7de", "line": "#1f2328"},
}
KINDS = ("heatmap", "map")
EXCHANGES = tuple(datasets.EXCHANGE_SCALE)
RECORDED_MARKET = datasets.RECORDED_MARKET


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
    from .client import grid_array
    from .v1 import heatmap_service_pb2 as pb

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


# ---- layout: where things are, in image pixels ------------------------------------------------------

@dataclass(frozen=True)
class Panel:
    """An axes' box in image pixels (origin top-left, as the PNG's rows) and its data limits.

    x is days since 1970 (matplotlib dates) on the heatmap panels and notional on the map; y is the
    row coordinate u(p) of MODEL.md section 2 on every price panel, so price is log-scaled.
    """
    left: float
    top: float
    right: float
    bottom: float
    xlim: tuple[float, float]
    ylim: tuple[float, float]

    def pixel(self, x: float, y: float) -> tuple[float, float]:
        """Image pixel (column, row) of a data point; pixel (i, j) covers [i, i+1) x [j, j+1)."""
        fx = (x - self.xlim[0]) / (self.xlim[1] - self.xlim[0])
        fy = (y - self.ylim[0]) / (self.ylim[1] - self.ylim[0])
        return self.left + fx * (self.right - self.left), self.bottom - fy * (self.bottom - self.top)


@dataclass(frozen=True)
class Layout:
    """What a render produced: the picture's size and its panels ("heat", "swept" or "map", "colorbar")."""
    width: int
    height: int
    panels: dict[str, Panel]


def _panel(ax, height: int) -> Panel:
    box = ax.get_window_extent()
    return Panel(left=box.x0, top=height - box.y1, right=box.x1, bottom=height - box.y0,
                 xlim=tuple(ax.get_xlim()), ylim=tuple(ax.get_ylim()))


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


# ---- drawing -------------------------------------------------------------------------------------------

class _Canvas:
    """A fixed-layout Figure of width x height pixels; boxes are given in pixels from the top-left."""

    def __init__(self, width: int, height: int, theme: str):
        if theme not in THEMES:
            raise ValueError(f"theme {theme!r} is unknown; use one of {', '.join(THEMES)}")
        self.w, self.h, self.t = width, height, THEMES[theme]
        self.dpi = 100
        self.s = min(max(min(width / 1200, height / 700), 0.5), 2.0)   # text and margins scale with size
        self.fig = Figure(figsize=(width / self.dpi, height / self.dpi), dpi=self.dpi, facecolor=self.t["bg"])
        FigureCanvasAgg(self.fig)

    def pt(self, px: float) -> float:
        """Pixels as points (line widths, font sizes)."""
        return px * 72 / self.dpi

    def font(self, size: float) -> float:
        return size * self.s

    def axes(self, left, top, width, height, **kw):
        ax = self.fig.add_axes((left / self.w, 1 - (top + height) / self.h, width / self.w, height / self.h), **kw)
        ax.set_facecolor(self.t["bg"])
        for spine in ax.spines.values():
            spine.set_color(self.t["grid"])
        ax.tick_params(colors=self.t["muted"], labelsize=self.font(8), length=3 * self.s, width=0.6)
        return ax

    def text(self, x_px, y_px, s, **kw):
        """Text at a pixel position (from the top-left)."""
        kw.setdefault("color", self.t["fg"])
        return self.fig.text(x_px / self.w, 1 - y_px / self.h, s, **kw)

    def line(self, xs_px, ys_px, **kw):
        self.fig.add_artist(Line2D([x / self.w for x in xs_px], [1 - y / self.h for y in ys_px],
                                   transform=self.fig.transFigure, **kw))

    def save(self, path: str | os.PathLike, scene: Scene, kind: str) -> None:
        """Write the PNG next to its destination and move it into place, so a failure leaves no half file."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise ValueError(f"output {str(path)!r} must be a .png file")
        if not path.parent.is_dir():
            raise ValueError(f"output {str(path)!r}: directory {str(path.parent)!r} does not exist")
        pair, exchange = describe_market(scene)
        meta = {"Title": f"{pair} {exchange} {scene.lookback} liquidation {kind}", "Description": CAPTION,
                "Software": "heatsvc render"}
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as f:
                self.fig.savefig(f, format="png", dpi=self.dpi, facecolor=self.t["bg"], metadata=meta)
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


def _max_pool(a: np.ndarray, fr: int, fc: int) -> np.ndarray:
    """Each fr x fc block's maximum, so a hot cell stays visible when the grid has more cells than pixels."""
    if fr == 1 and fc == 1:
        return a
    r, c = -(-a.shape[0] // fr) * fr, -(-a.shape[1] // fc) * fc
    padded = np.zeros((r, c), dtype=a.dtype)
    padded[:a.shape[0], :a.shape[1]] = a
    return padded.reshape(r // fr, fr, c // fc, fc).max(axis=(1, 3))


def _steps(ax, edges, values, base, colour, horizontal: bool = False) -> None:
    """Filled bars of `values` over [edges[i], edges[i+1]) from `base`, as one collection (fast)."""
    top = np.append(values, values[-1])
    bottom = np.append(np.broadcast_to(base, np.shape(values)), np.ravel(base)[-1])
    fill = ax.fill_betweenx if horizontal else ax.fill_between
    fill(edges, bottom, top, step="post", color=colour, lw=0, antialiased=False)


def _left_margin(cv: _Canvas, scene: Scene) -> float:
    """Room for the price tick labels (as wide as the top price's) and the axis title."""
    chars = len(f"{scene.price_edges[-1]:,.2f}") if scene.price_edges[-1] < 10_000 else \
        len(f"{scene.price_edges[-1]:,.0f}")
    return (0.62 * cv.font(8) * cv.dpi / 72) * chars + 28 * cv.s


def _price_ticks(ax, scene: Scene, px_height: float, cv: _Canvas) -> None:
    """Nice prices on the log row axis."""
    lo, hi = scene.price_edges[0], scene.price_edges[-1]
    nbins = max(3, int(px_height / (45 * cv.s)))
    ticks = ticker.MaxNLocator(nbins=nbins).tick_values(lo, hi)
    decimals = max(0, -math.floor(math.log10(ticks[1] - ticks[0]) + 1e-9))
    ticks = [p for p in ticks if lo <= p <= hi]
    ax.set_yticks(scene.row_coord(ticks), [f"{p:,.{decimals}f}" for p in ticks])


def _wrapped(cv: _Canvas, text: str, size: float, left: float) -> list[str]:
    """`text` in lines that fit between `left` and the right edge (DejaVu Sans: about 0.6 em a character)."""
    per_line = max(20, int((cv.w - left - 4) / (0.6 * cv.font(size) * cv.dpi / 72)))
    return textwrap.wrap(text, per_line, break_on_hyphens=False)


def _titles(cv: _Canvas, scene: Scene, kind: str, left: float) -> tuple[float, float]:
    """Title (pair, exchange, lookback), subtitle (data time, price, grid) and caption (the same facts and
    the disclaimer); returns the pixels they take at the top and at the bottom."""
    pair, exchange = describe_market(scene)
    what = "estimated liquidation heatmap" if kind == "heatmap" else "estimated liquidation map (newest column)"
    minutes = scene.column_ms // 60_000
    col = f"{minutes // 60} h" if minutes % 60 == 0 and minutes >= 60 else f"{minutes} min"
    line = 1.25 * cv.dpi / 72
    y = 8 * cv.s
    for text, size, weight, colour in (
            (f"{pair}  ·  {exchange}  ·  {scene.lookback} lookback  ·  {what}", 12.5, "bold", cv.t["fg"]),
            (f"data to {utc(scene.time_end_ms)} (newest bar)  ·  price {price_text(scene.price)}  ·  "
             f"{scene.rows} log-spaced price rows x {scene.columns} columns of {col}  ·  "
             f"skew {scene.zones.skew:+.2f} {scene.zones.skew_label}", 8.5, "normal", cv.t["muted"])):
        lines = _wrapped(cv, text, size, left)
        cv.text(left, y, "\n".join(lines), fontsize=cv.font(size), fontweight=weight, color=colour, va="top")
        y += len(lines) * cv.font(size) * line + 4 * cv.s
    caption = (f"{pair} {exchange} {scene.lookback}, data to {utc(scene.time_end_ms)}: {CAPTION}. Heat = notional "
               f"of positions opened in the window that would be force-closed at that price (leverage tiers "
               f"{', '.join(f'{x:g}x' for x in scene.leverages)}). heatsvc")
    lines = _wrapped(cv, caption, 7.5, left)
    cv.text(left, cv.h - 5 * cv.s, "\n".join(lines), fontsize=cv.font(7.5), color=cv.t["muted"], va="bottom")
    return y, len(lines) * cv.font(7.5) * line + 5 * cv.s


def _zone_labels(cv: _Canvas, ax_panel_right: float, y_of, scene: Scene, top: float, bottom: float) -> None:
    """The current price and the top zones, labelled in the right margin at their price, never overlapping."""
    z = scene.zones
    h = 13 * cv.s
    x0 = ax_panel_right
    py = y_of(z.price)
    cv.text(x0 + 6 * cv.s, py, f" {price_text(z.price)} ", fontsize=cv.font(8), fontweight="bold",
            color=cv.t["bg"], va="center", ha="left",
            bbox={"boxstyle": "square,pad=0.15", "facecolor": cv.t["line"], "edgecolor": "none"})
    for side, zs, sign in (("short", z.above, -1), ("long", z.below, 1)):
        last = py
        for zone in sorted(zs, key=lambda q: abs(q.peak_price - z.price)):
            want = y_of(zone.peak_price)
            y = max(want, last + h) if sign > 0 else min(want, last - h)
            last = y
            if not top - h <= y <= bottom + h:
                continue
            colour = SHORT_COLOUR if side == "short" else LONG_COLOUR
            cv.line([x0, x0 + 4 * cv.s, x0 + 10 * cv.s], [want, want, y], color=colour, lw=cv.pt(1.2))
            cv.text(x0 + 12 * cv.s, y, f"{'▲' if side == 'short' else '▼'} {price_text(zone.peak_price)}  "
                                       f"{money(zone.notional)}  {zone.distance_pct:+.1f}%",
                    fontsize=cv.font(7.5), color=colour, va="center", ha="left")


def render_heatmap(scene: Scene, path: str | os.PathLike, *, width: int = 1200, height: int = 700,
                   theme: str = "dark") -> Layout:
    """The heatmap (time x log price, candles, price line, top zones, colour bar) over the
    estimated-liquidations bars per column; writes a PNG and returns where the panels are."""
    cv = _Canvas(width, height, theme)
    s = cv.s
    left, right = _left_margin(cv, scene), 214 * s
    top, bottom = _titles(cv, scene, "heatmap", left)
    top, bottom = top + 12 * s, bottom + 26 * s
    gap = 8 * s
    pw = width - left - right
    avail = height - top - bottom - gap
    if pw < 40 or avail < 60:
        raise ValueError(f"a picture of {width} x {height} pixels is too small for the heatmap")
    ph, bh = round(avail * 0.76), avail - round(avail * 0.76)
    ax = cv.axes(left, top, pw, ph)
    axb = cv.axes(left, top + ph + gap, pw, bh, sharex=ax)

    t0 = scene.column_times[0] / DAY_MS
    col_days = scene.column_ms / DAY_MS
    t1 = t0 + scene.columns * col_days
    heat = np.maximum(scene.long_intensity, scene.short_intensity)
    fr, fc = max(1, math.ceil(scene.rows / ph)), max(1, math.ceil(scene.columns / pw))
    pooled = _max_pool(heat, fr, fc)
    ax.imshow(pooled, cmap=HEAT_CMAP, vmin=0.0, vmax=1.0, origin="lower", aspect="auto", interpolation="nearest",
              extent=(t0, t0 + pooled.shape[1] * fc * col_days, 0, pooled.shape[0] * fr), zorder=0)
    ax.set_xlim(t0, t1)
    ax.set_ylim(0, scene.rows)

    # candles of each column, over the heat
    col_px = pw / scene.columns
    ok = np.all(np.isfinite(scene.candles), axis=1)
    x = t0 + (np.arange(scene.columns) + 0.5) * col_days
    o, hi, lo, c = (scene.row_coord(np.where(ok, scene.candles[:, i], 1.0)) for i in range(4))
    up = c >= o
    col = np.where(up[ok, None], colors.to_rgba(SHORT_COLOUR), colors.to_rgba(LONG_COLOUR))
    wick_px = max(1.0, min(col_px * 0.3, 1.5 * s))
    ax.add_collection(LineCollection(np.stack([np.column_stack([x, lo]), np.column_stack([x, hi])], 1)[ok],
                                     colors=col, linewidths=cv.pt(wick_px), zorder=2))
    if col_px * 0.7 > wick_px + 0.5:
        ax.add_collection(LineCollection(np.stack([np.column_stack([x, o]), np.column_stack([x, c])], 1)[ok],
                                         colors=col, linewidths=cv.pt(col_px * 0.7), capstyle="butt", zorder=2))
    ax.axhline(scene.row_coord(scene.price), color=PRICE_LINE, lw=cv.pt(max(1.0, round(1.2 * s))), zorder=3)
    _price_ticks(ax, scene, ph, cv)
    ax.tick_params(axis="x", labelbottom=False)
    ax.set_ylabel("price (log scale)", color=cv.t["muted"], fontsize=cv.font(8))

    # estimated liquidations per column: shorts swept above the axis, longs swept below
    edges = t0 + np.arange(scene.columns + 1) * col_days
    _steps(axb, edges, scene.swept_short, 0.0, SHORT_COLOUR)
    _steps(axb, edges, -scene.swept_long, 0.0, LONG_COLOUR)
    peak = max(float(np.max(scene.swept_short, initial=0)), float(np.max(scene.swept_long, initial=0))) or 1.0
    realised = scene.realised_long is not None and np.isfinite(scene.realised_long).any()
    if realised:   # recorded liquidations outlined over the estimate; NaN (not heard) breaks the line: a gap
        for values in (scene.realised_short, -scene.realised_long):
            axb.step(edges, np.append(values, values[-1]), where="post", color=REALISED_COLOUR,
                     lw=cv.pt(max(1.0, 1.2 * s)), zorder=3)
        peak = max(peak, float(np.nanmax(scene.realised_short)), float(np.nanmax(scene.realised_long)))
    axb.set_ylim(-peak * 1.12, peak * 1.12)
    axb.axhline(0, color=cv.t["grid"], lw=0.6)
    axb.yaxis.set_major_locator(ticker.MaxNLocator(nbins=max(2, int(bh / (28 * s))), symmetric=True))
    axb.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: money(abs(v))))
    locator = mdates.AutoDateLocator(minticks=3, maxticks=max(3, int(pw / (110 * s))))
    axb.xaxis.set_major_locator(locator)
    axb.xaxis.set_major_formatter(mdates.ConciseDateFormatter(
        locator, show_offset=False, formats=["%Y", "%b", "%b %d", "%H:%M", "%H:%M", "%S"],
        zero_formats=["", "%Y", "%b", "%b %d", "%H:%M", "%H:%M"]))
    axb.set_xlim(t0, t1)
    kw = {"transform": axb.transAxes, "fontsize": cv.font(7.5), "ha": "left"}
    axb.text(0.005, 0.97, "▲ est. short liquidations per column", color=SHORT_COLOUR, va="top", **kw)
    axb.text(0.005, 0.03, "▼ est. long liquidations per column", color=LONG_COLOUR, va="bottom", **kw)
    if realised:
        axb.text(0.995, 0.97, "realised (recorded; gaps: not heard)", color=REALISED_COLOUR, va="top",
                 **{**kw, "ha": "right"})

    # colour bar: intensity, labelled with the notional per cell it stands for
    cax = cv.axes(width - 62 * s, top, 11 * s, ph)
    cv.fig.colorbar(cm.ScalarMappable(colors.Normalize(0, 1), HEAT_CMAP), cax=cax)
    vmax = scene.v_max
    levels = [0, 0.25, 0.5, 0.75, 1.0]
    cax.set_yticks(levels, [money(vmax * q ** (1 / scene.boost)) for q in levels])
    cax.tick_params(labelsize=cv.font(7.5))
    cv.text(width - 8 * s, top - 6 * s, "notional per cell" + (f"\nboost γ {scene.boost:g}" if scene.boost != 1 else ""),
            fontsize=cv.font(7.5), color=cv.t["muted"], ha="right", va="bottom")

    panel = _panel(ax, height)
    _zone_labels(cv, panel.right, lambda p: panel.pixel(t0, float(scene.row_coord(p)))[1], scene,
                 panel.top, panel.bottom)
    cv.save(path, scene, "heatmap")
    return Layout(width, height, {"heat": panel, "swept": _panel(axb, height), "colorbar": _panel(cax, height)})


def render_map(scene: Scene, path: str | os.PathLike, *, width: int = 1200, height: int = 700,
               theme: str = "dark", stack_tiers: bool = False) -> Layout:
    """The liquidation map of the newest column: heat per price row as horizontal bars (longs below
    the price, shorts above, optionally stacked by leverage tier) with the cumulative curves outward."""
    if stack_tiers and scene.tier_long is None:
        raise ValueError("--stack-tiers needs per-tier grids, which this scene does not have")
    cv = _Canvas(width, height, theme)
    s = cv.s
    left, right = _left_margin(cv, scene), 160 * s
    top, bottom = _titles(cv, scene, "map", left)
    top, bottom = top + 44 * s, bottom + 40 * s
    pw, ph = width - left - right, height - top - bottom
    if pw < 40 or ph < 60:
        raise ValueError(f"a picture of {width} x {height} pixels is too small for the map")
    ax = cv.axes(left, top, pw, ph)
    edges_u = np.arange(scene.rows + 1, dtype=np.float64)
    short_col, long_col = scene.short[:, -1], scene.long[:, -1]
    handles = []
    if stack_tiers:
        palette = [colors.to_hex(c) for c in matplotlib.colormaps["plasma"](np.linspace(0.3, 0.95, len(scene.leverages)))]
        base_l, base_s = np.zeros(scene.rows), np.zeros(scene.rows)
        for j, lev in enumerate(scene.leverages):
            for values, base in ((scene.tier_long[j], base_l), (scene.tier_short[j], base_s)):
                _steps(ax, edges_u, base + values, base.copy(), palette[j], horizontal=True)
                base += values
            handles.append(Line2D([], [], color=palette[j], lw=6, label=f"{lev:g}x"))
    else:
        _steps(ax, edges_u, short_col, 0.0, SHORT_COLOUR, horizontal=True)
        _steps(ax, edges_u, long_col, 0.0, LONG_COLOUR, horizontal=True)
        handles += [Line2D([], [], color=SHORT_COLOUR, lw=6, label="short heat (squeezed above)"),
                    Line2D([], [], color=LONG_COLOUR, lw=6, label="long heat (flushed below)")]
    peak = max(float(short_col.max(initial=0)), float(long_col.max(initial=0))) or 1.0
    ax.set_xlim(0, peak * 1.05)
    ax.set_ylim(0, scene.rows)
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: money(v)))
    ax.set_xlabel("estimated liquidation notional per price row", color=cv.t["muted"], fontsize=cv.font(8))
    ax.grid(axis="x", color=cv.t["grid"], lw=0.5)
    ax.set_axisbelow(True)

    # cumulative curves, outward from the price, on their own scale
    axc = ax.twiny()
    axc.set_ylim(0, scene.rows)
    centres = np.arange(scene.rows) + 0.5
    pu = float(scene.row_coord(scene.price))
    below, above = centres < pu, centres > pu
    cum_l, cum_s = scene.zones.cumulative_long, scene.zones.cumulative_short
    axc.plot(np.concatenate(([0], cum_l[below][::-1])), np.concatenate(([pu], centres[below][::-1])),
             color=LONG_COLOUR, lw=cv.pt(1.6 * s), ls="--")
    axc.plot(np.concatenate(([0], cum_s[above])), np.concatenate(([pu], centres[above])),
             color=SHORT_COLOUR, lw=cv.pt(1.6 * s), ls="--")
    axc.set_xlim(0, max(float(cum_l.max(initial=0)), float(cum_s.max(initial=0)), 1.0) * 1.05)
    axc.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: money(v)))
    axc.tick_params(colors=cv.t["muted"], labelsize=cv.font(8))
    axc.set_xlabel("cumulative from the price (dashed)", color=cv.t["muted"], fontsize=cv.font(8))
    for spine in axc.spines.values():
        spine.set_visible(False)
    handles += [Line2D([], [], color=SHORT_COLOUR, ls="--", label="cumulative shorts"),
                Line2D([], [], color=LONG_COLOUR, ls="--", label="cumulative longs")]

    ax.axhline(pu, color=cv.t["line"], lw=cv.pt(max(1.0, round(1.2 * s))), zorder=3)
    _price_ticks(ax, scene, ph, cv)
    ax.set_ylabel("price (log scale)", color=cv.t["muted"], fontsize=cv.font(8))
    ax.legend(handles=handles, loc="lower right", fontsize=cv.font(7.5), frameon=False, labelcolor=cv.t["fg"],
              ncol=1)
    panel = _panel(ax, height)
    _zone_labels(cv, panel.right, lambda p: panel.pixel(0, float(scene.row_coord(p)))[1], scene,
                 panel.top, panel.bottom)
    cv.save(path, scene, "map")
    return Layout(width, height, {"map": panel})


def render(scene: Scene, path: str | os.PathLike, *, kind: str = "heatmap", width: int = 1200, height: int = 700,
           theme: str = "dark", stack_tiers: bool = False) -> Layout:
    """Draw `scene` as `kind` ("heatmap" or "map") into the PNG at `path`."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 8000:
            raise ValueError(f"{name} must be an integer number of pixels in [200, 8000], got {value!r}")
    if kind == "heatmap":
        if stack_tiers:
            raise ValueError("--stack-tiers applies to the liquidation map (--kind map)")
        return render_heatmap(scene, path, width=width, height=height, theme=theme)
    if kind == "map":
        return render_map(scene, path, width=width, height=height, theme=theme, stack_tiers=stack_tiers)
    raise ValueError(f"kind {kind!r} is unknown; use one of {', '.join(KINDS)}")


# ---- sources -------------------------------------------------------------------------------------------

def local_scene(args: argparse.Namespace) -> Scene:
    """Compute the view with heatsvc.model.engine on local bars, cut at --end."""
    from .model import engine

    end_ms = barlib.parse_time(args.end) if args.end else None
    market, by_market = datasets.load(args.data or "recorded", args.market, end_ms)
    kw = dict(lookback=args.lookback, columns=args.columns or 288, rows=args.rows or 400,
              price_range=tuple(args.price_range) if args.price_range else None,
              per_tier=args.kind == "map" and args.stack_tiers)
    if market.startswith("all:"):
        hm = engine.compute_aggregate(by_market, **kw)
    else:
        hm = engine.compute_heatmap(by_market[market], market=market, **kw)
    return scene_from_heatmap(hm, market=market, lookback=args.lookback, boost=args.boost,
                              threshold=args.threshold, top=args.top)


def fetch_scene(args: argparse.Namespace) -> Scene:
    """Ask the server at --target for the view (GetHeatmap with candles, intensity and, for a stacked
    map, per-tier grids); grpc.RpcError propagates."""
    from .client import connect, metadata
    from .v1 import heatmap_service_pb2 as pb
    from .v1 import heatmap_service_pb2_grpc as pb_grpc

    view = pb.View(market=args.market or "binance:BTCUSDT", lookback=args.lookback, rows=args.rows,
                   columns=args.columns)
    if args.price_range:
        view.price_range.low, view.price_range.high = args.price_range
    request = pb.GetHeatmapRequest(view=view, zone_options=pb.ZoneOptions(threshold=args.threshold, top=args.top),
                                   boost=args.boost, include_candles=True, include_intensity=True,
                                   include_tiers=args.kind == "map" and args.stack_tiers)
    with connect(args) as channel:
        resp = pb_grpc.HeatmapServiceStub(channel).GetHeatmap(request, timeout=args.timeout,
                                                              metadata=metadata(args))
    return scene_from_response(resp, boost=args.boost)


# ---- command -------------------------------------------------------------------------------------------

def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Options of `heatsvc render`: the source, the view and the picture."""
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--target", metavar="HOST:PORT", help="ask a running heatsvc server (GetHeatmap)")
    source.add_argument("--data", metavar="SOURCE",
                        help="compute locally from 'recorded' (Binance HYPEUSDT, 2025-09-28..10-16, with the crash "
                             "of 2025-10-10), 'synthetic:SYMBOL' (BTCUSDT, ETHUSDT, SOLUSDT) or a bars file "
                             "(.npz / .csv with heatsvc.model.bars field names); the default source")
    parser.add_argument("--end", metavar="ISO", help="local data only: use the bars opening before this time, "
                                                     "e.g. 2025-10-11T00:00Z")
    parser.add_argument("--market", help="exchange:SYMBOL or all:SYMBOL (default: the data's own market; "
                                          "binance:BTCUSDT with --target)")
    parser.add_argument("--lookback", default="1d", help="lookback name, 12h..1Y (default %(default)s)")
    parser.add_argument("--rows", type=int, default=0, help="price rows (default 400)")
    parser.add_argument("--columns", type=int, default=0, help="time columns (default 288)")
    parser.add_argument("--price-range", nargs=2, type=float, metavar=("LOW", "HIGH"), help="explicit price range")
    parser.add_argument("--threshold", type=float, default=0.2, help="zone noise threshold in [0, 1) (default 0.2)")
    parser.add_argument("--top", type=int, default=3, help="zones labelled per side (default %(default)s)")
    parser.add_argument("--boost", type=float, default=1.0,
                        help="display boost γ in (0, 1]: lower brightens faint heat (\"more heat\"); "
                             "never changes figures or zones")
    parser.add_argument("--kind", choices=KINDS, default="heatmap",
                        help="heatmap (time x price, with estimated liquidations per column) or map (the newest "
                             "column's heat per price row, with cumulative curves)")
    parser.add_argument("--stack-tiers", action="store_true", help="map: stack each row's bar by leverage tier")
    parser.add_argument("-o", "--output", required=True, metavar="FILE.png", help="the PNG to write")
    parser.add_argument("--width", type=int, default=1200, help="pixels (default %(default)s)")
    parser.add_argument("--height", type=int, default=700, help="pixels (default %(default)s)")
    parser.add_argument("--theme", choices=tuple(THEMES), default="dark", help="(default %(default)s)")
    add_connection_arguments(parser, "--target: ")
    parser.add_argument("--timeout", type=float, default=30.0, help="--target: seconds (default %(default)g)")


def check_args(args: argparse.Namespace) -> None:
    if args.rows < 0 or args.columns < 0:
        raise ValueError("--rows and --columns must be >= 0 (0 means the default)")
    if not (0 < args.boost <= 1):
        raise ValueError(f"--boost must be in (0, 1], got {args.boost}")
    zonelib.check_options(args.threshold, args.top, 2.0, 10.0)
    if args.stack_tiers and args.kind != "map":
        raise ValueError("--stack-tiers applies to the liquidation map (--kind map)")
    if args.target and args.end:
        raise ValueError("--end cuts local data; a server (--target) serves its current data")
    if not args.output.lower().endswith(".png"):
        raise ValueError(f"--output {args.output!r} must end in .png")


def run(command: str, args: argparse.Namespace) -> int:
    check_args(args)
    if args.target:
        import grpc

        from .client import EXIT_CODES, describe_error
        try:
            scene = fetch_scene(args)
        except grpc.RpcError as error:
            print(describe_error(command, error, args.target), file=sys.stderr)
            return EXIT_CODES.get(error.code(), 1)
    else:
        scene = local_scene(args)
    render(scene, args.output, kind=args.kind, width=args.width, height=args.height, theme=args.theme,
           stack_tiers=args.stack_tiers)
    pair, exchange = describe_market(scene)
    print(f"wrote {args.output}: {args.width}x{args.height} {args.kind} of {pair} {exchange} {scene.lookback}, "
          f"data to {utc(scene.time_end_ms)} ({CAPTION})")
    return 0
