"""The `heatsvc` command. Each subcommand lives in the module of its concept, which provides
`add_arguments(command, parser)` and `run(command, args) -> int`; this file only wires them up.

Everything heatsvc shows is an estimate of liquidation levels: market-risk context, not a forecast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "heatmap": ("heatsvc.local", "compute a heatmap locally (bundled data by default) and print its top zones"),
    "replay": ("heatsvc.replay", "run the replay exchange: Binance/Bybit/OKX REST dialects on loopback"),
    "serve": ("heatsvc.service", "serve the heatsvc.v1 gRPC API (--demo: replay data on 127.0.0.1:50051)"),
    "cluster": ("heatsvc.cluster.launcher", "run a local cluster: nats-server, replay exchange, shard owners and "
                                            "stateless edges (--demo; docs/SCALING.md)"),
    "snapshot": ("heatsvc.client", "ask a server for one view and print its summary (or write JSON)"),
    "zones": ("heatsvc.client", "ask a server for a view's ranked zones"),
    "watch": ("heatsvc.client", "subscribe to a view and redraw its zones on every update"),
    "alerts": ("heatsvc.client", "print a view's zone events as they come: new, swept, neared zones, magnet, skew"),
    "liquidations": ("heatsvc.tracker", "realised liquidations of a market: recent events, 1-minute and 1-hour "
                                        "totals, the day's largest (--follow: live)"),
    "compare": ("heatsvc.compare", "hold a server's estimate against the measured liquidation map of a market whose "
                                   "positions are public (hyperliquid:COIN); fit and save tier weights"),
    "render": ("heatsvc.render", "draw a heatmap or liquidation map as PNG"),
    "web": ("heatsvc.web.cli", "serve the live heatmap page: a gateway from the gRPC service to browsers"),
    "backtest": ("heatsvc.backtest.cli", "judge the heatmap against what happened (MODEL.md section 15) and write a report"),
}
DISCLAIMER = "Liquidation heatmaps are estimates: market-risk context, never a price forecast."
SUMMARY = "heatsvc: liquidation heatmaps from exchange derivatives data, computed locally or served over gRPC."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heatsvc", description=f"{SUMMARY} {DISCLAIMER}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:  # a module being built may be absent; the others still work
            if exc.name != module:
                raise
            continue
        command = sub.add_parser(name, help=help_text, description=f"{help_text}. {DISCLAIMER}")
        mod.add_arguments(name, command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module = importlib.import_module(COMMANDS[args.command][0])
    try:
        return int(module.run(args.command, args) or 0)
    except KeyboardInterrupt:
        return 130
    except ValueError as exc:
        print(f"heatsvc {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
