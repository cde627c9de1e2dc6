"""The fixed-layout canvas every picture is drawn on (matplotlib Figure on Agg, no pyplot state): panels
in image pixels, titles, price ticks on the log row axis, zone labels, and the atomic PNG write."""
from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from ..client import money, price_text
from .scene import Scene, describe_market, utc

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
KINDS = ("heatmap", "map", "measured")


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
    what = {"heatmap": "estimated liquidation heatmap", "map": "estimated liquidation map (newest column)",
            "measured": "estimated beside measured liquidation map"}[kind]
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


