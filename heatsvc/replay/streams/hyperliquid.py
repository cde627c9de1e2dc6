"""Hyperliquid's public trades as the replay speaks them, on /hyperliquid/ws: {"method": "subscribe",
"subscription": {"type": "trades", "coin": C}} acknowledged on channel "subscriptionResponse",
{"method": "ping"} answered by {"channel": "pong"}, anything else by channel "error".

Trades are drawn per replayed bar (TRADES_PER_BAR, seeded): prices inside the bar's range, sizes
adding up to the bar's volume, the aggressor a buyer with the bar's taker-buy share, and `users` =
[buyer, seller] among the replay's synthetic accounts, so the positions poller discovers them.
Hyperliquid publishes no liquidations here, and neither does the replay.
"""
from __future__ import annotations

import json
import zlib

import numpy as np

from ...model.bars import STEP_MS
from ..hyperliquid import TRADES_PER_BAR

EXCHANGE = "hyperliquid"
PATH = "/hyperliquid/ws"
LIQUIDATIONS = False           # the server draws no liquidation events for this dialect


def bar_trades(series, i: int, accounts, seed: int) -> list[dict]:
    """The seeded trades of bar i of a replay Series, in time order, as WsTrade records."""
    rng = np.random.default_rng([seed, zlib.crc32(series.market.encode()), i])
    t, lo, hi = int(series.t[i]), float(series.l[i]), float(series.h[i])
    volume, buy_share = float(series.v[i]), float(series.tb[i]) / max(float(series.v[i]), 1e-12)
    times = t + np.sort(rng.integers(0, STEP_MS, TRADES_PER_BAR))
    sizes = rng.dirichlet(np.ones(TRADES_PER_BAR)) * volume
    prices = lo + rng.random(TRADES_PER_BAR) * (hi - lo)
    buys = rng.random(TRADES_PER_BAR) < buy_share
    pairs = accounts.traders(zlib.crc32(series.market.encode()) ^ i, TRADES_PER_BAR)
    coin = series.market.partition(":")[2]
    return [{"coin": coin, "side": "B" if b else "A", "px": f"{p:.6g}", "sz": f"{z:.4f}", "time": int(tm),
             "hash": "0x" + "0" * 64, "tid": int(tm) * 100 + k, "users": list(pair)}
            for k, (tm, p, z, b, pair) in enumerate(zip(times.tolist(), prices, sizes, buys, pairs))]


class Session:
    def __init__(self, path: str):
        self.coins: set[str] = set()
        self.replay = None
        self.seed = 0
        self.sent_through: int | None = None    # replay time up to which trades went out

    def attach(self, replay, seed: int) -> None:
        """The replay whose markets and synthetic accounts the trades come from."""
        self.replay, self.seed = replay, seed

    def answer(self, text: str) -> list[str]:
        try:
            message = json.loads(text)
            method = message["method"]
        except (ValueError, KeyError, TypeError):
            return [json.dumps({"channel": "error", "data": f"Error parsing JSON into valid websocket request: {text[:80]}"})]
        if method == "ping":
            return [json.dumps({"channel": "pong"})]
        sub = message.get("subscription")
        if method == "subscribe" and isinstance(sub, dict) and sub.get("type") == "trades" and sub.get("coin"):
            self.coins.add(str(sub["coin"]))
            return [json.dumps({"channel": "subscriptionResponse", "data": message})]
        return [json.dumps({"channel": "error", "data": f"Invalid subscription {json.dumps(sub)[:80]}"})]

    def heartbeat(self, wall_ms: int, now_ms: int, prices: dict[str, float]) -> list[str]:
        """The trades of the subscribed coins since the last tick, one message per coin and bar."""
        if self.replay is None or not self.coins:
            return []
        start, self.sent_through = self.sent_through, now_ms
        if start is None or now_ms <= start:
            return []
        accounts = self.replay.dialects["hyperliquid"].accounts
        out = []
        for coin in sorted(self.coins):
            market = f"{EXCHANGE}:{coin}"
            if market not in self.replay.markets():
                continue
            s = self.replay.series(market)
            a = int(np.searchsorted(s.t, start - STEP_MS, side="right"))
            b = int(np.searchsorted(s.t, now_ms, side="right"))
            for i in range(max(a, 0), b):
                trades = [tr for tr in bar_trades(s, i, accounts, self.seed) if start <= tr["time"] < now_ms]
                if trades:
                    out.append(json.dumps({"channel": "trades", "data": trades}))
        return out

    def frames(self, events: list[tuple]) -> list[str]:
        return []
