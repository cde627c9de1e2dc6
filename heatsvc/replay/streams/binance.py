"""Binance USD-M liquidations as the replay speaks them: the combined stream !forceOrder@arr on the
/market route (streams named in the URL), with btcusdt@markPrice@1s flowing every second.

Like Binance, it pushes at most the latest liquidation per symbol per second (the series is a lower
bound), and names the liquidation order's side: SELL closes a long, BUY a short.
"""
from __future__ import annotations

import json
from urllib.parse import parse_qs, urlsplit

EXCHANGE = "binance"
PATH = "/binance/market/stream?streams=!forceOrder@arr/btcusdt@markPrice@1s"


class Session:
    """One connection: what its URL subscribed to."""

    def __init__(self, path: str):
        query = parse_qs(urlsplit(path).query).get("streams", [""])[0]
        names = set(query.split("/")) if query else set()
        self.route_ok = urlsplit(path).path.endswith("/market/stream")   # unrouted: silent, as on Binance
        self.all = "!forceOrder@arr" in names
        self.mark = {n.split("@")[0].upper() for n in names if n.endswith("@markPrice@1s")}
        self.last_mark_s = -1

    def answer(self, text: str) -> list[str]:
        """Binance needs no client message on a combined stream; LIST_SUBSCRIPTIONS-style requests get []."""
        try:
            message = json.loads(text)
        except ValueError:
            return []
        return [json.dumps({"result": None, "id": message.get("id")})] if isinstance(message, dict) else []

    def heartbeat(self, wall_ms: int, now_ms: int, prices: dict[str, float]) -> list[str]:
        """markPriceUpdate once a (wall) second for each subscribed symbol."""
        if not self.route_ok or wall_ms // 1000 == self.last_mark_s:
            return []
        self.last_mark_s = wall_ms // 1000
        return [json.dumps({"stream": f"{s.lower()}@markPrice@1s", "data": {
            "e": "markPriceUpdate", "E": now_ms, "s": s, "p": f"{prices.get(s, 0.0):.8g}"}})
            for s in sorted(self.mark)]

    def frames(self, events: list[tuple]) -> list[str]:
        """events: (symbol, time_ms, long, price, quantity); the latest per symbol and second only."""
        if not (self.all and self.route_ok):
            return []
        latest = {}
        for e in events:
            latest[(e[0], e[1] // 1000)] = e
        out = []
        for symbol, t, long, price, qty in sorted(latest.values(), key=lambda e: e[1]):
            out.append(json.dumps({"stream": "!forceOrder@arr", "data": {"e": "forceOrder", "E": t + 3, "o": {
                "s": symbol, "S": "SELL" if long else "BUY", "o": "LIMIT", "f": "IOC", "q": f"{qty:.6g}",
                "p": f"{price * (0.995 if long else 1.005):.8g}", "ap": f"{price:.8g}", "X": "FILLED",
                "l": f"{qty:.6g}", "z": f"{qty:.6g}", "T": t}}}))
        return out
