"""What an edge keeps of the owners' publications: each view's latest zone report with the version of
the grid it goes with (the grid itself is fetched from the stream when a client asks for it, and kept
until the version changes), and each owner's latest heartbeat (its shard's catalogue) with its time."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from google.protobuf.message import DecodeError

from ..v1 import heatmap_service_pb2 as pb
from . import subjects

log = logging.getLogger("heatsvc.cluster")
STALE_BEATS = 3   # an owner silent for this many heartbeats is stale


@dataclass
class ViewEntry:
    """One view's committed zones, the grid version they go with, and that grid once fetched."""
    zones: bytes | None = None
    grid_version: str | None = None
    grid: bytes | None = None            # the fetched grid of grid_version (None: not fetched yet)
    data_time_ms: int = 0        # of the committed zones: a view never goes back in time
    responses: dict = field(default_factory=dict)   # serialized unary answers of this pair


@dataclass
class OwnerEntry:
    catalogue: pb.ListMarketsResponse
    sent_ms: int
    interval_ms: int
    loading: frozenset[str] = frozenset()   # markets the owner is still backfilling

    def stale(self, now_ms: int) -> bool:
        return now_ms - self.sent_ms > STALE_BEATS * max(self.interval_ms, 1)


class Retained:
    """Fed with every message of the ordered consumer; `changed(market)` is called when a view's
    committed pair changed, `catalogue_changed()` when the set of markets or lookbacks did."""

    def __init__(self, changed, catalogue_changed):
        self.views: dict[tuple[str, str], ViewEntry] = {}
        self.owners: dict[int, OwnerEntry] = {}
        self.shard_of: dict[str, int] = {}   # market (aggregates too) -> owner index
        self.received = 0
        self._changed, self._catalogue_changed = changed, catalogue_changed

    def handle(self, subject: str, data: bytes, headers: dict | None) -> None:
        self.received += 1
        index = subjects.parse_owner(subject)
        if index is not None:
            self._heartbeat(index, data, headers or {})
            return
        parsed = subjects.parse_view(subject)
        if parsed is None:
            return
        market, lookback, kind = parsed
        if kind != "zones":
            return   # grids are fetched on demand (Edge.fetch_grid), never consumed
        entry = self.views.setdefault((market, lookback), ViewEntry())
        try:
            data_time = pb.ZoneReport.FromString(data).data_time.ToMilliseconds()
        except DecodeError:
            log.warning("ignored %s: not a heatsvc.v1.ZoneReport", subject)
            return
        if data_time < entry.data_time_ms:
            return   # older than what we have (a replacement owner warming up): keep ours
        version = (headers or {}).get(subjects.GRID_HEADER)
        if data == entry.zones and version == entry.grid_version:
            return   # the same again (a replacement owner, a resend after a reconnect)
        if version != entry.grid_version:
            entry.grid, entry.grid_version = None, version
        entry.zones, entry.responses, entry.data_time_ms = data, {}, data_time
        self._changed(market)

    def _heartbeat(self, index: int, data: bytes, headers: dict) -> None:
        try:
            catalogue = pb.ListMarketsResponse.FromString(data)
            sent = int(headers[subjects.SENT_HEADER])
            interval = int(headers[subjects.INTERVAL_HEADER])
        except (KeyError, ValueError, DecodeError):
            log.warning("ignored %s: not an owner's heartbeat", f"{subjects.PREFIX}.owners.{index}")
            return
        old = self.owners.get(index)
        loading = frozenset(m.market for m in catalogue.markets if m.status == pb.MARKET_STATUS_LOADING)
        self.owners[index] = OwnerEntry(catalogue, sent, interval, loading)
        markets = {m.market for m in catalogue.markets}
        for m in markets:
            self.shard_of[m] = index
        if old is None or {m.market for m in old.catalogue.markets} != markets \
                or list(old.catalogue.lookbacks) != list(catalogue.lookbacks):
            self._catalogue_changed()

    def view(self, market: str, lookback: str) -> ViewEntry | None:
        entry = self.views.get((market, lookback))
        return entry if entry is not None and entry.zones is not None else None

    def stale(self, market: str, now_ms: int | None = None) -> bool:
        """True when the market's owner is unknown or has missed its heartbeats."""
        owner = self.owners.get(self.shard_of.get(market, -1))
        return owner is None or owner.stale(int(time.time() * 1000) if now_ms is None else now_ms)

    def loading(self, market: str) -> bool:
        """True while the market's owner still backfills it (its catalogue says LOADING)."""
        owner = self.owners.get(self.shard_of.get(market, -1))
        return owner is None or market in owner.loading

    def catalogue(self) -> tuple[list[str], list[str], pb.ListMarketsResponse | None]:
        """(single-exchange markets, lookbacks, one owner's catalogue for the limits and parameters)."""
        first = self.owners[min(self.owners)].catalogue if self.owners else None
        markets = [m.market for i in sorted(self.owners) for m in self.owners[i].catalogue.markets
                   if not m.aggregate]
        return markets, list(first.lookbacks) if first else [], first
