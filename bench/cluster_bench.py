"""Cluster benchmarks (heatsvc.cluster, docs/SCALING.md). Each mode prints its figures as JSON lines.

    python bench/cluster_bench.py requests --edges 1 --concurrency 64 --seconds 10
    python bench/cluster_bench.py requests --edges 2 --concurrency 64 --seconds 10
    python bench/cluster_bench.py delivery --edges 2 --subscribers 1000 --updates 10
    python bench/cluster_bench.py compute --symbols 100 --lookbacks all --history-days 366 --refreshes 3

requests: GetZones of one view (binance:BTCUSDT 1d) through E edge processes sharing a port
          (SO_REUSEPORT), callers in client processes of their own (bench/test_requests_bench.py's).
delivery: S StreamZones subscribers (client processes, many connections, spread over the edges by the
          kernel) of binance:BTCUSDT 12h; the replay clock steps U times; for each update, the time from
          the owner's publication reaching NATS (a watcher in this process) to each subscriber.
compute:  one owner's work per refresh in this process (no NATS: a counting stand-in): SYMBOLS x 3
          exchanges + SYMBOLS aggregates, x the lookbacks; the wall time from the clock step to every
          view published, the views' summed compute time, and the bytes published per refresh.
The cluster modes start nats-server, an owner and the edges with heatsvc.cluster.launcher.Cluster.
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from harness import CLIENT_OPTIONS, MARKET, START, STEP, Spawner, datasets_for, percentiles

from heatsvc.v1 import heatmap_service_pb2 as pb

STREAM_VIEW = ("binance:BTCUSDT", "12h")


def emit(**figures) -> None:
    print(json.dumps(figures), flush=True)


# ---- a cluster on the harness's replay data ------------------------------------------------------

class BenchCluster:
    """Replay exchange (stepped clock), nats-server, one owner and `edges` edges, ready to answer."""

    def __init__(self, directory: Path, edges: int):
        from heatsvc.cluster.launcher import Cluster
        from heatsvc.replay import ReplayExchange

        self.replay = ReplayExchange(datasets=datasets_for(3), start_ms=START)
        self.replay.start()
        self.cluster = Cluster(self.replay, directory, owners=1, edges=edges, lookbacks=("12h", "1d"),
                               history_days=2, refresh_interval_s=0.2, heartbeat_s=0.5)
        self.cluster.start()
        self.target = self.cluster.target
        self._wait_published()

    def _wait_published(self, timeout: float = 120) -> None:
        import grpc
        from heatsvc.v1 import heatmap_service_pb2_grpc as pb_grpc

        with grpc.insecure_channel(self.target, CLIENT_OPTIONS) as channel:
            stub = pb_grpc.HeatmapServiceStub(channel)
            deadline = time.monotonic() + timeout
            for lookback in ("1d", "12h"):
                while True:
                    try:
                        stub.GetZones(pb.GetZonesRequest(view=pb.View(market=MARKET, lookback=lookback)), timeout=5)
                        break
                    except grpc.RpcError:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"{MARKET} {lookback} not published after {timeout} s")
                        time.sleep(0.1)

    def close(self) -> None:
        self.cluster.stop()
        self.replay.stop()


# ---- requests ------------------------------------------------------------------------------------

def requests(args) -> None:
    from test_requests_bench import split

    with tempfile.TemporaryDirectory() as tmp:
        bench = BenchCluster(Path(tmp), args.edges)
        spawner = Spawner(Path(tmp))
        try:
            sizes = split(args.concurrency, args.client_processes)
            clients = [spawner("test_requests_bench", "callers", bench.target, "GetZones", size, args.seconds,
                               args.max_calls // len(sizes)) for size in sizes]
            ready = [c.read_json() for c in clients]
            for c in clients:
                c.write("go")
            runs = [c.read_json() for c in clients]
            errors = [e for r in runs for e in r["errors"]]
            latencies = np.concatenate([r["latencies_ms"] for r in runs])
            wall = max(r["elapsed_s"] for r in runs)
            emit(mode="requests", method="GetZones", edges=args.edges, concurrency=args.concurrency,
                 client_processes=len(clients), response_bytes=ready[0]["bytes"], calls=len(latencies),
                 seconds=round(wall, 2), requests_per_s=round(len(latencies) / wall, 1),
                 **{k: round(v, 3) for k, v in percentiles(latencies).items()}, errors=errors[:5])
        finally:
            spawner.close()
            bench.close()


# ---- delivery ------------------------------------------------------------------------------------

def subscribers(target: str, streams: str, channels: str) -> None:
    """A client process: `streams` StreamZones calls of STREAM_VIEW over `channels` connections. Prints
    {"ready"} once every snapshot arrived, then records when each update arrives (time.monotonic(),
    which is one clock for every process of the machine) until a line on stdin; then prints them."""
    import grpc

    streams, channels = int(streams), int(channels)
    request = pb.StreamZonesRequest(views=[pb.View(market=STREAM_VIEW[0], lookback=STREAM_VIEW[1])])

    async def main():
        chans = [grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS + [("grpc.use_local_subchannel_pool", 1)])
                 for _ in range(channels)]
        arrivals: dict[int, list[float]] = collections.defaultdict(list)   # data time -> arrival times
        started = asyncio.Semaphore(0)

        async def one(channel):
            call = channel.unary_stream("/heatsvc.v1.HeatmapService/StreamZones",
                                        request_serializer=pb.StreamZonesRequest.SerializeToString,
                                        response_deserializer=pb.StreamZonesResponse.FromString)(request)
            first = True
            async for msg in call:
                now = time.monotonic()
                if first:
                    first = False
                    started.release()
                    continue
                for report in msg.reports:
                    arrivals[report.zones.data_time.ToMilliseconds()].append(now)

        tasks = [asyncio.create_task(one(chans[i % channels])) for i in range(streams)]
        for _ in range(streams):
            await asyncio.wait_for(started.acquire(), 120)
        print(json.dumps({"ready": streams}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        for t in tasks:
            t.cancel()
        print(json.dumps({"arrivals": {str(k): v for k, v in arrivals.items()}}), flush=True)
        for c in chans:
            await c.close()

    asyncio.run(main())


class NatsWatcher:
    """When each zone report of STREAM_VIEW reaches NATS (the owner's publication), by data time."""

    def __init__(self, url: str):
        self.url, self.seen, self._stop = url, {}, threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        self.thread.start()

    async def _run(self) -> None:
        import nats
        from heatsvc.cluster import subjects

        nc = await nats.connect(self.url)

        async def got(msg):
            data_time = pb.ZoneReport.FromString(msg.data).data_time.ToMilliseconds()
            self.seen.setdefault(data_time, time.monotonic())
        await nc.subscribe(subjects.view(*STREAM_VIEW, "zones"), cb=got)
        while not self._stop.is_set():
            await asyncio.sleep(0.05)
        await nc.close()

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(10)


def delivery(args) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        bench = BenchCluster(Path(tmp), args.edges)
        spawner = Spawner(Path(tmp))
        watcher = NatsWatcher(bench.cluster.nats.url)
        try:
            per = [args.subscribers // args.client_processes + (i < args.subscribers % args.client_processes)
                   for i in range(args.client_processes)]
            clients = [spawner("cluster_bench", "subscribers", bench.target, n, args.channels) for n in per if n]
            for c in clients:
                c.read_json()
            steps = []
            for _ in range(args.updates):
                steps.append(time.monotonic())
                bench.replay.step(STEP)
                time.sleep(args.interval)
            for c in clients:
                c.write("stop")
            arrivals = collections.defaultdict(list)
            for c in clients:
                for k, v in c.read_json()["arrivals"].items():
                    arrivals[int(k)] += v
            watcher.stop()
            from_nats = [t - watcher.seen[k] for k, ts in arrivals.items() if k in watcher.seen for t in ts]
            complete = sum(len(ts) == args.subscribers for ts in arrivals.values())
            emit(mode="delivery", edges=args.edges, subscribers=args.subscribers, client_processes=len(clients),
                 connections=args.channels * len(clients), updates_sent=args.updates, updates_seen=len(arrivals),
                 updates_every_subscriber_got=complete, deliveries=len(from_nats),
                 nats_to_subscriber={k: round(v, 3) for k, v in percentiles(np.array(from_nats) * 1e3).items()}
                 if from_nats else None)
        finally:
            watcher.stop()
            spawner.close()
            bench.close()


# ---- compute -------------------------------------------------------------------------------------

class CountingNats:
    """Stands in for NATS in the compute benchmark: counts what the owner publishes, by kind."""
    is_connected = True

    def __init__(self):
        self.messages, self.bytes = collections.Counter(), collections.Counter()

    async def publish(self, subject: str, data: bytes, headers=None) -> None:
        kind = subject.rsplit(".", 1)[-1]
        self.messages[kind] += 1
        self.bytes[kind] += len(data)


def compute(args) -> None:
    asyncio.run(_compute(args))


async def _compute(args) -> None:
    from heatsvc import datasets
    from heatsvc.cluster.owner import Owner
    from heatsvc.cluster.subjects import Shard
    from heatsvc.config import parse
    from heatsvc.exchanges import make_client
    from heatsvc.model.engine import LOOKBACKS
    from heatsvc.refresher import OI_CONVENTION, Refresher
    from heatsvc.replay import ReplayExchange
    from heatsvc.service.server import HeatmapService
    from heatsvc.store import Store

    end = START + STEP * 2
    symbols = [f"U{k:03d}USDT" for k in range(args.symbols)]
    exchanges = ("binance", "bybit", "okx")
    lookbacks = list(LOOKBACKS) if args.lookbacks == "all" else args.lookbacks.split(",")
    data = {f"{e}:{s}": datasets.synthetic_bars(s, e, days=args.history_days + 1, end_ms=end + 30 * STEP)
            for e in exchanges for s in symbols}
    with ReplayExchange(datasets=data, start_ms=START) as rx, tempfile.TemporaryDirectory() as tmp:
        config = parse({"data": {"lookbacks": lookbacks, "history_days": args.history_days, "refresh_interval_s": 3600},
                        "exchanges": {e: {"symbols": symbols, "base_url": rx.base_url(e),
                                          **({"archive_url": rx.archive_url()} if e == "binance" else {})}
                                      for e in exchanges}}, env={})
        store = Store(f"{tmp}/bars.sqlite3")
        t0 = time.monotonic()
        for market, bars in data.items():   # the history, written directly (the backfill is not measured)
            keep = bars["time_ms"] < START - STEP
            store.upsert(market, {k: v[keep] for k, v in bars.items()})
        clients = {e.name: make_client(e.name, e.base_url, now_ms=rx.now_ms,
                                       **({"archive_url": e.archive_url} if e.archive_url else {}))
                   for e in config.exchanges}
        for market in data:   # stored under the clients' open-interest convention (nothing to convert)
            store.set_mark(market, OI_CONVENTION, clients[market.partition(":")[0]].OI_CONVENTION)
        # the history is in the store already: the refresher only catches up the last day (asked for the
        # whole history it would fetch a year of Binance archive days per market before being ready)
        refresher = Refresher(store, clients, config.markets, interval_s=3600, history_days=1.0,
                              progress=False, now_ms=rx.now_ms)
        service = HeatmapService(config, store, refresher)
        await service.start()
        await refresher.start()
        await refresher.wait_ready(timeout=3600)
        nats = CountingNats()
        owner = Owner(service, nats, Shard(0, 1), heartbeat_s=3600)
        outbox = asyncio.create_task(owner.outbox.run())
        await owner._start_views()   # every view computed once: the start-up, not measured
        emit(mode="compute", phase="ready", markets=len(config.markets), aggregates=len(service.catalogue.aggregates),
             lookbacks=lookbacks, views=len(owner.views), setup_s=round(time.monotonic() - t0, 1))
        for r in range(args.refreshes):
            before = [v.updates for v in owner.views]
            nats.messages.clear()
            nats.bytes.clear()
            rx.step(STEP)
            t = time.monotonic()
            await asyncio.gather(*(refresher.refresh(m) for m in config.markets))
            refreshed = time.monotonic()
            while any(v.updates == b for v, b in zip(owner.views, before)) or owner.outbox.pending:
                await asyncio.sleep(0.005)
            done = time.monotonic()
            compute_s = [v.compute_s for v in owner.views]
            emit(mode="compute", refresh=r + 1, views=len(owner.views), step_to_all_published_s=round(done - t, 3),
                 exchange_refresh_s=round(refreshed - t, 3), views_compute_sum_s=round(sum(compute_s), 3),
                 view_compute_p50_ms=round(float(np.percentile(compute_s, 50)) * 1e3, 2),
                 view_compute_p99_ms=round(float(np.percentile(compute_s, 99)) * 1e3, 2),
                 messages=dict(nats.messages), bytes=dict(nats.bytes),
                 mean_bytes={k: round(nats.bytes[k] / nats.messages[k]) for k in nats.messages})
        outbox.cancel()
        await service.begin_shutdown()
        await service.stop()
        await refresher.stop()
        for c in clients.values():
            await c.aclose()
        store.close()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    p = sub.add_parser("requests")
    p.add_argument("--edges", type=int, default=1)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--max-calls", type=int, default=1_000_000)
    p.add_argument("--client-processes", type=int, default=2)
    p = sub.add_parser("delivery")
    p.add_argument("--edges", type=int, default=2)
    p.add_argument("--subscribers", type=int, default=1000)
    p.add_argument("--updates", type=int, default=10)
    p.add_argument("--interval", type=float, default=1.0, help="seconds between clock steps")
    p.add_argument("--client-processes", type=int, default=2)
    p.add_argument("--channels", type=int, default=8, help="connections per client process")
    p = sub.add_parser("compute")
    p.add_argument("--symbols", type=int, default=100, help="symbols, each on 3 exchanges (default 100: 300 markets)")
    p.add_argument("--lookbacks", default="all", help="comma-separated, or all (the 9 of heatsvc)")
    p.add_argument("--history-days", type=float, default=366)
    p.add_argument("--refreshes", type=int, default=3)
    args = parser.parse_args(argv)
    {"requests": requests, "delivery": delivery, "compute": compute}[args.mode](args)


if __name__ == "__main__":
    main()
