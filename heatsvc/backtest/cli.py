"""`heatsvc backtest`: judge the heatmap against what happened (MODEL.md section 15) and write the report.

The heatmap is an estimate of liquidation levels, market-risk context, not a forecast; this command
measures how well that estimate matched the liquidations that followed, with intervals.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

from .. import datasets
from ..model import bars as barlib
from . import report, truth
from . import run as evaluation

SOURCES = {"recorded": "the bundled recorded data: Binance USD-M public klines and metrics archive"}


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--market", help="the market, e.g. binance:BTCUSDT (required with --store; "
                                         "default binance:HYPEUSDT for the recorded data)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--data", help="'recorded' (the default), 'synthetic:SYMBOL' or a .npz/.csv bars file")
    source.add_argument("--store", metavar="PATH", help="a heatsvc SQLite store (as filled by heatsvc serve)")
    parser.add_argument("--lookback", default="7d", help="lookback(s), comma-separated, e.g. 1d,3d,7d (default 7d)")
    parser.add_argument("--horizon", default="24h", help="how far ahead what happened is counted (default 24h)")
    parser.add_argument("--every", default="1h", help="time between evaluation times (default 1h)")
    parser.add_argument("--start", help="leave out bars before this ISO time")
    parser.add_argument("--end", help="leave out bars at or after this ISO time")
    parser.add_argument("--rows", type=int, default=400, help="price rows of each view (default 400)")
    parser.add_argument("--block", default="24h", help="bootstrap block length (default 24h)")
    parser.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples (default 2000)")
    parser.add_argument("--seed", type=int, default=15, help="bootstrap seed (default 15)")
    parser.add_argument("--sensitivity", action=argparse.BooleanOptionalAction, default=True,
                        help="evaluate the declared tier mixes out of sample (default on)")
    parser.add_argument("--out", default="backtest", help="directory for ACCURACY.md, accuracy.json and the "
                                                          "plots (default ./backtest)")


def settings(args: argparse.Namespace) -> evaluation.Settings:
    """The run's settings from the options, with a clear error naming a bad one."""
    if not 1 <= args.rows <= 10_000:
        raise ValueError(f"--rows: must be in [1, 10000], got {args.rows}")
    if not 10 <= args.resamples <= 100_000:
        raise ValueError(f"--resamples: must be in [10, 100000], got {args.resamples}")
    every = evaluation.parse_duration(args.every, "--every")
    return evaluation.Settings(horizon_ms=evaluation.parse_duration(args.horizon, "--horizon"), every_ms=every,
                        rows=args.rows, block_ms=evaluation.parse_duration(args.block, "--block"),
                        resamples=args.resamples, seed=args.seed, sensitivity=args.sensitivity)


def load(args: argparse.Namespace):
    """(market, bars, source description, realised liquidations or None, why none) from the options."""
    if args.store:
        if not args.market:
            raise ValueError("--market: required with --store (e.g. --market binance:BTCUSDT)")
        path = Path(args.store)
        if not path.is_file():
            raise ValueError(f"--store: {args.store!r} is not an existing store file")
        from ..store import Store
        with Store(path) as store:
            known = store.markets()
            if args.market not in known:
                raise ValueError(f"--market: {args.market!r} is not in the store {args.store!r}; it holds "
                                 f"{', '.join(known) or 'no markets'}")
            bars = store.load(args.market)
            realised = truth.load_realised(store, args.market)
        note = "none: the store records no liquidations yet (issue 13), so every horizon uses the proxy."
        return args.market, bars, f"store {args.store}", realised, note
    data = args.data or "recorded"
    if (args.market or "").startswith("all:"):
        raise ValueError(f"--market: {args.market!r} is an aggregate; the backtest judges one market at a time "
                         "(the proxy needs that market's own open interest)")
    market, by_market = datasets.load(data, args.market)
    source = SOURCES.get(data, "seeded synthetic bars" if data.startswith("synthetic") else f"bars file {data}")
    note = "none: this data has no recorded liquidations, so every horizon uses the proxy."
    return market, by_market[market], source, None, note


def _cut(bars: dict, args: argparse.Namespace, market: str) -> dict:
    t = np.asarray(bars["time_ms"])
    keep = np.ones(len(t), dtype=bool)
    if args.start:
        keep &= t >= barlib.parse_time(args.start, "--start")
    if args.end:
        keep &= t < barlib.parse_time(args.end, "--end")
    if not keep.any():
        raise ValueError(f"--start/--end: {market} has no bars in that range")
    return {k: np.asarray(v)[keep] for k, v in bars.items()}


def command_line(args: argparse.Namespace, lookbacks: list[str]) -> str:
    """The command that reproduces this run, as the report prints it."""
    parts = ["heatsvc", "backtest"]
    parts += ["--store", args.store, "--market", args.market] if args.store else ["--data", args.data or "recorded"]
    if args.market and not args.store:
        parts += ["--market", args.market]
    parts += ["--lookback", ",".join(lookbacks), "--horizon", args.horizon, "--every", args.every]
    for option in ("start", "end"):
        if getattr(args, option):
            parts += [f"--{option}", getattr(args, option)]
    defaults = {"rows": 400, "block": "24h", "resamples": 2000, "seed": 15}
    parts += [x for k, v in defaults.items() if getattr(args, k) != v for x in (f"--{k}", str(getattr(args, k)))]
    if not args.sensitivity:
        parts.append("--no-sensitivity")
    return shlex.join(parts + ["--out", args.out])


def run_command(args: argparse.Namespace) -> tuple[dict, dict]:
    """Run the backtest the options describe and write its outputs; returns the document and the paths."""
    lookbacks = evaluation.parse_lookbacks(args.lookback)
    s = settings(args)
    market, bars, source, realised, note = load(args)
    bars = _cut(bars, args, market)
    _, series, summary, seconds = evaluation.run(bars, market, lookbacks, s, realised)
    doc = report.document(market=market, source=source, command=command_line(args, lookbacks), bars=bars,
                          lookbacks=lookbacks, settings=s, series=series, summary=summary, seconds=seconds,
                          realised_note=note)
    return doc, report.write(doc, args.out)


def run(command: str, args: argparse.Namespace) -> int:
    doc, paths = run_command(args)
    print(doc["verdict"]["one_line"])
    for line in doc["verdict"]["details"]:
        print(f"  {line}")
    rt = doc["runtime"]
    print(f"{rt['views']} views in {rt['seconds']:g} s; wrote {', '.join(str(p) for p in paths.values())}",
          file=sys.stderr)
    return 0
