"""Realised liquidations recorded live from the exchanges' WebSocket streams (MODEL.md section 12).

A Recorder holds one exchange's connection: it connects (the URL is configurable like the REST base
URLs), subscribes, keeps the connection alive the way the exchange asks, reconnects with backoff and
subscribes again, and reports the spans during which it was connected *and* hearing the stream: the
coverage. A connection that stays open but goes quiet (an unrouted Binance URL, a stalled server) is
not coverage: after `silence_s` without a sign of life the recorder drops it and reconnects. Time
outside the spans is missing, never zero. One module per exchange dialect parses its messages.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable

import websockets

from ...model.realised import Liquidation
from . import binance, bybit, okx

log = logging.getLogger("heatsvc.liquidations")
DIALECTS = {"binance": binance, "bybit": bybit, "okx": okx}
SILENCE_S = 60.0
SPAN_FLUSH_S = 30.0


def wall_ms() -> int:
    return int(time.time() * 1000)


class Recorder:
    """One exchange's liquidation stream, from `run()` until cancelled.

    `on_events(list[Liquidation])` gets each message's liquidations of the served symbols;
    `on_span(start_ms, end_ms)` the covered span of the current connection, again as it grows
    (same start) and once more when it ends, so a crash loses at most SPAN_FLUSH_S of coverage.
    """

    def __init__(self, exchange: str, symbols, on_events: Callable[[list[Liquidation]], Awaitable[None]],
                 on_span: Callable[[int, int], Awaitable[None]], *, url: str | None = None,
                 contract_size: dict[str, float] | None = None, now_ms: Callable[[], int] = wall_ms,
                 silence_s: float = SILENCE_S, ping_interval_s: float | None = None, backoff_s: float = 1.0,
                 max_backoff_s: float = 60.0, dialect=None):
        if dialect is None and exchange not in DIALECTS:
            raise ValueError(f"no liquidation stream for exchange {exchange!r}; use {', '.join(DIALECTS)}")
        # `dialect`: another stream spoken the same way (Hyperliquid's trades, heatsvc.exchanges.streams.hyperliquid)
        self.exchange, self.dialect = exchange, dialect or DIALECTS[exchange]
        self.symbols = set(symbols)
        self.url = url or self.dialect.URL
        self.on_events, self.on_span = on_events, on_span
        self.contract_size = contract_size if contract_size is not None else {}
        self.now_ms, self.silence_s = now_ms, silence_s
        self.ping_interval_s = ping_interval_s or self.dialect.PING_INTERVAL_S
        self.backoff_s, self.max_backoff_s = backoff_s, max_backoff_s
        self.state = "connecting"            # connecting | live | silent | backoff
        self.connections = self.events = self.malformed = 0
        self.last_error = ""

    def parse(self, message: dict) -> tuple[list[Liquidation], bool]:
        if self.dialect is okx:
            return okx.parse(message, self.symbols, self.contract_size)
        return self.dialect.parse(message, self.symbols)

    async def run(self) -> None:
        delay = self.backoff_s
        while True:
            started = time.monotonic()
            try:
                async with websockets.connect(self.url, open_timeout=10, close_timeout=2, max_size=1 << 22) as ws:
                    self.connections += 1
                    await self._session(ws)
            except asyncio.CancelledError:
                raise
            except (OSError, websockets.WebSocketException, ValueError, TimeoutError) as exc:
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("%s liquidations: %s", self.exchange, self.last_error)
            if time.monotonic() - started > 2 * self.max_backoff_s:
                delay = self.backoff_s   # a long session: start the backoff over
            self.state = "backoff"
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self.max_backoff_s)

    async def _session(self, ws) -> None:
        """Subscribe, then read until the connection ends, goes silent or is due for a scheduled reconnect."""
        self.state = "connecting"
        for text in self.dialect.subscriptions(self.symbols):
            await ws.send(text)
        pinger = asyncio.create_task(self._ping(ws)) if self.dialect.PING_TEXT else None
        opened, start, last_live, flushed = time.monotonic(), None, None, 0.0
        try:
            while True:
                try:   # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
                    async with asyncio.timeout(self.silence_s):
                        raw = await ws.recv()
                except TimeoutError:
                    self.state = "silent"
                    self.last_error = f"no sign of life for {self.silence_s:g} s"
                    log.warning("%s liquidations: %s; reconnecting", self.exchange, self.last_error)
                    return
                live, events = self._read(raw)
                if live:
                    last_live = self.now_ms()
                    if start is None:
                        start = last_live
                    self.state = "live"
                if events:
                    self.events += len(events)
                    await self.on_events(events)
                if start is not None and time.monotonic() - flushed > SPAN_FLUSH_S:
                    await self.on_span(start, last_live)
                    flushed = time.monotonic()
                after = self.dialect.RECONNECT_AFTER_S
                if after and time.monotonic() - opened > after:
                    return   # the exchange ends connections at 24 h: leave first, on our own terms
        finally:
            if pinger is not None:
                pinger.cancel()
            if start is not None:
                await self.on_span(start, last_live)

    def _read(self, raw) -> tuple[bool, list[Liquidation]]:
        """(a sign of life, the liquidations) of one frame; malformed frames are counted and skipped."""
        if raw == "pong":
            return True, []
        try:
            message = json.loads(raw)
            events, live = self.parse(message)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            self.malformed += 1
            log.warning("%s liquidations: skipped a malformed message (%s: %.200s)", self.exchange,
                        type(exc).__name__, exc)
            return False, []
        return live, events

    async def _ping(self, ws) -> None:
        while True:
            await asyncio.sleep(self.ping_interval_s)
            await ws.send(self.dialect.PING_TEXT)
