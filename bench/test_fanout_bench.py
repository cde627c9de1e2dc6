"""Fan-out benchmarks: a market refresh to 10, 100 and 1,000 StreamHeatmap subscribers (zone reports
only, and full 400 x 288 grids), and the server's memory per idle subscriber.

The server is bench/harness.py in a process of its own (replay exchange, store, refresher, grpc.aio
server on 127.0.0.1). Subscribers run in a few client processes, each subscriber on a channel (TCP
connection) of its own, as separate trading systems would. Arrival times are compared with the
server's step times through time.monotonic() (CLOCK_MONOTONIC, system-wide on Linux).

Full figures: `pytest bench/test_fanout_bench.py --benchmark-json=fanout.json`, then
`python bench/report.py fanout fanout.json`. With --benchmark-disable it is a quick smoke test.
"""
from __future__ import annotations

import asyncio
import json
import resource
import sys
import time

import grpc
import numpy as np
import pytest
from harness import BUDGET_S, CLIENT_OPTIONS, MARKET, Spawner, percentiles

from heatsvc.v1 import heatmap_service_pb2 as pb
from heatsvc.v1 import heatmap_service_pb2_grpc as pb_grpc

CLIENT_PROCESSES = 4           # subscribers are spread over this many client processes
SERVER = {"limits": {"max_streams": 2000}}   # room for 1,000 subscribers and stragglers of a previous case
GRID = (400, 288)              # the default view: rows x columns


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def split(n: int, parts: int) -> list[int]:
    """n subscribers over at most `parts` processes, as evenly as possible."""
    parts = min(n, parts)
    return [n // parts + (i < n % parts) for i in range(parts)]


# ---- the client processes ---------------------------------------------------------------------------

def subscribers(target: str, n: str, zones_only: str, updates: str) -> None:
    """n StreamHeatmap subscribers of MARKET 1d, each on its own channel. Prints {"ready"} once every
    snapshot is in, then, for the i-th update once all n have it, their monotonic arrival times, the
    sequences they got and any error (out of sequence, gap, grid present or missing). Ends the streams
    at a line (or EOF) on stdin and prints {"done"}."""
    n, updates, zones_only = int(n), int(updates), zones_only == "1"
    request = pb.StreamHeatmapRequest(view=pb.View(market=MARKET, lookback="1d"), zones_only=zones_only)

    def check(msg, expected: int) -> str | None:
        if msg is grpc.aio.EOF:
            return f"stream ended before sequence {expected}"
        if msg.sequence != expected or msg.gap_skipped:
            return f"got sequence {msg.sequence} (gap_skipped={msg.gap_skipped}), expected {expected}"
        if msg.HasField("heatmap") == zones_only:
            return f"sequence {msg.sequence}: heatmap {'present' if zones_only else 'missing'}"
        grid = msg.heatmap.long_notional
        if not zones_only and (grid.rows, grid.columns) != GRID:
            return f"sequence {msg.sequence}: grid {grid.rows} x {grid.columns}, expected {GRID}"
        if msg.zones.market != MARKET:
            return f"sequence {msg.sequence}: zones of {msg.zones.market!r}"
        return None

    async def main():
        arrivals = [[] for _ in range(updates)]
        sequences = [set() for _ in range(updates)]
        errors: list[str] = []
        joined = 0

        async def subscriber(channel):
            nonlocal joined
            call = pb_grpc.HeatmapServiceStub(channel).StreamHeatmap(request, timeout=BUDGET_S)
            first = await call.read()
            if first is grpc.aio.EOF or first.kind != pb.UPDATE_KIND_SNAPSHOT:
                errors.append(f"no snapshot first: {first}")
                return
            joined += 1
            if joined == n:
                print(json.dumps({"ready": n, "sequence": first.sequence, "cpu_s": cpu_s()}), flush=True)
            for i in range(updates):
                msg = await call.read()
                now = time.monotonic()
                if error := check(msg, first.sequence + i + 1):
                    errors.append(error)
                    if msg is grpc.aio.EOF:
                        return
                arrivals[i].append(now)
                sequences[i].add(msg.sequence)
                if len(arrivals[i]) == n:
                    print(json.dumps({"index": i, "arrivals": arrivals[i], "sequences": sorted(sequences[i]),
                                      "bytes": msg.ByteSize(), "errors": errors[:5], "cpu_s": cpu_s()}), flush=True)
            await release
            call.cancel()

        release = asyncio.ensure_future(asyncio.to_thread(sys.stdin.readline))   # stay subscribed until told
        channels = [grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(n)]
        try:
            await asyncio.gather(*(subscriber(c) for c in channels))
        finally:
            await asyncio.gather(*(c.close() for c in channels))
        print(json.dumps({"done": n, "errors": errors[:5]}), flush=True)

    asyncio.run(main())


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One harness server for the fan-out cases (each case's subscribers leave before the next)."""
    spawner = Spawner(tmp_path_factory.mktemp("fanout"))
    try:
        yield spawner.server(**SERVER)
    finally:
        spawner.close()


def settle(proc, subscribers: int) -> dict:
    """The server's stats (after a gc) once it holds exactly `subscribers` (a previous case's streams
    end shortly after its client processes exit)."""
    deadline = time.monotonic() + 30
    while (stats := proc.send(cmd="gc"))["subscribers"] != subscribers and time.monotonic() < deadline:
        time.sleep(0.05)
    return stats


def connect(spawn, target: str, n: int, zones_only: bool, updates: int) -> tuple[list, list[int]]:
    """Start n subscribers over the client processes; return them once every snapshot is in."""
    sizes = split(n, CLIENT_PROCESSES)
    clients = [spawn("test_fanout_bench", "subscribers", target, size, int(zones_only), updates) for size in sizes]
    ready = [c.read_json() for c in clients]
    assert [r.get("ready") for r in ready] == sizes, ready
    assert len({r["sequence"] for r in ready}) == 1, ready   # every snapshot shows the same state
    return clients, ready


# ---- 1. refresh -> every subscriber -----------------------------------------------------------------

def fanout(benchmark, proc, target: str, spawn, n: int, zones_only: bool) -> list[tuple]:
    """n subscribers connect, then each update is stepped on the server (`proc`) and awaited until every
    subscriber has it; checks and records the figures; returns each update's (stats before, step answer,
    client lines, stats after)."""
    if benchmark.disabled:
        n, updates, warmup = min(n, 40), 2, 0
    else:
        updates, warmup = (3, 1) if n == 1000 and not zones_only else (10, 1)
    idle = settle(proc, 0)
    clients, ready = connect(spawn, target, n, zones_only, warmup + updates)
    joined = settle(proc, n)
    assert joined["subscribers"] == n and joined["topics"] == 1, joined
    rounds = []

    def one_update():
        before = proc.send(cmd="stats")
        step = proc.send(cmd="step")
        lines = [c.read_json() for c in clients]
        rounds.append((before, step, lines, proc.send(cmd="stats")))

    benchmark.pedantic(one_update, rounds=updates, warmup_rounds=warmup, iterations=1)
    while len(rounds) < warmup + updates:   # a disabled benchmark runs the function once
        one_update()
    done = [c.send(cmd="end") for c in clients]
    assert all(d["done"] == size and not d["errors"] for d, size in zip(done, split(n, CLIENT_PROCESSES))), done
    first = ready[0]["sequence"]
    for i, (before, step, lines, after) in enumerate(rounds):
        assert all(ln["index"] == i and not ln["errors"] for ln in lines), lines
        assert {s for ln in lines for s in ln["sequences"]} == {first + i + 1}    # every one, in sequence
        assert sum(len(ln["arrivals"]) for ln in lines) == n
        assert min(t for ln in lines for t in ln["arrivals"]) > step["t0"]
        assert after["updates"] == before["updates"] + 1
    measured = rounds[warmup:]
    arrivals = [np.array([t for ln in lines for t in ln["arrivals"]]) for _, _, lines, _ in measured]
    since_step = np.concatenate([a - step["t0"] for a, (_, step, _, _) in zip(arrivals, measured)]) * 1e3
    since_refresh = np.concatenate([a - step["t1"] for a, (_, step, _, _) in zip(arrivals, measured)]) * 1e3
    server_cpu = [(a["cpu_s"] - b["cpu_s"]) * 1e3 for b, _, _, a in measured]
    loop_cpu = [(a["loop_cpu_s"] - b["loop_cpu_s"]) * 1e3 for b, _, _, a in measured]
    cpu_marks = [[r["cpu_s"] for r in ready]] + [[ln["cpu_s"] for ln in lines] for _, _, lines, _ in rounds]
    client_cpu = [sum(np.subtract(cpu_marks[i + 1], cpu_marks[i])) * 1e3 for i in range(warmup, len(rounds))]
    wall = [(a.max() - step["t0"]) * 1e3 for a, (_, step, _, _) in zip(arrivals, measured)]
    benchmark.extra_info.update(
        subscribers=n, zones_only=zones_only, client_processes=len(clients), updates=len(measured),
        message_bytes=measured[-1][2][0]["bytes"],
        **{k: round(v, 2) for k, v in percentiles(since_step).items()},
        **{f"after_refresh_{k}": round(v, 2) for k, v in percentiles(since_refresh).items()},
        refresh_ms=round(float(np.median([(s["t1"] - s["t0"]) * 1e3 for _, s, _, _ in measured])), 2),
        server_cpu_ms_per_update=round(float(np.median(server_cpu)), 1),
        server_loop_cpu_ms_per_update=round(float(np.median(loop_cpu)), 1),
        clients_cpu_ms_per_update=round(float(np.median(client_cpu)), 1),
        cpu_load_cores=round(float(np.median(np.add(server_cpu, client_cpu) / np.array(wall))), 2),
        rss_before_mb=round(idle["rss_mb"], 1), rss_subscribed_mb=round(joined["rss_mb"], 1),
        rss_peak_mb=round(max(a["rss_mb"] for *_, a in measured), 1),
        server_tasks=joined["tasks"],
        note="p50/p99/max_ms: arrival since the replay clock step (the refresh's HTTP round trips included); "
             "after_refresh_*: since refresh() returned; over every subscriber and measured update. "
             "*_cpu_ms_per_update: medians over the updates (server: every thread; loop: the event loop's thread). "
             "cpu_load_cores: (server + clients CPU) / time to the last arrival.")
    return rounds


CASES = [(10, True), (100, True), (1000, True), (10, False), (100, False), (1000, False)]


@pytest.mark.parametrize("n, zones_only", CASES,
                         ids=[f"{n}-{'zones_only' if z else 'full_400x288'}" for n, z in CASES])
def test_refresh_fanout(benchmark, server, spawn, n, zones_only):
    benchmark.group = f"refresh -> {'zones_only' if zones_only else 'full 400x288'} subscribers"
    rounds = fanout(benchmark, *server, spawn, n, zones_only)
    benchmark.extra_info["server"] = "heatsvc"
    # one computation per update, however many subscribers read it
    assert all(after["computations"] == before["computations"] + 1 for before, _, _, after in rounds)


def test_fanout_grpc_floor(benchmark, spawn):
    """The same 1,000 zone subscribers and clients against bench/floor.py, a grpc.aio server that only
    sends fixed bytes: gRPC's and the machine's share of the figures above."""
    benchmark.group = "refresh -> zones_only subscribers"
    proc = spawn("floor", "run")
    fanout(benchmark, proc, proc.read_json()["target"], spawn, 1000, True)
    benchmark.extra_info["server"] = "grpc.aio floor (bench/floor.py)"


# ---- 2. memory per idle subscriber ------------------------------------------------------------------

@pytest.mark.parametrize("n, zones_only", [(1000, True), (100, False)], ids=["1000-zones_only", "100-full_400x288"])
def test_idle_subscriber_memory(benchmark, spawn, n, zones_only):
    """Server RSS before and after n subscribers have connected and received their snapshot, per subscriber.
    A first subscriber creates the stream's topic (and the view) so only what each subscriber adds is counted."""
    if benchmark.disabled:
        n = min(n, 50)
    benchmark.group = "idle subscribers"
    proc, target = spawn.server(**SERVER)
    connect(spawn, target, 1, zones_only, 1)
    before = proc.send(cmd="gc")
    clients = []
    benchmark.pedantic(lambda: clients.extend(connect(spawn, target, n, zones_only, 1)[0]), rounds=1, iterations=1)
    after = proc.send(cmd="gc")
    assert after["subscribers"] == n + 1 and after["streams"] == n + 1 and after["topics"] == 1, after
    per_kb = (after["rss_mb"] - before["rss_mb"]) * 1024 / n
    benchmark.extra_info.update(
        subscribers=n, zones_only=zones_only, rss_before_mb=round(before["rss_mb"], 1),
        rss_after_mb=round(after["rss_mb"], 1), kb_per_subscriber=round(per_kb, 1),
        tasks_per_subscriber=round((after["tasks"] - before["tasks"]) / n, 2), target_kb=50)
    proc.send(cmd="step")    # the idle streams still work: every one gets the update
    got = [c.read_json() for c in clients]
    assert all(g["index"] == 0 and not g["errors"] for g in got), got
    assert sum(len(g["arrivals"]) for g in got) == n
    assert all(not c.send(cmd="end")["errors"] for c in clients)
