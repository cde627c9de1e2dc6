"""The kinds of shared stream: one view's heatmap/zone updates, many views' zone reports, and many views'
zone events. The first two read views through the service's view_state/zone_report/grid_message, so a
single process and a cluster edge (heatsvc.cluster.edge) feed the same topics; zone events need the
model's reports and stay with the single process."""
from __future__ import annotations

import asyncio

from ..model.events import first_near_state, zone_events
from ..v1 import heatmap_service_pb2 as pb
from . import messages
from .fanout import Topic
from .views import EventOpts, GridOpts, ViewKey, ZoneOpts


class ViewTopic(Topic):
    """StreamHeatmap: a new heatmap + zones when the bars change, zones alone when only the price moves."""

    def __init__(self, service, key: ViewKey, zones_only: bool, zopts: ZoneOpts, gopts: GridOpts, depth: int):
        super().__init__(key.components, depth)
        self.service, self.key, self.zones_only, self.zopts, self.gopts = service, key, zones_only, zopts, gopts
        self.debounce_s = 0.05 if key.aggregate else 0.0
        self.state = None
        self.heatmap_msg: pb.Heatmap | None = None
        self.zones_msg: pb.ZoneReport | None = None

    async def _state(self):
        state = await self.service.view_state(self.key)
        if state.same(self.state):
            return None
        grid_changed = self.state is None or state.grid is not self.state.grid
        self.zones_msg = self.service.zone_report(self.key, state, self.zopts)
        if grid_changed and not self.zones_only:
            self.heatmap_msg = await self.service.grid_message(self.key, state, self.gopts)
        self.state = state
        return grid_changed

    async def initial(self) -> None:
        await self._state()

    async def refresh(self):
        grid_changed = await self._state()
        if grid_changed is None:
            return None
        self.sequence += 1
        kind = pb.UPDATE_KIND_HEATMAP if grid_changed else pb.UPDATE_KIND_ZONES
        msg = pb.StreamHeatmapResponse(sequence=self.sequence, kind=kind, zones=self.zones_msg)
        if grid_changed and not self.zones_only:
            msg.heatmap.CopyFrom(self.heatmap_msg)
        return msg

    def snapshot_message(self):
        msg = pb.StreamHeatmapResponse(sequence=self.sequence, kind=pb.UPDATE_KIND_SNAPSHOT, zones=self.zones_msg)
        if not self.zones_only:
            msg.heatmap.CopyFrom(self.heatmap_msg)
        return msg

    def skip_suffix(self, skipped: int) -> bytes:
        return pb.StreamHeatmapResponse(gap_skipped=True, skipped_updates=skipped).SerializeToString()


class ZonesTopic(Topic):
    """StreamZones: every view's zone report first, then the reports of the views that changed."""

    def __init__(self, service, keys: tuple[ViewKey, ...], zopts: ZoneOpts, depth: int):
        super().__init__({m for k in keys for m in k.components}, depth)
        self.service, self.keys, self.zopts = service, keys, zopts
        self.debounce_s = 0.05
        self.state = [None] * len(keys)
        self.reports: list[pb.ZoneReport | None] = [None] * len(keys)

    async def _changed(self) -> list[int]:
        states = await asyncio.gather(*(self.service.view_state(k) for k in self.keys))
        changed = []
        for i, (key, state) in enumerate(zip(self.keys, states)):
            if not state.same(self.state[i]) or self.reports[i] is None:
                self.reports[i] = self.service.zone_report(key, state, self.zopts)
                self.state[i] = state
                changed.append(i)
        return changed

    async def initial(self) -> None:
        await self._changed()

    async def refresh(self):
        changed = await self._changed()
        if not changed:
            return None
        self.sequence += 1
        return pb.StreamZonesResponse(sequence=self.sequence, kind=pb.UPDATE_KIND_ZONES,
                                      reports=[pb.ViewZones(view_index=i, zones=self.reports[i]) for i in changed])

    def snapshot_message(self):
        return pb.StreamZonesResponse(sequence=self.sequence, kind=pb.UPDATE_KIND_SNAPSHOT,
                                      reports=[pb.ViewZones(view_index=i, zones=r) for i, r in enumerate(self.reports)])

    def skip_suffix(self, skipped: int) -> bytes:
        return pb.StreamZonesResponse(gap_skipped=True, skipped_updates=skipped).SerializeToString()


class EventsTopic(Topic):
    """StreamZoneEvents: every view's zone report first, then the events (MODEL.md section 13) of the
    views each refresh gave a new data version, in one message; nothing when no event was asked for."""

    def __init__(self, service, keys: tuple[ViewKey, ...], zopts: ZoneOpts, eopts: EventOpts, depth: int):
        super().__init__({m for k in keys for m in k.components}, depth)
        self.service, self.keys, self.zopts, self.eopts = service, keys, zopts, eopts
        self.debounce_s = 0.05
        n = len(keys)
        self.versions: list[tuple | None] = [None] * n
        self.heatmaps = [None] * n
        self.reports = [None] * n        # the model's reports, compared from one version to the next
        self.near = [None] * n           # PRICE_NEAR hysteresis per view
        self.report_msgs: list[pb.ZoneReport | None] = [None] * n

    async def _advance(self) -> list:
        """Read every view whose data version changed; returns its events as messages."""
        versions = [self.service.data_version(k) for k in self.keys]
        heatmaps = await asyncio.gather(*(self.service.heatmap(k) for k in self.keys))
        out = []
        for i, (key, hm, version) in enumerate(zip(self.keys, heatmaps, versions)):
            if version == self.versions[i] and self.report_msgs[i] is not None:
                continue
            price = self.service.price(key, hm)
            rep = messages.read_zones(hm, price, self.zopts)
            if self.reports[i] is None:
                self.near[i] = first_near_state(rep, self.eopts.near_pct)
            else:
                traded = self.service.traded(key, self.heatmaps[i].time_end_ms, hm.time_end_ms)
                events, self.near[i] = zone_events(self.reports[i], rep, traded, self.near[i], self.eopts.near_pct)
                out += [messages.zone_event(ev, key, i, hm.time_end_ms, price) for ev in events
                        if ev.kind in self.eopts.kinds]
            self.versions[i], self.heatmaps[i], self.reports[i] = version, hm, rep
            self.report_msgs[i] = messages.zone_report(key, hm, price, self.zopts, rep)
        return out

    async def initial(self) -> None:
        await self._advance()

    async def refresh(self):
        events = await self._advance()
        if not events:
            return None
        self.sequence += 1
        return pb.StreamZoneEventsResponse(sequence=self.sequence, kind=pb.UPDATE_KIND_ZONES, events=events)

    def snapshot_message(self):
        return pb.StreamZoneEventsResponse(sequence=self.sequence, kind=pb.UPDATE_KIND_SNAPSHOT,
                                           reports=[pb.ViewZones(view_index=i, zones=r)
                                                    for i, r in enumerate(self.report_msgs)])

    def skip_suffix(self, skipped: int) -> bytes:
        return pb.StreamZoneEventsResponse(gap_skipped=True, skipped_updates=skipped).SerializeToString()
