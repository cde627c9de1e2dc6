"""An owner's clock when the cluster replays recorded data: the replay exchange's clock, which lives in
the launcher's process, read from its Binance time endpoint every POLL_S (stepped clocks included)."""
from __future__ import annotations

import asyncio
import logging

import httpx

log = logging.getLogger("heatsvc.cluster")
POLL_S = 0.05


class ReplayClock:
    """`now_ms()` is the replay exchange's time as last read; `start()` reads it once, then keeps polling."""

    def __init__(self, url: str):
        self.url = f"{url.rstrip('/')}/binance/fapi/v1/time"
        self._now_ms: int | None = None
        self._task: asyncio.Task | None = None
        self._http = httpx.AsyncClient(timeout=5)

    def now_ms(self) -> int:
        return self._now_ms

    async def read(self) -> int:
        reply = await self._http.get(self.url)
        reply.raise_for_status()
        self._now_ms = int(reply.json()["serverTime"])
        return self._now_ms

    async def start(self) -> None:
        try:
            await self.read()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise ValueError(f"--replay-clock: cannot read the replay clock at {self.url}: {exc}") from None
        self._task = asyncio.create_task(self._poll(), name="replay clock")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL_S)
            try:
                await self.read()
            except (httpx.HTTPError, KeyError, ValueError) as exc:   # keep the last time; try again
                log.debug("replay clock: %s", exc)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._http.aclose()
