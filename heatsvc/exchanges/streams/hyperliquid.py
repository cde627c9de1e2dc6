"""Hyperliquid's public trades stream (wss://api.hyperliquid.xyz/ws), read by the liquidation streams'
Recorder (connect, subscribe, keep alive, reconnect, coverage spans).

Hyperliquid publishes no liquidation stream: liquidations show only in the affected users' own fills.
What heatsvc takes from public trades instead: the aggressor side per 5-minute bar (taker-buy share,
heatsvc.exchanges.hyperliquid.flow) and the two accounts of every trade (`users`: [buyer, seller]),
which the positions poller reads. Subscribe with {"method": "subscribe", "subscription": {"type":
"trades", "coin": C}}, acknowledged by channel "subscriptionResponse"; {"method": "ping"} is answered
by {"channel": "pong"}; the server drops a connection that sends nothing for a while (60 s, unverified;
the SDK pings every 50 s), so we ping every 30.
"""
from __future__ import annotations

import json
import sys
from collections.abc import Callable

from ..hyperliquid.flow import TakerFlow, Trade
from . import Recorder, wall_ms     # the package holds the liquidation dialects; this one is not among them

EXCHANGE = "hyperliquid"
URL = "wss://api.hyperliquid.xyz/ws"
PING_TEXT = json.dumps({"method": "ping"})
PING_INTERVAL_S = 30.0
RECONNECT_AFTER_S = None
SIDES = {"B": "buy", "A": "sell"}


def subscriptions(coins) -> list[str]:
    return [json.dumps({"method": "subscribe", "subscription": {"type": "trades", "coin": c}}) for c in sorted(coins)]


def parse(message: dict, coins: set[str]) -> tuple[list[Trade], bool]:
    """(trades of the served coins, a sign of life) of one message; ValueError on an error channel."""
    channel = message.get("channel")
    if channel == "error":
        raise ValueError(f"hyperliquid refused a request: {str(message.get('data'))[:200]}")
    if channel in ("pong", "subscriptionResponse"):
        return [], True
    if channel != "trades":
        return [], False
    out = []
    for d in message["data"]:
        if d["coin"] not in coins:
            continue
        buyer, seller = d["users"]
        out.append(Trade(coin=d["coin"], time_ms=int(d["time"]), price=float(d["px"]), size=float(d["sz"]),
                         side=SIDES[d["side"]], buyer=buyer.lower(), seller=seller.lower()))
    return out, True


class TradeFeed:
    """The trades stream of some coins feeding a TakerFlow and, with each trade's two accounts, an
    `on_accounts(set[str])` callback (the positions poller's discovery)."""

    def __init__(self, coins, flow: TakerFlow, *, url: str | None = None,
                 on_accounts: Callable[[set[str]], None] | None = None, now_ms=None, **recorder_options):
        self.flow, self.on_accounts = flow, on_accounts
        self.trades = 0
        self.recorder = Recorder(EXCHANGE, coins, self._on_trades, self._on_span, url=url,
                                 now_ms=now_ms or wall_ms, dialect=sys.modules[__name__],
                                 **recorder_options)

    async def _on_trades(self, trades: list[Trade]) -> None:
        self.trades += len(trades)
        self.flow.add(trades)
        if self.on_accounts is not None:
            self.on_accounts({u for tr in trades for u in (tr.buyer, tr.seller)})

    async def _on_span(self, start_ms: int, end_ms: int) -> None:
        self.flow.cover(start_ms, end_ms)

    async def run(self) -> None:
        await self.recorder.run()
