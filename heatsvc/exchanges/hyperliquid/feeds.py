"""The live side of Hyperliquid that `heatsvc serve` runs beside the refresher: the open-interest
sampler (metaAndAssetCtxs, all coins in one call, every `sample_interval_s`), the public trades
stream (taker share per bar, accounts) and the positions poller the trades feed with accounts."""
from __future__ import annotations

import asyncio
import contextlib
import logging

from ..base import ExchangeError, ExchangeUnavailable
from .client import HyperliquidClient
from .positions import PositionPoller
from ..streams.hyperliquid import TradeFeed

log = logging.getLogger("heatsvc.exchanges")


class HyperliquidFeeds:
    """Sampler, trades stream and positions poller of one HyperliquidClient's coins."""

    def __init__(self, client: HyperliquidClient, coins, *, ws_url: str | None = None, poller_share: float = 0.4,
                 addresses=(), sample_interval_s: float = 60.0, now_ms=None, recorder_options: dict | None = None,
                 poller_options: dict | None = None, on_status=None, status_interval_s: float = 5.0):
        self.client, self.sample_interval_s = client, sample_interval_s
        self.on_status, self.status_interval_s = on_status, status_interval_s   # async on_status(status())
        self.poller = PositionPoller(client, coins, share=poller_share, addresses=addresses, **(poller_options or {}))
        self.trades = TradeFeed(coins, client.flow, url=ws_url, on_accounts=self.poller.add_accounts,
                                now_ms=now_ms, **(recorder_options or {}))
        self.samples_failed = 0
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._sample_forever(), name="hyperliquid sampler"),
                       asyncio.create_task(self.trades.run(), name="hyperliquid trades"),
                       asyncio.create_task(self.poller.run(), name="hyperliquid poller")]
        if self.on_status is not None:
            self._tasks.append(asyncio.create_task(self._report_forever(), name="hyperliquid status"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    async def _sample_forever(self) -> None:
        while True:
            try:
                await self.client.sample()
            except (ExchangeError, ExchangeUnavailable) as exc:   # a missed sample is a bar without OI
                self.samples_failed += 1
                log.warning("hyperliquid: open-interest sample missed: %s", exc)
            await asyncio.sleep(self.sample_interval_s)

    async def _report_forever(self) -> None:
        while True:
            try:
                await self.on_status(self.status())
            except Exception:   # a listener's failure is not the feeds'
                log.exception("hyperliquid status listener failed")
            await asyncio.sleep(self.status_interval_s)

    def status(self) -> dict:
        """What the feeds are doing, for logs and reports."""
        rec = self.trades.recorder
        return {"trades_state": rec.state, "trades": self.trades.trades, "connections": rec.connections,
                "accounts": len(self.poller.accounts), "reads": self.poller.reads,
                "weight_spent": self.client.budget.spent, "samples_failed": self.samples_failed}
