"""A rolling window of request weight (Hyperliquid counts 1,200 weight a minute per IP): requests
wait until their weight fits, so the weight spent in any `period_s` never exceeds `limit`.

Like base.RateWindow, a request counts from the moment it is let through until `period_s` after its
answer arrived. A request whose final weight is only known from its answer (candleSnapshot: more
per 60 candles returned) reserves its largest possible weight and settles the true one after.
"""
from __future__ import annotations

import asyncio
import time
from collections import deque


class WeightWindow:
    """At most `limit` weight in any `period_s` seconds, shared by every request that acquires it."""

    def __init__(self, limit: float, period_s: float = 60.0, clock=time.monotonic):
        if not limit > 0:
            raise ValueError(f"weight limit must be positive, got {limit}")
        self.limit, self.period_s, self.clock = float(limit), period_s, clock
        self.done: deque[tuple[float, float]] = deque()   # (answer time, weight) of recent answers
        self.done_weight = 0.0
        self.pending = 0.0        # weight let through, answer not in yet
        self.spent = 0.0          # all weight ever settled (for reports)

    def _expire(self, now: float) -> None:
        while self.done and now - self.done[0][0] >= self.period_s:
            self.done_weight -= self.done.popleft()[1]

    def used(self) -> float:
        """Weight counted in the window now (answered and pending)."""
        self._expire(self.clock())
        return self.done_weight + self.pending

    async def acquire(self, weight: float) -> Ticket:
        """Wait until `weight` fits in the window; the Ticket must be released with the true weight."""
        if weight > self.limit:
            raise ValueError(f"a request of weight {weight} can never fit a window of {self.limit:g}")
        while True:
            now = self.clock()
            self._expire(now)
            if self.done_weight + self.pending + weight <= self.limit:
                self.pending += weight
                return Ticket(self, weight)
            wait = self.period_s - (now - self.done[0][0]) + 0.001 if self.done else 0.01
            await asyncio.sleep(max(0.001, wait))


class Ticket:
    """One request let through a WeightWindow with `reserved` weight."""

    def __init__(self, window: WeightWindow, reserved: float):
        self.window, self.reserved, self.actual = window, reserved, reserved
        self.released = False

    def settle(self, actual: float) -> None:
        """The answer's true weight (never more than reserved: the reservation was the ceiling)."""
        self.actual = min(max(0.0, actual), self.reserved)

    def release(self) -> None:
        """The answer is in (or the request failed): its weight counts until period_s from now."""
        if self.released:
            return
        self.released = True
        w = self.window
        w.pending -= self.reserved
        w.done.append((w.clock(), self.actual))
        w.done_weight += self.actual
        w.spent += self.actual
