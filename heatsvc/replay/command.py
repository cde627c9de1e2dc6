"""`heatsvc replay`: run the replay exchange on its own until Ctrl-C."""
from __future__ import annotations

import argparse
import time

from ..model.bars import format_time, parse_time
from .scenario import EXCHANGES, Faults, Limits, default_datasets
from .server import ReplayExchange


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Options of `heatsvc replay`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="dataset seconds per real second (default 1)")
    parser.add_argument("--start", default=None,
                        help="dataset time to start at, ISO (default 2025-10-10T00:00:00Z)")
    parser.add_argument("--archive-quirks", action="store_true",
                        help="metrics archive files repeat, skip and zero rows like real ones")
    parser.add_argument("--binance-weight", type=int, default=2400, help="Binance weight limit per minute")
    group = parser.add_argument_group("faults (probabilities per request, seeded)")
    for name, help_text in (("rate-429", "rate-limited answers"), ("rate-418", "bans"),
                            ("rate-1008", "Binance -1008 throttles"), ("rate-5xx", "server errors"),
                            ("timeout-rate", "requests held past client timeouts"),
                            ("malformed-rate", "invalid JSON bodies"), ("truncated-rate", "cut bodies"),
                            ("duplicate-rate", "duplicated history rows"), ("missing-rate", "missing history rows")):
        group.add_argument(f"--{name}", type=float, default=0.0, help=help_text)
    group.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    group.add_argument("--seed", type=int, default=0, help="fault seed")


def run(command: str, args: argparse.Namespace) -> int:
    """Serve until Ctrl-C, printing where each exchange answers."""
    faults = Faults(rate_429=args.rate_429, rate_418=args.rate_418, rate_1008=args.rate_1008,
                    rate_5xx=args.rate_5xx, latency_s=args.latency, timeout_rate=args.timeout_rate,
                    malformed_rate=args.malformed_rate, truncated_rate=args.truncated_rate,
                    duplicate_rate=args.duplicate_rate, missing_rate=args.missing_rate, seed=args.seed)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: {args.port} is not a port number")
    if args.binance_weight < 1:
        raise ValueError(f"--binance-weight: must be at least 1, got {args.binance_weight}")
    start = parse_time(args.start, "--start") if args.start else None
    replay = ReplayExchange(datasets=default_datasets(hyperliquid=True), start_ms=start, speed=args.speed, faults=faults, host=args.host, port=args.port,
                            limits=Limits(binance_weight=args.binance_weight), archive_quirks=args.archive_quirks)
    replay.start()
    try:
        print(f"replay exchange at {replay.url}, clock {format_time(replay.now_ms())} x{args.speed:g}")
        for exchange in EXCHANGES:
            print(f"  {exchange:11s} {replay.base_url(exchange)}")
        print(f"  archive     {replay.archive_url()}")
        print(f"  markets     {', '.join(replay.markets())}")
        print("Ctrl-C stops.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        replay.stop()
