"""Bybit v5 liquidations: allLiquidation.{symbol} on the public linear stream, one topic per symbol.

Bybit names the side of the liquidated position itself: "When you receive a Buy update, this means
that a long position has been liquidated" (v5 docs, All Liquidation). The size is in base units, the
price is the bankruptcy price. A connection is kept alive with {"op": "ping"} every 20 seconds; the
pong shows it is live.
"""
from __future__ import annotations

import json

from ...model.realised import Liquidation

EXCHANGE = "bybit"
URL = "wss://stream.bybit.com/v5/public/linear"
PING_TEXT = json.dumps({"op": "ping"})
PING_INTERVAL_S = 20.0
RECONNECT_AFTER_S = None
LOWER_BOUND = False
TOPICS_PER_REQUEST = 10
POSITION_SIDE = {"Buy": "long", "Sell": "short"}


def subscriptions(symbols) -> list[str]:
    """Subscribe requests, TOPICS_PER_REQUEST topics each."""
    topics = [f"allLiquidation.{s}" for s in sorted(symbols)]
    return [json.dumps({"op": "subscribe", "args": topics[i:i + TOPICS_PER_REQUEST]})
            for i in range(0, len(topics), TOPICS_PER_REQUEST)]


def parse(message: dict, symbols: set[str]) -> tuple[list[Liquidation], bool]:
    if message.get("op") == "pong" or message.get("ret_msg") == "pong":
        return [], True
    if message.get("op") == "subscribe" and message.get("success") is False:
        raise ValueError(f"bybit refused a subscription: {message.get('ret_msg')}")
    if not str(message.get("topic", "")).startswith("allLiquidation."):
        return [], False
    out = []
    for row in message["data"]:
        if row["s"] not in symbols:
            continue
        side = POSITION_SIDE.get(row["S"])
        if side is None:
            raise ValueError(f"allLiquidation {row['s']}: unknown side {row['S']!r}")
        out.append(Liquidation(market=f"{EXCHANGE}:{row['s']}", time_ms=int(row["T"]), side=side,
                               price=float(row["p"]), quantity=float(row["v"])))
    return out, True
