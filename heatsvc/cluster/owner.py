"""`heatsvc serve --role owner --shard I/N`: the markets of one shard refreshed into the owner's own
store, every view (each market and aggregate x each lookback, at the default shape) computed by the
single process's code, and each update's zone report and heatmap published once to NATS, with a
heartbeat carrying the shard's market catalogue. Edges (heatsvc.cluster.edge) serve them."""
from __future__ import annotations

import asyncio
import collections
import logging
import signal
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from ..service.errors import RequestError
from ..service.streams import ViewTopic
from ..service.views import GridOpts, ViewKey, ZoneOpts
from ..v1 import heatmap_service_pb2 as pb
from . import subjects
from .connection import connect, ensure_stream
from .subjects import Shard

log = logging.getLogger("heatsvc.cluster")
PUBLISHED_GRID = GridOpts(candles=True)   # edges strip the candles for requests without them
START_RETRY_S = 0.5


class Outbox:
    """The latest message of every subject and those not yet sent, oldest first: a slow or absent NATS
    costs a subject at most one pending message, and after a reconnect everything is sent again."""

    def __init__(self, nc):
        self.nc = nc
        self.latest: dict[str, tuple[bytes, dict | None]] = {}     # subject -> (data, headers)
        self.pending: collections.OrderedDict[str, tuple[bytes, dict | None]] = collections.OrderedDict()
        self.sent = 0
        self.sent_bytes = 0
        self._wake = asyncio.Event()

    def put(self, subject: str, data: bytes, headers: dict | None = None) -> None:
        message = (data, headers)
        self.latest[subject] = message
        self.pending.pop(subject, None)   # to the end: a view's grid goes before the zones that follow it
        self.pending[subject] = message
        self._wake.set()

    def resend_all(self) -> None:
        """After a reconnect: the updates made while away may not have reached the stream."""
        for subject, message in self.latest.items():
            self.pending.pop(subject, None)
            self.pending[subject] = message
        self._wake.set()

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self.pending and self.nc.is_connected:
                subject, message = next(iter(self.pending.items()))
                data, headers = message
                try:
                    await self.nc.publish(subject, data, headers=headers)
                except Exception as exc:  # disconnected meanwhile: resend_all follows the reconnect
                    log.warning("publish to %s failed: %s", subject, exc)
                    break
                if self.pending.get(subject) is message:
                    del self.pending[subject]
                self.sent += 1
                self.sent_bytes += len(data)


class PublishedView(ViewTopic):
    """One published view: the single process's ViewTopic whose updates go to NATS instead of to
    subscribers: the zone report every time, the heatmap (first) when the grid changed."""

    def __init__(self, service, key: ViewKey, outbox: Outbox):
        super().__init__(service, key, False, ZoneOpts(), PUBLISHED_GRID, depth=1)
        self.outbox = outbox
        self.zones_subject = subjects.view(key.market, key.lookback, "zones")
        self.grid_subject = subjects.view(key.market, key.lookback, "grid")
        self.compute_s = 0.0   # time spent in the last refresh (computation and serialization)
        self.grid_version = ""  # "<owner start ms>-<grids sent>": told with each zone report (edges fetch grids)
        self._started_ms, self._grids = int(time.time() * 1000), 0

    async def initial(self) -> None:
        await super().initial()
        self._send(grid=True)

    async def refresh(self):
        t0 = time.perf_counter()
        msg = await super().refresh()
        self.compute_s = time.perf_counter() - t0
        return msg

    def publish(self, msg) -> None:
        self.updates += 1
        self._send(grid=msg.kind == pb.UPDATE_KIND_HEATMAP)

    def _send(self, grid: bool) -> None:
        """The grid (when it changed) and then the zones, which name the grid they go with."""
        if grid:
            self._grids += 1
            self.grid_version = f"{self._started_ms}-{self._grids}"
            self.outbox.put(self.grid_subject, self.heatmap_msg.SerializeToString())
        self.outbox.put(self.zones_subject, self.zones_msg.SerializeToString(),
                        {subjects.GRID_HEADER: self.grid_version})


class Owner:
    """Publishes the shard's views as they change, and a heartbeat every `heartbeat_s`."""

    def __init__(self, service, nc, shard: Shard, heartbeat_s: float):
        self.service, self.nc, self.shard, self.heartbeat_s = service, nc, shard, heartbeat_s
        self.service.max_pending = 1 << 30   # the views are bounded by the shard, not by callers
        self.outbox = Outbox(nc)
        self.views: list[PublishedView] = []
        self._tasks: list[asyncio.Task] = []

    def keys(self) -> list[ViewKey]:
        cat = self.service.catalogue
        markets = [(m, (m,)) for m in cat.markets] + list(cat.aggregates.items())
        return [self.service.catalogue.view(pb.View(market=m, lookback=lb)) for m, _ in markets
                for lb in cat.lookbacks]

    async def start(self) -> None:
        await ensure_stream(self.nc.jetstream())
        self._tasks = [asyncio.create_task(self.outbox.run(), name="outbox"),
                       asyncio.create_task(self._heartbeat(), name="heartbeat"),
                       asyncio.create_task(self._start_views(), name="start views")]

    async def on_reconnect(self) -> None:
        await ensure_stream(self.nc.jetstream())   # a new nats-server may have no stream yet
        self.outbox.resend_all()

    async def _start_views(self) -> None:
        """Start each view once its markets are loaded (one at a time: the refresher is backfilling)."""
        waiting = self.keys()
        while waiting:
            later = []
            for key in waiting:
                topic = PublishedView(self.service, key, self.outbox)
                try:
                    await topic.start()
                except RequestError:   # not loaded yet
                    later.append(key)
                    continue
                self.service.topics[("published", key)] = topic   # woken by the refresher's updates
                self.views.append(topic)
            waiting = later
            if waiting:
                await asyncio.sleep(START_RETRY_S)
        log.info("owner %s: publishing %d views", self.shard, len(self.views))

    async def _heartbeat(self) -> None:
        subject = subjects.owner(self.shard)
        while True:
            if self.nc.is_connected:
                try:
                    headers = {subjects.SENT_HEADER: str(int(time.time() * 1000)),
                               subjects.INTERVAL_HEADER: str(int(self.heartbeat_s * 1000))}
                    await self.nc.publish(subject, await self.service.list_markets(), headers=headers)
                except Exception as exc:  # reconnecting: the next beat tries again
                    log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.heartbeat_s)

    def stats(self) -> dict:
        return {"views": len(self.views), "sent": self.outbox.sent, "sent_bytes": self.outbox.sent_bytes}

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def shard_config(config, shard: Shard):
    """The configuration restricted to the shard's symbols (on every exchange)."""
    exchanges = tuple(replace(ex, symbols=tuple(s for s in ex.symbols if shard.owns(s))) for ex in config.exchanges)
    return replace(config, exchanges=exchanges)


async def serve(config, shard: Shard, *, clock_url: str | None = None, progress: bool = True) -> int:
    """Run an owner until SIGTERM/SIGINT."""
    from ..discovery import discover
    from ..refresher import Refresher
    from ..service import open_clients, refresh_until
    from ..service.server import HeatmapService
    from ..store import Store
    from .clock import ReplayClock

    clock = ReplayClock(clock_url) if clock_url else None
    tmp = None
    if config.store is None:   # the owner's store is its own cache: a replacement backfills anew
        tmp = tempfile.TemporaryDirectory(prefix=f"heatsvc-owner-{shard.index}-")
        config = replace(config, store=str(Path(tmp.name) / "bars.sqlite3"))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    store = Store(config.store)
    clients, refresher, service, nc, owner = {}, None, None, None, None
    try:
        if clock is not None:
            await clock.start()
        clients = open_clients(config, clock.now_ms if clock else None)
        config = shard_config(await discover(config, clients), shard)
        if not config.markets:
            raise ValueError(f"shard {shard} holds none of the configured markets")
        refresher = Refresher(store, clients, config.markets, interval_s=config.refresh_interval_s,
                              history_days=config.history_days, progress=progress,
                              now_ms=clock.now_ms if clock else None)
        service = HeatmapService(config, store, refresher)
        await service.start()
        holder = {}

        async def reconnected():
            if "owner" in holder:
                await holder["owner"].on_reconnect()
        nc = await connect(config.nats, f"heatsvc-owner-{shard}", on_reconnect=reconnected)
        owner = holder["owner"] = Owner(service, nc, shard, config.nats.heartbeat_s)
        await owner.start()
        print(f"heatsvc: owner of shard {shard} ({len(config.markets)} markets, "
              f"{len(service.catalogue.aggregates)} aggregates, lookbacks {', '.join(config.lookbacks)}) "
              f"publishing to {config.nats.url}", flush=True)
        await refresh_until(refresher, stopping)
        return 0
    finally:
        if owner is not None:
            await owner.stop()
        if service is not None:
            await service.begin_shutdown()
            await service.stop()
        if refresher is not None:
            await refresher.stop()
        if nc is not None:
            await nc.close()
        for client in clients.values():
            await client.aclose()
        if clock is not None:
            await clock.stop()
        store.close()
        if tmp is not None:
            tmp.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        print(f"heatsvc: owner of shard {shard} stopped", file=sys.stderr, flush=True)
