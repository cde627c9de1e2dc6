"""The core of the replay's liquidation streams: one `websockets` server on loopback in its own
thread (its own event loop), so it runs beside the replay's HTTP server whatever loop the caller has.

Each dialect is served under its own path prefix (/binance/, /bybit/, /okx/, /hyperliquid/; see `url`);
Hyperliquid's is its public trades, drawn by its session from the replay. Every
`tick_s` the server reads the replay clock (`replay.now_ms()`), draws the liquidations of the replayed
bars that the clock has passed since the last tick (events.market_events) and pushes them to the
connections that subscribed, in their dialect. Faults, settable while running: close every connection
after `drop_after_s`, add a malformed frame to a tick with probability `malformed_rate`, or go `silent`
(keep connections open, send and answer nothing) as a stalled exchange does.
"""
from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
from dataclasses import dataclass

import numpy as np
import websockets

from . import binance, bybit, hyperliquid, okx
from .events import market_events

log = logging.getLogger("heatsvc.replay.streams")
DIALECTS = {"binance": binance, "bybit": bybit, "okx": okx, "hyperliquid": hyperliquid}
MAX_CATCH_UP_MS = 86_400_000     # a clock jumped far ahead replays at most a day of liquidations


@dataclass
class StreamFaults:
    drop_after_s: float | None = None   # close each connection after this long (wall seconds)
    malformed_rate: float = 0.0         # probability a tick also sends one malformed frame
    silent: bool = False                # connections stay open, nothing is sent or answered
    seed: int = 0


class StreamServer:
    """Liquidation streams of a ReplayExchange (anything with now_ms(), markets() and series(market))."""

    def __init__(self, replay, *, faults: StreamFaults | None = None, seed: int = 0, tick_s: float = 0.05,
                 host: str = "127.0.0.1", port: int = 0):
        self.replay, self.seed, self.tick_s = replay, seed, tick_s
        self.faults = faults if faults is not None else StreamFaults()
        self.host, self.port = host, port
        self.connections = {name: 0 for name in DIALECTS}      # accepted so far
        self.events_sent = {name: 0 for name in DIALECTS}      # liquidations pushed (Binance: after its 1/s cut)
        self.dropped = 0
        self.sent_through_ms: int | None = None                 # replay time up to which events were pushed
        self.prices: dict[str, dict[str, float]] = {name: {} for name in DIALECTS}   # last close, for markPrice
        self._sessions: dict = {}                              # ws -> (dialect name, session, opened)
        self._rng = random.Random(self.faults.seed)
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    def url(self, exchange: str) -> str:
        """The WebSocket URL of an exchange's dialect, for [exchanges.NAME] ws_url."""
        return f"ws://{self.host}:{self.port}{DIALECTS[exchange].PATH}"

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="replay streams", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)
        self._thread = None

    def __enter__(self) -> StreamServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:   # reported to start()
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with websockets.serve(self._handler, self.host, self.port, close_timeout=1) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._ready.set()
            pusher = asyncio.create_task(self._push())
            await self._stop.wait()
            pusher.cancel()
            server.close()

    async def _handler(self, ws) -> None:
        path = ws.request.path
        name = next((n for n in DIALECTS if path.startswith(f"/{n}/")), None)
        if name is None:
            await ws.close(1008, f"no stream at {path[:80]}")
            return
        self.connections[name] += 1
        session = DIALECTS[name].Session(path)
        if hasattr(session, "attach"):        # a dialect drawing its own messages from the replay (trades)
            session.attach(self.replay, self.seed)
        self._sessions[ws] = (name, session, time.monotonic())
        try:
            async for text in ws:
                if self.faults.silent:
                    continue
                for reply in session.answer(text if isinstance(text, str) else text.decode(errors="replace")):
                    await ws.send(reply)
        except websockets.ConnectionClosed:
            pass
        finally:
            self._sessions.pop(ws, None)

    async def _push(self) -> None:
        last = None
        while True:
            await asyncio.sleep(self.tick_s)
            try:
                now = int(self.replay.now_ms())
                if last is None or now < last:   # first tick, or the clock was moved back
                    last = now
                    continue
                batch = self._events(max(last, now - MAX_CATCH_UP_MS), now)
                last = now
                await self._send(batch, now)
                self.sent_through_ms = now
            except asyncio.CancelledError:
                raise
            except Exception:   # keep serving the others
                log.exception("replay streams: a tick failed")

    def _events(self, start_ms: int, end_ms: int) -> dict[str, list[tuple]]:
        """Per exchange: (symbol, time_ms, long, price, quantity) of [start_ms, end_ms), by time."""
        out: dict[str, list[tuple]] = {name: [] for name in DIALECTS}
        for market in self.replay.markets():
            exchange, _, symbol = market.partition(":")
            if exchange not in DIALECTS or not getattr(DIALECTS[exchange], "LIQUIDATIONS", True):
                continue
            series = self.replay.series(market)
            k = int(np.searchsorted(series.t, end_ms, side="right")) - 1
            if k >= 0:
                self.prices[exchange][symbol] = float(series.c[k])
            e = market_events(series, self.seed, start_ms, end_ms)
            out[exchange].extend(zip([symbol] * len(e["time_ms"]), e["time_ms"].tolist(), e["long"].tolist(),
                                     e["price"].tolist(), e["quantity"].tolist()))
        for events in out.values():
            events.sort(key=lambda e: e[1])
        return out

    async def _send(self, batch: dict[str, list[tuple]], now_ms: int) -> None:
        wall_ms = int(time.time() * 1000)
        for ws, (name, session, opened) in list(self._sessions.items()):
            drop = self.faults.drop_after_s
            if drop is not None and time.monotonic() - opened > drop:
                self.dropped += 1
                await ws.close(1001, "replay fault: connection dropped")
                continue
            if self.faults.silent:
                continue
            liquidations = session.frames(batch[name])   # one frame per liquidation in every dialect
            frames = session.heartbeat(wall_ms, now_ms, self.prices.get(name, {})) + liquidations
            if self.faults.malformed_rate and self._rng.random() < self.faults.malformed_rate:
                frames.insert(0, '{"topic": "allLiquidation.BTCUSDT", "data": [{"T": ')   # cut short
            try:
                for frame in frames:
                    await ws.send(frame)
            except websockets.ConnectionClosed:
                continue
            self.events_sent[name] += len(liquidations)
