"""The measured liquidation map (real positions at their real liquidation prices, MODEL.md section 16)
beside the estimated map of the same view, on the same price rows."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from matplotlib import ticker
from matplotlib.lines import Line2D

from ..client import money
from .canvas import LONG_COLOUR, SHORT_COLOUR, Layout, _Canvas, _left_margin, _panel, _price_ticks, _steps, _titles
from .scene import Scene, utc


@dataclass
class Measured:
    """A measured map on the scene's rows (heatsvc.v1.MeasuredMap as arrays)."""
    long: np.ndarray
    short: np.ndarray
    time_ms: int
    coverage_long: float
    coverage_short: float
    unpriced_long: float
    unpriced_short: float
    accounts_read: int
    accounts_known: int

    @classmethod
    def from_message(cls, m) -> "Measured":
        return cls(np.array(m.long_notional), np.array(m.short_notional), m.time.ToMilliseconds(), m.coverage_long,
                   m.coverage_short, m.unpriced_long, m.unpriced_short, m.accounts_read, m.accounts_known)


def _pct(x: float) -> str:
    return "unknown" if math.isnan(x) else f"{x:.0%}"


def render_measured(scene: Scene, measured: Measured, path: str | os.PathLike, *, width: int = 1200,
                    height: int = 700, theme: str = "dark") -> Layout:
    """Two maps on one price axis: the estimate's newest column (left) and the measured positions (right)."""
    if len(measured.long) != scene.rows:
        raise ValueError(f"the measured map has {len(measured.long)} rows, the view {scene.rows}")
    cv = _Canvas(width, height, theme)
    s = cv.s
    left, right = _left_margin(cv, scene), 24 * s
    top, bottom = _titles(cv, scene, "measured", left)
    note = (f"measured {utc(measured.time_ms)}: {measured.accounts_read} of {measured.accounts_known} known accounts, "
            f"coverage {_pct(measured.coverage_long)} of long and {_pct(measured.coverage_short)} of short open "
            f"interest; without a liquidation price (not drawn): {money(measured.unpriced_long)} long, "
            f"{money(measured.unpriced_short)} short")
    cv.text(left, top, note, fontsize=cv.font(8), color=cv.t["muted"], va="top")
    top, bottom = top + 44 * s, bottom + 40 * s
    gap = 24 * s
    pw, ph = (width - left - right - gap) / 2, height - top - bottom
    if pw < 40 or ph < 60:
        raise ValueError(f"a picture of {width} x {height} pixels is too small for the measured map")
    edges_u = np.arange(scene.rows + 1, dtype=np.float64)
    pu = float(scene.row_coord(scene.price))
    panels = {}
    for name, x0, (lng, sht), label in (
            ("estimated", left, (scene.long[:, -1], scene.short[:, -1]), "estimated notional per price row"),
            ("measured", left + pw + gap, (measured.long, measured.short), "measured notional per price row")):
        ax = cv.axes(x0, top, pw, ph)
        _steps(ax, edges_u, sht, 0.0, SHORT_COLOUR, horizontal=True)
        _steps(ax, edges_u, lng, 0.0, LONG_COLOUR, horizontal=True)
        ax.set_xlim(0, max(float(lng.max(initial=0)), float(sht.max(initial=0)), 1.0) * 1.05)
        ax.set_ylim(0, scene.rows)
        ax.axhline(pu, color=cv.t["line"], lw=cv.pt(max(1.0, round(1.2 * s))), zorder=3)
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: money(v)))
        ax.xaxis.set_major_locator(ticker.MaxNLocator(nbins=max(2, int(pw / (90 * s)))))
        ax.set_xlabel(label, color=cv.t["muted"], fontsize=cv.font(8))
        ax.set_title(name, color=cv.t["fg"], fontsize=cv.font(9))
        ax.grid(axis="x", color=cv.t["grid"], lw=0.5)
        ax.set_axisbelow(True)
        if name == "estimated":
            _price_ticks(ax, scene, ph, cv)
            ax.set_ylabel("price (log scale)", color=cv.t["muted"], fontsize=cv.font(8))
        else:
            ax.tick_params(axis="y", labelleft=False)
            ax.legend(handles=[Line2D([], [], color=SHORT_COLOUR, lw=6, label="shorts (liquidated above)"),
                               Line2D([], [], color=LONG_COLOUR, lw=6, label="longs (liquidated below)")],
                      loc="lower right", fontsize=cv.font(7.5), frameon=False, labelcolor=cv.t["fg"])
        panels[name] = _panel(ax, height)
    cv.save(path, scene, "measured map")
    return Layout(width, height, panels)
