"""Synthetic Hyperliquid accounts for the replay: a few hundred seeded addresses whose positions follow
the replayed market, so the positions poller and the trades stream have something true to find.

Each account holds at most one position per coin and epoch (a day, offset per account): opened at the
close of a bar early in the epoch, long or short, at 3x to 40x, isolated or cross. Its liquidation
price is the isolated-margin one (MODEL.md section 4) with Hyperliquid's maintenance margin (half the
initial margin at the coin's max leverage); a cross position counts extra collateral, so it lies
further away, and is null where that puts it at or below zero (as Hyperliquid answers). A position
whose liquidation price the market crossed since it opened is gone (liquidated) until the next epoch.
The same (seed, account, coin, epoch) always gives the same position.
"""
from __future__ import annotations

import hashlib
import zlib

import numpy as np

from ..model.bars import STEP_MS

EPOCH_MS = 86_400_000
MAX_LEVERAGE = 50                       # the replay's coins; maintenance margin 1 / (2 x 50) = 1 %
MAINTENANCE = 1.0 / (2 * MAX_LEVERAGE)
LEVERAGES = (3, 5, 10, 20, 25, 40)
EMPTY_SHARE = 0.15                      # accounts that never hold a position (dropped by the poller)


class SyntheticAccounts:
    """`n` seeded accounts; positions(address, series, now) answers what clearinghouseState would."""

    def __init__(self, n: int = 300, seed: int = 0):
        self.seed = seed
        self.addresses = ["0x" + hashlib.sha1(f"heatsvc-replay-{seed}-{i}".encode()).hexdigest() for i in range(n)]
        self.index = {a: i for i, a in enumerate(self.addresses)}

    def _rng(self, *key) -> np.random.Generator:
        return np.random.default_rng([self.seed, *key])

    def position(self, address: str, coin: str, series, now_ms: int) -> dict | None:
        """The account's open position in `coin` at now_ms as a clearinghouseState `position`, or None."""
        i = self.index.get(address)
        if i is None:
            return None
        coin_key = zlib.crc32(coin.encode())
        if self._rng(i, coin_key).random() < EMPTY_SHARE:
            return None
        offset = int(self._rng(i, coin_key, 1).integers(0, EPOCH_MS // STEP_MS)) * STEP_MS
        epoch = (now_ms - offset) // EPOCH_MS
        rng = self._rng(i, coin_key, int(epoch) + 10**9)
        open_close = offset + epoch * EPOCH_MS + int(rng.integers(1, 48)) * STEP_MS   # the open bar's close
        k = int(np.searchsorted(series.t, open_close - STEP_MS))
        if open_close > now_ms or k >= len(series.t) or series.t[k] != open_close - STEP_MS:
            return None
        entry = float(series.c[k])
        long = bool(rng.random() < 0.5 + 0.4 * (float(series.tb[k]) / max(float(series.v[k]), 1e-12) - 0.5))
        lev = int(rng.choice(LEVERAGES))
        cross = bool(rng.random() < 0.4)
        notional0 = float(rng.lognormal(np.log(25_000.0), 1.3))
        size = notional0 / entry * (1 if long else -1)
        collateral = float(rng.uniform(1.0, 4.0)) if cross else 1.0    # x the initial margin
        reach = (collateral / lev - MAINTENANCE) / (1 - MAINTENANCE if long else 1 + MAINTENANCE)
        liq = entry * (1 - reach) if long else entry * (1 + reach)
        n = series.visible(now_ms)   # bars after the opening one: closed ones, then the forming one as seen now
        if n - 1 > k:
            forming = series.bar(n - 1, now_ms)
            low = min(float(series.l[k + 1:n - 1].min(initial=np.inf)), forming.low)
            high = max(float(series.h[k + 1:n - 1].max(initial=-np.inf)), forming.high)
            if (long and liq > 0 and low <= liq) or (not long and high >= liq):
                return None          # liquidated
        mark = series.price(now_ms) or entry
        value = abs(size) * mark
        return {"coin": coin, "szi": f"{size:.4f}", "entryPx": f"{entry:.6g}",
                "leverage": {"type": "cross" if cross else "isolated", "value": lev},
                "liquidationPx": f"{liq:.8g}" if liq > 0 else None, "positionValue": f"{value:.6f}",
                "marginUsed": f"{value / lev:.6f}", "unrealizedPnl": f"{size * (mark - entry):.6f}",
                "returnOnEquity": f"{size * (mark - entry) / (abs(size) * entry / lev):.8f}",
                "maxLeverage": MAX_LEVERAGE}

    def state(self, address: str, coins: dict, now_ms: int) -> dict:
        """A clearinghouseState answer for `address` over `coins` ({coin: Series})."""
        positions = [p for coin, series in coins.items()
                     if (p := self.position(address, coin, series, now_ms)) is not None]
        total = sum(float(p["positionValue"]) for p in positions)
        used = sum(float(p["marginUsed"]) for p in positions)
        summary = {"accountValue": f"{used * 1.5:.6f}", "totalNtlPos": f"{total:.6f}", "totalRawUsd": "0.0",
                   "totalMarginUsed": f"{used:.6f}"}
        return {"marginSummary": summary, "crossMarginSummary": summary, "crossMaintenanceMarginUsed": "0.0",
                "withdrawable": "0.0", "assetPositions": [{"type": "oneWay", "position": p} for p in positions],
                "time": now_ms}

    def traders(self, key: int, count: int) -> list[tuple[str, str]]:
        """`count` seeded (buyer, seller) pairs of distinct accounts for the trades of one bar."""
        rng = self._rng(key, 7)
        pairs = rng.integers(0, len(self.addresses), size=(count, 2))
        pairs[:, 1] = np.where(pairs[:, 1] == pairs[:, 0], (pairs[:, 1] + 1) % len(self.addresses), pairs[:, 1])
        return [(self.addresses[a], self.addresses[b]) for a, b in pairs.tolist()]
