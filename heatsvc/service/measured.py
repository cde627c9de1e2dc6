"""GetMeasuredMap, StreamMeasuredMap and CompareMeasured (MODEL.md section 16): real positions of a
public-ledger exchange at their real liquidation prices, on the price rows of the estimate's view,
and the estimate held against them. Snapshots come from the positions poller through the
MeasuredRecorder into the MeasuredStore; every figure carries its time and coverage.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re

import numpy as np

from ..measured_store import MeasuredStore
from ..model.calibration import compare
from ..model.measured import MeasuredMap, measured_map
from ..v1 import heatmap_service_pb2 as pb
from .errors import invalid, not_found, unavailable
from .fanout import Topic
from .messages import parameters, timestamp
from .views import ViewKey, check_all, quoted, zone_opts

log = logging.getLogger("heatsvc.service")
PUBLIC_LEDGER = ("hyperliquid",)     # exchanges whose every position is public, with its liquidation price
PROFILE_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
DAY_MS = 86_400_000


def coin(key: ViewKey) -> str:
    """The coin of a public-ledger view; INVALID_ARGUMENT for any other market."""
    exchange, _, symbol = key.market.partition(":")
    if exchange not in PUBLIC_LEDGER:
        raise invalid([("view.market", f"measured maps exist only where positions are public "
                                       f"({', '.join(e + ':COIN' for e in PUBLIC_LEDGER)}), not {quoted(key.market)}")])
    return symbol


def message(market: str, m: MeasuredMap) -> pb.MeasuredMap:
    cov = m.coverage
    msg = pb.MeasuredMap(
        market=market, time=timestamp(m.time_ms), price_edges=m.price_edges.tolist(),
        long_notional=m.long.tolist(), short_notional=m.short.tolist(),
        off_range_long=m.off_range["long"], off_range_short=m.off_range["short"],
        unpriced_long=m.unpriced["long"], unpriced_short=m.unpriced["short"],
        long_size=m.size["long"], short_size=m.size["short"], open_interest=m.open_interest,
        coverage_long=cov["long"], coverage_short=cov["short"], price=m.price,
        leverage_mix=[pb.LeverageNotional(leverage=lev, long_notional=a, short_notional=b)
                      for lev, (a, b) in m.leverage_mix.items()],
        accounts_known=m.accounts_known, accounts_read=m.accounts_read, positions=m.positions)
    if m.oldest_read_ms is not None:
        msg.oldest_read.CopyFrom(timestamp(m.oldest_read_ms))
    return msg


class Measured:
    """The service's measured side: its store, the recorder feeding it, and the three RPCs."""

    def __init__(self, service):
        self.service = service
        self._store: MeasuredStore | None = None
        self.sources: dict[str, str] = {}   # profile name -> where it came from (its parameters: the catalogue's)

    def store(self) -> MeasuredStore:
        if self._store is None:
            self._store = MeasuredStore(self.service.store.path)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()

    async def snapshot(self, key: ViewKey, time_ms: int | None):
        snap = await asyncio.to_thread(self.store().at, coin(key), time_ms)
        if snap is None:
            when = "yet" if time_ms is None else f"at or before {time_ms} ms"
            raise not_found(f"{key.market}: no measured snapshot stored {when}; the positions poller stores "
                            "one a minute once accounts are read")
        return snap

    async def grid(self, key: ViewKey):
        """The view's price edges (an explicit range needs no estimate) and its heatmap when computed."""
        if key.price_range is not None:
            lo, hi = key.price_range
            return np.geomspace(lo, hi, key.rows + 1), None
        hm = await self.service.heatmap(key)
        return hm.price_edges, hm

    async def map_message(self, key: ViewKey, time_ms: int | None) -> pb.MeasuredMap:
        snap = await self.snapshot(key, time_ms)
        edges, _ = await self.grid(key)
        return message(key.market, measured_map(snap, edges))

    def check(self, request) -> tuple[ViewKey, int | None]:
        key = self.service.catalogue.view(request.view)
        coin(key)
        timed = "time" in request.DESCRIPTOR.fields_by_name and request.HasField("time")
        return key, request.time.ToMilliseconds() if timed else None

    async def get(self, request) -> bytes:
        key, time_ms = self.check(request)
        return pb.GetMeasuredMapResponse(map=await self.map_message(key, time_ms)).SerializeToString()

    async def compare(self, request) -> bytes:
        def name():
            n = request.save_profile
            if n and not PROFILE_NAME.fullmatch(n):
                raise invalid([("save_profile", f"{quoted(n)}: use 1 to 64 letters, digits, '-' or '_'")])
            return n

        (key, time_ms), zopts, save = check_all(lambda: self.check(request), lambda: zone_opts(request.zone_options),
                                                 name)
        snap = await self.snapshot(key, time_ms)
        hm = await self.service.heatmap(key)
        m = measured_map(snap, hm.price_edges)
        price = m.price if m.price > 0 else self.service.price(key, hm)
        c = compare(hm.long[:, -1], hm.short[:, -1], m, price, hm.params, threshold=zopts.threshold, top=zopts.top)
        cov = m.coverage
        out = pb.CompareMeasuredResponse(
            market=key.market, lookback=key.lookback, measured_time=timestamp(m.time_ms),
            estimate_time=timestamp(hm.time_end_ms), price=price,
            cosine_long=c.cosine["long"], cosine_short=c.cosine["short"], cosine=c.cosine["both"],
            estimated_above=c.estimated["above"], estimated_below=c.estimated["below"],
            measured_above=c.measured["above"], measured_below=c.measured["below"],
            zone_overlap_long=c.zone_overlap["long"], zone_overlap_short=c.zone_overlap["short"],
            captured_long=c.captured["long"], captured_short=c.captured["short"],
            tiers=[pb.TierComparison(leverage=lev, model_weight=w, measured_weight=mw) for lev, w, mw in c.tiers],
            coverage_long=cov["long"], coverage_short=cov["short"],
            unmatched_notional=c.unmatched, accounts_read=m.accounts_read, accounts_known=m.accounts_known)
        if c.fitted is not None:
            out.fitted.CopyFrom(parameters(c.fitted))
        if save:
            if c.fitted is None:
                raise unavailable(f"{key.market}: the snapshot has no notional at leverage >= 1 to fit; nothing saved")
            source = f"tier weights fitted to {key.market} measured at {m.time_ms} ms ({cov['long']:.0%} of longs, " \
                     f"{cov['short']:.0%} of shorts covered)" if not math.isnan(cov["long"]) else \
                     f"tier weights fitted to {key.market} measured at {m.time_ms} ms (coverage unknown)"
            await asyncio.to_thread(self.store().save_profile, save, c.fitted, source)
            self.service.catalogue.profiles[save] = c.fitted
            self.sources[save] = source
            out.saved_profile = save
        return out.SerializeToString()

    def load_profiles(self) -> None:
        """The saved profiles into the catalogue, so views may name them."""
        for name, (params, source) in self.store().profiles().items():
            self.service.catalogue.profiles[name] = params
            self.sources[name] = source

    def profile_messages(self) -> list[pb.ParameterProfile]:
        profiles = self.service.catalogue.profiles
        return [pb.ParameterProfile(name=n, parameters=parameters(profiles[n]), source=self.sources[n])
                for n in sorted(profiles)]

    def topic(self, request, depth: int):
        key, _ = self.check(request)
        return ("measured", key), lambda: MeasuredTopic(self, key, depth)

    def stored(self, market: str) -> None:
        """A snapshot of `market` was stored: wake its streams."""
        for topic in list(self.service.topics.values()):
            if isinstance(topic, MeasuredTopic) and market in topic.markets:
                topic.wake()


class MeasuredTopic(Topic):
    """StreamMeasuredMap of one view: the map again whenever a new snapshot is stored or the view's
    rows move (new bars), serialized once for every subscriber."""

    def __init__(self, measured: Measured, key: ViewKey, depth: int):
        super().__init__(key.components, depth)
        self.measured, self.key = measured, key
        self.current: pb.MeasuredMap | None = None

    async def initial(self) -> None:
        self.current = await self.measured.map_message(self.key, None)

    async def refresh(self):
        new = await self.measured.map_message(self.key, None)
        if new == self.current:
            return None
        self.current = new
        self.sequence += 1
        return pb.StreamMeasuredMapResponse(map=new)

    def snapshot_message(self):
        return pb.StreamMeasuredMapResponse(map=self.current)

    def skip_suffix(self, skipped: int) -> bytes:
        return b""


class MeasuredRecorder:
    """Every `interval_s`, each public-ledger market's positions from the poller into the store."""

    def __init__(self, measured: Measured, poller, markets: list[str], interval_s: float = 60.0,
                 retention_days: float = 30.0):
        self.measured, self.poller, self.markets = measured, poller, list(markets)
        self.interval_s, self.retention_ms = interval_s, int(retention_days * DAY_MS)
        self.last: dict[str, int] = {}
        self.task: asyncio.Task | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(self.run(), name="measured recorder")

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    async def record_once(self) -> int:
        """Store each market's snapshot newer than the last stored; returns how many were stored."""
        stored = 0
        store = self.measured.store()
        for market in self.markets:
            snap = self.poller.snapshot(market.partition(":")[2])
            if snap is None or not snap.positions or snap.time_ms <= self.last.get(market, -1):
                continue
            await asyncio.to_thread(store.add, snap)
            self.last[market] = snap.time_ms
            self.measured.stored(market)
            stored += 1
        if stored:
            newest = max(self.last.values())
            await asyncio.to_thread(store.prune, newest - self.retention_ms)
        return stored

    async def run(self) -> None:
        while True:
            try:
                await self.record_once()
            except Exception as exc:   # a failed write keeps the earlier snapshots; try again next interval
                log.warning("measured snapshot not stored: %s", exc)
            await asyncio.sleep(self.interval_s)
