"""The replay exchange: Binance USD-M futures, the Binance public data archive, Bybit v5 linear and
OKX v5 swap REST dialects served on loopback from recorded or synthetic bars, on a replay clock.

Each exchange answers under its own prefix with its real paths, parameters, JSON shapes, paging,
error bodies, rate-limit headers and limits, so the exchange clients run against it unchanged and
no test needs the network. Faults (rate limits, bans, 5xx, latency, timeouts, malformed or cut
bodies, duplicated or missing rows) are injected from a seeded, mutable `Faults`.

Conventions shared by all dialects (the real APIs document them loosely; see each dialect):
  * only bars with open time <= now are visible; the bar containing now is the forming bar, served
    with partial values derived from the full bar by the elapsed fraction;
  * an open-interest snapshot stamped X is the open interest at the end of the bar opening at X - 5 min,
    so history only holds snapshots at X <= now; "current" open interest interpolates into the
    forming bar.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import random
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np

from . import datasets
from .model.bars import STEP_MS, format_time, normalize, parse_time

DAY_MS = 86_400_000
DATA_END_MS = 1_760_572_800_000        # 2025-10-16T00:00Z, where the bundled data ends
DEFAULT_START_MS = 1_760_054_400_000   # 2025-10-10T00:00Z: the HYPE crash is still ahead
EXCHANGES = ("binance", "bybit", "okx")
ARCHIVE = "binance-archive"
SYNTHETIC_SYMBOLS = ("BTCUSDT", "ETHUSDT")
# OKX contract sizes (ctVal, base coin per contract) as OKX lists them; other coins get 1.
OKX_CT_VAL = {"BTC": 0.01, "ETH": 0.1, "SOL": 1.0, "HYPE": 0.1}


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


def default_datasets() -> dict[str, Callable[[], Mapping[str, np.ndarray]]]:
    """The bundled markets, generated on first use: recorded binance:HYPEUSDT and synthetic
    BTCUSDT/ETHUSDT (365 days to 2025-10-16) on every exchange."""
    out: dict[str, Callable[[], Mapping[str, np.ndarray]]] = {"binance:HYPEUSDT": datasets.recorded_bars}
    for symbol in SYNTHETIC_SYMBOLS:
        for exchange in EXCHANGES:
            out[f"{exchange}:{symbol}"] = (lambda s=symbol, e=exchange: datasets.synthetic_bars(s, e))
    return out


def okx_inst_id(symbol: str) -> str:
    """OKX perpetual swap instrument id of a USDT symbol: BTCUSDT -> BTC-USDT-SWAP."""
    return f"{symbol[:-4]}-USDT-SWAP" if symbol.endswith("USDT") else f"{symbol}-SWAP"


def okx_ct_val(symbol: str) -> float:
    """Base coin per OKX contract."""
    return OKX_CT_VAL.get(symbol[:-4] if symbol.endswith("USDT") else symbol, 1.0)


def num(x: float, places: int = 8) -> str:
    """A decimal string as exchanges send numbers."""
    return f"{x:.{places}f}"


# ---------------------------------------------------------------------------------------------
# HTTP plumbing
# ---------------------------------------------------------------------------------------------

@dataclass
class Reply:
    """What a dialect answers: status, JSON payload (or raw bytes), extra headers."""
    status: int = 200
    payload: object = None
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None
    content_type: str = "application/json"

    def body(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.payload, separators=(",", ":")).encode()


class BadRequest(Exception):
    """A request the dialect rejects; carries the dialect's own reply."""

    def __init__(self, reply: Reply):
        super().__init__(reply.status)
        self.reply = reply


class Request:
    """A parsed GET: path below the exchange prefix and single-valued query parameters."""

    def __init__(self, path: str, query: str):
        self.path = path
        self.params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}

    def get(self, name: str) -> str | None:
        value = self.params.get(name)
        return value if value not in (None, "") else None


class Handler(BaseHTTPRequestHandler):
    """Hands every GET to the ReplayExchange that owns the server."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: without this each
    # kept-alive request waits ~40 ms for a delayed ACK
    server_version = "heatsvc-replay"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.server.replay._serve(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - keep test output quiet
        pass


class Window:
    """Fixed-window request counters keyed by anything, on the real clock."""

    def __init__(self) -> None:
        self._slots: dict[object, tuple[float, float]] = {}

    def add(self, key: object, cost: float, window_s: float, now_s: float) -> tuple[float, float]:
        """Add cost to key's current window; returns (used so far, window end time in seconds)."""
        start = math.floor(now_s / window_s) * window_s
        slot_start, used = self._slots.get(key, (start, 0.0))
        if slot_start != start:
            used = 0.0
        used += cost
        self._slots[key] = (start, used)
        return used, start + window_s


# ---------------------------------------------------------------------------------------------
# The exchange
# ---------------------------------------------------------------------------------------------

class ReplayExchange:
    """Loopback HTTP server speaking the Binance, Binance archive, Bybit and OKX dialects."""

    def __init__(self, *, datasets: Mapping[str, Mapping[str, np.ndarray] | Callable[[], Mapping]] | None = None,
                 start_ms: int | None = None, speed: float | None = None, faults: Faults | None = None,
                 host: str = "127.0.0.1", port: int = 0, limits: Limits | None = None,
                 archive_quirks: bool = False):
        sources = default_datasets() if datasets is None else dict(datasets)
        for market in sources:
            exchange, _, symbol = market.partition(":")
            if exchange not in EXCHANGES or not symbol or symbol != symbol.upper():
                raise ValueError(f"replay: market {market!r} must be 'exchange:SYMBOL' with exchange in "
                                 f"{', '.join(EXCHANGES)}")
        if speed is not None and not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"replay: speed must be a positive number, got {speed}")
        self._sources = sources
        self._series: dict[str, Series] = {}
        self.faults = faults if faults is not None else Faults()
        self.faults.check()
        self.limits = limits if limits is not None else Limits()
        self.archive_quirks = archive_quirks
        self.host, self.port = host, port
        self.speed = speed
        self._start_ms = int(DEFAULT_START_MS if start_ms is None else start_ms)
        self._anchor_real = time.monotonic()
        self._lock = threading.RLock()
        self._data_lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._rng_seed = self.faults.seed
        self._windows = Window()
        self._bans: dict[str, float] = {}       # exchange -> real time the ban ends
        self._binance_429s = Window()
        self._counts: dict[tuple[str, str], int] = {}
        self._limited: dict[tuple[str, str], int] = {}
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.url = ""

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        """Bind and serve in a background thread; sets `url` (and `port` when it was 0)."""
        if self._server is not None:
            return
        self._stop.clear()
        server = ThreadingHTTPServer((self.host, self.port), Handler)
        server.daemon_threads = True
        server.replay = self  # type: ignore[attr-defined]
        self._server = server
        self.port = server.server_address[1]
        self.url = f"http://{self.host}:{self.port}"
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="replay-exchange", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop serving; requests being held (latency, timeouts) are released."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> ReplayExchange:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def base_url(self, exchange: str) -> str:
        """Where one exchange's REST dialect is served, e.g. f"{url}/binance" for fapi.binance.com."""
        if exchange not in EXCHANGES:
            raise ValueError(f"replay: unknown exchange {exchange!r}; expected one of {', '.join(EXCHANGES)}")
        return f"{self.url}/{exchange}"

    def archive_url(self) -> str:
        """Root of the Binance public data archive (data.binance.vision style)."""
        return f"{self.url}/{ARCHIVE}"

    # -- clock --------------------------------------------------------------------------------

    def now_ms(self) -> int:
        """Dataset time now: stepped, or start + real elapsed x speed."""
        with self._lock:
            if self.speed is None:
                return self._start_ms
            return self._start_ms + int((time.monotonic() - self._anchor_real) * 1000 * self.speed)

    def set_time(self, ms: int) -> None:
        """Jump the clock to `ms` (it keeps running from there when a speed is set)."""
        with self._lock:
            self._start_ms = int(ms)
            self._anchor_real = time.monotonic()

    def step(self, ms: int) -> None:
        """Move the clock by `ms` (negative moves back)."""
        self.set_time(self.now_ms() + int(ms))

    # -- data and counters --------------------------------------------------------------------

    def markets(self) -> list[str]:
        """Every served market, 'exchange:SYMBOL'."""
        return sorted(self._sources)

    def series(self, market: str) -> Series:
        """The bars behind a market (generated on first use)."""
        with self._data_lock:
            s = self._series.get(market)
            if s is None:
                source = self._sources[market]
                s = Series(market, source() if callable(source) else source)
                self._series[market] = s
            return s

    def bars(self, market: str) -> dict[str, np.ndarray]:
        """The full bars of a market as the engine names them (all of them, whatever the clock)."""
        s = self.series(market)
        return {"time_ms": s.t.copy(), "open": s.o.copy(), "high": s.h.copy(), "low": s.l.copy(),
                "close": s.c.copy(), "volume": s.v.copy(), "taker_buy_volume": s.tb.copy(),
                "quote_volume": s.q.copy(), "open_interest": s.oi.copy(), "long_short_ratio": s.ratio.copy()}

    def request_counts(self, exchange: str | None = None) -> dict[tuple[str, str], int]:
        """Requests received per (exchange, path), rejected ones included."""
        with self._lock:
            return {k: v for k, v in self._counts.items() if exchange is None or k[0] == exchange}

    def limited_counts(self, exchange: str | None = None) -> dict[tuple[str, str], int]:
        """Requests answered with a rate-limit or ban reply (injected or earned), per (exchange, path)."""
        with self._lock:
            return {k: v for k, v in self._limited.items() if exchange is None or k[0] == exchange}

    def reset_counters(self) -> None:
        """Forget request counts, rate-limit windows and bans."""
        with self._lock:
            self._counts.clear()
            self._limited.clear()
            self._windows = Window()
            self._binance_429s = Window()
            self._bans.clear()

    def _symbol(self, exchange: str, symbol: str | None) -> Series | None:
        market = f"{exchange}:{symbol}"
        return self.series(market) if symbol and market in self._sources else None

    def _symbols(self, exchange: str) -> list[str]:
        return [m.split(":", 1)[1] for m in self.markets() if m.startswith(exchange + ":")]

    # -- request handling ---------------------------------------------------------------------

    def _serve(self, http: Handler) -> None:
        parts = urlsplit(http.path)
        prefix, _, rest = parts.path.lstrip("/").partition("/")
        request = Request("/" + rest, parts.query)
        dialect = {"binance": self._binance, "bybit": self._bybit, "okx": self._okx,
                   ARCHIVE: self._archive}.get(prefix)
        count_path = request.path
        if prefix == ARCHIVE and request.path.startswith(ARCHIVE_PREFIX):
            count_path = ARCHIVE_PREFIX
        with self._lock:
            key = (prefix, count_path)
            self._counts[key] = self._counts.get(key, 0) + 1
        if dialect is None:
            self._send(http, Reply(404, {"error": f"unknown exchange prefix /{prefix}; expected "
                                                  f"/binance, /bybit, /okx or /{ARCHIVE}"}))
            return
        faults = self.faults
        applies = faults.exchanges is None or prefix in faults.exchanges
        draws = self._draw(6) if applies else [1.0] * 6
        if applies and faults.latency_s > 0:
            self._stop.wait(faults.latency_s)
        if draws[0] < faults.timeout_rate:
            self._stop.wait(faults.timeout_s)
            http.close_connection = True
            return
        reply = self._injected(prefix, draws) if applies else None
        if reply is None:
            try:
                reply = dialect(request, applies)
            except BadRequest as exc:
                reply = exc.reply
        if reply.headers.pop("X-Replay-Limited", None):
            with self._lock:
                self._limited[key] = self._limited.get(key, 0) + 1
        body = reply.body()
        if reply.status == 200 and draws[4] < faults.malformed_rate:
            body = body[: max(1, len(body) // 2)] + b"\x00<html>garbled</html>"
        self._send(http, reply, body, truncate=reply.status == 200 and draws[5] < faults.truncated_rate)

    def _send(self, http: Handler, reply: Reply, body: bytes | None = None, truncate: bool = False) -> None:
        body = reply.body() if body is None else body
        try:
            http.send_response(reply.status)
            http.send_header("Content-Type", reply.content_type)
            http.send_header("Content-Length", str(len(body)))
            for name, value in reply.headers.items():
                http.send_header(name, value)
            if truncate:
                http.send_header("Connection", "close")
            http.end_headers()
            http.wfile.write(body[: len(body) // 2] if truncate else body)
            http.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        if truncate:
            http.close_connection = True

    def _draw(self, n: int) -> list[float]:
        with self._lock:
            if self.faults.seed != self._rng_seed:
                self._rng = random.Random(self.faults.seed)
                self._rng_seed = self.faults.seed
            return [self._rng.random() for _ in range(n)]

    def _perturb(self, rows: list, applies: bool) -> list:
        """Duplicate or drop history rows as the faults ask (order kept)."""
        faults = self.faults
        if not applies or (faults.duplicate_rate <= 0 and faults.missing_rate <= 0):
            return rows
        draws = self._draw(2 * len(rows))
        out = []
        for k, row in enumerate(rows):
            if draws[2 * k] < faults.missing_rate:
                continue
            out.append(row)
            if draws[2 * k + 1] < faults.duplicate_rate:
                out.append(row)
        return out

    def _injected(self, exchange: str, draws: list[float]) -> Reply | None:
        """An injected ban, rate limit or server error, or None to answer normally."""
        faults = self.faults
        now = time.time()
        if exchange != ARCHIVE:
            with self._lock:
                banned_until = self._bans.get(exchange, 0.0)
                if draws[1] < faults.rate_418 and banned_until <= now:
                    banned_until = self._bans[exchange] = now + faults.ban_s
            if banned_until > now:
                return self._banned(exchange, banned_until)
            if draws[2] < faults.rate_429:
                return self._rate_limited(exchange, now + faults.retry_after_s)
        if draws[3] < faults.rate_5xx:
            status = (500, 502, 503, 504)[int(draws[3] / max(faults.rate_5xx, 1e-12) * 4) % 4]
            return Reply(status, raw=f"<html><body><h1>{status} Server Error</h1></body></html>".encode(),
                         content_type="text/html")
        return None

    def _banned(self, exchange: str, until_s: float) -> Reply:
        retry = str(max(1, math.ceil(until_s - time.time())))
        if exchange == "binance":
            return Reply(418, {"code": -1003, "msg": f"Way too many requests; IP(127.0.0.1) banned until "
                                                     f"{int(until_s * 1000)}. Please use the websocket for live "
                                                     f"updates to avoid bans."},
                         {"Retry-After": retry, "X-Replay-Limited": "1"})
        if exchange == "bybit":
            return Reply(403, raw=b"403 Forbidden: access too frequent", content_type="text/plain",
                         headers={"X-Replay-Limited": "1"})
        return self._rate_limited(exchange, until_s)

    def _rate_limited(self, exchange: str, until_s: float) -> Reply:
        retry = str(max(1, math.ceil(until_s - time.time())))
        if exchange == "binance":
            return Reply(429, {"code": -1003, "msg": f"Too many requests; current limit of IP(127.0.0.1) is "
                                                     f"{self.limits.binance_weight} requests per minute. Please use "
                                                     f"the websocket for live updates to avoid polling the API."},
                         {"Retry-After": retry, "X-Replay-Limited": "1"})
        if exchange == "bybit":
            reply = bybit_envelope({}, 10006, "Too many visits!")
            reply.payload["time"] = self.now_ms()  # type: ignore[index]
            reply.headers.update({"X-Bapi-Limit": str(self.limits.bybit_requests), "X-Bapi-Limit-Status": "0",
                                  "X-Bapi-Limit-Reset-Timestamp": str(int(until_s * 1000)),
                                  "X-Replay-Limited": "1"})
            return reply
        return Reply(429, {"msg": "Too Many Requests", "code": "50011"}, {"X-Replay-Limited": "1"})

    # =========================================================================================
    # Binance USD-M futures (fapi.binance.com)
    # =========================================================================================

    def _binance(self, req: Request, applies: bool) -> Reply:
        routes = {
            "/fapi/v1/klines": (self._binance_klines, None),
            "/fapi/v1/openInterest": (self._binance_open_interest, 1),
            "/fapi/v1/premiumIndex": (self._binance_premium_index, 1),
            "/fapi/v1/exchangeInfo": (self._binance_exchange_info, 1),
            "/fapi/v1/time": (self._binance_time, 1),
            "/fapi/v1/ping": (lambda r, a: Reply(200, {}), 1),
            "/futures/data/openInterestHist": (self._binance_oi_hist, 0),
            "/futures/data/topLongShortPositionRatio": (self._binance_ratio_hist, 0),
        }
        route = routes.get(req.path)
        if route is None:
            return Reply(404, raw=b"<html><body><h1>404 Not Found</h1></body></html>", content_type="text/html")
        handler, weight = route
        if weight is None:  # klines: weight by limit
            try:
                limit = binance_int(req, "limit") or 500
            except BadRequest as exc:
                return exc.reply
            weight = 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
        limits = self.limits
        now = time.time()
        with self._lock:
            banned_until = self._bans.get("binance", 0.0)
            if banned_until > now:
                return self._banned("binance", banned_until)
            used, reset = self._windows.add("binance-weight", weight, limits.binance_window_s, now)
            data_used, data_reset = (self._windows.add("binance-data", 1, limits.binance_data_window_s, now)
                                     if req.path.startswith("/futures/data/") else (0, 0))
            limited = used > limits.binance_weight or data_used > limits.binance_data_requests
            if limited:
                strikes, _ = self._binance_429s.add("429", 1, limits.binance_window_s, now)
                if strikes > limits.binance_ban_after:
                    self._bans["binance"] = now + limits.binance_ban_s
                    return self._banned("binance", now + limits.binance_ban_s)
        headers = {"X-MBX-USED-WEIGHT-1M": str(int(used))}
        if limited:
            reply = self._rate_limited("binance", reset if used > limits.binance_weight else data_reset)
        else:
            try:
                reply = handler(req, applies)
            except BadRequest as exc:
                reply = exc.reply
        reply.headers.update(headers)
        return reply

    def _binance_series(self, req: Request) -> Series:
        symbol = binance_required(req, "symbol")
        s = self._symbol("binance", symbol)
        if s is None:
            raise BadRequest(binance_error(-1121, "Invalid symbol."))
        return s

    def _binance_klines(self, req: Request, applies: bool) -> Reply:
        s = self._binance_series(req)
        if binance_required(req, "interval") != "5m":
            raise BadRequest(binance_error(-1120, "Invalid interval."))
        limit = binance_int(req, "limit")
        limit = 500 if limit is None else limit
        if not 1 <= limit <= 1500:
            raise BadRequest(binance_error(-1130, "Data sent for parameter 'limit' is not valid."))
        start, end = binance_int(req, "startTime"), binance_int(req, "endTime")
        if start is not None and end is not None and start > end:
            raise BadRequest(binance_error(-1023, "Start time is greater than end time."))
        now = self.now_ms()
        n = s.visible(now)
        hi = n if end is None else min(n, int(np.searchsorted(s.t, end, "right")))
        if start is not None:
            lo = int(np.searchsorted(s.t, start, "left"))
            rows = range(lo, min(hi, lo + limit))
        else:
            rows = range(max(0, hi - limit), hi)
        out = []
        for i in rows:
            b = s.bar(i, now)
            out.append([b.time_ms, num(b.open), num(b.high), num(b.low), num(b.close), num(b.volume),
                        b.time_ms + STEP_MS - 1, num(b.quote_volume), max(1, int(b.volume * 3)),
                        num(b.taker_buy_volume), num(b.taker_buy_volume * b.quote_volume / b.volume
                                                     if b.volume > 0 else 0.0), "0"])
        return Reply(200, self._perturb(out, applies))

    def _binance_history(self, req: Request, snaps: np.ndarray) -> np.ndarray:
        """Shared paging of the /futures/data statistics: the latest `limit` snapshots of the range."""
        if binance_required(req, "period") != "5m":
            raise BadRequest(binance_error(-1130, "parameter 'period' is invalid."))
        limit = binance_int(req, "limit")
        limit = 30 if limit is None else limit
        if not 1 <= limit <= 500:
            raise BadRequest(binance_error(-1130, "Data sent for parameter 'limit' is not valid."))
        start, end = binance_int(req, "startTime"), binance_int(req, "endTime")
        now = self.now_ms()
        oldest = now - self.limits.binance_oi_days * DAY_MS
        if start is not None and start < oldest:
            raise BadRequest(binance_error(-1130, "parameter 'startTime' is invalid."))
        if start is not None and end is not None and start > end:
            raise BadRequest(binance_error(-1130, "parameter 'startTime' is invalid."))
        lo = int(np.searchsorted(snaps, max(oldest, start if start is not None else oldest), "left"))
        hi = int(np.searchsorted(snaps, min(now, end if end is not None else now), "right"))
        return np.arange(max(lo, hi - limit), hi)

    def _binance_oi_hist(self, req: Request, applies: bool) -> Reply:
        s = self._binance_series(req)
        picks = self._binance_history(req, s.oi_snap)
        out = []
        for k in picks:
            i = int(s.oi_rows[k])
            oi = float(s.oi[i])
            out.append({"symbol": s.market.split(":")[1], "sumOpenInterest": num(oi),
                        "sumOpenInterestValue": num(oi * float(s.c[i])), "CMCCirculatingSupply": "0",
                        "timestamp": int(s.oi_snap[k])})
        return Reply(200, self._perturb(out, applies))

    def _binance_ratio_hist(self, req: Request, applies: bool) -> Reply:
        s = self._binance_series(req)
        picks = self._binance_history(req, s.ratio_snap)
        out = []
        for k in picks:
            r = float(s.ratio[s.ratio_rows[k]])
            out.append({"symbol": s.market.split(":")[1], "longShortRatio": num(r, 4),
                        "longAccount": num(r / (1 + r), 4), "shortAccount": num(1 / (1 + r), 4),
                        "timestamp": int(s.ratio_snap[k])})
        return Reply(200, self._perturb(out, applies))

    def _binance_open_interest(self, req: Request, applies: bool) -> Reply:
        s = self._binance_series(req)
        now = self.now_ms()
        oi = s.open_interest(now)
        return Reply(200, {"symbol": s.market.split(":")[1], "openInterest": num(oi or 0.0, 3), "time": now})

    def _binance_premium_index(self, req: Request, applies: bool) -> Reply:
        now = self.now_ms()
        symbol = req.get("symbol")
        symbols = [symbol] if symbol else self._symbols("binance")
        out = []
        for sym in symbols:
            s = self._symbol("binance", sym)
            if s is None:
                raise BadRequest(binance_error(-1121, "Invalid symbol."))
            price = s.price(now) or 0.0
            out.append({"symbol": sym, "markPrice": num(price), "indexPrice": num(price),
                        "estimatedSettlePrice": num(price), "lastFundingRate": "0.00010000",
                        "interestRate": "0.00010000", "nextFundingTime": (now // (8 * 3_600_000) + 1) * 8 * 3_600_000,
                        "time": now})
        return Reply(200, out[0] if symbol else out)

    def _binance_exchange_info(self, req: Request, applies: bool) -> Reply:
        # Like the real USD-M endpoint, ?symbol= is ignored: every symbol is listed.
        symbols = []
        for sym in self._symbols("binance"):
            s = self.series(f"binance:{sym}")
            symbols.append({"symbol": sym, "pair": sym, "contractType": "PERPETUAL", "deliveryDate": 4133404800000,
                            "onboardDate": s.first_ms, "status": "TRADING", "baseAsset": sym[:-4],
                            "quoteAsset": "USDT", "marginAsset": "USDT", "pricePrecision": 8,
                            "quantityPrecision": 3, "baseAssetPrecision": 8, "quotePrecision": 8,
                            "underlyingType": "COIN", "filters": [
                                {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "10000000",
                                 "tickSize": "0.00000001"},
                                {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000000",
                                 "stepSize": "0.001"}],
                            "orderTypes": ["LIMIT", "MARKET"], "timeInForce": ["GTC", "IOC", "FOK", "GTX"]})
        limits = self.limits
        return Reply(200, {"timezone": "UTC", "serverTime": self.now_ms(), "futuresType": "U_MARGINED",
                           "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                           "limit": limits.binance_weight},
                                          {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
                                           "limit": 1200}],
                           "exchangeFilters": [], "assets": [], "symbols": symbols})

    def _binance_time(self, req: Request, applies: bool) -> Reply:
        return Reply(200, {"serverTime": self.now_ms()})

    # =========================================================================================
    # Binance public data archive (data.binance.vision): daily metrics zips
    # =========================================================================================

    def _archive(self, req: Request, applies: bool) -> Reply:
        path = req.path
        name = path.rsplit("/", 1)[-1]
        symbol = path[len(ARCHIVE_PREFIX):].split("/")[0] if path.startswith(ARCHIVE_PREFIX) else ""
        s = self._symbol("binance", symbol)
        stem = f"{symbol}-metrics-"
        day = name[len(stem):-len(".zip")] if name.startswith(stem) and name.endswith(".zip") else ""
        if s is None or path != f"{ARCHIVE_PREFIX}{symbol}/{name}" or not day:
            return archive_missing(path)
        try:
            day_ms = int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)
        except ValueError:
            return archive_missing(path)
        if day_ms + DAY_MS > self.now_ms():
            return archive_missing(path)  # the day is not complete yet
        lo, hi = np.searchsorted(s.oi_snap, [day_ms, day_ms + DAY_MS], "left")
        if lo == hi:
            return archive_missing(path)
        rows = []
        for k in range(int(lo), int(hi)):
            i = int(s.oi_rows[k])
            oi, c, r = float(s.oi[i]), float(s.c[i]), float(s.ratio[i])
            ratio = r if math.isfinite(r) else 1.0
            sell = float(s.v[i] - s.tb[i])
            rows.append([datetime.fromtimestamp(int(s.oi_snap[k]) / 1000, timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
                         symbol, f"{oi:.8f}", f"{oi * c:.8f}", f"{ratio ** 0.8:.8f}", f"{ratio:.8f}",
                         f"{ratio ** 0.6:.8f}", f"{float(s.tb[i]) / sell if sell > 0 else 1.0:.8f}"])
        if self.archive_quirks:
            rows = archive_quirks(rows, seed=zlib.crc32(f"{symbol}-{day}".encode()))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(ARCHIVE_COLUMNS)
        writer.writerows(rows)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{symbol}-metrics-{day}.csv", text.getvalue())
        data = buf.getvalue()
        return Reply(200, raw=data, content_type="application/zip")

    # =========================================================================================
    # Bybit v5, category=linear (api.bybit.com)
    # =========================================================================================

    def _bybit(self, req: Request, applies: bool) -> Reply:
        routes = {
            "/v5/market/kline": self._bybit_kline,
            "/v5/market/open-interest": self._bybit_open_interest,
            "/v5/market/account-ratio": self._bybit_account_ratio,
            "/v5/market/tickers": self._bybit_tickers,
            "/v5/market/instruments-info": self._bybit_instruments,
            "/v5/market/time": self._bybit_time,
        }
        handler = routes.get(req.path)
        if handler is None:
            return Reply(404, raw=b"404 page not found", content_type="text/plain")
        now = time.time()
        limits = self.limits
        with self._lock:
            used, reset = self._windows.add("bybit", 1, limits.bybit_window_s, now)
        if used > limits.bybit_requests:
            return self._rate_limited("bybit", reset)
        try:
            reply = handler(req, applies)
        except BadRequest as exc:
            reply = exc.reply
        if isinstance(reply.payload, dict) and "retCode" in reply.payload:
            reply.payload["time"] = self.now_ms()  # server time on the replay clock
        reply.headers.update({"X-Bapi-Limit": str(limits.bybit_requests),
                              "X-Bapi-Limit-Status": str(int(max(0, limits.bybit_requests - used))),
                              "X-Bapi-Limit-Reset-Timestamp": str(int(reset * 1000))})
        return reply

    def _bybit_series(self, req: Request, category_required: bool = True) -> Series:
        category = req.get("category")
        if category is None and category_required:
            raise BadRequest(bybit_envelope({}, 10001, "params error: category is required"))
        if category not in (None, "linear"):
            raise BadRequest(bybit_envelope({}, 10001, "Not supported symbols"))
        symbol = req.get("symbol")
        if symbol is None:
            raise BadRequest(bybit_envelope({}, 10001, "params error: symbol is required"))
        s = self._symbol("bybit", symbol)
        if s is None:
            raise BadRequest(bybit_envelope({}, 10001, "Not supported symbols"))
        return s

    def _bybit_kline(self, req: Request, applies: bool) -> Reply:
        s = self._bybit_series(req, category_required=False)
        if bybit_required(req, "interval") != "5":
            raise BadRequest(bybit_envelope({}, 10001, "params error: interval invalid"))
        limit = bybit_int(req, "limit", 200, 1000)
        start, end = bybit_int(req, "start"), bybit_int(req, "end")
        now = self.now_ms()
        n = s.visible(now)
        hi = n if end is None else min(n, int(np.searchsorted(s.t, end, "right")))
        lo = 0 if start is None else int(np.searchsorted(s.t, start, "left"))
        rows = range(hi - 1, max(lo, hi - limit) - 1, -1)  # newest first, walking back from end
        out = []
        for i in rows:
            b = s.bar(i, now)
            out.append([str(b.time_ms), num(b.open), num(b.high), num(b.low), num(b.close), num(b.volume),
                        num(b.quote_volume)])
        return bybit_envelope({"symbol": s.market.split(":")[1], "category": "linear",
                               "list": self._perturb(out, applies)})

    def _bybit_paged(self, req: Request, snaps: np.ndarray, default_limit: int,
                     max_limit: int) -> tuple[list[int], str]:
        """Cursor paging over snapshot times, newest first: (snapshot indices, nextPageCursor)."""
        limit = bybit_int(req, "limit", default_limit, max_limit)
        start, end = bybit_int(req, "startTime"), bybit_int(req, "endTime")
        now = self.now_ms()
        if start is not None and end is None:
            start = None  # a lone startTime is ignored: the answer walks back from now
        hi = int(np.searchsorted(snaps, min(now, end) if end is not None else now, "right"))
        lo = 0 if start is None else int(np.searchsorted(snaps, start, "left"))
        cursor = req.get("cursor")
        if cursor is not None:
            try:
                hi = min(hi, int(dict(p.split("=", 1) for p in cursor.replace("%3D", "=")
                                      .replace("%26", "&").split("&"))["lastid"]))
            except (KeyError, ValueError):
                raise BadRequest(bybit_envelope({}, 10001, "params error: cursor invalid")) from None
        picks = list(range(hi - 1, max(lo, hi - limit) - 1, -1))
        more = picks and picks[-1] > lo
        next_cursor = f"lastid%3D{picks[-1]}%26lasttime%3D{int(snaps[picks[-1]]) // 1000}" if more else ""
        return picks, next_cursor

    def _bybit_open_interest(self, req: Request, applies: bool) -> Reply:
        s = self._bybit_series(req)
        if bybit_required(req, "intervalTime") != "5min":
            raise BadRequest(bybit_envelope({}, 10001, "params error: intervalTime invalid"))
        picks, cursor = self._bybit_paged(req, s.oi_snap, 50, 200)
        rows = [{"openInterest": num(float(s.oi[s.oi_rows[k]])), "timestamp": str(int(s.oi_snap[k]))}
                for k in picks]
        return bybit_envelope({"symbol": s.market.split(":")[1], "category": "linear",
                               "list": self._perturb(rows, applies), "nextPageCursor": cursor})

    def _bybit_account_ratio(self, req: Request, applies: bool) -> Reply:
        s = self._bybit_series(req)
        if bybit_required(req, "period") != "5min":
            raise BadRequest(bybit_envelope({}, 10001, "params error: period invalid"))
        picks, cursor = self._bybit_paged(req, s.ratio_snap, 50, 500)
        sym = s.market.split(":")[1]
        rows = []
        for k in picks:
            r = float(s.ratio[s.ratio_rows[k]])
            rows.append({"symbol": sym, "buyRatio": num(r / (1 + r), 4), "sellRatio": num(1 / (1 + r), 4),
                         "timestamp": str(int(s.ratio_snap[k]))})
        return bybit_envelope({"list": self._perturb(rows, applies), "nextPageCursor": cursor})

    def _bybit_tickers(self, req: Request, applies: bool) -> Reply:
        if bybit_required(req, "category") != "linear":
            raise BadRequest(bybit_envelope({}, 10001, "Not supported symbols"))
        symbol = req.get("symbol")
        if symbol is not None and self._symbol("bybit", symbol) is None:
            raise BadRequest(bybit_envelope({}, 10001, "Not supported symbols"))
        now = self.now_ms()
        out = []
        for sym in [symbol] if symbol else self._symbols("bybit"):
            s = self.series(f"bybit:{sym}")
            price = s.price(now) or 0.0
            oi = s.open_interest(now) or 0.0
            st = s.stats_24h(now)
            out.append({"symbol": sym, "lastPrice": num(price), "indexPrice": num(price), "markPrice": num(price),
                        "prevPrice24h": num(st["open"]),
                        "price24hPcnt": num(price / st["open"] - 1 if st["open"] else 0.0, 6),
                        "highPrice24h": num(st["high"]), "lowPrice24h": num(st["low"]),
                        "prevPrice1h": num(st["price_1h"]), "openInterest": num(oi),
                        "openInterestValue": num(oi * price, 2), "turnover24h": num(st["quote"], 4),
                        "volume24h": num(st["volume"], 4), "fundingRate": "0.0001",
                        "nextFundingTime": str((now // (8 * 3_600_000) + 1) * 8 * 3_600_000),
                        "predictedDeliveryPrice": "", "basisRate": "", "deliveryFeeRate": "", "deliveryTime": "0",
                        "ask1Size": "1", "bid1Price": num(price), "ask1Price": num(price), "bid1Size": "1",
                        "basis": "", "fundingIntervalHour": "8"})
        return bybit_envelope({"category": "linear", "list": out})

    def _bybit_instruments(self, req: Request, applies: bool) -> Reply:
        if bybit_required(req, "category") != "linear":
            raise BadRequest(bybit_envelope({}, 10001, "Not supported symbols"))
        symbol = req.get("symbol")
        symbols = [symbol] if symbol else self._symbols("bybit")
        out = []
        for sym in symbols:
            s = self._symbol("bybit", sym)
            if s is None:
                continue  # the real endpoint answers an empty list for an unknown symbol
            out.append({"symbol": sym, "contractType": "LinearPerpetual", "status": "Trading",
                        "baseCoin": sym[:-4], "quoteCoin": "USDT", "settleCoin": "USDT",
                        "launchTime": str(s.first_ms), "deliveryTime": "0", "priceScale": "8",
                        "fundingInterval": 480})
        return bybit_envelope({"category": "linear", "list": out, "nextPageCursor": ""})

    def _bybit_time(self, req: Request, applies: bool) -> Reply:
        now = self.now_ms()
        return bybit_envelope({"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)})

    # =========================================================================================
    # OKX v5, instType=SWAP (www.okx.com)
    # =========================================================================================

    def _okx(self, req: Request, applies: bool) -> Reply:
        routes = {
            "/api/v5/market/candles": lambda r, a: self._okx_candles(r, a, recent=True),
            "/api/v5/market/history-candles": lambda r, a: self._okx_candles(r, a, recent=False),
            "/api/v5/rubik/stat/contracts/open-interest-history": self._okx_oi_history,
            "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader": self._okx_ratio,
            "/api/v5/public/open-interest": self._okx_open_interest,
            "/api/v5/public/mark-price": self._okx_mark_price,
            "/api/v5/public/instruments": self._okx_instruments,
            "/api/v5/market/ticker": self._okx_ticker,
            "/api/v5/public/time": lambda r, a: okx_data([{"ts": str(self.now_ms())}]),
        }
        handler = routes.get(req.path)
        if handler is None:
            return Reply(404, {"msg": "", "code": "50030", "data": []})
        rule = self.limits.okx_requests.get(req.path)
        if rule is not None:
            count, window_s = rule
            with self._lock:
                # Trading statistics are limited per IP and instrument, the rest per IP.
                key = ("okx", req.path, req.get("instId") if "/rubik/" in req.path else None)
                used, reset = self._windows.add(key, 1, window_s, time.time())
            if used > count:
                return self._rate_limited("okx", reset)
        try:
            return handler(req, applies)
        except BadRequest as exc:
            return exc.reply

    def _okx_series(self, req: Request) -> tuple[Series, str]:
        inst_id = req.get("instId")
        if inst_id is None:
            raise BadRequest(Reply(400, {"code": "50014", "data": [], "msg": "instId cannot be empty"}))
        for sym in self._symbols("okx"):
            if okx_inst_id(sym) == inst_id:
                return self.series(f"okx:{sym}"), sym
        raise BadRequest(okx_error("51001", "Instrument ID, Instrument ID code, or Spread ID doesn't exist."))

    def _okx_window(self, req: Request, times: np.ndarray, n: int, lo_param: str, hi_param: str,
                    max_limit: int, recent: bool) -> range:
        """Newest-first rows of times[:n] strictly between the `before`/`begin` and `after`/`end` bounds."""
        limit = okx_int(req, "limit", 100, max_limit)
        newer, older = okx_int(req, lo_param), okx_int(req, hi_param)
        lo = 0 if newer is None else int(np.searchsorted(times[:n], newer, "right"))
        hi = n if older is None else int(np.searchsorted(times[:n], older, "left"))
        if recent:
            lo = max(lo, n - self.limits.okx_recent_entries)
        return range(hi - 1, max(lo, hi - limit) - 1, -1)

    def _okx_candles(self, req: Request, applies: bool, recent: bool) -> Reply:
        s, sym = self._okx_series(req)
        if (req.get("bar") or "1m") != "5m":
            raise BadRequest(okx_error("51000", "Parameter bar error", status=400))
        now = self.now_ms()
        ct = okx_ct_val(sym)
        out = []
        for i in self._okx_window(req, s.t, s.visible(now), "before", "after", 300, recent):
            b = s.bar(i, now)
            out.append([str(b.time_ms), num(b.open), num(b.high), num(b.low), num(b.close),
                        num(b.volume / ct, 4), num(b.volume), num(b.quote_volume), "1" if b.closed else "0"])
        return okx_data(self._perturb(out, applies))

    def _okx_stat_period(self, req: Request) -> None:
        if (req.get("period") or "5m") != "5m":
            raise BadRequest(okx_error("51000", "Parameter period error", status=400))

    def _okx_oi_history(self, req: Request, applies: bool) -> Reply:
        s, sym = self._okx_series(req)
        self._okx_stat_period(req)
        now = self.now_ms()
        n = int(np.searchsorted(s.oi_snap, now, "right"))
        ct = okx_ct_val(sym)
        out = []
        for k in self._okx_window(req, s.oi_snap, n, "begin", "end", 100, True):
            i = int(s.oi_rows[k])
            oi = float(s.oi[i])
            out.append([str(int(s.oi_snap[k])), num(oi / ct, 4), num(oi), num(oi * float(s.c[i]), 4)])
        return okx_data(self._perturb(out, applies))

    def _okx_ratio(self, req: Request, applies: bool) -> Reply:
        s, _ = self._okx_series(req)
        self._okx_stat_period(req)
        now = self.now_ms()
        n = int(np.searchsorted(s.ratio_snap, now, "right"))
        out = [[str(int(s.ratio_snap[k])), num(float(s.ratio[s.ratio_rows[k]]), 4)]
               for k in self._okx_window(req, s.ratio_snap, n, "begin", "end", 100, True)]
        return okx_data(self._perturb(out, applies))

    def _okx_swaps(self, req: Request) -> list[tuple[Series, str]]:
        """The instruments an instType=SWAP query with optional instId covers."""
        inst_type = req.get("instType")
        if inst_type is None:
            raise BadRequest(Reply(400, {"code": "50014", "data": [], "msg": "instType cannot be empty"}))
        if inst_type != "SWAP":
            return []
        if req.get("instId") is not None:
            return [self._okx_series(req)]
        return [(self.series(f"okx:{sym}"), sym) for sym in self._symbols("okx")]

    def _okx_open_interest(self, req: Request, applies: bool) -> Reply:
        now = self.now_ms()
        out = []
        for s, sym in self._okx_swaps(req):
            oi = s.open_interest(now) or 0.0
            out.append({"instType": "SWAP", "instId": okx_inst_id(sym), "oi": num(oi / okx_ct_val(sym), 4),
                        "oiCcy": num(oi), "oiUsd": num(oi * (s.price(now) or 0.0), 4), "ts": str(now)})
        return okx_data(out)

    def _okx_mark_price(self, req: Request, applies: bool) -> Reply:
        now = self.now_ms()
        return okx_data([{"instType": "SWAP", "instId": okx_inst_id(sym), "markPx": num(s.price(now) or 0.0),
                          "ts": str(now)} for s, sym in self._okx_swaps(req)])

    def _okx_instruments(self, req: Request, applies: bool) -> Reply:
        out = []
        for s, sym in self._okx_swaps(req):
            base = sym[:-4]
            out.append({"instType": "SWAP", "instId": okx_inst_id(sym), "uly": f"{base}-USDT",
                        "instFamily": f"{base}-USDT", "baseCcy": "", "quoteCcy": "", "settleCcy": "USDT",
                        "ctVal": f"{okx_ct_val(sym):g}", "ctMult": "1", "ctValCcy": base, "ctType": "linear",
                        "listTime": str(s.first_ms), "expTime": "", "lever": "100", "tickSz": "0.00000001",
                        "lotSz": "0.01", "minSz": "0.01", "state": "live"})
        return okx_data(out)

    def _okx_ticker(self, req: Request, applies: bool) -> Reply:
        s, sym = self._okx_series(req)
        now = self.now_ms()
        price = s.price(now) or 0.0
        st = s.stats_24h(now)
        return okx_data([{"instType": "SWAP", "instId": okx_inst_id(sym), "last": num(price), "lastSz": "1",
                          "askPx": num(price), "askSz": "1", "bidPx": num(price), "bidSz": "1",
                          "open24h": num(st["open"]), "high24h": num(st["high"]), "low24h": num(st["low"]),
                          "volCcy24h": num(st["volume"]), "vol24h": num(st["volume"] / okx_ct_val(sym), 4),
                          "ts": str(now), "sodUtc0": num(st["open"]), "sodUtc8": num(st["open"])}])


# ---------------------------------------------------------------------------------------------
# Dialect helpers: parameters and error bodies
# ---------------------------------------------------------------------------------------------

def binance_error(code: int, msg: str, status: int = 400) -> Reply:
    return Reply(status, {"code": code, "msg": msg})


def binance_required(req: Request, name: str) -> str:
    value = req.get(name)
    if value is None:
        raise BadRequest(binance_error(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                                              f"or malformed."))
    return value


def binance_int(req: Request, name: str) -> int | None:
    value = req.get(name)
    if value is None:
        return None
    if not (value.isdigit() and len(value) <= 20):
        raise BadRequest(binance_error(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                                              f"'^[0-9]{{1,20}}$'."))
    return int(value)


def bybit_envelope(result: object, ret_code: int = 0, ret_msg: str = "OK") -> Reply:
    """Bybit answers HTTP 200 with the outcome in retCode/retMsg."""
    return Reply(200, {"retCode": ret_code, "retMsg": ret_msg, "result": result, "retExtInfo": {},
                       "time": int(time.time() * 1000)})


def bybit_required(req: Request, name: str) -> str:
    value = req.get(name)
    if value is None:
        raise BadRequest(bybit_envelope({}, 10001, f"params error: {name} is required"))
    return value


def bybit_int(req: Request, name: str, default: int | None = None, maximum: int | None = None) -> int | None:
    value = req.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise BadRequest(bybit_envelope({}, 10001, f"params error: {name} invalid"))
    number = int(value)
    if maximum is not None and not 1 <= number <= maximum:
        raise BadRequest(bybit_envelope({}, 10001, f"params error: {name} must be in [1, {maximum}]"))
    return number


def okx_data(data: list) -> Reply:
    return Reply(200, {"code": "0", "msg": "", "data": data})


def okx_error(code: str, msg: str, status: int = 200) -> Reply:
    """OKX errors: string codes, HTTP 200 for most business errors."""
    return Reply(status, {"code": code, "msg": msg, "data": []})


def okx_int(req: Request, name: str, default: int | None = None, maximum: int | None = None) -> int | None:
    value = req.get(name)
    if value is None:
        return default
    if not value.isdigit():
        raise BadRequest(okx_error("51000", f"Parameter {name} error", status=400))
    number = int(value)
    if maximum is not None and not 1 <= number <= maximum:
        raise BadRequest(okx_error("51000", f"Parameter {name} error", status=400))
    return number


ARCHIVE_PREFIX = "/data/futures/um/daily/metrics/"
ARCHIVE_COLUMNS = ("create_time", "symbol", "sum_open_interest", "sum_open_interest_value",
                   "count_toptrader_long_short_ratio", "sum_toptrader_long_short_ratio",
                   "count_long_short_ratio", "sum_taker_long_short_vol_ratio")


def archive_missing(path: str) -> Reply:
    """The S3-style 404 data.binance.vision answers for a file that does not exist (yet)."""
    key = path.lstrip("/")
    return Reply(404, raw=(f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
                           f"<Message>The specified key does not exist.</Message><Key>{key}</Key></Error>").encode(),
                 content_type="application/xml")


def archive_quirks(rows: list[list[str]], seed: int) -> list[list[str]]:
    """What real metrics files do now and then: a row repeated, a row skipped, a row of zeros."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        u = rng.random()
        if u < 0.02:
            continue
        if u < 0.04:
            row = row[:2] + ["0"] * (len(row) - 2)
        out.append(row)
        if rng.random() < 0.02:
            out.append(list(row))
    return out


# ---------------------------------------------------------------------------------------------
# `heatsvc replay`
# ---------------------------------------------------------------------------------------------

def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Options of `heatsvc replay`."""
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="dataset seconds per real second (default 1)")
    parser.add_argument("--start", default=None,
                        help="dataset time to start at, ISO (default 2025-10-10T00:00:00Z)")
    parser.add_argument("--archive-quirks", action="store_true",
                        help="metrics archive files repeat, skip and zero rows like real ones")
    parser.add_argument("--binance-weight", type=int, default=2400, help="Binance weight limit per minute")
    group = parser.add_argument_group("faults (probabilities per request, seeded)")
    for name, help_text in (("rate-429", "rate-limited answers"), ("rate-418", "bans"),
                            ("rate-5xx", "server errors"), ("timeout-rate", "requests held past client timeouts"),
                            ("malformed-rate", "invalid JSON bodies"), ("truncated-rate", "cut bodies"),
                            ("duplicate-rate", "duplicated history rows"), ("missing-rate", "missing history rows")):
        group.add_argument(f"--{name}", type=float, default=0.0, help=help_text)
    group.add_argument("--latency", type=float, default=0.0, help="seconds added to every answer")
    group.add_argument("--seed", type=int, default=0, help="fault seed")


def run(command: str, args: argparse.Namespace) -> int:
    """Serve until Ctrl-C, printing where each exchange answers."""
    faults = Faults(rate_429=args.rate_429, rate_418=args.rate_418, rate_5xx=args.rate_5xx,
                    latency_s=args.latency, timeout_rate=args.timeout_rate, malformed_rate=args.malformed_rate,
                    truncated_rate=args.truncated_rate, duplicate_rate=args.duplicate_rate,
                    missing_rate=args.missing_rate, seed=args.seed)
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port: {args.port} is not a port number")
    if args.binance_weight < 1:
        raise ValueError(f"--binance-weight: must be at least 1, got {args.binance_weight}")
    start = parse_time(args.start, "--start") if args.start else None
    replay = ReplayExchange(start_ms=start, speed=args.speed, faults=faults, host=args.host, port=args.port,
                            limits=Limits(binance_weight=args.binance_weight), archive_quirks=args.archive_quirks)
    replay.start()
    try:
        print(f"replay exchange at {replay.url}, clock {format_time(replay.now_ms())} x{args.speed:g}")
        for exchange in EXCHANGES:
            print(f"  {exchange:8s} {replay.base_url(exchange)}")
        print(f"  archive  {replay.archive_url()}")
        print(f"  markets  {', '.join(replay.markets())}")
        print("Ctrl-C stops.", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        replay.stop()
