"""Request benchmarks: GetZones and GetHeatmap of a cached view at 1, 16 and 64 concurrent calls.

The server is bench/harness.py in a process of its own (replay exchange, store, refresher, grpc.aio
server on 127.0.0.1). The callers run in up to CLIENT_PROCESSES client processes, one channel each,
every caller issuing its next call as soon as the last returns, for a bounded time and count. They
take the response bytes undecoded (a load generator's usual shortcut: the machine's two cores are
shared with the server), after checking that the first is the view asked for; every later response
must be the same bytes.

Full figures: `pytest bench/test_requests_bench.py --benchmark-json=requests.json`, then
`python bench/report.py requests requests.json`. With --benchmark-disable it is a quick smoke test.
"""
from __future__ import annotations

import asyncio
import json
import sys
import time

import grpc
import numpy as np
import pytest
from harness import CLIENT_OPTIONS, MARKET, Spawner, percentiles

from heatsvc.v1 import heatmap_service_pb2 as pb

CLIENT_PROCESSES = 2          # the machine has two cores; more processes only take turns on them
METHODS = {"GetZones": (pb.GetZonesRequest, pb.GetZonesResponse),
           "GetHeatmap": (pb.GetHeatmapRequest, pb.GetHeatmapResponse)}


def split(n: int, parts: int) -> list[int]:
    """n callers over at most `parts` processes, as evenly as possible."""
    parts = min(n, parts)
    return [n // parts + (i < n % parts) for i in range(parts)]


# ---- the client process -----------------------------------------------------------------------------

def callers(target: str, method: str, concurrency: str, seconds: str, max_calls: str) -> None:
    """`concurrency` callers of `method` (MARKET 1d) on one channel. Checks the first response, prints
    {"ready"}, waits for a line on stdin, then calls for `seconds` or `max_calls` calls in all and prints
    the count, the elapsed time, each call's latency (ms), the process's CPU seconds and any error."""
    concurrency, seconds, max_calls = int(concurrency), float(seconds), int(max_calls)
    request_type, response_type = METHODS[method]
    request = request_type(view=pb.View(market=MARKET, lookback="1d")).SerializeToString()

    async def main():
        channel = grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS)
        call = channel.unary_unary(f"/heatsvc.v1.HeatmapService/{method}")   # bytes in, bytes out
        first = await call(request, timeout=30)
        response = response_type.FromString(first)
        assert response.zones.market == MARKET and response.zones.v_max > 0, response.zones
        if method == "GetHeatmap":
            grid = response.heatmap.long_notional
            assert (grid.rows, grid.columns) == (400, 288) and len(grid.data) > 0, (grid.rows, grid.columns)
        for _ in range(10):   # the connection warm
            await call(request, timeout=30)
        print(json.dumps({"ready": concurrency, "bytes": len(first)}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        latencies, errors = [], []

        async def caller():
            while time.perf_counter() < deadline and len(latencies) < max_calls:
                t = time.perf_counter()
                data = await call(request, timeout=30)
                latencies.append((time.perf_counter() - t) * 1e3)
                if data != first:
                    errors.append(f"response {len(latencies)} differs from the first ({len(data)} bytes)")

        cpu = time.process_time()
        start = time.perf_counter()
        deadline = start + seconds
        await asyncio.gather(*(caller() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
        print(json.dumps({"calls": len(latencies), "elapsed_s": elapsed, "latencies_ms": latencies,
                          "cpu_s": time.process_time() - cpu, "errors": errors[:5]}), flush=True)
        await channel.close()

    asyncio.run(main())


# ---- the benchmarks -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One harness server for every case; the view is computed by the callers' first call and then cached."""
    spawner = Spawner(tmp_path_factory.mktemp("requests"))
    try:
        yield spawner.server()
    finally:
        spawner.close()


def load(benchmark, proc, target: str, spawn, method: str, concurrency: int) -> tuple[dict, dict]:
    """Run the callers against the server (`proc`), check every answer, record the figures; returns
    the server's stats before and after."""
    seconds, max_calls = (0.5, 2_000) if benchmark.disabled else (10, 200_000)
    sizes = split(concurrency, CLIENT_PROCESSES)
    clients = [spawn("test_requests_bench", "callers", target, method, size, seconds, max_calls // len(sizes))
               for size in sizes]
    ready = [c.read_json() for c in clients]
    assert [r.get("ready") for r in ready] == sizes, ready
    results = []

    def run():
        results.append(proc.send(cmd="stats"))
        for c in clients:
            c.write("go")
        results.extend(c.read_json() for c in clients)
        results.append(proc.send(cmd="stats"))

    benchmark.pedantic(run, rounds=1, iterations=1)
    before, *runs, after = results
    assert all(not r["errors"] and r["calls"] > 0 for r in runs), [r["errors"] for r in runs]
    latencies = np.concatenate([r["latencies_ms"] for r in runs])
    wall = max(r["elapsed_s"] for r in runs)
    calls = len(latencies)
    server_s, loop_s = after["cpu_s"] - before["cpu_s"], after["loop_cpu_s"] - before["loop_cpu_s"]
    benchmark.extra_info.update(
        method=method, concurrency=concurrency, client_processes=len(clients), response_bytes=ready[0]["bytes"],
        calls=calls, seconds=round(wall, 2), requests_per_s=round(calls / wall, 1),
        **{k: round(v, 3) for k, v in percentiles(latencies).items()},
        server_cpu_us_per_call=round(server_s / calls * 1e6, 1), server_loop_cpu_us_per_call=round(loop_s / calls * 1e6, 1),
        server_cores=round(server_s / wall, 2), clients_cores=round(sum(r["cpu_s"] for r in runs) / wall, 2),
        note="*_cores: CPU seconds per second of the run (the machine has 2 cores); server: every thread, "
             "loop: the event loop's thread")
    return before, after


@pytest.mark.parametrize("concurrency", [1, 16, 64])
@pytest.mark.parametrize("method", ["GetZones", "GetHeatmap"])
def test_requests(benchmark, server, spawn, method, concurrency):
    benchmark.group = f"{method} (cached view)"
    before, after = load(benchmark, *server, spawn, method, concurrency)
    benchmark.extra_info["server"] = "heatsvc"
    assert after["computations"] == before["computations"]    # every call was answered from the cached view


@pytest.mark.parametrize("concurrency", [1, 16, 64])
def test_requests_grpc_floor(benchmark, spawn, concurrency):
    """The same GetZones callers against bench/floor.py, a grpc.aio server that only returns fixed bytes:
    gRPC's and the machine's share of the figures above."""
    benchmark.group = "GetZones (cached view)"
    proc = spawn("floor", "run")
    load(benchmark, proc, proc.read_json()["target"], spawn, "GetZones", concurrency)
    benchmark.extra_info["server"] = "grpc.aio floor (bench/floor.py)"
