"""OKX v5 liquidations as the replay speaks them: the liquidation-orders channel, instType SWAP, on
/ws/v5/public; sizes in contracts of the replay's own instruments (ctVal as its REST dialect declares),
"ping" answered with "pong". Net mode: posSide "net" and the order's side (sell closes a long).
"""
from __future__ import annotations

import json

from ..okx import okx_ct_val

EXCHANGE = "okx"
PATH = "/okx/ws/v5/public"


class Session:
    def __init__(self, path: str):
        self.subscribed = False

    def answer(self, text: str) -> list[str]:
        if text == "ping":
            return ["pong"]
        try:
            message = json.loads(text)
            args = message["args"]
        except (ValueError, KeyError, TypeError):
            return [json.dumps({"event": "error", "code": "60012", "msg": f"Invalid request: {text[:100]}"})]
        if message.get("op") != "subscribe" or args != [{"channel": "liquidation-orders", "instType": "SWAP"}]:
            return [json.dumps({"event": "error", "code": "60018", "msg": f"Wrong URL or channel:{args}"})]
        self.subscribed = True
        return [json.dumps({"event": "subscribe", "arg": args[0], "connId": "replay"})]

    def heartbeat(self, wall_ms: int, now_ms: int, prices: dict[str, float]) -> list[str]:
        return []

    def frames(self, events: list[tuple]) -> list[str]:
        if not self.subscribed:
            return []
        out = []
        for s, t, long, price, qty in events:
            inst = f"{s[:-4]}-USDT-SWAP"
            contracts = max(round(qty / okx_ct_val(s)), 1)
            out.append(json.dumps({"arg": {"channel": "liquidation-orders", "instType": "SWAP"}, "data": [{
                "details": [{"bkLoss": "0", "bkPx": f"{price:.8g}", "ccy": "", "posSide": "net",
                             "side": "sell" if long else "buy", "sz": str(contracts), "ts": str(t)}],
                "instFamily": inst[:-5], "instId": inst, "instType": "SWAP", "uly": inst[:-5]}]}))
        return out
