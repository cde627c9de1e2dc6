"""Taker flow per 5-minute bar from Hyperliquid's public trades stream: candles carry no taker-buy
volume, so heatsvc adds up the aggressor side of every trade it hears. A bar's share counts only
when the stream covered the whole bar (its connection spans); otherwise it is missing and the model's
neutral rule applies (MODEL.md section 1: taker_buy_volume missing -> volume / 2).
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from ...model.bars import STEP_MS

MAX_BARS = 4_032          # per coin: 14 days of bars
MAX_SPANS = 10_000


@dataclass(frozen=True)
class Trade:
    """One public trade: `side` is the aggressor's ("buy" for B, "sell" for A)."""
    coin: str
    time_ms: int
    price: float
    size: float
    side: str
    buyer: str
    seller: str


class TakerFlow:
    """Buy and sell taker size and notional per coin and bar, and the spans the stream covered."""

    def __init__(self, max_bars: int = MAX_BARS):
        self.max_bars = max_bars
        self._bars: dict[str, OrderedDict[int, list[float]]] = {}   # coin -> bar -> [buy, sell, notional]
        self.spans: list[tuple[int, int]] = []                       # covered [start, end], merged

    def add(self, trades) -> None:
        for tr in trades:
            bars = self._bars.setdefault(tr.coin, OrderedDict())
            t = tr.time_ms // STEP_MS * STEP_MS
            row = bars.get(t)
            if row is None:
                row = bars[t] = [0.0, 0.0, 0.0]
                while len(bars) > self.max_bars:
                    bars.popitem(last=False)
            row[0 if tr.side == "buy" else 1] += tr.size
            row[2] += tr.size * tr.price

    def cover(self, start_ms: int, end_ms: int) -> None:
        """The stream was connected and live from start_ms to end_ms (a recorder's span, as it grows)."""
        if end_ms < start_ms:
            return
        spans = [*self.spans, (int(start_ms), int(end_ms))]
        spans.sort()
        merged: list[list[int]] = []
        for a, b in spans:
            if merged and a <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], b)
            else:
                merged.append([a, b])
        self.spans = [(a, b) for a, b in merged[-MAX_SPANS:]]

    def covered(self, start_ms: int, end_ms: int) -> bool:
        """True when one span holds all of [start_ms, end_ms]."""
        return any(a <= start_ms and end_ms <= b for a, b in self.spans)

    def columns(self, coin: str, bar_times) -> tuple[np.ndarray, np.ndarray]:
        """(taker-buy share, trade VWAP) per bar open time; NaN where the bar was not fully covered
        (a covered bar without trades has no share either: nothing traded that we heard)."""
        t = np.asarray(bar_times, dtype=np.int64)
        share, vwap = np.full(len(t), np.nan), np.full(len(t), np.nan)
        bars = self._bars.get(coin, {})
        for i, bt in enumerate(t.tolist()):
            row = bars.get(bt)
            if row is None or not self.covered(bt, bt + STEP_MS):
                continue
            total = row[0] + row[1]
            if total > 0:
                share[i], vwap[i] = row[0] / total, row[2] / total
        return share, vwap
