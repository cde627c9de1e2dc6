"""The estimated heatmap (time x log price over the estimated liquidations per column) and the
liquidation map of its newest column."""
from __future__ import annotations

import math
import os

import matplotlib
import numpy as np
from matplotlib import cm, colors, dates as mdates, ticker
from matplotlib.collections import LineCollection
from matplotlib.lines import Line2D

from ..client import money
from .canvas import (DAY_MS, HEAT_CMAP, LONG_COLOUR, PRICE_LINE, REALISED_COLOUR, SHORT_COLOUR, Layout, _Canvas,
                     _max_pool, _panel, _price_ticks, _steps, _titles, _zone_labels, _left_margin)
from .scene import Scene

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


