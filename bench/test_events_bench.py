"""Zone-event benchmarks (MODEL.md section 13): computing the events of 1,000 views for one refresh, and
delivering a refresh's events to 1,000 StreamZoneEvents subscribers.

Delivery runs the harness server (bench/harness.py) in its own process and the subscribers in four
client processes, each subscriber on a channel of its own, as bench/test_fanout_bench.py does. A refresh
publishes a message only when one of the view's events happened, so the replay is stepped bar by bar
and every message that came is timed from the refresh that made it.

    pytest bench/test_events_bench.py -s --benchmark-json=events.json
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
import numpy as np
import pytest
from harness import BUDGET_S, CLIENT_OPTIONS, MARKET, Spawner, percentiles
from test_fanout_bench import CLIENT_PROCESSES, SERVER, split

from heatsvc import datasets
from heatsvc.model import bars as barlib
from heatsvc.model import engine
from heatsvc.model.events import Traded, first_near_state, zone_events
from heatsvc.model.zones import zones
from heatsvc.v1 import heatmap_service_pb2 as pb
from heatsvc.v1 import heatmap_service_pb2_grpc as pb_grpc

VIEWS = 1000


# ---- 1. the events of 1,000 views ------------------------------------------------------------------

@pytest.fixture(scope="module")
def view_pairs():
    """Distinct (previous, current) heatmaps of one bar apart: 9 synthetic markets x 9 lookbacks."""
    pairs = []
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        for exchange in ("binance", "bybit", "okx"):
            b = barlib.check(datasets.synthetic_bars(symbol, exchange, days=365))
            prev = {k: v[:-1] for k, v in b.items()}
            for lb in engine.LOOKBACKS:
                pairs.append((engine.compute_heatmap(prev, lookback=lb), engine.compute_heatmap(b, lookback=lb),
                              Traded(high=float(b["high"][-1]), low=float(b["low"][-1]))))
    return pairs


def test_events_for_1000_views(benchmark, view_pairs):
    """What the service does per view when its market refreshes: read the new report (section 9) and
    compare it with the previous one (section 13). The previous reports are already read."""
    benchmark.group = "zone events"
    views = [view_pairs[i % len(view_pairs)] for i in range(VIEWS)]
    previous = [zones(p) for p, _, _ in views]
    states = [first_near_state(r) for r in previous]

    def refresh():
        count = 0
        for (_, cur, traded), prev, state in zip(views, previous, states):
            events, _ = zone_events(prev, zones(cur), traded, state)
            count += len(events)
        return count

    events = benchmark.pedantic(refresh, rounds=3 if benchmark.disabled else 15, iterations=1, warmup_rounds=1)
    assert events > 0
    benchmark.extra_info.update(views=VIEWS, distinct=len(view_pairs), events=events,
                                note="per refresh: 1,000 zone reports read (400 rows) and compared")


def test_no_events_on_a_repeated_version(view_pairs):
    """The same data version read twice tells nothing."""
    for _, cur, _ in view_pairs:
        rep = zones(cur)
        assert zone_events(rep, rep, None, first_near_state(rep))[0] == []


# ---- 2. a refresh's events to 1,000 subscribers ----------------------------------------------------

def subscribers(target: str, n: str) -> None:
    """n StreamZoneEvents subscribers of MARKET 1d, each on its own channel. Prints {"ready"} once every
    snapshot is in; at a line on stdin ends the streams and prints every message's arrivals by sequence."""
    n = int(n)
    request = pb.StreamZoneEventsRequest(views=[pb.View(market=MARKET, lookback="1d")])

    async def main():
        arrivals: dict[int, list[float]] = {}
        sizes: dict[int, int] = {}
        errors: list[str] = []
        joined = 0

        async def subscriber(channel):
            nonlocal joined
            call = pb_grpc.HeatmapServiceStub(channel).StreamZoneEvents(request, timeout=BUDGET_S)
            first = await call.read()
            if first is grpc.aio.EOF or first.kind != pb.UPDATE_KIND_SNAPSHOT:
                errors.append(f"no snapshot first: {first}")
                return
            joined += 1
            if joined == n:
                print(json.dumps({"ready": n, "sequence": first.sequence}), flush=True)
            while (msg := await call.read()) is not grpc.aio.EOF:   # read() and async-for do not mix
                arrivals.setdefault(msg.sequence, []).append(time.monotonic())
                sizes[msg.sequence] = msg.ByteSize()
                if msg.gap_skipped or not msg.events:
                    errors.append(f"sequence {msg.sequence}: gap_skipped={msg.gap_skipped}, {len(msg.events)} events")

        channels = [grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(n)]
        tasks = [asyncio.ensure_future(subscriber(c)) for c in channels]
        await asyncio.to_thread(sys.stdin.readline)   # stay subscribed until told
        for t in tasks:
            t.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if not isinstance(outcome, (asyncio.CancelledError, type(None))):
                errors.append(f"subscriber failed: {outcome!r}")
        await asyncio.gather(*(c.close() for c in channels))
        print(json.dumps({"done": n, "errors": errors[:5], "arrivals": arrivals, "bytes": sizes}), flush=True)

    asyncio.run(main())


def test_events_to_1000_subscribers(benchmark, tmp_path):
    n, steps = (40, 6) if benchmark.disabled else (1000, 36)
    benchmark.group = "zone events"
    spawner = Spawner(tmp_path)
    try:
        proc, target = spawner.server(**SERVER)
        sizes = split(n, CLIENT_PROCESSES)
        clients = [spawner("test_events_bench", "subscribers", target, size) for size in sizes]
        ready = [c.read_json() for c in clients]
        assert [r.get("ready") for r in ready] == sizes, ready
        marks = []

        def one_step():
            marks.append(proc.send(cmd="step", wait=False))
            time.sleep(1.0)   # every subscriber has what this refresh published

        benchmark.pedantic(one_step, rounds=steps, iterations=1)
        while len(marks) < steps:   # a disabled benchmark runs the function once
            one_step()
        done = [c.send(cmd="end") for c in clients]
    finally:
        spawner.close()
    assert all(d["done"] == size and not d["errors"] for d, size in zip(done, sizes)), [d["errors"] for d in done]
    sequences = sorted({int(s) for d in done for s in d["arrivals"]})
    first = ready[0]["sequence"]
    assert sequences == list(range(first + 1, first + 1 + len(sequences))), "no message skipped"
    latencies = []
    for seq in sequences:
        times = [t for d in done for t in d["arrivals"].get(str(seq), [])]
        assert len(times) == n, f"sequence {seq}: {len(times)} of {n} subscribers"
        made = max((m for m in marks if m["t1"] <= min(times)), key=lambda m: m["t1"])   # the refresh that made it
        latencies += [(t - made["t1"]) * 1e3 for t in times]
    benchmark.extra_info.update(subscribers=n, steps=steps, messages=len(sequences),
                                message_bytes=int(np.median([b for d in done for b in d["bytes"].values()]))
                                if sequences else 0,
                                **({k: round(v, 2) for k, v in percentiles(latencies).items()} if latencies else {}),
                                note="latency: arrival since the refresh that published the events returned")
    if not benchmark.disabled:
        assert len(sequences) >= steps // 4, "the replayed bars make events on most refreshes"
