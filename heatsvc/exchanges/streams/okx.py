"""OKX v5 liquidations: the liquidation-orders channel, instType SWAP, on the public stream.

Sizes are in contracts: base units = sz x ctVal x ctMult of the instrument (read from
/api/v5/public/instruments by the REST client); a swap whose contract size is unknown is skipped.
posSide names the liquidated position in hedge mode (long, short); in net mode ("net") the order's
side does: a sell closes a long, a buy a short. The price is bkPx. OKX drops a connection silent for
30 seconds: "ping" every 25, answered by "pong".
"""
from __future__ import annotations

import json

from ...model.realised import Liquidation

EXCHANGE = "okx"
URL = "wss://ws.okx.com:8443/ws/v5/public"
PING_TEXT = "ping"
PING_INTERVAL_S = 25.0
RECONNECT_AFTER_S = None
LOWER_BOUND = False
ORDER_SIDE = {"sell": "long", "buy": "short"}


def subscriptions(symbols) -> list[str]:
    return [json.dumps({"op": "subscribe", "args": [{"channel": "liquidation-orders", "instType": "SWAP"}]})]


def symbol_of(inst_id: str) -> str | None:
    """BTC-USDT-SWAP -> BTCUSDT; None for anything but a USDT swap."""
    base, _, rest = inst_id.partition("-")
    return base + "USDT" if rest == "USDT-SWAP" else None


def parse(message: dict, symbols: set[str], contract_size: dict[str, float]) -> tuple[list[Liquidation], bool]:
    if message.get("event") == "error":
        raise ValueError(f"okx refused a subscription: {message.get('code')} {message.get('msg')}")
    if message.get("arg", {}).get("channel") != "liquidation-orders" or "data" not in message:
        return [], message.get("event") == "subscribe"
    out = []
    for entry in message["data"]:
        symbol = symbol_of(entry.get("instId", ""))
        if symbol not in symbols or symbol not in contract_size:
            continue
        for d in entry["details"]:
            side = d["posSide"] if d["posSide"] in ("long", "short") else ORDER_SIDE.get(d["side"])
            if side is None:
                raise ValueError(f"liquidation-orders {entry['instId']}: no position side in {d!r}")
            out.append(Liquidation(market=f"{EXCHANGE}:{symbol}", time_ms=int(d["ts"]), side=side,
                                   price=float(d["bkPx"]), quantity=float(d["sz"]) * contract_size[symbol]))
    return out, True
