"""Shared update streams: each update is built and serialized once and the same bytes go to every
subscriber; a slow subscriber's bounded queue is coalesced to one snapshot of the latest state.

Modelled on the async health servicer's Watch, which also skips intermediate states for slow readers.
"""
from __future__ import annotations

import asyncio
import collections
import logging

from ..metrics import COALESCED_UPDATES

log = logging.getLogger("heatsvc.service")


class Subscriber:
    """One stream's queue of serialized messages, at most `depth` deep.

    When a message arrives at a full queue the queue is dropped and the reader is owed a snapshot
    of whatever the state is when it next reads, flagged with how many updates it skipped. So a
    stalled reader holds at most `depth` references to shared bytes and never blocks the others.
    """

    def __init__(self, depth: int):
        self.depth = depth
        self.queue: collections.deque[bytes] = collections.deque()
        self.skipped = 0
        self.resync = False
        self.closed = False
        self.delivered = 0
        self._wake = asyncio.Event()

    def offer(self, data: bytes) -> None:
        if self.resync:
            self.skipped += 1
            COALESCED_UPDATES.inc()
        elif len(self.queue) >= self.depth:
            self.skipped += len(self.queue) + 1
            COALESCED_UPDATES.inc(len(self.queue) + 1)
            self.queue.clear()
            self.resync = True
        else:
            self.queue.append(data)
        self._wake.set()

    def close(self) -> None:
        """End the stream (server shutting down) after nothing more: the handler returns OK."""
        self.closed = True
        self._wake.set()

    async def next(self, topic: "Topic") -> bytes | None:
        """The next message for this reader, or None once closed."""
        while True:
            if self.closed:
                return None
            if self.resync:
                skipped, self.skipped, self.resync = self.skipped, 0, False
                self.delivered += 1
                return topic.snapshot() + topic.skip_suffix(skipped)
            if self.queue:
                self.delivered += 1
                return self.queue.popleft()
            self._wake.clear()
            await self._wake.wait()


class Topic:
    """The updates of one stream key shared by its subscribers. Subclasses build the messages:

    `initial()` computes the first state, `refresh()` returns the next update message (with the
    new sequence) or None when nothing changed, `snapshot_message()` the full current state and
    `skip_suffix(n)` the serialized fields that flag n skipped updates (appended to a snapshot's
    bytes: protobuf merges concatenated messages, so the big body is never re-serialized).
    """

    debounce_s = 0.0

    def __init__(self, markets, depth: int):
        self.markets = frozenset(markets)
        self.depth = depth
        self.subscribers: set[Subscriber] = set()
        self.sequence = 0
        self.updates = 0
        self._snapshot: bytes | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self.started: asyncio.Task | None = None
        self.joining = 0   # streams waiting for the first state

    async def start(self) -> None:
        await self.initial()
        self._task = asyncio.create_task(self._run(), name=f"topic {sorted(self.markets)}")

    def stop(self) -> None:
        for task in (self.started, self._task):
            if task is not None:
                task.cancel()
        for sub in self.subscribers:
            sub.close()

    def wake(self) -> None:
        self._wake.set()

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self.depth)
        self.subscribers.add(sub)
        return sub

    def snapshot(self) -> bytes:
        if self._snapshot is None:
            self._snapshot = self.snapshot_message().SerializeToString()
        return self._snapshot

    def publish(self, msg) -> None:
        data = msg.SerializeToString()
        self._snapshot = None
        self.updates += 1
        for sub in self.subscribers:
            sub.offer(data)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self.debounce_s:
                await asyncio.sleep(self.debounce_s)  # let the other exchanges of an aggregate land
            self._wake.clear()
            try:
                msg = await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a failed refresh keeps the last state; the next event retries
                log.warning("update of %s failed: %s", sorted(self.markets), exc)
                continue
            if msg is not None:
                self.publish(msg)

    async def initial(self) -> None:
        raise NotImplementedError

    async def refresh(self):
        raise NotImplementedError

    def snapshot_message(self):
        raise NotImplementedError

    def skip_suffix(self, skipped: int) -> bytes:
        raise NotImplementedError
