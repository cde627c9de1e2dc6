"""The heatsvc.v1 HeatmapService on grpc.aio: views computed once per data version in a worker
thread and cached, shared streams fed by the refresher's MarketUpdated events, standard health
and reflection, graceful shutdown.

Every response is produced as bytes by the handlers (the method handlers' serializer passes bytes
through), so a stream update is serialized once and the same bytes go to every subscriber.
"""
from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import math

import numpy as np

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from .. import metrics
from ..model.confluence import confluence
from ..model.engine import DAY_MS, LOOKBACKS, Heatmap, compute_aggregate, compute_heatmap
from ..model.events import Traded
from ..v1 import heatmap_service_pb2 as pb
from ..liquidation_store import LiquidationStore
from . import auth, liquidations, messages
from .measured import Measured
from .errors import RequestError, exhausted, invalid, unavailable
from .streams import EventsTopic, ViewTopic, ZonesTopic
from .views import Catalogue, ViewKey, ViewState, check_all, event_opts, grid_opts, zone_opts
from .webhooks import WebhookSink

log = logging.getLogger("heatsvc.service")
SERVICE = pb.DESCRIPTOR.services_by_name["HeatmapService"].full_name
CACHE_BYTES = 256 << 20        # computed views kept (numpy grids)
RESPONSE_CACHE = 256           # serialized unary responses kept
RESPONSE_CACHE_MAX = 8 << 20   # larger responses are not kept
HEALTH_POLL_S = 0.5
MAX_PENDING = 64               # distinct views waiting for a computation slot
SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING
STREAM_METHODS = {"view": "StreamHeatmap", "zones": "StreamZones", "events": "StreamZoneEvents",
                  "liquidations": "StreamLiquidations", "measured": "StreamMeasuredMap"}
EVENT_KIND_NAMES = {v: k for k, v in messages.EVENT_KINDS.items()}


def _nbytes(hm: Heatmap) -> int:
    tiers = 0 if hm.per_tier_long is None else hm.per_tier_long.nbytes + hm.per_tier_short.nbytes
    return hm.long.nbytes + hm.short.nbytes + tiers


class HeatmapService:
    """The API's behaviour; `handler()` exposes it to a grpc.aio server."""

    def __init__(self, config, store, refresher):
        self.config, self.store, self.refresher = config, store, refresher
        self.catalogue = Catalogue(config.markets, config.lookbacks, config.limits.max_cells,
                                   len(config.params.tiers))
        self.versions = {m: 0 for m in config.markets}   # bumped on every MarketUpdated with new bars
        self.prices: dict[str, float] = {}
        self.health = health.aio.HealthServicer()
        self.topics: dict[tuple, ViewTopic | ZonesTopic] = {}
        self.streams = 0
        self.tokens = auth.Tokens(auth.load_tokens(config))   # empty: no token needed
        self.caller_streams: collections.Counter[str | None] = collections.Counter()  # open streams per token name
        self.computations = 0
        self.closing = False
        self._cache: collections.OrderedDict[tuple, Heatmap] = collections.OrderedDict()
        self._cache_bytes = 0
        self._inflight: dict[tuple, asyncio.Task] = {}
        self._responses: collections.OrderedDict[tuple, bytes] = collections.OrderedDict()
        self._slots = asyncio.Semaphore(config.limits.max_concurrent_computations)
        self._tasks: list[asyncio.Task] = []
        self._loaded: set[str] = set()
        self._pending = 0
        self.max_pending = MAX_PENDING   # an owner (heatsvc.cluster) computes every view it publishes
        self._last_bar: dict[str, int] = {}
        self._bars: dict[str, tuple[int, int, dict]] = {}  # market -> (version, start_ms, bars)
        self.webhooks = [WebhookSink(self, hook) for hook in config.webhooks]   # checks their views
        self.recording = None               # heatsvc.recording.Recording, set by `heatsvc serve` when recording
        self.pollers: dict = {}             # exchange -> positions poller (.snapshot(coin)), set by `heatsvc serve`
        self._liquidation_store = None      # opened on the first GetLiquidations without a recording
        self.measured = Measured(self)      # measured maps (public-ledger markets) and saved profiles

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Health NOT_SERVING until data is loaded; follow the refresher's events and health."""
        for name in ("", SERVICE, *self.catalogue.markets, *self.catalogue.aggregates):
            await self.health.set(name, NOT_SERVING)
        self._tasks = [asyncio.create_task(self._follow_updates(), name="follow updates"),
                       asyncio.create_task(self._follow_health(), name="follow health")]
        for sink in self.webhooks:
            sink.start()
        self.measured.load_profiles()

    async def begin_shutdown(self) -> None:
        """Health NOT_SERVING everywhere, refuse new streams, end open streams with status OK."""
        self.closing = True
        await self.health.enter_graceful_shutdown()
        for topic in list(self.topics.values()):
            topic.stop()
        if self._liquidation_store is not None:
            self._liquidation_store.close()
        self.measured.close()

    async def stop(self) -> None:
        for sink in self.webhooks:
            await sink.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for topic in list(self.topics.values()):
            topic.stop()

    async def _follow_updates(self) -> None:
        queue = self.refresher.subscribe()
        try:
            while True:
                event = await queue.get()
                if event.market not in self.versions:
                    continue
                # a newest bar we have not seen also counts, in case the bounded queue dropped an event
                if event.bars_changed or event.last_bar_ms != self._last_bar.get(event.market):
                    self.versions[event.market] += 1
                    self._last_bar[event.market] = event.last_bar_ms
                if event.price and math.isfinite(event.price) and event.price > 0:
                    self.prices[event.market] = float(event.price)
                for topic in self.topics.values():
                    if event.market in topic.markets:
                        topic.wake()
                try:
                    await self._update_health()
                except Exception as exc:  # health is also polled; keep following updates
                    log.warning("health update failed: %s", exc)
        finally:
            self.refresher.unsubscribe(queue)

    async def _follow_health(self) -> None:
        while True:
            metrics.ASYNCIO_TASKS.set(len(asyncio.all_tasks()))
            try:
                await self._update_health()
            except Exception as exc:  # e.g. the store is briefly locked; try again next poll
                log.warning("health update failed: %s", exc)
            await asyncio.sleep(HEALTH_POLL_S)

    async def _update_health(self) -> None:
        state = self.refresher.health()
        for m in state.keys() - self.versions.keys():   # newly listed while serving: served from now on
            self.versions[m] = 0
            aggregate = self.catalogue.add(m)
            log.warning("%s: now served (a new listing); health NOT_SERVING until its data is loaded", m)
            if len(self.catalogue.aggregates[aggregate]) == 2:
                log.warning("%s: now served as an aggregate", aggregate)
        ready = {m for m in self.catalogue.markets if m in state and state[m].ready}
        self._loaded |= ready
        for m in self.catalogue.markets:
            await self.health.set(m, SERVING if m in ready else NOT_SERVING)
        for agg, parts in self.catalogue.aggregates.items():
            await self.health.set(agg, SERVING if ready.intersection(parts) else NOT_SERVING)
        overall = SERVING if ready else NOT_SERVING
        await self.health.set("", overall)
        await self.health.set(SERVICE, overall)

    # ---- views -----------------------------------------------------------------------------

    def _ready(self, key: ViewKey) -> tuple[str, ...]:
        if self._loaded.issuperset(key.components):   # a market once loaded stays loaded
            return key.components
        state = self.refresher.health()
        self._loaded |= {m for m, h in state.items() if h.ready}
        ready = tuple(m for m in key.components if m in state and state[m].ready)
        if not ready:
            status = ", ".join(f"{m} {state[m].status if m in state else 'loading'}" for m in key.components)
            raise unavailable(f"{key.market}: data is not loaded yet ({status}); retry shortly")
        return ready

    def data_version(self, key: ViewKey) -> tuple:
        return tuple((m, self.versions[m]) for m in self._ready(key))

    async def heatmap(self, key: ViewKey) -> Heatmap:
        """The view at the current data version: cached, or computed once however many ask."""
        version = self.data_version(key)
        ck = (key, version)
        hm = self._cache.get(ck)
        if hm is not None:
            self._cache.move_to_end(ck)
            return hm
        task = self._inflight.get(ck)
        if task is None:
            task = asyncio.ensure_future(self._compute(key, [m for m, _ in version]))
            self._inflight[ck] = task
            task.add_done_callback(lambda t: self._computed(ck, t))
        return await asyncio.shield(task)

    def _computed(self, ck: tuple, task: asyncio.Task) -> None:
        self._inflight.pop(ck, None)
        if task.cancelled() or task.exception() is not None:
            return
        for old in [k for k in self._cache if k[0] == ck[0]]:  # older versions of this view are dead
            self._cache_bytes -= _nbytes(self._cache.pop(old))
        hm = task.result()
        self._cache[ck] = hm
        self._cache_bytes += _nbytes(hm)
        while len(self._cache) > 1 and (len(self._cache) > self.config.limits.cache_views
                                        or self._cache_bytes > CACHE_BYTES):
            self._cache_bytes -= _nbytes(self._cache.popitem(last=False)[1])

    async def _compute(self, key: ViewKey, markets: list[str]) -> Heatmap:
        if self._pending >= self.max_pending:
            raise exhausted(f"{self._pending} distinct views are being computed; retry shortly")
        self._pending += 1
        try:
            async with self._slots:
                self.computations += 1
                return await asyncio.to_thread(metrics.timed, metrics.VIEW_COMPUTE.labels(key.market, key.lookback),
                                               self._compute_now, key, markets)
        finally:
            self._pending -= 1

    def _compute_now(self, key: ViewKey, markets: list[str]) -> Heatmap:
        """Load the window's bars (plus a day for the open interest before it) and run the engine."""
        span = LOOKBACKS[key.lookback]
        bars = {}
        for m in markets:
            last = self.store.last_time(m)
            if last is not None:
                bars[m] = self._stored_bars(m, last - span - DAY_MS)
        if not bars:
            raise unavailable(f"{key.market}: no bars stored yet; retry shortly")
        params = self.catalogue.profiles[key.profile] if key.profile else self.config.params
        kw = dict(lookback=key.lookback, columns=key.columns, rows=key.rows, price_range=key.price_range,
                  params=params, backend=self.config.backend, per_tier=key.per_tier)
        try:
            if key.aggregate:
                return compute_aggregate(bars, **kw)
            (market, b), = bars.items()
            return compute_heatmap(b, market=market, **kw)
        except ValueError as exc:
            field = "view.price_range" if "price_range" in str(exc) else "view"
            raise invalid([(field, str(exc))]) from None

    def _stored_bars(self, market: str, start_ms: int) -> dict:
        """A market's bars from start_ms: read from the store once per data version, and sliced for
        shorter views (read again only when a longer view needs earlier bars)."""
        version = self.versions[market]
        cached = self._bars.get(market)
        if cached is None or cached[0] != version or cached[1] > start_ms:
            cached = self._bars[market] = (version, start_ms, self.store.load(market, start_ms=start_ms))
        bars = cached[2]
        i = int(np.searchsorted(bars["time_ms"], start_ms))
        return {k: a[i:] for k, a in bars.items()}

    def traded(self, key: ViewKey, since_ms: int, until_ms: int) -> Traded | None:
        """The range the view's markets traded in bars opening from since_ms (that bar may have been
        forming then) to until_ms; None without such bars."""
        highs, lows = [], []
        for m in key.components:
            if m not in self._bars:
                continue
            bars = self._stored_bars(m, since_ms)
            inside = bars["time_ms"] <= until_ms
            if inside.any():
                highs.append(float(bars["high"][inside].max()))
                lows.append(float(bars["low"][inside].min()))
        return Traded(high=max(highs), low=min(lows)) if highs else None

    def price(self, key: ViewKey, hm: Heatmap) -> float:
        """The current price: the refresher's latest (mean over an aggregate's exchanges), else the last close."""
        known = [self.prices[m] for m in hm.markets if m in self.prices]
        return float(sum(known) / len(known)) if known else hm.price

    # ---- what the shared streams read (an edge, heatsvc.cluster.edge, gives the same three) -------

    async def view_state(self, key: ViewKey) -> ViewState:
        """The view now: its Heatmap (the grid) and the price its zones are read at."""
        hm = await self.heatmap(key)
        return ViewState(grid=hm, zones=self.price(key, hm))

    def zone_report(self, key: ViewKey, state: ViewState, zopts) -> pb.ZoneReport:
        return messages.zone_report(key, state.grid, state.zones, zopts)

    async def grid_message(self, key: ViewKey, state: ViewState, gopts) -> pb.Heatmap:
        return await asyncio.to_thread(self.heatmap_message, key, state.grid, gopts)

    def _remember(self, ck: tuple, data: bytes) -> bytes:
        if len(data) <= RESPONSE_CACHE_MAX:
            self._responses[ck] = data
            while len(self._responses) > RESPONSE_CACHE:
                self._responses.popitem(last=False)
        return data

    # ---- RPCs ------------------------------------------------------------------------------

    async def _unary(self, context, produce) -> bytes:
        try:
            return await produce()
        except RequestError as exc:
            await context.abort_with_status(exc.status())

    async def ListMarkets(self, request, context) -> bytes:
        return await self._unary(context, self.list_markets)

    async def list_markets(self) -> bytes:
        state = self.refresher.health()
        order = ["ok", "loading", "degraded", "failing"]
        out = pb.ListMarketsResponse(lookbacks=self.catalogue.lookbacks, max_cells=self.catalogue.max_cells,
                                     parameters=messages.parameters(self.config.params),
                                     profiles=self.measured.profile_messages())
        for name, parts in [(m, (m,)) for m in self.catalogue.markets] + list(self.catalogue.aggregates.items()):
            exchange, _, symbol = name.partition(":")
            info = out.markets.add(market=name, exchange=exchange, symbol=symbol, aggregate=exchange == "all",
                                   components=parts if exchange == "all" else ())
            known = [state[m] for m in parts if m in state]
            worst = max((h.status for h in known), key=order.index, default="loading")
            if len(known) < len(parts):
                worst = "loading"
            info.status = messages.STATUS[worst]
            last = [h.last_bar_ms for h in known if h.last_bar_ms is not None]
            if last:
                info.last_bar_time.CopyFrom(messages.timestamp(min(last)))
            lags = [h.lag_s for h in known if h.lag_s is not None]
            if lags:
                info.lag_seconds = max(lags)
            info.last_error = "; ".join(f"{h.market}: {h.last_error}" for h in known if h.last_error)
        return out.SerializeToString()

    async def GetHeatmap(self, request, context) -> bytes:
        async def produce():
            key, zopts, gopts = self._check_heatmap_request(request)
            hm = await self.heatmap(key)
            price = self.price(key, hm)
            ck = ("heatmap", key, self.data_version(key), price, zopts, gopts, self.liquidations_revision())
            if ck in self._responses:
                return self._responses[ck]
            heat = await asyncio.to_thread(self.heatmap_message, key, hm, gopts)
            msg = pb.GetHeatmapResponse(heatmap=heat, zones=messages.zone_report(key, hm, price, zopts))
            return self._remember(ck, msg.SerializeToString())
        return await self._unary(context, produce)

    async def GetZones(self, request, context) -> bytes:
        async def produce():
            key, zopts, lookbacks = check_all(
                lambda: self.catalogue.view(request.view), lambda: zone_opts(request.zone_options),
                lambda: self.catalogue.lookback_set(request.confluence_lookbacks, "confluence_lookbacks")
                if request.confluence_lookbacks else ())
            hm = await self.heatmap(key)
            price = self.price(key, hm)
            ck = ("zones", key, self.data_version(key), price, zopts, lookbacks)
            if ck in self._responses:
                self._responses.move_to_end(ck)
                return self._responses[ck]
            msg = pb.GetZonesResponse(zones=messages.zone_report(key, hm, price, zopts))
            if lookbacks:
                _, levels = await self._confluence(key, lookbacks, zopts)
                msg.confluence.extend(levels)
            return self._remember(ck, msg.SerializeToString())
        return await self._unary(context, produce)

    async def GetConfluence(self, request, context) -> bytes:
        async def produce():
            view = pb.View(market=request.market, lookback=self.catalogue.lookbacks[0], rows=request.rows,
                           columns=request.columns)
            key, zopts, lookbacks = check_all(lambda: self.catalogue.view(view, "request"),
                                              lambda: zone_opts(request.zone_options),
                                              lambda: self.catalogue.lookback_set(request.lookbacks, "lookbacks"))
            price, levels = await self._confluence(key, lookbacks, zopts)
            return pb.GetConfluenceResponse(price=price, levels=levels).SerializeToString()
        return await self._unary(context, produce)

    def liquidation_store(self):
        """The recorder's LiquidationStore, or one opened on the bar store's file (read by the service)."""
        if self.recording is not None:
            return self.recording.store
        if self._liquidation_store is None:
            self._liquidation_store = LiquidationStore(self.store.path)
        return self._liquidation_store

    def heatmap_message(self, key: ViewKey, hm: Heatmap, gopts) -> pb.Heatmap:
        """The view's message with the realised liquidations per column (on a thread: reads the store)."""
        msg = messages.heatmap(key, hm, gopts)
        liquidations.fill_heatmap(self.liquidation_store(), msg, key.components, hm.column_times,
                                  hm.params.step_ms * hm.bars_per_column)
        return msg

    def liquidations_revision(self) -> int:
        """Changes whenever recorded liquidations or coverage were committed (part of response cache keys)."""
        return self.recording.revision if self.recording is not None else 0

    async def GetLiquidations(self, request, context) -> bytes:
        async def produce():
            args = liquidations.check(request, self.catalogue, self.refresher.now_ms())
            return await asyncio.to_thread(liquidations.query, self.liquidation_store(), request.market, *args)
        return await self._unary(context, produce)

    async def _confluence(self, key: ViewKey, lookbacks: tuple[str, ...], zopts) -> tuple[float, list]:
        """MODEL.md section 14 over the lookbacks of key's market (its grid), all read at one price."""
        keys = [dataclasses.replace(key, lookback=lb) for lb in lookbacks]
        heatmaps = await asyncio.gather(*(self.heatmap(k) for k in keys))
        price = self.price(keys[0], heatmaps[0])
        reports = {lb: messages.read_zones(hm, price, zopts) for lb, hm in zip(lookbacks, heatmaps)}
        return price, [messages.confluence_level(v) for v in confluence(reports)]

    def _check_heatmap_request(self, request):
        key, zopts, gopts = check_all(lambda: self.catalogue.view(request.view, per_tier=request.include_tiers),
                                      lambda: zone_opts(request.zone_options), lambda: grid_opts(request))
        self.check_served(key, zopts, gopts)
        return key, zopts, gopts

    def check_served(self, key: ViewKey, zopts, gopts=None) -> None:
        """Refuse what this server cannot give (a cluster edge serves only the published views)."""

    async def StreamHeatmap(self, request, context):
        def make():
            key, zopts, gopts = self._check_heatmap_request(request)
            tkey = ("view", key, request.zones_only, zopts, None if request.zones_only else gopts)
            return tkey, lambda: ViewTopic(self, key, request.zones_only, zopts, gopts,
                                           self.config.limits.queue_depth)
        async for data in self._stream(context, make):
            yield data

    def _check_views(self, request, *more) -> list:
        """The views of a StreamZones or StreamZoneEvents request and their zone options (then `more`)."""
        limit = self.config.limits.max_stream_views
        if not 1 <= len(request.views) <= limit:
            raise invalid([("views", f"give between 1 and {limit} views, got {len(request.views)}")])
        checks = [lambda i=i, v=v: self.catalogue.view(v, f"views[{i}]") for i, v in enumerate(request.views)]
        return check_all(*checks, lambda: zone_opts(request.zone_options), *more)

    async def StreamZones(self, request, context):
        def make():
            *keys, zopts = self._check_views(request)
            for key in keys:
                self.check_served(key, zopts)
            return ("zones", tuple(keys), zopts), lambda: ZonesTopic(self, tuple(keys), zopts,
                                                                     self.config.limits.queue_depth)
        async for data in self._stream(context, make):
            yield data

    async def StreamZoneEvents(self, request, context):
        def make():
            *keys, zopts, eopts = self._check_views(request, lambda: event_opts(request, EVENT_KIND_NAMES))
            return ("events", tuple(keys), zopts, eopts), lambda: EventsTopic(self, tuple(keys), zopts, eopts,
                                                                              self.config.limits.queue_depth)
        async for data in self._stream(context, make):
            yield data

    async def StreamLiquidations(self, request, context):
        def make():
            markets, n = liquidations.stream_markets(request, self.catalogue)
            return ("liquidations", markets, n), lambda: liquidations.LiquidationsTopic(
                self, markets, n, self.config.limits.queue_depth)
        async for data in self._stream(context, make):
            yield data

    async def GetMeasuredMap(self, request, context) -> bytes:
        return await self._unary(context, lambda: self.measured.get(request))

    async def CompareMeasured(self, request, context) -> bytes:
        return await self._unary(context, lambda: self.measured.compare(request))

    async def StreamMeasuredMap(self, request, context):
        async for data in self._stream(context, lambda: self.measured.topic(request, self.config.limits.queue_depth)):
            yield data

    def on_liquidations(self, batch) -> None:
        """A committed batch of recorded liquidations (heatsvc.recording): to the streams that want it."""
        for topic in list(self.topics.values()):
            if isinstance(topic, liquidations.LiquidationsTopic):
                topic.add(batch)

    async def _stream(self, context, make):
        """Join (or start) the shared topic, send its snapshot, then its updates until either side ends."""
        who = auth.caller.get()   # the token's name (the interceptor checked it), None without tokens
        try:
            tkey, factory = make()
            topic, sub = await self._subscribe(tkey, factory, who)
        except RequestError as exc:
            await context.abort_with_status(exc.status())
            return
        active = metrics.ACTIVE_STREAMS.labels(STREAM_METHODS[tkey[0]])
        active.inc()
        try:
            yield topic.snapshot()
            while (data := await sub.next(topic)) is not None:
                yield data
        finally:
            active.dec()
            topic.subscribers.discard(sub)
            self.streams -= 1
            self.caller_streams[who] -= 1
            self._release(tkey, topic)

    def _release(self, tkey, topic) -> None:
        """Stop a topic nobody reads or is joining."""
        if not topic.subscribers and not topic.joining:
            topic.stop()
            if self.topics.get(tkey) is topic:
                del self.topics[tkey]

    async def _subscribe(self, tkey, factory, who: str | None = None):
        if self.closing:
            raise unavailable("the server is shutting down")
        if self.streams >= self.config.limits.max_streams:
            raise exhausted(f"the server holds its limit of {self.config.limits.max_streams} streams; retry later")
        per_token = self.config.limits.max_streams_per_token
        if who is not None and self.caller_streams[who] >= per_token:
            raise exhausted(f"token {who!r} holds its limit of {per_token} streams (limits.max_streams_per_token); "
                            "close one or retry later")
        self.streams += 1
        self.caller_streams[who] += 1
        topic = self.topics.get(tkey)
        if topic is None:
            topic = self.topics[tkey] = factory()
            topic.started = asyncio.ensure_future(topic.start())
        topic.joining += 1
        try:
            await asyncio.shield(topic.started)
            if self.closing:
                raise unavailable("the server is shutting down")
            return topic, topic.subscribe()
        except BaseException:
            self.streams -= 1
            self.caller_streams[who] -= 1
            raise
        finally:
            topic.joining -= 1
            self._release(tkey, topic)

    def handler(self) -> grpc.GenericRpcHandler:
        """Method handlers that take and give bytes: requests are parsed here, so corrupt ones get
        INVALID_ARGUMENT, and responses are already serialized (once, however many receive them)."""

        async def parse(raw: bytes, request_type, context):
            try:
                return request_type.FromString(raw)
            except DecodeError as exc:
                error = invalid([("request", f"not a valid {request_type.DESCRIPTOR.full_name}: {exc}")])
                await context.abort_with_status(error.status())

        def unary(method, request_type):
            async def call(raw, context):
                return await method(await parse(raw, request_type, context), context)
            return grpc.unary_unary_rpc_method_handler(call)

        def stream(method, request_type):
            async def call(raw, context):
                async for data in method(await parse(raw, request_type, context), context):
                    yield data
            return grpc.unary_stream_rpc_method_handler(call)

        return grpc.method_handlers_generic_handler(SERVICE, {
            "ListMarkets": unary(self.ListMarkets, pb.ListMarketsRequest),
            "GetHeatmap": unary(self.GetHeatmap, pb.GetHeatmapRequest),
            "GetZones": unary(self.GetZones, pb.GetZonesRequest),
            "StreamHeatmap": stream(self.StreamHeatmap, pb.StreamHeatmapRequest),
            "StreamZones": stream(self.StreamZones, pb.StreamZonesRequest),
            "StreamZoneEvents": stream(self.StreamZoneEvents, pb.StreamZoneEventsRequest),
            "GetConfluence": unary(self.GetConfluence, pb.GetConfluenceRequest),
            "GetLiquidations": unary(self.GetLiquidations, pb.GetLiquidationsRequest),
            "StreamLiquidations": stream(self.StreamLiquidations, pb.StreamLiquidationsRequest),
            "GetMeasuredMap": unary(self.GetMeasuredMap, pb.GetMeasuredMapRequest),
            "StreamMeasuredMap": stream(self.StreamMeasuredMap, pb.StreamMeasuredMapRequest),
            "CompareMeasured": unary(self.CompareMeasured, pb.CompareMeasuredRequest),
        })


class Server:
    """A grpc.aio server around HeatmapService, with health, reflection, keepalive and size limits."""

    def __init__(self, config, store=None, refresher=None, *, service=None, reuse_port: bool = False):
        self.config = config
        self.service = service if service is not None else HeatmapService(config, store, refresher)
        self.reuse_port = reuse_port   # cluster edges share one port (SO_REUSEPORT)
        self.grpc: grpc.aio.Server | None = None
        self.port: int | None = None

    def options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.max_send_message_length", self.config.max_message_bytes()),
            ("grpc.max_receive_message_length", 1 << 20),   # requests are small
            ("grpc.keepalive_time_ms", 60_000),
            ("grpc.keepalive_timeout_ms", 20_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.http2.max_pings_without_data", 0),
        ] + [("grpc.so_reuseport", 1 if self.reuse_port else 0)]   # gRPC turns it on by default on Linux

    async def start(self, listen: str | None = None) -> int:
        """Bind and start serving (health NOT_SERVING until data is loaded); returns the port.
        TLS when configured; with tokens, every RPC but health checks needs one (auth.TokenInterceptor)."""
        credentials = auth.server_credentials(self.config)
        tokens = self.service.tokens
        self.grpc = grpc.aio.server(options=self.options(),
                                    interceptors=[auth.TokenInterceptor(tokens)] if tokens else None)
        self.grpc.add_generic_rpc_handlers((self.service.handler(),))
        health_pb2_grpc.add_HealthServicer_to_server(self.service.health, self.grpc)
        reflection.enable_server_reflection((SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME), self.grpc)
        address = listen or self.config.listen
        if warning := auth.exposure_warning(address, credentials is not None, bool(tokens)):
            log.warning("UNSAFE: %s", warning)
        try:
            if credentials is not None:
                self.port = self.grpc.add_secure_port(address, credentials)
            else:
                self.port = self.grpc.add_insecure_port(address)
        except RuntimeError as exc:
            raise ValueError(f"cannot listen on {address}: {exc}") from None
        if not self.port:
            raise ValueError(f"cannot listen on {address}")
        await self.service.start()   # health NOT_SERVING before the first call can ask
        await self.grpc.start()
        return self.port

    async def stop(self, grace: float = 5.0) -> None:
        """Graceful: NOT_SERVING, open streams end with OK, in-flight calls get `grace` seconds."""
        await self.service.begin_shutdown()
        if self.grpc is not None:
            await self.grpc.stop(grace)
        await self.service.stop()
