"""The replay's Hyperliquid dialect (api.hyperliquid.xyz): `POST /info` with a JSON body for
metaAndAssetCtxs (one delisted coin with nulls among the served ones), candleSnapshot (5-minute
candles only; at most 500 an answer, only the latest 5,000 exist) and clearinghouseState (the
synthetic accounts of heatsvc.replay.accounts). Weight is counted per IP in a fixed minute window
(clearinghouseState 2, the others 20, candleSnapshot 1 more per 60 candles started); past the limit
the answer is HTTP 429 with the body `null`. A body it cannot read is HTTP 422 with plain text.

Which 500 candles a wider range gets is not documented; the replay answers the oldest 500 from
startTime. Hyperliquid's real answer to that case was not verified (no recording of it found).
"""
from __future__ import annotations

import json
import math
import re
import time

from ..model.bars import STEP_MS
from .accounts import SyntheticAccounts
from .scenario import num
from .wire import BadRequest, Dialect, Reply, Request

WEIGHTS = {"clearinghouseState": 2, "metaAndAssetCtxs": 20, "candleSnapshot": 20}
CANDLES_PER_ANSWER = 500
ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
DELISTED = {"szDecimals": 1, "name": "MATIC", "maxLeverage": 20, "marginTableId": 20, "isDelisted": True}
DELISTED_CTX = {"funding": "0.0", "openInterest": "0.0", "prevDayPx": "0.37621", "dayNtlVlm": "0.0", "premium": None,
                "oraclePx": "0.3754", "markPx": "0.37621", "midPx": None, "impactPxs": None, "dayBaseVlm": "0.0"}
TRADES_PER_BAR = 24          # the synthetic trades of a bar (candle `n`, and the trades stream)


def unreadable(what: str) -> BadRequest:
    return BadRequest(Reply(422, raw=f"Failed to deserialize the JSON body into the target type: {what}".encode(),
                            content_type="text/plain"))


class HyperliquidDialect(Dialect):
    """Hyperliquid's public info API for perpetuals."""

    name = "hyperliquid"

    def __init__(self, rx):
        super().__init__(rx)
        self.accounts = SyntheticAccounts(seed=rx.faults.seed)

    def rate_limited(self, until_s: float) -> Reply:
        return Reply(429, raw=b"null", headers={"X-Replay-Limited": "1"})

    def handle(self, req: Request, applies: bool) -> Reply:
        if req.path != "/info":
            return Reply(404, raw=b"Not Found", content_type="text/plain")
        try:
            body = json.loads(req.body or b"null")
            kind = body["type"]
        except (ValueError, TypeError, KeyError):
            return unreadable("missing field `type`").reply
        routes = {"metaAndAssetCtxs": self.meta_and_ctxs, "candleSnapshot": self.candles,
                  "clearinghouseState": self.clearinghouse_state}
        if kind not in routes:
            return unreadable(f"unknown variant `{str(kind)[:40]}`").reply
        if not self.charge(WEIGHTS[kind]):
            return self.rate_limited(0)
        try:
            return routes[kind](body)
        except BadRequest as exc:
            return exc.reply

    def charge(self, weight: float) -> bool:
        """Count `weight` in this minute's window; False past the limit (the request is refused)."""
        with self.rx.lock:
            used, _ = self.rx.windows.add(("hyperliquid",), weight, self.limits.hyperliquid_window_s, time.time())
        return used <= self.limits.hyperliquid_weight

    def coins(self) -> dict:
        return {sym: self.series(sym) for sym in self.symbols()}

    def meta_and_ctxs(self, body: dict) -> Reply:
        now = self.now_ms()
        universe, ctxs = [], []
        for coin, s in self.coins().items():
            price = s.price(now) or 0.0
            st = s.stats_24h(now)
            universe.append({"szDecimals": 2, "name": coin, "maxLeverage": 50, "marginTableId": 50})
            ctxs.append({"funding": "0.0000125", "openInterest": num(s.open_interest(now) or 0.0, 2),
                         "prevDayPx": num(st["open"], 6), "dayNtlVlm": num(st["quote"], 4), "premium": "0.0",
                         "oraclePx": num(price, 6), "markPx": num(price, 6), "midPx": num(price, 6),
                         "impactPxs": [num(price, 6), num(price, 6)], "dayBaseVlm": num(st["volume"], 2)})
        universe.append(DELISTED)
        ctxs.append(DELISTED_CTX)
        return Reply(200, [{"universe": universe, "marginTables": [], "collateralToken": 0}, ctxs])

    def candles(self, body: dict) -> Reply:
        try:
            r = body["req"]
            coin, interval, start, end = r["coin"], r["interval"], int(r["startTime"]), int(r["endTime"])
        except (KeyError, TypeError, ValueError):
            raise unreadable("req needs coin, interval, startTime, endTime") from None
        if interval != "5m":
            raise unreadable(f"the replay serves interval 5m only, not {str(interval)[:10]!r}")
        s = self.series(coin)
        if s is None:
            return Reply(200, [])
        now = self.now_ms()
        n = s.visible(now)
        first = max(0, n - self.limits.hyperliquid_candles, int(s.t.searchsorted(start - start % STEP_MS)))
        last = min(n, int(s.t.searchsorted(end, side="right")), first + CANDLES_PER_ANSWER)
        out = []
        for i in range(first, last):
            b = s.bar(i, now)
            out.append({"t": b.time_ms, "T": b.time_ms + STEP_MS - 1, "s": coin, "i": "5m", "o": num(b.open, 6),
                        "c": num(b.close, 6), "h": num(b.high, 6), "l": num(b.low, 6), "v": num(b.volume, 2),
                        "n": TRADES_PER_BAR})
        self.charge(math.ceil(len(out) / 60))     # the weight of the candles returned
        return Reply(200, out)

    def clearinghouse_state(self, body: dict) -> Reply:
        user = body.get("user")
        if not isinstance(user, str) or not ADDRESS.fullmatch(user):
            raise unreadable("user is not an address")
        return Reply(200, self.accounts.state(user.lower(), self.coins(), self.now_ms()))
