"""gRPC's own floor on this machine: a bare grpc.aio server answering GetZones and StreamHeatmap with
fixed bytes of the same size as heatsvc's (a 7 KB zone report), nothing else. The benchmarks run the
same clients against it and against heatsvc: the difference is what heatsvc itself costs.

`python bench/floor.py` prints {"target": ...} and answers the harness's commands "step" (send the next
update to every StreamHeatmap subscriber), "stats" and "gc" (see bench/harness.py).
"""
from __future__ import annotations

import asyncio
import gc
import json
import resource
import sys
import time

import grpc
from harness import MARKET, rss_mb

from heatsvc.v1 import heatmap_service_pb2 as pb

CURVE = 222   # points per curve: a zone report of about heatsvc's 7 KB


def zones() -> pb.ZoneReport:
    curve = pb.LiquidationCurve(price=[float(i) for i in range(CURVE)], notional=[1.0] * CURVE)
    return pb.ZoneReport(market=MARKET, lookback="1d", v_max=1.0, long_curve=curve, short_curve=curve)


async def serve() -> None:
    queues: set[asyncio.Queue] = set()
    state = {"sequence": 0, "updates": 0}
    get_zones = pb.GetZonesResponse(zones=zones()).SerializeToString()

    def update(kind) -> bytes:
        return pb.StreamHeatmapResponse(sequence=state["sequence"], kind=kind, zones=zones()).SerializeToString()

    async def unary(raw, context):
        return get_zones

    async def stream(raw, context):
        queue = asyncio.Queue()
        queues.add(queue)
        try:
            yield update(pb.UPDATE_KIND_SNAPSHOT)
            while True:
                yield await queue.get()
        finally:
            queues.discard(queue)

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("heatsvc.v1.HeatmapService", {
        "GetZones": grpc.unary_unary_rpc_method_handler(unary),
        "StreamHeatmap": grpc.unary_stream_rpc_method_handler(stream)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(json.dumps({"target": f"127.0.0.1:{port}"}), flush=True)
    while line := await asyncio.to_thread(sys.stdin.readline):
        cmd = json.loads(line)["cmd"]
        if cmd == "quit":
            break
        if cmd == "step":
            t0 = time.monotonic()
            state["sequence"] += 1
            state["updates"] += 1
            data = update(pb.UPDATE_KIND_ZONES)
            for queue in queues:
                queue.put_nowait(data)
            now = time.monotonic()
            answer = {"t0": t0, "t1": t0, "published_at": now, "updates": state["updates"], "sequence": state["sequence"]}
        else:
            if cmd == "gc":
                gc.collect()
            usage = resource.getrusage(resource.RUSAGE_SELF)
            answer = {"rss_mb": rss_mb(), "cpu_s": usage.ru_utime + usage.ru_stime, "loop_cpu_s": time.thread_time(),
                      "monotonic": time.monotonic(), "tasks": len(asyncio.all_tasks()), "streams": len(queues),
                      "topics": int(bool(queues)), "subscribers": len(queues), "updates": state["updates"]}
        print(json.dumps(answer), flush=True)
    await server.stop(1)


def run() -> None:
    asyncio.run(serve())


if __name__ == "__main__":
    run()
