"""`heatsvc heatmap`: compute one view locally (bundled data by default) and print its top zones.

The zones are estimated liquidation levels: market-risk context, not a forecast.
"""
from __future__ import annotations

import argparse
import json
import time

from rich.console import Console
from rich.table import Table

from . import datasets, engine
from .bars import format_time, parse_time


def add_view_arguments(parser: argparse.ArgumentParser) -> None:
    """The view options every command shares (MODEL.md sections 2, 7 and 9)."""
    parser.add_argument("--lookback", default="7d", help=f"one of {', '.join(engine.LOOKBACKS)} (default 7d)")
    parser.add_argument("--rows", type=int, default=400, help="price rows (default 400)")
    parser.add_argument("--columns", type=int, default=288, help="time columns (default 288)")
    parser.add_argument("--threshold", type=float, default=0.2, help="zone threshold in [0, 1) (default 0.2)")
    parser.add_argument("--top", type=int, default=5, help="zones listed on each side (default 5)")


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="recorded",
                        help="'recorded' (Binance HYPEUSDT around the 2025-10-10 crash, the default), "
                             "'synthetic:SYMBOL' (with --market exchange:SYMBOL or all:SYMBOL), or a .npz/.csv bars file")
    parser.add_argument("--market", help="the market to show; all:SYMBOL sums the exchanges (MODEL.md section 8)")
    parser.add_argument("--end", help="leave out bars at or after this ISO time (e.g. 2025-10-11T00:00Z)")
    add_view_arguments(parser)
    parser.add_argument("--backend", default="cython", choices=engine.BACKENDS)
    parser.add_argument("--json", metavar="FILE", help="also write the zone report as JSON")


def zone_table(title: str, zones, v_max: float) -> Table:
    table = Table(title=title, title_justify="left")
    for name, justify in (("peak", "right"), ("range", "right"), ("distance", "right"),
                          ("notional", "right"), ("strength", "left")):
        table.add_column(name, justify=justify)
    for z in zones:
        bar = "█" * max(1, round(20 * z.intensity))
        table.add_row(f"{z.peak_price:,.6g}", f"{z.price_low:,.6g} – {z.price_high:,.6g}",
                      f"{z.distance_pct:+.2f}%", f"{z.notional:,.0f}", bar)
    return table


def report_dict(report, heatmap, market: str) -> dict:
    zone = lambda z: {k: getattr(z, k) for k in z.__dataclass_fields__}  # noqa: E731
    return {"market": market, "data_time": format_time(heatmap.time_end_ms), "price": report.price,
            "above": [zone(z) for z in report.above], "below": [zone(z) for z in report.below],
            "total_above": report.total_above, "total_below": report.total_below, "skew": report.skew,
            "skew_label": report.skew_label, "magnet": zone(report.magnet) if report.magnet else None}


def run(command: str, args: argparse.Namespace) -> int:
    end_ms = parse_time(args.end) if args.end else None
    market, by_market = datasets.load(args.data, args.market, end_ms)
    view = dict(lookback=args.lookback, rows=args.rows, columns=args.columns, backend=args.backend)
    started = time.perf_counter()
    if market.startswith("all:"):
        heatmap = engine.compute_aggregate(by_market, **view)
    else:
        heatmap = engine.compute_heatmap(by_market[market], market=market, **view)
    elapsed = time.perf_counter() - started
    report = engine.zones(heatmap, threshold=args.threshold, top=args.top)
    console = Console()
    console.print(f"[bold]{market}[/] {args.lookback} to {format_time(heatmap.time_end_ms)}, "
                  f"price {report.price:,.6g} — {heatmap.rows} x {heatmap.columns} grid computed in "
                  f"{elapsed * 1e3:.1f} ms ({args.backend})")
    console.print(zone_table("Short liquidation zones above (squeeze)", report.above, report.v_max))
    console.print(zone_table("Long liquidation zones below (flush)", report.below, report.v_max))
    console.print(f"skew {report.skew:+.2f} {report.skew_label}; kept heat above {report.total_above:,.0f}, "
                  f"below {report.total_below:,.0f}")
    if report.magnet:
        m = report.magnet
        console.print(f"dominant magnet: {m.side} zone at {m.peak_price:,.6g} ({m.distance_pct:+.2f}%), "
                      f"notional {m.notional:,.0f}")
    console.print("[dim]Estimated liquidation levels: market-risk context, not a forecast.[/]")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report_dict(report, heatmap, market), f, indent=2)
    return 0
