"""`heatsvc serve --role edge`: a stateless heatsvc.v1 server. Ordered consumers deliver the latest zone
report of every view and heartbeat of every owner, then each new one; a view's grid (about 1 MB) is
fetched from the stream only when a client asks for it (direct get of the subject's last message),
once per grid version however many ask. GetZones, GetHeatmap and ListMarkets answer from that, and
StreamHeatmap/StreamZones run the single process's shared topics on it (serialized once per update).
It serves the views the owners publish (default shape and zone options); the rest is UNIMPLEMENTED."""
from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time

from ..service.errors import unavailable, unimplemented
from ..service.server import NOT_SERVING, SERVICE, SERVING, HeatmapService, Server
from ..service.views import (DEFAULT_COLUMNS, DEFAULT_ROWS, Catalogue, ViewKey, ViewState, ZoneOpts, check_all,
                             zone_opts)
from ..v1 import heatmap_service_pb2 as pb
from . import subjects
from .connection import connect, ensure_stream
from .retained import Retained

log = logging.getLogger("heatsvc.cluster")
HEALTH_POLL_S = 0.2
NOT_ON_EDGE = "is not served by an edge (heatsvc serve --role edge); ask a single-process server"


class EdgeService(HeatmapService):
    """The heatsvc.v1 servicer of an edge: the single process's API, limits, auth and shared streams,
    with views read from the retained publications instead of computed."""

    def __init__(self, config):
        if config.webhooks:
            raise ValueError("config: [[webhooks]] are delivered by a single-process server, not by an edge")
        super().__init__(config, store=None, refresher=None)
        self.retained = Retained(self._view_changed, self._catalogue_changed)
        self.catalogue = Catalogue([], (), config.limits.max_cells, len(config.params.tiers))
        self.nc = None
        self.subscriptions: list = []
        self.grid_fetches = 0
        self._fetching: dict[tuple[str, str], asyncio.Future] = {}
        self._health: dict[str, int] = {}

    # ---- NATS ------------------------------------------------------------------------------

    async def start(self) -> None:
        for name in ("", SERVICE):
            await self.health.set(name, NOT_SERVING)
        self._tasks = [asyncio.create_task(self._connect(), name="nats"),
                       asyncio.create_task(self._follow_health(), name="follow health")]

    async def _connect(self) -> None:
        self.nc = await connect(self.config.nats, "heatsvc-edge", on_disconnect=self._update_health,
                                on_reconnect=self._consume)
        await self._consume()

    async def _consume(self) -> None:
        """(Re)start the ordered consumers from the latest zones and heartbeats: after a reconnect the
        server may be a restarted one that lost them; repeats are ignored (Retained)."""
        from nats.js.api import DeliverPolicy

        for sub in self.subscriptions:
            try:
                await sub.unsubscribe()
            except Exception as exc:  # gone with the old server
                log.debug("unsubscribe: %s", exc)
        self.subscriptions = []
        js = self.nc.jetstream()
        while not self.subscriptions:
            try:
                await ensure_stream(js)
                self.subscriptions = [await js.subscribe(subject, cb=self._on_message, ordered_consumer=True,
                                                         idle_heartbeat=2.0,
                                                         deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
                                      for subject in subjects.zones_and_owners()]
            except Exception as exc:  # JetStream not ready yet after a restart
                log.warning("edge: cannot subscribe yet: %s", exc)
                self.subscriptions = []
                await asyncio.sleep(0.5)

    async def fetch_grid(self, key: ViewKey):
        """The view's entry with its grid: fetched from the stream when its version is new, by one
        direct get however many callers wait for it."""
        entry = self._entry(key)
        if entry.grid is not None:
            return entry
        view = (key.market, key.lookback)
        pending = self._fetching.get(view)
        if pending is None:
            pending = self._fetching[view] = asyncio.ensure_future(self._fetch(view, entry.grid_version))
            pending.add_done_callback(lambda _: self._fetching.pop(view, None))
        await asyncio.shield(pending)
        entry = self._entry(key)
        if entry.grid is None:   # the zones moved on to a newer grid meanwhile: fetch that one
            return await self.fetch_grid(key)
        return entry

    async def _fetch(self, view: tuple[str, str], version: str | None) -> None:
        if self.nc is None or not self.nc.is_connected:
            raise unavailable(f"{view[0]} {view[1]}: the heatmap is not here and NATS is unreachable; retry shortly")
        try:
            msg = await self.nc.jetstream().get_last_msg(subjects.STREAM, subjects.view(*view, "grid"), direct=True)
        except Exception as exc:  # no grid yet, or NATS went away
            raise unavailable(f"{view[0]} {view[1]}: no heatmap published yet ({type(exc).__name__}); "
                              "retry shortly") from None
        self.grid_fetches += 1
        entry = self.retained.views.get(view)
        if entry is not None and entry.grid_version == version:
            entry.grid = msg.data
            entry.responses = {}

    async def _on_message(self, msg) -> None:
        self.retained.handle(msg.subject, msg.data, msg.headers)

    def _view_changed(self, market: str) -> None:
        parts = set(self.catalogue.aggregates.get(market, (market,)))
        for topic in self.topics.values():
            if topic.markets & parts:
                topic.wake()

    def _catalogue_changed(self) -> None:
        markets, lookbacks, first = self.retained.catalogue()
        tiers = len(first.parameters.tiers) if first is not None else len(self.config.params.tiers)
        self.catalogue = Catalogue(markets, tuple(lookbacks), first.max_cells if first else self.config.limits.max_cells,
                                   tiers)

    # ---- health ----------------------------------------------------------------------------

    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def stale(self, market: str) -> bool:
        return not self.connected() or self.retained.stale(market)

    async def _follow_health(self) -> None:
        while True:
            try:
                await self._update_health()
            except Exception as exc:  # keep polling
                log.warning("edge health: %s", exc)
            await asyncio.sleep(HEALTH_POLL_S)

    async def _update_health(self) -> None:
        """Per market SERVING while connected and its owner is alive and has loaded it; overall while any
        market is."""
        now = int(time.time() * 1000)
        connected = self.connected()
        states = {m: SERVING if connected and not self.retained.stale(m, now) and not self.retained.loading(m)
                  else NOT_SERVING
                  for m in [*self.catalogue.markets, *self.catalogue.aggregates]}
        overall = SERVING if SERVING in states.values() else NOT_SERVING
        states[""] = states[SERVICE] = overall
        for name, state in states.items():
            if self._health.get(name) != state:
                self._health[name] = state
                await self.health.set(name, state)

    # ---- what the shared streams read ------------------------------------------------------

    def _entry(self, key: ViewKey):
        entry = self.retained.view(key.market, key.lookback)
        if entry is None:
            raise unavailable(f"{key.market} {key.lookback}: not published yet (owner starting or loading); "
                              "retry shortly")
        return entry

    async def view_state(self, key: ViewKey) -> ViewState:
        entry = self._entry(key)
        return ViewState(grid=entry.grid_version, zones=entry.zones)

    def zone_report(self, key: ViewKey, state: ViewState, zopts) -> pb.ZoneReport:
        return pb.ZoneReport.FromString(state.zones)

    async def grid_message(self, key: ViewKey, state: ViewState, gopts) -> pb.Heatmap:
        msg = pb.Heatmap.FromString((await self.fetch_grid(key)).grid)
        if not gopts.candles:
            msg.ClearField("candles")
        return msg

    def check_served(self, key: ViewKey, zopts, gopts=None) -> None:
        """Only what the owners publish: the default view shape and zone options, no intensity or tiers."""
        bad = []
        if (key.rows, key.columns) != (DEFAULT_ROWS, DEFAULT_COLUMNS) or key.price_range is not None:
            bad.append(f"views of {DEFAULT_ROWS} rows x {DEFAULT_COLUMNS} columns without price_range")
        if zopts != ZoneOpts():
            bad.append(f"zone options threshold {ZoneOpts().threshold:g} and top {ZoneOpts().top}")
        if gopts is not None and (gopts.intensity or gopts.tiers):
            bad.append("heatmaps without include_intensity or include_tiers")
        if bad:
            raise unimplemented(f"an edge serves the views the owners publish only: {'; '.join(bad)}; "
                                "ask a single-process server for others")

    # ---- RPCs ------------------------------------------------------------------------------

    def _answer(self, key: ViewKey, kind: tuple, build) -> bytes:
        """A serialized answer from the view's committed pair, kept until the pair changes; a stale
        view's zones carry stale=true."""
        entry = self._entry(key)
        ck = (*kind, self.stale(key.market))
        data = entry.responses.get(ck)
        if data is None:
            zones = pb.ZoneReport.FromString(entry.zones)
            zones.stale = ck[-1]
            data = entry.responses[ck] = build(entry, zones).SerializeToString()
        return data

    async def GetZones(self, request, context) -> bytes:
        async def produce():
            key, zopts = check_all(lambda: self.catalogue.view(request.view), lambda: zone_opts(request.zone_options))
            if request.confluence_lookbacks:
                raise unimplemented(f"confluence_lookbacks {NOT_ON_EDGE}")
            self.check_served(key, zopts)
            return self._answer(key, ("zones",), lambda entry, zones: pb.GetZonesResponse(zones=zones))
        return await self._unary(context, produce)

    async def GetHeatmap(self, request, context) -> bytes:
        async def produce():
            key, zopts, gopts = self._check_heatmap_request(request)
            await self.fetch_grid(key)

            def build(entry, zones):
                if entry.grid is None:   # new zones (and grid) arrived while fetching: the next call has them
                    raise unavailable(f"{key.market} {key.lookback}: the heatmap changed meanwhile; retry")
                heatmap = pb.Heatmap.FromString(entry.grid)
                if not gopts.candles:
                    heatmap.ClearField("candles")
                return pb.GetHeatmapResponse(heatmap=heatmap, zones=zones)
            return self._answer(key, ("heatmap", gopts.candles), build)
        return await self._unary(context, produce)

    async def list_markets(self) -> bytes:
        """The owners' catalogues merged (single-exchange markets first), stale where the owner is."""
        out = pb.ListMarketsResponse()
        markets, lookbacks, first = self.retained.catalogue()
        if first is not None:
            out.lookbacks.extend(first.lookbacks)
            out.max_cells = first.max_cells
            out.parameters.CopyFrom(first.parameters)
        infos = [info for i in sorted(self.retained.owners) for info in self.retained.owners[i].catalogue.markets]
        for info in sorted(infos, key=lambda m: m.aggregate):
            out.markets.add().CopyFrom(info)
            out.markets[-1].stale = self.stale(info.market)
        return out.SerializeToString()

    async def GetConfluence(self, request, context) -> bytes:
        return await self._unary(context, self._not_on_edge("GetConfluence"))

    async def GetLiquidations(self, request, context) -> bytes:
        return await self._unary(context, self._not_on_edge("GetLiquidations"))

    async def GetMeasuredMap(self, request, context) -> bytes:
        return await self._unary(context, self._not_on_edge("GetMeasuredMap"))

    async def CompareMeasured(self, request, context) -> bytes:
        return await self._unary(context, self._not_on_edge("CompareMeasured"))

    @staticmethod
    def _not_on_edge(method: str):
        async def refuse():
            raise unimplemented(f"{method} {NOT_ON_EDGE}")
        return refuse

    def _refused_stream(method: str):
        async def refuse(self, request, context):
            await context.abort_with_status(unimplemented(f"{method} {NOT_ON_EDGE}").status())
            yield b""   # never reached: makes this an async generator like the other streams
        return refuse

    StreamZoneEvents = _refused_stream("StreamZoneEvents")
    StreamLiquidations = _refused_stream("StreamLiquidations")
    StreamMeasuredMap = _refused_stream("StreamMeasuredMap")

    async def stop(self) -> None:
        await super().stop()
        if self.nc is not None:
            await self.nc.close()


async def serve(config) -> int:
    """Run an edge until SIGTERM/SIGINT: gRPC at once (NOT_SERVING until owners are heard), NATS in
    the background."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    server = Server(config, service=EdgeService(config), reuse_port=True)
    try:
        port = await server.start()
        host = config.listen.rpartition(":")[0]
        print(f"heatsvc: edge serving heatsvc.v1 on {host}:{port} from {config.nats.url}; "
              "health NOT_SERVING until the owners are heard", flush=True)
        await stopping.wait()
        return 0
    finally:
        await server.stop(grace=2)
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        print("heatsvc: edge stopped", file=sys.stderr, flush=True)

