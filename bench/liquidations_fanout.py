"""Benchmark: realised liquidations received over WebSocket, committed to the store and fanned out to
100 StreamLiquidations subscribers over the real gRPC server, in a crash-like burst.

A Bybit-dialect server on 127.0.0.1 sends `--rate` events/s (each stamped with its wall-clock send time
as the event time) for `--seconds`; a Recording (flush every 1 s or `--flush-events`) stores them and
hands each committed batch to the service, which serializes it once for all subscribers. Each of the
`--subscribers` blocking gRPC clients (one thread each) notes when every event arrives. Reported: events/s
received and stored, events delivered per subscriber, and the latency from send to delivery
(p50, p99, max), which includes the batching wait by design.

    python bench/liquidations_fanout.py [--rate 5000] [--seconds 10] [--subscribers 100]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import websockets

from heatsvc.config import parse
from heatsvc.exchanges import make_client
from heatsvc.liquidation_store import LiquidationStore
from heatsvc.recording import Recording
from heatsvc.refresher import Refresher
from heatsvc.service.server import Server
from heatsvc.store import Store
from heatsvc.v1 import heatmap_service_pb2 as pb
from heatsvc.v1 import heatmap_service_pb2_grpc as pb_grpc


async def burst(ws, rate: int, seconds: float, sent: list):
    await ws.recv()   # the subscription
    await ws.send(json.dumps({"success": True, "op": "subscribe"}))
    per_tick, tick = max(rate // 100, 1), 0.01
    start = time.perf_counter()
    k = 0
    while time.perf_counter() - start < seconds:
        t = int(time.time() * 1000)
        for _ in range(per_tick):
            k += 1
            await ws.send(json.dumps({"topic": "allLiquidation.BTCUSDT", "ts": t, "data": [
                {"T": t, "s": "BTCUSDT", "S": "Buy" if k % 2 else "Sell", "v": "0.01", "p": f"{60000 + k * 0.01:.2f}"}]}))
        sent.append(per_tick)
        await asyncio.sleep(max(0.0, start + len(sent) * tick - time.perf_counter()))
    await asyncio.sleep(3600)


def expected(args) -> int:
    return int(max(args.rate // 100, 1) * 100 * args.seconds)


def subscribers(port: int, n: int, total: int, ready, results) -> None:
    """A process of n blocking StreamLiquidations readers (one thread each), apart from the server's
    process so their decoding does not compete with it for the GIL; returns counts and latencies (ms)."""
    arrivals = [[] for _ in range(n)]

    def read(i: int):
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stream = pb_grpc.HeatmapServiceStub(channel).StreamLiquidations(pb.StreamLiquidationsRequest(snapshot=0))
            next(stream)   # the snapshot
            ready.put(i)
            got = 0
            for msg in stream:
                now = time.time() * 1000
                arrivals[i].append(now - np.array([e.time.seconds * 1000 + e.time.nanos // 1_000_000
                                                   for e in msg.events]))
                got += len(msg.events)
                if got >= total:
                    return
    threads = [threading.Thread(target=read, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    results.put(([int(sum(len(a) for a in arr)) for arr in arrivals],
                 np.concatenate([np.concatenate(arr) for arr in arrivals if arr]) if any(arrivals) else np.zeros(1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--subscribers", type=int, default=100)
    ap.add_argument("--flush-events", type=int, default=500)
    ap.add_argument("--processes", type=int, default=4, help="processes the subscribers are spread over")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="heatsvc-bench-"))
    config = parse({"exchanges": {"bybit": {"symbols": ["BTCUSDT"], "base_url": "http://127.0.0.1:9"}},
                    "limits": {"queue_depth": 64, "max_streams": 1000}}, env={})
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, daemon=True).start()
    call = lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result(120)  # noqa: E731
    store = Store(tmp / "bars.sqlite3")
    sent: list[int] = []

    async def start():
        clients = {"bybit": make_client("bybit", "http://127.0.0.1:9")}   # never asked: the refresher is not started
        server = Server(config, store, Refresher(store, clients, config.markets))
        port = await server.start("127.0.0.1:0")
        ws_server = await websockets.serve(lambda ws: burst(ws, args.rate, args.seconds, sent), "127.0.0.1", 0)
        return server, port, ws_server.sockets[0].getsockname()[1]

    server, port, ws_port = call(start())
    procs = max(1, min(args.processes, args.subscribers))
    ctx = multiprocessing.get_context("spawn")
    results, ready = ctx.Queue(), ctx.Queue()
    workers = [ctx.Process(target=subscribers, args=(port, len(range(k, args.subscribers, procs)), expected(args),
                                                   ready, results), daemon=True) for k in range(procs)]
    for w in workers:
        w.start()
    for _ in range(args.subscribers):
        ready.get()   # every stream has its snapshot

    async def record():
        exchanges = [ex.__class__("bybit", ("BTCUSDT",), ws_url=f"ws://127.0.0.1:{ws_port}") for ex in config.exchanges]
        rec = Recording(LiquidationStore(tmp / "bars.sqlite3"), exchanges, flush_events=args.flush_events)
        server.service.recording = rec
        rec.listeners.append(server.service.on_liquidations)
        rec.start()
        return rec

    began = time.perf_counter()
    rec = call(record())
    while rec.committed < expected(args) and time.perf_counter() - began < args.seconds * 3 + 10:
        time.sleep(0.1)
    ingest_s = time.perf_counter() - began
    received = rec.status()["bybit"].events
    stored = len(rec.store.load("bybit:BTCUSDT", 0, 2**62)["time_ms"])
    per_sub, lat = [], []
    for _ in range(procs):
        counts, latencies = results.get()
        per_sub += counts
        lat.append(latencies)
    lat = np.concatenate(lat) if lat else np.zeros(1)
    print(f"sent {sum(sent)} events at {args.rate}/s for {args.seconds:g} s; received {received}, stored {stored} "
          f"(all committed {ingest_s:.1f} s after the first send)")
    print(f"{args.subscribers} subscribers: delivered min {min(per_sub)} / max {max(per_sub)} events each, "
          f"{sum(per_sub)} in all; coalesced snapshots would show as fewer")
    print(f"send-to-delivery latency: p50 {np.percentile(lat, 50):.0f} ms, p99 {np.percentile(lat, 99):.0f} ms, "
          f"max {lat.max():.0f} ms (flush every 1 s or {args.flush_events} events)")


if __name__ == "__main__":
    main()
