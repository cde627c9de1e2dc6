"""The gateway's side of the gRPC service: one StreamHeatmap per distinct view in use.

A `Feed` holds one upstream stream, whatever the number of browsers watching its view, and keeps
its latest state: the heatmap (with per-tier grids, so each browser may hide leverage tiers), the
zone report, and the JSON and binary frames built from them, each built once and shared. Browsers
are told "something changed" (`wake()`), never handed a queue of messages: each browser's sender
reads the latest state when it is ready, so a slow browser skips intermediate states and never
holds the feed back (the same latest-state coalescing as heatsvc.service.fanout, one level down).

When the stream fails the feed retries with backoff and says "waiting"; NOT_FOUND,
INVALID_ARGUMENT and UNAUTHENTICATED are final and reported as errors.
"""
from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import time

import grpc
import numpy as np

from ..v1 import heatmap_service_pb2 as pb
from ..v1 import heatmap_service_pb2_grpc as pb_grpc
from . import frames

log = logging.getLogger("heatsvc.web")
FINAL = {grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.UNAUTHENTICATED,
         grpc.StatusCode.PERMISSION_DENIED}
MARKETS_TTL_S = 10.0
RECENT_EVENTS = 20      # zone events kept per view and sent whole
FRAME_CACHE = 16        # grid frames kept per view (boost x tier choices in use)
_ids = itertools.count(1)


class Feed:
    """One view's upstream stream and latest state. key = (market, lookback, threshold)."""

    def __init__(self, upstream: "Upstream", key: tuple[str, str, float]):
        self.upstream, self.key = upstream, key
        self.id = next(_ids)
        self.browsers: set = set()
        self.heat_version = 0      # +1 per new heatmap
        self.zones_version = 0     # +1 per new zone report
        self.status_version = 0
        self.state, self.message = "waiting", ""
        self.sequence = 0
        self.view_json: str | None = None
        self.zones_json: str | None = None
        self.received = 0.0        # time.time() when the latest update arrived
        self._tiers: list[tuple[np.ndarray, np.ndarray]] = []
        self._total: tuple[np.ndarray, np.ndarray] | None = None
        self._frames: dict[tuple, bytes] = {}
        self.recent_events: collections.deque[dict] = collections.deque(maxlen=RECENT_EVENTS)
        self.events_version = 0
        self.events_json: str | None = None
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._run(), name=f"feed {self.key}"),
                       asyncio.create_task(self._events(), name=f"events {self.key}")]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()

    def frame(self, boost: float, mask: tuple[bool, ...] | None) -> bytes | None:
        """The grid frame for a boost and tier selection (None: all tiers), built once per heatmap."""
        if self._total is None:
            return None
        if mask is not None and (len(mask) != len(self._tiers) or all(mask)):
            mask = None
        cache_key = (boost, mask)
        data = self._frames.get(cache_key)
        if data is None:
            if mask is None:
                long, short = self._total
            else:
                chosen = [t for t, on in zip(self._tiers, mask) if on]
                shape = self._total[0].shape
                long = sum((t[0] for t in chosen), np.zeros(shape, np.float32))
                short = sum((t[1] for t in chosen), np.zeros(shape, np.float32))
            data = frames.grid_frame(self.id, self.sequence, long, short, boost)
            if len(self._frames) >= FRAME_CACHE:      # many distinct boosts: forget the oldest
                del self._frames[next(iter(self._frames))]
            self._frames[cache_key] = data
        return data

    def _set_status(self, state: str, message: str = "") -> None:
        if (state, message) != (self.state, self.message):
            self.state, self.message = state, message
            self.status_version += 1
            self._wake()

    def _wake(self) -> None:
        for browser in self.browsers:
            browser.wake()

    def apply(self, msg: pb.StreamHeatmapResponse) -> None:
        """Take one upstream message: rebuild what it changed, then wake the browsers."""
        self.received = time.time()
        self.sequence = msg.sequence
        if msg.HasField("heatmap"):
            hm = msg.heatmap
            self._total = (frames.grid(hm.long_notional), frames.grid(hm.short_notional))
            self._tiers = [(frames.grid(t.long_notional), frames.grid(t.short_notional)) for t in hm.tiers]
            self._frames = {}
            self.view_json = frames.view(self.id, msg.sequence, hm, self.received)
            self.heat_version += 1
        self.zones_json = frames.zones(self.id, msg.sequence, msg.zones)
        self.zones_version += 1
        self._set_status("ok")
        self._wake()

    async def _run(self) -> None:
        market, lookback, threshold = self.key
        req = pb.StreamHeatmapRequest(view=pb.View(market=market, lookback=lookback),
                                      zone_options=pb.ZoneOptions(threshold=threshold),
                                      include_tiers=True, include_candles=True)
        backoff = 0.25
        while True:
            try:
                call = self.upstream.stub.StreamHeatmap(req, metadata=self.upstream.metadata)
                async for msg in call:
                    backoff = 0.25
                    self.apply(msg)
                self._set_status("waiting", "the service ended the stream")
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FINAL:
                    self._set_status("error", f"{exc.code().name}: {exc.details()}")
                    return
                self._set_status("waiting", f"{exc.code().name}: {exc.details()}")
            except Exception as exc:   # a bug decoding one message must not kill the gateway
                log.exception("feed %s failed", self.key)
                self._set_status("waiting", f"gateway error: {exc}")
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


    async def _events(self) -> None:
        """The view's zone events (StreamZoneEvents), kept as the RECENT_EVENTS newest; quietly
        ends when the service does not offer them."""
        market, lookback, threshold = self.key
        req = pb.StreamZoneEventsRequest(views=[pb.View(market=market, lookback=lookback)],
                                         zone_options=pb.ZoneOptions(threshold=threshold))
        backoff = 0.25
        while True:
            try:
                async for msg in self.upstream.stub.StreamZoneEvents(req, metadata=self.upstream.metadata):
                    backoff = 0.25
                    if msg.events:
                        self.recent_events.extend(frames.event(ev) for ev in msg.events)
                        self.events_json = frames.events(self.id, list(self.recent_events))
                        self.events_version += 1
                        self._wake()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() in FINAL or exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    return
            except Exception:
                log.exception("events of %s failed", self.key)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


class Upstream:
    """The gateway's gRPC client: one channel, the feeds by view key, ListMarkets cached briefly."""

    def __init__(self, target: str, token: str | None = None,
                 credentials: grpc.ChannelCredentials | None = None):
        options = [("grpc.max_receive_message_length", -1)]
        self.target = target
        self.channel = (grpc.aio.secure_channel(target, credentials, options) if credentials
                        else grpc.aio.insecure_channel(target, options))
        self.stub = pb_grpc.HeatmapServiceStub(self.channel)
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        self.feeds: dict[tuple, Feed] = {}
        self._markets: pb.ListMarketsResponse | None = None
        self._markets_at = 0.0

    async def markets(self, refresh: bool = False) -> pb.ListMarketsResponse:
        """ListMarkets, at most once per MARKETS_TTL_S unless `refresh` (and then once a second)."""
        age = time.monotonic() - self._markets_at
        if self._markets is None or age > MARKETS_TTL_S or (refresh and age > 1.0):
            self._markets = await self.stub.ListMarkets(pb.ListMarketsRequest(), metadata=self.metadata, timeout=10)
            self._markets_at = time.monotonic()
        return self._markets

    async def heatmap(self, market: str, lookback: str, threshold: float) -> pb.GetHeatmapResponse:
        req = pb.GetHeatmapRequest(view=pb.View(market=market, lookback=lookback),
                                   zone_options=pb.ZoneOptions(threshold=threshold))
        return await self.stub.GetHeatmap(req, metadata=self.metadata, timeout=30)

    def join(self, key: tuple, browser) -> Feed:
        feed = self.feeds.get(key)
        if feed is None:
            feed = self.feeds[key] = Feed(self, key)
            feed.start()
        feed.browsers.add(browser)
        return feed

    def leave(self, feed: Feed, browser) -> None:
        feed.browsers.discard(browser)
        if not feed.browsers and self.feeds.get(feed.key) is feed:
            del self.feeds[feed.key]
            feed.stop()

    async def close(self) -> None:
        for feed in list(self.feeds.values()):
            feed.stop()
        self.feeds.clear()
        await self.channel.close()
