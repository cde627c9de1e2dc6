"""Service benchmarks (pytest-benchmark) against a real heatsvc.v1 server on 127.0.0.1 fed by the real
replay exchange: GetZones latency, refresh-to-subscriber fan-out, and the server's memory while a
subscriber stalls. Clients, and for the memory figure the server too, run in their own processes: each
runs one function of this file through `python -c`. With --benchmark-disable it is a quick smoke test.

Arrival times are compared across processes with time.monotonic() (CLOCK_MONOTONIC, system-wide on Linux).
A refresh includes the refresher's HTTP round trips to the replay exchange, so the fan-out figures are
also given from the moment refresh() returns.
"""
from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
from test_service import START, STEP, Stack, small_datasets  # the service tests' real stack

from heatsvc.replay import ReplayExchange
from heatsvc.v1 import heatmap_service_pb2 as pb
from heatsvc.v1 import heatmap_service_pb2_grpc as pb_grpc

MARKET = "binance:BTCUSDT"
CLIENT_OPTIONS = [("grpc.max_receive_message_length", -1)]
CLIENT_PROCESSES = 4         # the fan-out subscribers are spread over this many processes
BUDGET_S = 180               # deadline of every client call and stream: nothing waits for ever
BIG = (2000, 288)            # the stalled subscriber's view: ~4.6 MB a message, so a leak would show


def zones_request() -> pb.GetZonesRequest:
    return pb.GetZonesRequest(view=pb.View(market=MARKET, lookback="1d"))


def percentiles(values_ms) -> dict[str, float]:
    v = np.asarray(values_ms, dtype=float)
    return {"first_ms": float(v.min()), "p50_ms": float(np.percentile(v, 50)),
            "p99_ms": float(np.percentile(v, 99)), "max_ms": float(v.max())}


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


# ---- the child processes ------------------------------------------------------------------------

def zones_client(target: str, calls: str) -> None:
    """GetZones of one cached view, `calls` times back to back; prints the latencies (ms) as JSON."""
    stub = pb_grpc.HeatmapServiceStub(grpc.insecure_channel(target, options=CLIENT_OPTIONS))
    request = zones_request()
    for _ in range(50):  # connection and server caches warm
        assert stub.GetZones(request, timeout=10).zones.market == MARKET
    latencies = []
    deadline = time.monotonic() + BUDGET_S
    for _ in range(int(calls)):
        t = time.perf_counter()
        stub.GetZones(request, timeout=10)
        latencies.append((time.perf_counter() - t) * 1e3)
        if time.monotonic() > deadline:
            break
    print(json.dumps(latencies), flush=True)


def subscribers_client(target: str, n: str, zones_only: str, updates: str) -> None:
    """n StreamHeatmap subscribers, each on its own connection: prints "ready" once every snapshot is in,
    then for each update, once all n have it, its sequence, kind and monotonic arrival times as JSON."""
    n, updates = int(n), int(updates)
    request = pb.StreamHeatmapRequest(view=pb.View(market=MARKET, lookback="1d"), zones_only=zones_only == "1")

    async def main():
        arrivals: dict[int, list[float]] = {}
        joined = 0

        async def subscriber(stub):
            nonlocal joined
            call = stub.StreamHeatmap(request, timeout=BUDGET_S)
            first = await call.read()
            joined += 1
            if joined == n:
                print("ready", flush=True)
            for _ in range(updates):
                msg = await call.read()
                now = time.monotonic()
                got = arrivals.setdefault(msg.sequence, [])
                got.append(now)
                if len(got) == n:
                    print(json.dumps({"sequence": msg.sequence, "after": first.sequence, "kind": msg.kind,
                                      "heatmap": msg.HasField("heatmap"), "bytes": msg.ByteSize(),
                                      "arrivals": got}), flush=True)
            call.cancel()

        channels = [grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
                    for _ in range(n)]
        try:
            await asyncio.gather(*(subscriber(pb_grpc.HeatmapServiceStub(c)) for c in channels))
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    asyncio.run(main())


def stalled_client(target: str) -> None:
    """One subscriber to a large view that reads its snapshot, prints "stalled BYTES" and reads nothing
    more until a sequence number arrives on stdin; then reads up to it and prints what it got as JSON."""
    channel = grpc.insecure_channel(target, options=CLIENT_OPTIONS + [("grpc.http2.bdp_probe", 0)])
    view = pb.View(market=MARKET, lookback="1d", rows=BIG[0], columns=BIG[1])
    call = pb_grpc.HeatmapServiceStub(channel).StreamHeatmap(pb.StreamHeatmapRequest(view=view), timeout=BUDGET_S)
    first = next(call)
    print("stalled", first.ByteSize(), flush=True)
    latest = int(sys.stdin.readline())
    got = []
    for msg in call:
        got.append([msg.sequence, msg.gap_skipped, msg.skipped_updates, msg.HasField("heatmap")])
        if msg.sequence >= latest:
            break
    call.cancel()
    print(json.dumps(got), flush=True)


def stack_server(store_path: str) -> None:
    """The test Stack (replay exchange, store, refresher, server) in a process of its own, so its RSS is
    the server's. Prints the target; for each "step" line moves the clock a bar, refreshes MARKET, waits
    for the streams' update and prints the subscribers' queues as JSON; ends at any other line or EOF."""
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as replay:
        stack = Stack(replay, store_path)

        async def updates() -> int:
            return sum(t.updates for t in stack.service.topics.values())

        async def published(before: int) -> dict:
            deadline = time.monotonic() + 30
            while await updates() == before and time.monotonic() < deadline:
                await asyncio.sleep(0.005)
            subs = [s for t in stack.service.topics.values() for s in t.subscribers]
            return {"updates": await updates(), "sequence": max(t.sequence for t in stack.service.topics.values()),
                    "queued": [len(s.queue) for s in subs], "skipped": [s.skipped for s in subs],
                    "depth": stack.config.limits.queue_depth}

        try:
            print(stack.target, flush=True)
            for line in sys.stdin:
                if line.strip() != "step":
                    break
                before = stack.call(updates())
                replay.step(STEP)
                stack.call(stack.refresher.refresh(MARKET))
                print(json.dumps(stack.call(published(before))), flush=True)
        finally:
            stack.close()


# ---- fixtures ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """The server in this process (its loop in a thread), loaded with two days of three markets."""
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as replay:
        s = Stack(replay, tmp_path_factory.mktemp("store") / "bars.sqlite3")
        try:
            yield s
        finally:
            s.close()


@pytest.fixture()
def spawn(tmp_path):
    """Start functions of this file in child processes; every one is ended (EOF on stdin, then kill)."""
    procs = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}

    def start(func: str, *args) -> subprocess.Popen:
        err = tmp_path / f"{func}-{len(procs)}.stderr"
        with open(err, "w") as stderr:
            code = f"import sys, {Path(__file__).stem} as m; m.{func}(*sys.argv[1:])"
            proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        proc.stderr_path = err
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        try:
            proc.stdin.close()
            proc.wait(5)
        except (subprocess.TimeoutExpired, OSError):
            proc.kill()
            proc.wait(10)
        proc.stdout.close()


def read_line(proc: subprocess.Popen) -> str:
    """The child's next line of output; a child that ended instead fails the test with its stderr."""
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        raise AssertionError(f"child exited {proc.returncode}: {proc.stderr_path.read_text()[-2000:]}")
    return line.strip()


# ---- 1. GetZones latency ----------------------------------------------------------------------------

def test_get_zones_latency(benchmark, stack, spawn):
    calls = 300 if benchmark.disabled else 3000
    benchmark.group = "GetZones (cached view)"
    first = stack.stub.GetZones(zones_request(), timeout=30)  # computes and caches the view
    client = spawn("zones_client", stack.target, calls)
    latencies = json.loads(read_line(client))
    assert client.wait(30) == 0 and latencies
    figures = {k: round(v, 3) for k, v in percentiles(latencies).items()}
    benchmark.extra_info.update(client="separate process, sequential calls", calls=len(latencies),
                                p50_ms=figures["p50_ms"], p99_ms=figures["p99_ms"], max_ms=figures["max_ms"],
                                in_process="the benchmark's own figures: blocking client in the server's process")
    resp = benchmark.pedantic(stack.stub.GetZones, args=(zones_request(),), kwargs={"timeout": 10},
                              rounds=2000, warmup_rounds=50, iterations=1)
    assert resp == first and resp.zones.market == MARKET and resp.zones.v_max > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"] <= figures["max_ms"]


# ---- 2. refresh -> every subscriber ------------------------------------------------------------------

@pytest.mark.parametrize("zones_only", [True, False], ids=["zones_only", "full_400x288"])
def test_refresh_fanout(benchmark, stack, spawn, zones_only):
    subscribers = 20 if benchmark.disabled else 100
    rounds, warmup = (1, 0) if benchmark.disabled else (10, 1)
    each = subscribers // CLIENT_PROCESSES
    benchmark.group = f"refresh -> {subscribers} subscribers"
    clients = [spawn("subscribers_client", stack.target, each, int(zones_only), rounds + warmup)
               for _ in range(CLIENT_PROCESSES)]
    for c in clients:
        assert read_line(c) == "ready"
    before = stack.service.computations
    results = []

    def refresh_and_deliver():
        t0 = time.monotonic()
        stack.replay.step(STEP)
        stack.call(stack.refresher.refresh(MARKET))
        t1 = time.monotonic()
        results.append((t0, t1, [json.loads(read_line(c)) for c in clients]))

    benchmark.pedantic(refresh_and_deliver, rounds=rounds, warmup_rounds=warmup, iterations=1)

    assert len(results) == rounds + warmup
    assert stack.service.computations == before + len(results)  # one computation per refresh, however many read
    start_seq = results[0][2][0]["after"]
    per_round = []
    for i, (t0, t1, lines) in enumerate(results):
        assert {ln["sequence"] for ln in lines} == {start_seq + i + 1}
        assert all(ln["heatmap"] is not zones_only and len(ln["arrivals"]) == each for ln in lines)
        arrivals = np.array([t for ln in lines for t in ln["arrivals"]])
        assert arrivals.min() > t0
        since_refresh = {f"after_refresh_{k}": v for k, v in percentiles((arrivals - t1) * 1e3).items()}
        per_round.append({"refresh_ms": (t1 - t0) * 1e3, **percentiles((arrivals - t0) * 1e3), **since_refresh})
    measured = per_round[warmup:]
    median = {k: round(float(np.median([r[k] for r in measured])), 2) for k in measured[0]}
    benchmark.extra_info.update(
        subscribers=subscribers, client_processes=CLIENT_PROCESSES, updates=len(measured),
        message_bytes=results[-1][2][0]["bytes"], refresh_ms=median["refresh_ms"],
        first_ms=median["first_ms"], median_ms=median["p50_ms"], p99_ms=median["p99_ms"], last_ms=median["max_ms"],
        worst_last_ms=round(max(r["max_ms"] for r in measured), 2),
        fanout_first_ms=median["after_refresh_first_ms"], fanout_median_ms=median["after_refresh_p50_ms"],
        fanout_p99_ms=median["after_refresh_p99_ms"], fanout_last_ms=median["after_refresh_max_ms"],
        note="*_ms: arrival since the clock step + refresh began; fanout_*: since refresh() returned; "
             "medians over the updates")


# ---- 3. memory with a stalled subscriber --------------------------------------------------------------

def test_stalled_subscriber_keeps_server_memory_bounded(benchmark, spawn, tmp_path):
    updates = 30 if benchmark.disabled else 60
    benchmark.group = "stalled subscriber"
    server = spawn("stack_server", tmp_path / "bars.sqlite3")
    target = read_line(server)
    stalled = spawn("stalled_client", target)
    word, size = read_line(stalled).split()
    assert word == "stalled"
    message_mb = int(size) / 2**20
    rss_before = rss_mb(server.pid)
    states, rss = [], []

    def publish_updates():
        for _ in range(updates):
            server.stdin.write("step\n")
            server.stdin.flush()
            states.append(json.loads(read_line(server)))
            rss.append(rss_mb(server.pid))

    benchmark.pedantic(publish_updates, rounds=1, iterations=1)
    rss_after = rss[-1]
    depth = states[-1]["depth"]
    assert [s["updates"] for s in states] == list(range(states[0]["updates"], states[0]["updates"] + updates))
    assert max(q for s in states for q in s["queued"]) <= depth  # the server's own bound on what it holds

    stalled.stdin.write(f"{states[-1]['sequence']}\n")
    stalled.stdin.flush()
    owed = json.loads(read_line(stalled))
    assert owed[-1][0] == states[-1]["sequence"] and owed[-1][3], owed  # caught up to the latest state
    assert any(gap for _, gap, _, _ in owed) and len(owed) < updates, owed  # by skipping, not by holding all

    growth = max(rss) - rss_before
    bound = updates * message_mb  # holding every update would take at least this, before any working memory
    benchmark.extra_info.update(
        updates=updates, message_mb=round(message_mb, 2), queue_depth=depth, rss_before_mb=round(rss_before, 1),
        rss_after_mb=round(rss_after, 1), rss_peak_mb=round(max(rss), 1), growth_mb=round(growth, 1),
        bound_mb=round(bound, 1), queue_full_mb=round(depth * message_mb, 1),
        messages_after_release=len(owed), rss_series_mb=[round(r, 1) for r in rss])
    assert growth < bound, (rss_before, rss)
