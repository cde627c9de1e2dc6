"""The replay's scenario: the markets it serves (recorded and synthetic bars), what a market looks
like at a moment of the replay clock (visible bars, the forming bar, open-interest snapshots), the
clock itself, and the knobs: injected faults and the exchanges' request limits.

Conventions shared by all dialects: only bars with open time <= now are visible; the bar containing
now is the forming bar, served with partial values derived from the full bar by the elapsed
fraction; an open-interest snapshot taken at X is the open interest at the end of the bar opening
at X - 5 min, so history only holds snapshots at X <= now, and "current" open interest
interpolates into the forming bar. Open interest is one side (the model's unit); dialects that
publish both sides (Bybit's openInterest) double it.
"""
from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

import numpy as np

from .. import datasets
from ..model.bars import STEP_MS, normalize

DAY_MS = 86_400_000
DATA_END_MS = 1_760_572_800_000        # 2025-10-16T00:00Z, where the bundled data ends
DEFAULT_START_MS = 1_760_054_400_000   # 2025-10-10T00:00Z: the HYPE crash is still ahead
EXCHANGES = ("binance", "bybit", "okx", "hyperliquid")
SYNTHETIC_EXCHANGES = ("binance", "bybit", "okx")
ARCHIVE = "binance-archive"
SYNTHETIC_SYMBOLS = ("BTCUSDT", "ETHUSDT")


# ---------------------------------------------------------------------------------------------
# Knobs: faults and limits
# ---------------------------------------------------------------------------------------------

@dataclass
class Faults:
    """Injected failures, drawn per request (and per row) from a seeded generator.

    Mutable while the server runs; setting a new seed restarts the draws. Rates are probabilities
    in [0, 1]. `exchanges` limits the faults to some of "binance", "bybit", "okx", "binance-archive"
    (None: all). Rate limits and bans apply to the REST dialects, the rest to the archive too.
    """
    rate_429: float = 0.0         # rate-limited answer in the exchange's dialect
    retry_after_s: int = 2        # Retry-After / reset delay of injected 429s
    rate_418: float = 0.0         # start a ban: Binance 418, Bybit 403, OKX 429 until ban_s passes
    rate_1008: float = 0.0        # Binance -1008 "system-level protection" throttle (HTTP 503 or 400)
    ban_s: float = 5.0
    rate_5xx: float = 0.0         # 500/502/503/504 with an HTML body
    latency_s: float = 0.0        # added to every answer
    timeout_rate: float = 0.0     # hold the request timeout_s, then drop the connection unanswered
    timeout_s: float = 30.0
    malformed_rate: float = 0.0   # HTTP 200 with a body that is not valid JSON (or not a zip)
    truncated_rate: float = 0.0   # full Content-Length announced, half the body sent, connection closed
    duplicate_rate: float = 0.0   # each history row repeated
    missing_rate: float = 0.0     # each history row dropped
    seed: int = 0
    exchanges: tuple[str, ...] | None = None

    def check(self) -> None:
        """Raise ValueError naming the first knob out of range."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("rate") or f.name.startswith("rate_"):
                if not 0.0 <= value <= 1.0:
                    raise ValueError(f"faults: {f.name} must be a probability in [0, 1], got {value}")
            elif f.name in ("retry_after_s", "ban_s", "latency_s", "timeout_s") and not value >= 0:
                raise ValueError(f"faults: {f.name} must be >= 0 seconds, got {value}")
        if self.exchanges is not None:
            unknown = set(self.exchanges) - {*EXCHANGES, ARCHIVE}
            if unknown:
                raise ValueError(f"faults: unknown exchange(s) {', '.join(sorted(unknown))}")


@dataclass
class Limits:
    """The exchanges' request limits (real values by default; tests lower them). Windows are real seconds."""
    binance_weight: int = 2400                 # REQUEST_WEIGHT per binance_window_s -> 429
    binance_window_s: float = 60.0
    binance_data_requests: int = 1000          # /futures/data/* requests per 5 min -> 429
    binance_data_window_s: float = 300.0
    binance_ban_after: int = 20                # 429s inside one window before a 418 ban
    binance_ban_s: float = 120.0
    binance_oi_days: int = 30                  # openInterestHist / ratio history depth
    bybit_requests: int = 600                  # per bybit_window_s -> retCode 10006
    bybit_window_s: float = 5.0
    okx_requests: dict[str, tuple[int, float]] = field(default_factory=lambda: {
        "/api/v5/market/candles": (40, 2.0),
        "/api/v5/market/history-candles": (20, 2.0),
        "/api/v5/rubik/stat/contracts/open-interest-history": (10, 2.0),
        "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader": (5, 2.0),
        "/api/v5/public/open-interest": (20, 2.0),
        "/api/v5/public/mark-price": (10, 2.0),
        "/api/v5/public/instruments": (20, 2.0),
        "/api/v5/market/ticker": (20, 2.0),
    })
    okx_recent_entries: int = 1440             # /market/candles and rubik stats: latest N entries only
    bybit_ban_s: float = 600.0                 # "403, access too frequent": at least 10 minutes
    hyperliquid_weight: int = 1200             # weight per hyperliquid_window_s per IP -> 429 `null`
    hyperliquid_window_s: float = 60.0
    hyperliquid_candles: int = 5000            # candleSnapshot: only the latest N candles exist


# ---------------------------------------------------------------------------------------------
# Market data on the replay clock
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Bar:
    """One served bar; `closed` is False for the forming bar (partial values)."""
    time_ms: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    taker_buy_volume: float
    quote_volume: float
    closed: bool


class Series:
    """One market's bars with what the dialects need: visible ranges, the forming bar, OI snapshots."""

    def __init__(self, market: str, bars: Mapping[str, np.ndarray]):
        b = normalize(bars)
        order = np.argsort(b["time_ms"], kind="stable")
        b = {k: v[order] for k, v in b.items()}
        self.market = market
        self.t = b["time_ms"]
        self.o, self.h, self.l, self.c, self.v = (b[k] for k in ("open", "high", "low", "close", "volume"))
        self.tb = np.where(np.isfinite(b["taker_buy_volume"]), b["taker_buy_volume"], self.v / 2)
        # Exchanges always publish a quote volume; where the data has none, use volume x typical price.
        self.q = np.where(np.isfinite(b["quote_volume"]), b["quote_volume"],
                          self.v * (self.h + self.l + self.c) / 3)
        self.oi = b["open_interest"]
        self.ratio = b["long_short_ratio"]
        self.oi_rows = np.flatnonzero(np.isfinite(self.oi))
        self.oi_snap = self.t[self.oi_rows] + STEP_MS
        self.ratio_rows = np.flatnonzero(np.isfinite(self.ratio))
        self.ratio_snap = self.t[self.ratio_rows] + STEP_MS

    @property
    def first_ms(self) -> int:
        return int(self.t[0]) if len(self.t) else 0

    def visible(self, now: int) -> int:
        """Number of bars whose open time is <= now (they are rows [0, n))."""
        return int(np.searchsorted(self.t, now, "right"))

    def bar(self, i: int, now: int) -> Bar:
        """Bar i as seen at `now`: complete, or partial when it is still forming."""
        t = int(self.t[i])
        o, h, lo, c = float(self.o[i]), float(self.h[i]), float(self.l[i]), float(self.c[i])
        v, tb, q = float(self.v[i]), float(self.tb[i]), float(self.q[i])
        if now >= t + STEP_MS:
            return Bar(t, o, h, lo, c, v, tb, q, True)
        f = max(0.0, (now - t) / STEP_MS)
        cp = o + (c - o) * f
        hp = max(o, cp) + (h - max(o, c)) * f
        lp = min(o, cp) - (min(o, c) - lo) * f
        return Bar(t, o, max(hp, o, cp), min(lp, o, cp), cp, v * f, tb * f, q * f, False)

    def price(self, now: int) -> float | None:
        """Last traded price at `now` (the forming bar's partial close), None before the data starts."""
        n = self.visible(now)
        return self.bar(n - 1, now).close if n else None

    def open_interest(self, now: int) -> float | None:
        """Open interest at `now`: the last snapshot, moved towards the forming bar's end value."""
        n = self.visible(now)
        if not n:
            return None
        i = n - 1
        k = int(np.searchsorted(self.oi_rows, i, "left"))  # OI rows before bar i: oi_rows[:k]
        prev = float(self.oi[self.oi_rows[k - 1]]) if k else None
        if now >= self.t[i] + STEP_MS or not math.isfinite(self.oi[i]):
            return float(self.oi[i]) if math.isfinite(self.oi[i]) else prev
        if prev is None:
            return None
        f = (now - int(self.t[i])) / STEP_MS
        return prev + (float(self.oi[i]) - prev) * f

    def stats_24h(self, now: int) -> dict[str, float]:
        """Rolling 24 h figures for tickers: open, high, low, base volume, quote volume, price 1 h ago."""
        n = self.visible(now)
        if n == 0:
            return dict.fromkeys(("open", "high", "low", "volume", "quote", "price_1h"), 0.0)
        lo = max(0, n - DAY_MS // STEP_MS)
        last = self.bar(n - 1, now)  # only the newest bar may be partial
        return {"open": float(self.o[lo]),
                "high": max(float(self.h[lo:n - 1].max(initial=last.high)), last.high),
                "low": min(float(self.l[lo:n - 1].min(initial=last.low)), last.low),
                "volume": float(self.v[lo:n - 1].sum()) + last.volume,
                "quote": float(self.q[lo:n - 1].sum()) + last.quote_volume,
                "price_1h": float(self.o[max(0, n - 12)])}


def default_datasets(*, hyperliquid: bool = False) -> dict[str, Callable[[], Mapping[str, np.ndarray]]]:
    """The bundled markets, generated on first use: recorded binance:HYPEUSDT and synthetic
    BTCUSDT/ETHUSDT (365 days to 2025-10-16) on Binance, Bybit and OKX; with `hyperliquid`, also
    hyperliquid:HYPE, which replays the same recorded HYPEUSDT bars (Binance's, not Hyperliquid's)."""
    out: dict[str, Callable[[], Mapping[str, np.ndarray]]] = {"binance:HYPEUSDT": datasets.recorded_bars}
    for symbol in SYNTHETIC_SYMBOLS:
        for exchange in SYNTHETIC_EXCHANGES:
            out[f"{exchange}:{symbol}"] = (lambda s=symbol, e=exchange: datasets.synthetic_bars(s, e))
    if hyperliquid:
        out["hyperliquid:HYPE"] = datasets.recorded_bars
    return out


def num(x: float, places: int = 8) -> str:
    """A decimal string as exchanges send numbers."""
    return f"{x:.{places}f}"


class Clock:
    """Dataset time: stepped (speed None) or running at `speed` dataset seconds per real second."""

    def __init__(self, start_ms: int, speed: float | None):
        if speed is not None and not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"replay: speed must be a positive number, got {speed}")
        self.speed = speed
        self._start_ms, self._anchor = int(start_ms), time.monotonic()
        self._lock = threading.Lock()

    def now_ms(self) -> int:
        with self._lock:
            if self.speed is None:
                return self._start_ms
            return self._start_ms + int((time.monotonic() - self._anchor) * 1000 * self.speed)

    def set_time(self, ms: int) -> None:
        with self._lock:
            self._start_ms, self._anchor = int(ms), time.monotonic()
