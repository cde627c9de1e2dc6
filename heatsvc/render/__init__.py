"""`heatsvc render`: the heatmap, the liquidation map and the estimated-liquidations bars as PNG.

A thin layer over the model: local bars go through heatsvc.model.engine, a running server's answer comes
through the heatsvc.v1 API, and both become one Scene of plain arrays that the drawing functions
turn into a picture (matplotlib Figure on the Agg canvas, no pyplot state). What it draws are
estimated liquidation levels: market-risk context, not a forecast.
"""
from __future__ import annotations

import argparse
import os
import sys

from .. import datasets
from ..client import add_connection_arguments
from ..model import bars as barlib
from ..model import zones as zonelib
from .canvas import (CAPTION, HEAT_CMAP, KINDS, LONG_COLOUR, PRICE_LINE, SHORT_COLOUR, THEMES, Layout,  # noqa: F401
                     Panel)
from .heatmap import render_heatmap, render_map
from .measured import Measured, render_measured
from .scene import Scene, describe_market, scene_from_heatmap, scene_from_response, utc  # noqa: F401

EXCHANGES = tuple(datasets.EXCHANGE_SCALE)
RECORDED_MARKET = datasets.RECORDED_MARKET


def render(scene: Scene, path: str | os.PathLike, *, kind: str = "heatmap", width: int = 1200, height: int = 700,
           theme: str = "dark", stack_tiers: bool = False, measured: Measured | None = None) -> Layout:
    """Draw `scene` as `kind` ("heatmap", "map", or "measured" beside the `measured` map) into the PNG at `path`."""
    for name, value in (("width", width), ("height", height)):
        if isinstance(value, bool) or not isinstance(value, int) or not 200 <= value <= 8000:
            raise ValueError(f"{name} must be an integer number of pixels in [200, 8000], got {value!r}")
    if kind == "heatmap":
        if stack_tiers:
            raise ValueError("--stack-tiers applies to the liquidation map (--kind map)")
        return render_heatmap(scene, path, width=width, height=height, theme=theme)
    if kind == "map":
        return render_map(scene, path, width=width, height=height, theme=theme, stack_tiers=stack_tiers)
    if kind == "measured":
        if measured is None:
            raise ValueError("--kind measured needs a measured map: ask a server (--target) for a hyperliquid:COIN view")
        return render_measured(scene, measured, path, width=width, height=height, theme=theme)
    raise ValueError(f"kind {kind!r} is unknown; use one of {', '.join(KINDS)}")


# ---- sources -------------------------------------------------------------------------------------------

def local_scene(args: argparse.Namespace) -> Scene:
    """Compute the view with heatsvc.model.engine on local bars, cut at --end."""
    from ..model import engine

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


def fetch_scene(args: argparse.Namespace) -> tuple[Scene, Measured | None]:
    """Ask the server at --target for the view (GetHeatmap with candles, intensity and, for a stacked
    map, per-tier grids) and, for --kind measured, its measured map; grpc.RpcError propagates."""
    from ..client import connect, metadata
    from ..v1 import heatmap_service_pb2 as pb
    from ..v1 import heatmap_service_pb2_grpc as pb_grpc

    view = pb.View(market=args.market or "binance:BTCUSDT", lookback=args.lookback, rows=args.rows,
                   columns=args.columns)
    if args.price_range:
        view.price_range.low, view.price_range.high = args.price_range
    request = pb.GetHeatmapRequest(view=view, zone_options=pb.ZoneOptions(threshold=args.threshold, top=args.top),
                                   boost=args.boost, include_candles=True, include_intensity=True,
                                   include_tiers=args.kind == "map" and args.stack_tiers)
    with connect(args) as channel:
        stub = pb_grpc.HeatmapServiceStub(channel)
        resp = stub.GetHeatmap(request, timeout=args.timeout, metadata=metadata(args))
        measured = None
        if args.kind == "measured":
            m = stub.GetMeasuredMap(pb.GetMeasuredMapRequest(view=view), timeout=args.timeout, metadata=metadata(args))
            measured = Measured.from_message(m.map)
    return scene_from_response(resp, boost=args.boost), measured


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
                        help="heatmap (time x price, with estimated liquidations per column), map (the newest "
                             "column's heat per price row, with cumulative curves) or measured (that map beside the "
                             "measured positions' map of a hyperliquid:COIN market; needs --target)")
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
    if args.kind == "measured" and not args.target:
        raise ValueError("--kind measured draws a server's measured map: give --target HOST:PORT")
    if args.target and args.end:
        raise ValueError("--end cuts local data; a server (--target) serves its current data")
    if not args.output.lower().endswith(".png"):
        raise ValueError(f"--output {args.output!r} must end in .png")


def run(command: str, args: argparse.Namespace) -> int:
    check_args(args)
    if args.target:
        import grpc

        from ..client import EXIT_CODES, describe_error
        try:
            scene, measured = fetch_scene(args)
        except grpc.RpcError as error:
            print(describe_error(command, error, args.target), file=sys.stderr)
            return EXIT_CODES.get(error.code(), 1)
    else:
        scene, measured = local_scene(args), None
    render(scene, args.output, kind=args.kind, width=args.width, height=args.height, theme=args.theme,
           stack_tiers=args.stack_tiers, measured=measured)
    pair, exchange = describe_market(scene)
    print(f"wrote {args.output}: {args.width}x{args.height} {args.kind} of {pair} {exchange} {scene.lookback}, "
          f"data to {utc(scene.time_end_ms)} ({CAPTION})")
    return 0
