"""Bybit v5 liquidations as the replay speaks them: allLiquidation.{symbol} on /v5/public/linear.

Subscriptions ({"op": "subscribe", "args": [...]}, at most 10 topics a request) are acknowledged,
{"op": "ping"} is answered with a pong. The side is the liquidated position's: Buy = a long.
"""
from __future__ import annotations

import json

EXCHANGE = "bybit"
PATH = "/bybit/v5/public/linear"
MAX_ARGS = 10


class Session:
    def __init__(self, path: str):
        self.topics: set[str] = set()

    def answer(self, text: str) -> list[str]:
        try:
            message = json.loads(text)
            op = message["op"]
        except (ValueError, KeyError, TypeError):
            return [json.dumps({"success": False, "ret_msg": "Invalid request", "op": ""})]
        if op == "ping":
            return [json.dumps({"success": True, "ret_msg": "pong", "conn_id": "replay", "op": "ping"})]
        if op == "subscribe":
            args = message.get("args") or []
            if len(args) > MAX_ARGS or not all(isinstance(a, str) and a.startswith("allLiquidation.") for a in args):
                return [json.dumps({"success": False, "ret_msg": f"error:handler not found,topic:{args}",
                                    "conn_id": "replay", "op": "subscribe"})]
            self.topics.update(args)
            return [json.dumps({"success": True, "ret_msg": "", "conn_id": "replay", "op": "subscribe"})]
        return [json.dumps({"success": False, "ret_msg": f"unknown op {op}", "op": op})]

    def heartbeat(self, wall_ms: int, now_ms: int, prices: dict[str, float]) -> list[str]:
        return []

    def frames(self, events: list[tuple]) -> list[str]:
        """One message per event, as Bybit sends them."""
        return [json.dumps({"topic": f"allLiquidation.{s}", "type": "snapshot", "ts": t + 5, "data": [
            {"T": t, "s": s, "S": "Buy" if long else "Sell", "v": f"{qty:.6g}", "p": f"{price:.8g}"}]})
            for s, t, long, price, qty in events if f"allLiquidation.{s}" in self.topics]
