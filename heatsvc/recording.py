"""Recording realised liquidations (MODEL.md section 12, issue 13): one Recorder per configured
exchange (heatsvc.exchanges.streams), all feeding one batching sink into the LiquidationStore.

Why batches: one SQLite transaction per frame would cost a synchronous fsync each; the sink commits
every `flush_interval_s` or as soon as `flush_events` are waiting, so a SIGKILL loses at most that
unflushed batch. Coverage spans are written only after the events they cover are committed, so a
span never claims time whose events were lost. Each recorder's state (live | silent | backoff |
connecting), events, malformed frames, reconnects and seconds covered are published as Prometheus
metrics and returned by `status()`: silence is visible, not mistaken for a calm market.

Listeners (the service's StreamLiquidations) get each batch as it is committed.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from . import metrics
from .exchanges.streams import DIALECTS, Recorder, wall_ms
from .liquidation_store import LiquidationStore
from .model.realised import Liquidation

log = logging.getLogger("heatsvc.liquidations")
DAY_MS = 86_400_000
PRUNE_EVERY_S = 3600.0


@dataclass
class RecorderStatus:
    """What an operator needs to see of one exchange's recorder."""
    exchange: str
    state: str              # connecting | live | silent | backoff
    events: int
    malformed: int
    reconnects: int         # connections after the first
    covered_s: float        # seconds of stream heard since start
    last_error: str


class Recording:
    """The recorders of a running service and their sink; `start()` then `stop()` (flushes)."""

    def __init__(self, store: LiquidationStore, exchanges, *, flush_interval_s: float = 1.0,
                 flush_events: int = 500, retention_days: float = 30.0, contract_sizes=None,
                 now_ms: Callable[[], int] = wall_ms, recorder_options: dict | None = None,
                 on_status: Callable[[dict], Awaitable[None]] | None = None):
        """`exchanges`: config.ExchangeConfig-like (name, symbols, ws_url); `contract_sizes`: OKX symbol
        -> base units per contract (the REST client's dict, filled as it learns instruments)."""
        self.store = store
        self.flush_interval_s, self.flush_events = flush_interval_s, flush_events
        self.retention_ms = int(retention_days * DAY_MS)
        self.now_ms = now_ms
        self.recorders: dict[str, Recorder] = {}
        self._heard: dict[str, dict[int, int]] = {}        # every span since start, for covered_s
        self._last_live: dict[str, int] = {}               # the time of each recorder's last sign of life
        self._open_spans: dict[str, dict[int, int]] = {}   # spans heard, awaiting the next commit
        self._pending: list[Liquidation] = []
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self.listeners: list[Callable[[list[Liquidation]], None]] = []
        self.committed = 0
        self.revision = 0             # bumped by every flush that wrote events or coverage
        self.on_status = on_status   # e.g. the service's health: liquidations:EXCHANGE SERVING only when live
        for ex in exchanges:
            if not ex.symbols or ex.name not in DIALECTS:   # Hyperliquid publishes no liquidation stream
                continue
            self._heard[ex.name] = {}
            self._open_spans[ex.name] = {}
            self.recorders[ex.name] = Recorder(
                ex.name, ex.symbols, self._on_events, self._span_sink(ex.name), url=ex.ws_url,
                contract_size=contract_sizes if ex.name == "okx" and contract_sizes is not None else None,
                now_ms=self._live_clock(ex.name, now_ms), **(recorder_options or {}))

    # -- the recorders' callbacks ---------------------------------------------------------------

    def _live_clock(self, exchange: str, now_ms: Callable[[], int]) -> Callable[[], int]:
        """The recorder's clock, noting each reading: a Recorder reads it exactly when it hears a sign
        of life, so the last reading is how far its current span reaches (see _extend_live_spans)."""
        def clock() -> int:
            t = self._last_live[exchange] = now_ms()
            return t
        return clock

    def _extend_live_spans(self) -> None:
        """A recorder reports its growing span only every SPAN_FLUSH_S (30 s); between reports, extend a
        live recorder's current span (its latest start: it reports one as soon as it hears the stream) to
        its last sign of life, so coverage keeps up with the events of each flush and never claims more."""
        for name, recorder in self.recorders.items():
            heard, last = self._heard[name], self._last_live.get(name)
            if recorder.state != "live" or not heard or last is None:
                continue
            start = max(heard)
            if last > heard[start]:
                heard[start] = last
                self._open_spans[name][start] = max(last, self._open_spans[name].get(start, last))

    async def _on_events(self, events: list[Liquidation]) -> None:
        self._pending.extend(events)
        if len(self._pending) >= self.flush_events:
            self._wake.set()

    def _span_sink(self, exchange: str):
        async def on_span(start_ms: int, end_ms: int) -> None:
            for spans in (self._open_spans[exchange], self._heard[exchange]):
                spans[start_ms] = max(end_ms, spans.get(start_ms, end_ms))
        return on_span

    # -- the sink -------------------------------------------------------------------------------

    async def flush(self) -> int:
        """Commit the waiting events (one transaction, on a thread), then the spans they make good."""
        self._extend_live_spans()
        batch, self._pending = self._pending, []
        spans = {ex: dict(s) for ex, s in self._open_spans.items() if s}
        for s in self._open_spans.values():
            s.clear()
        added = await asyncio.to_thread(self._write, batch, spans) if batch or spans else 0
        if batch or spans:
            self.revision += 1
        if batch:
            self.committed += len(batch)
            for listener in list(self.listeners):
                try:
                    listener(batch)
                except Exception:   # a listener's failure must not stop the recording
                    log.exception("liquidation listener failed")
        return added

    def _write(self, batch: list[Liquidation], spans: dict[str, dict[int, int]]) -> int:
        added = self.store.add(batch) if batch else 0
        for exchange, by_start in spans.items():
            for start, end in by_start.items():
                self.store.cover(exchange, start, end)
        return added

    async def _sink(self) -> None:
        last_prune = 0.0
        while True:
            try:   # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow the stop's cancellation
                async with asyncio.timeout(self.flush_interval_s):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
                if time.monotonic() - last_prune > PRUNE_EVERY_S:
                    last_prune = time.monotonic()
                    await asyncio.to_thread(self.store.prune, self.now_ms() - self.retention_ms)
            except asyncio.CancelledError:
                raise
            except Exception:   # a full disk, a locked file: keep recording, say so
                log.exception("liquidation store write failed")
            await self._publish()

    async def _publish(self) -> None:
        for name, status in self.status().items():
            metrics.RECORDER_STATE.labels(name).state(status.state)
            metrics.RECORDER_EVENTS.labels(name).set(status.events)
            metrics.RECORDER_MALFORMED.labels(name).set(status.malformed)
            metrics.RECORDER_RECONNECTS.labels(name).set(status.reconnects)
            metrics.RECORDER_COVERED.labels(name).set(status.covered_s)
        if self.on_status is not None:
            try:
                await self.on_status(self.status())
            except Exception:
                log.exception("liquidation status listener failed")

    # -- lifecycle and status ---------------------------------------------------------------------

    def start(self) -> None:
        """Run every recorder and the sink as tasks on the running loop."""
        self._tasks = [asyncio.create_task(r.run(), name=f"record {name} liquidations")
                       for name, r in self.recorders.items()]
        self._tasks.append(asyncio.create_task(self._sink(), name="liquidation sink"))

    async def stop(self) -> None:
        """Stop the recorders (each reports its last span), then commit what is waiting."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.flush()
        await self._publish()

    def status(self) -> dict[str, RecorderStatus]:
        """Per exchange: state, counters and seconds covered (from the store's spans since start)."""
        out = {}
        for name, r in self.recorders.items():
            out[name] = RecorderStatus(name, r.state, r.events, r.malformed, max(r.connections - 1, 0),
                                       self._covered_s(name), r.last_error)
        return out

    def _covered_s(self, exchange: str) -> float:
        return sum(end - start for start, end in self._heard[exchange].items()) / 1000.0
