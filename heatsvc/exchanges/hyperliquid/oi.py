"""Open-interest samples of Hyperliquid coins. The API keeps no open-interest history: heatsvc samples
`metaAndAssetCtxs` (every coin in one call) about once a minute, or imports the S3 archive's
asset_ctxs files, and stamps each 5-minute bar with the last sample at or before its close, no older
than one bar. A bar without such a sample has open interest missing (NaN), never zero.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

from ...model.bars import STEP_MS

MAX_SAMPLES = 20_160     # per coin: 14 days of one-minute samples


class OiSamples:
    """(time_ms, open interest in coins, mark price) per coin, in time order, bounded per coin."""

    def __init__(self, max_samples: int = MAX_SAMPLES):
        self.max_samples = max_samples
        self._by_coin: dict[str, deque[tuple[int, float, float]]] = {}

    def add(self, coin: str, time_ms: int, open_interest: float, mark_px: float) -> None:
        """Record one sample; a NaN or negative open interest is not a sample. Out-of-order samples
        (an archive imported after live sampling began) are merged in time order."""
        if not (math.isfinite(open_interest) and open_interest >= 0):
            return
        q = self._by_coin.setdefault(coin, deque(maxlen=self.max_samples))
        row = (int(time_ms), float(open_interest), float(mark_px))
        if not q or q[-1][0] < row[0]:
            q.append(row)
            return
        merged = sorted({r[0]: r for r in (*q, row)}.values())   # same time: the newer row wins
        q.clear()
        q.extend(merged[-self.max_samples:])

    def latest(self, coin: str) -> tuple[int, float, float] | None:
        """The newest (time_ms, open interest, mark) of a coin, or None."""
        q = self._by_coin.get(coin)
        return q[-1] if q else None

    def count(self, coin: str) -> int:
        return len(self._by_coin.get(coin, ()))

    def stamp(self, coin: str, bar_times) -> np.ndarray:
        """Open interest per bar (open times): the last sample at or before the bar's close and after
        its open; NaN for a bar without one."""
        t = np.asarray(bar_times, dtype=np.int64)
        out = np.full(len(t), np.nan)
        q = self._by_coin.get(coin)
        if not q or len(t) == 0:
            return out
        times = np.fromiter((r[0] for r in q), dtype=np.int64, count=len(q))
        values = np.fromiter((r[1] for r in q), dtype=np.float64, count=len(q))
        close = t + STEP_MS
        at = np.searchsorted(times, close, side="right") - 1      # last sample at or before the close
        ok = at >= 0
        ok[ok] &= times[at[ok]] > t[ok]                            # ... taken during the bar
        out[ok] = values[at[ok]]
        return out
