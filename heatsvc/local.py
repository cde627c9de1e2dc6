"""`heatsvc heatmap`: compute one view locally (bundled data by default) and print its top zones.

The zones are estimated liquidation levels: market-risk context, not a forecast.
"""
from __future__ import annotations

import argparse
import json
import time

from google.protobuf import json_format
from rich.console import Console

from . import datasets
from .model import engine
from .model.bars import parse_time
from .client import zone_table
from .service import messages
from .service.views import ViewKey, ZoneOpts


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
    report = messages.zone_report(ViewKey(market, tuple(by_market), args.lookback, args.rows, args.columns, None),
                                  heatmap, heatmap.price, ZoneOpts(args.threshold, args.top))
    console = Console()
    console.print(f"[bold]{market}[/] {args.lookback}: {heatmap.rows} x {heatmap.columns} grid computed in "
                  f"{elapsed * 1e3:.1f} ms ({args.backend})")
    console.print(zone_table(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(json_format.MessageToDict(report, preserving_proto_field_name=True), f, indent=2)
    return 0
