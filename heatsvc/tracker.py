"""`heatsvc liquidations`: the live liquidation tracker, a client of GetLiquidations and StreamLiquidations.

It shows a market's (or an aggregate's) recent realised liquidations, the 1-minute and 1-hour totals per
side, how much of the last hour the recorder heard (time not heard is missing, not zero: MODEL.md
section 12) and the largest liquidation of the day. Times follow the server's clock (the newest event
or bar it has), so the demo's replayed day reads as it happened. Without --follow it prints once.

Totals start from GetLiquidations over the day in 1-minute buckets; with --follow, the stream's new
events are added as they are committed (a batch committed between the two calls may be counted twice or
not at all: the tracker is a live view, GetLiquidations the record).
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from collections import deque

import grpc
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .client import (EXIT_CODES, add_connection_arguments, connect, describe_error, follow, metadata, money,
                     price_text)
from .v1 import heatmap_service_pb2 as pb
from .v1 import heatmap_service_pb2_grpc as pb_grpc

MIN = 60_000
DAY = 86_400_000
RECENT = 15
LARGEST = 100     # events asked for, to find the day's largest when the range starts the day before
SIDE = {pb.LIQUIDATION_SIDE_LONG: "long", pb.LIQUIDATION_SIDE_SHORT: "short"}


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--market", required=True, help="exchange:SYMBOL or all:SYMBOL, e.g. all:BTCUSDT")
    parser.add_argument("--target", default="127.0.0.1:50051", help="server address (default %(default)s)")
    parser.add_argument("--follow", action="store_true", help="keep the table live as liquidations come")
    parser.add_argument("--count", type=int, default=0, help="with --follow: stop after this many stream messages")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds for the first answers")
    add_connection_arguments(parser)


def ms(ts) -> int:
    return ts.seconds * 1000 + ts.nanos // 1_000_000


class Tracker:
    """Per-minute totals per side, the recent events and the day's largest, on the server's clock."""

    def __init__(self, market: str):
        self.market = market
        self.minutes: dict[int, list[float]] = {}      # minute start -> [long, short] notional
        self.coverage: dict[int, float] = {}
        self.recent: deque[pb.Liquidation] = deque(maxlen=RECENT)
        self.largest: pb.Liquidation | None = None
        self.now_ms = 0
        self.lower_bound: list[str] = []

    def load(self, resp: pb.GetLiquidationsResponse, now_ms: int, day_ms: int) -> None:
        self.now_ms = max(self.now_ms, now_ms)
        self.lower_bound = list(resp.lower_bound_exchanges)
        for b in resp.buckets:
            t = ms(b.start_time)
            self.minutes[t] = [0.0 if math.isnan(b.long_notional) else b.long_notional,
                               0.0 if math.isnan(b.short_notional) else b.short_notional]
            self.coverage[t] = b.coverage
        today = [e for e in resp.largest if ms(e.time) >= day_ms]   # largest first
        if today:
            self.largest = today[0]

    def add(self, events, count: bool) -> None:
        """Events of the stream: listed as recent; `count`: also added to the totals (new ones only)."""
        for e in events:
            t = ms(e.time)
            self.now_ms = max(self.now_ms, t)
            self.recent.appendleft(e)
            if count:
                row = self.minutes.setdefault(t - t % MIN, [0.0, 0.0])
                row[0 if e.side == pb.LIQUIDATION_SIDE_LONG else 1] += e.notional
            if (self.largest is None or e.notional > self.largest.notional) and t >= self.now_ms - self.now_ms % DAY:
                self.largest = e

    def totals(self, span_ms: int) -> tuple[float, float]:
        since = self.now_ms - span_ms
        rows = [v for t, v in self.minutes.items() if t + MIN > since]
        return sum(r[0] for r in rows), sum(r[1] for r in rows)

    def heard(self, span_ms: int) -> float | None:
        since = self.now_ms - span_ms
        cov = [c for t, c in self.coverage.items() if t + MIN > since and t <= self.now_ms]
        return sum(cov) / len(cov) if cov else None

    def render(self, note: str = "") -> Group:
        clock = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(self.now_ms / 1000))
        head = Text(f"{self.market} realised liquidations at {clock}{note}", style="bold")
        totals = Table(box=None)
        for column in ("", "longs liquidated", "shorts liquidated"):
            totals.add_column(column, justify="right")
        heard = self.heard(60 * MIN)
        for label, span in (("last 1 min", MIN), ("last 1 h", 60 * MIN)):
            long, short = self.totals(span)
            if heard:
                totals.add_row(label, money(long), money(short))
            else:   # nothing heard: missing, not zero
                totals.add_row(label, "missing", "missing")
        lines = [head, totals, Text("heard " + ("nothing (no coverage: missing, not zero)" if not heard else
                                                f"{heard:.0%} of the last hour"))]
        if self.lower_bound:
            lines.append(Text(f"{', '.join(self.lower_bound)}: at most one a symbol a second (a lower bound)",
                              style="dim"))
        if self.largest is not None:
            e = self.largest
            lines.append(Text(f"largest today: {money(e.notional)} {SIDE.get(e.side, '?')} {e.market} at "
                              f"{price_text(e.price)}, {time.strftime('%H:%M:%S', time.gmtime(ms(e.time) / 1000))}"))
        recent = Table(title="recent", box=None)
        for column in ("time", "market", "side", "price", "notional"):
            recent.add_column(column, justify="right")
        for e in self.recent:
            recent.add_row(time.strftime("%H:%M:%S", time.gmtime(ms(e.time) / 1000)), e.market,
                           Text(SIDE.get(e.side, "?"), style="red" if e.side == pb.LIQUIDATION_SIDE_LONG else "green"),
                           price_text(e.price), money(e.notional))
        lines.append(recent)
        return Group(*lines)


def server_now(stub, args) -> int:
    """The server's clock, read off its newest bar (the demo runs on a replayed clock)."""
    markets = stub.ListMarkets(pb.ListMarketsRequest(), timeout=args.timeout, metadata=metadata(args)).markets
    times = [ms(m.last_bar_time) for m in markets if m.HasField("last_bar_time")]
    return max(times) + 5 * MIN if times else int(time.time() * 1000)


def run(command: str, args: argparse.Namespace) -> int:
    console = Console()
    tracker = Tracker(args.market)
    with connect(args) as channel:
        stub = pb_grpc.HeatmapServiceStub(channel)
        try:
            stream = stub.StreamLiquidations(pb.StreamLiquidationsRequest(markets=[args.market], snapshot=RECENT),
                                             metadata=metadata(args))
            snapshot = next(stream)
            now = max([server_now(stub, args)] + [ms(e.time) for e in snapshot.events])
            day = now - now % DAY
            start = min(day, now - now % MIN - 60 * MIN)   # the day, and the last hour even just after midnight
            request = pb.GetLiquidationsRequest(market=args.market, largest=LARGEST)
            request.start_time.FromMilliseconds(start)
            request.end_time.FromMilliseconds(max(now - now % MIN + MIN, start + MIN))
            request.bucket.FromSeconds(60)
            tracker.load(stub.GetLiquidations(request, timeout=args.timeout, metadata=metadata(args)), now, day)
            tracker.add(snapshot.events, count=False)
            if not args.follow:
                stream.cancel()
                console.print(tracker.render())
                return 0
            with Live(tracker.render(), console=console, auto_refresh=False) as live:
                def show(msg):
                    tracker.add(msg.events, count=msg.kind == pb.UPDATE_KIND_LIQUIDATIONS)
                    note = f" (too slow: {msg.skipped_updates} updates skipped)" if msg.gap_skipped else ""
                    live.update(tracker.render(note), refresh=True)
                return follow(stream, args, show)
        except grpc.RpcError as error:
            print(describe_error(command, error, args.target), file=sys.stderr)
            return EXIT_CODES.get(error.code(), 1)
