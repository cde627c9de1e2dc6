"""Binance USD-M liquidations: the all-market stream !forceOrder@arr, on the /market route.

Since 2026-04-23 USD-M streams are routed by path (/public, /market, /private); on an unrouted URL a
market stream such as forceOrder is silent, not an error. So the connection also carries
btcusdt@markPrice@1s, a stream that always flows: coverage counts only while it does. Binance pushes
at most the latest liquidation per symbol per second, so its series is a lower bound. The order's side
is the liquidation order's: SELL closes a long, BUY a short.
"""
from __future__ import annotations

from ...model.realised import Liquidation

EXCHANGE = "binance"
URL = "wss://fstream.binance.com/market/stream?streams=!forceOrder@arr/btcusdt@markPrice@1s"
PING_TEXT = None           # the server pings every 3 minutes; the websockets library answers
PING_INTERVAL_S = None
RECONNECT_AFTER_S = 23 * 3600   # a connection lasts at most 24 hours
LOWER_BOUND = True
ORDER_SIDE = {"SELL": "long", "BUY": "short"}   # the liquidated position, from the order that closes it


def subscriptions(symbols) -> list:
    """Nothing to send: the streams are named in the URL (a combined stream)."""
    return []


def parse(message: dict, symbols: set[str]) -> tuple[list[Liquidation], bool]:
    """(liquidations of the served symbols, whether this message shows the route is live)."""
    data = message.get("data", message)   # combined streams wrap each event as {"stream", "data"}
    event = data.get("e") if isinstance(data, dict) else None
    if event == "markPriceUpdate":
        return [], True
    if event != "forceOrder":
        return [], False
    order = data["o"]
    if order["s"] not in symbols:
        return [], True
    side = ORDER_SIDE.get(order["S"])
    if side is None:
        raise ValueError(f"forceOrder {order['s']}: unknown order side {order['S']!r}")
    filled = float(order["z"])
    average = float(order["ap"])
    return [Liquidation(market=f"{EXCHANGE}:{order['s']}", time_ms=int(order["T"]), side=side,
                        price=average if average > 0 else float(order["p"]),
                        quantity=filled if filled > 0 else float(order["q"]))], True
