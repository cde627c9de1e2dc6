"""The replay exchange's server core: a loopback HTTP server that hands each GET (and Hyperliquid's POST)
to the dialect named by its first path segment (/binance, /binance-archive, /bybit, /okx, /hyperliquid),
injects the scenario's faults,
counts requests, and owns the clock, the markets and the shared rate-limit state."""
from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np

from .archive import ARCHIVE_PREFIX, ArchiveDialect
from .binance import BinanceDialect
from .bybit import BybitDialect
from .hyperliquid import HyperliquidDialect
from .okx import OkxDialect
from .scenario import ARCHIVE, DEFAULT_START_MS, EXCHANGES, Clock, Faults, Limits, Series, default_datasets
from .wire import BadRequest, Dialect, Reply, Request, Window


class Handler(BaseHTTPRequestHandler):
    """Hands every GET to the ReplayExchange that owns the server."""
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes: without this each
    # kept-alive request waits ~40 ms for a delayed ACK
    server_version = "heatsvc-replay"

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        self.server.replay._serve(self)  # type: ignore[attr-defined]

    def do_POST(self) -> None:  # noqa: N802
        self.server.replay._serve(self)  # type: ignore[attr-defined]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - keep test output quiet
        pass


class ReplayExchange:
    """Loopback HTTP server speaking the Binance, Binance archive, Bybit, OKX and Hyperliquid dialects."""

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
        self._sources = sources
        self._series: dict[str, Series] = {}
        self.faults = faults if faults is not None else Faults()
        self.faults.check()
        self.limits = limits if limits is not None else Limits()
        self.archive_quirks = archive_quirks
        self.host, self.port = host, port
        self.clock = Clock(DEFAULT_START_MS if start_ms is None else start_ms, speed)
        self.lock = threading.RLock()
        self._data_lock = threading.Lock()
        self._rng = random.Random(self.faults.seed)
        self._rng_seed = self.faults.seed
        self.windows = Window()
        self.bans: dict[str, float] = {}        # exchange -> real time the ban ends
        self.delisted: set[str] = set()         # markets the scenario has delisted (see delist)
        self.strikes = Window()                 # Binance 429s per window (too many: a 418 ban)
        self.dialects: dict[str, Dialect] = {d.name: d(self) for d in (BinanceDialect, ArchiveDialect, BybitDialect,
                                                                         OkxDialect, HyperliquidDialect)}
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

    @property
    def speed(self) -> float | None:
        return self.clock.speed

    def now_ms(self) -> int:
        """Dataset time now: stepped, or start + real elapsed x speed."""
        return self.clock.now_ms()

    def set_time(self, ms: int) -> None:
        """Jump the clock to `ms` (it keeps running from there when a speed is set)."""
        self.clock.set_time(ms)

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

    def delist(self, market: str) -> None:
        """Delist a market: its exchange lists it no more and answers for it as for an unknown symbol."""
        if market not in self._sources:
            raise ValueError(f"replay: unknown market {market!r}")
        self.delisted.add(market)

    def request_counts(self, exchange: str | None = None) -> dict[tuple[str, str], int]:
        """Requests received per (exchange, path), rejected ones included."""
        with self.lock:
            return {k: v for k, v in self._counts.items() if exchange is None or k[0] == exchange}

    def limited_counts(self, exchange: str | None = None) -> dict[tuple[str, str], int]:
        """Requests answered with a rate-limit or ban reply (injected or earned), per (exchange, path)."""
        with self.lock:
            return {k: v for k, v in self._limited.items() if exchange is None or k[0] == exchange}

    def reset_counters(self) -> None:
        """Forget request counts, rate-limit windows and bans, and restart the fault draws from the seed."""
        with self.lock:
            self._counts.clear()
            self._limited.clear()
            self.windows = Window()
            self.strikes = Window()
            self.bans.clear()
            self._rng = random.Random(self.faults.seed)
            self._rng_seed = self.faults.seed

    # -- request handling ---------------------------------------------------------------------

    def _serve(self, http: Handler) -> None:
        parts = urlsplit(http.path)
        prefix, _, rest = parts.path.lstrip("/").partition("/")
        length = http.headers.get("Content-Length", "0")
        body = http.rfile.read(min(int(length), 1 << 20)) if http.command == "POST" and length.isdigit() else b""
        request = Request("/" + rest, parts.query, body)
        dialect = self.dialects.get(prefix)
        count_path = request.path
        if prefix == ARCHIVE and request.path.startswith(ARCHIVE_PREFIX):
            count_path = ARCHIVE_PREFIX
        with self.lock:
            key = (prefix, count_path)
            self._counts[key] = self._counts.get(key, 0) + 1
        if dialect is None:
            self._send(http, Reply(404, {"error": f"unknown exchange prefix /{prefix}; expected "
                                                  f"/binance, /bybit, /okx, /hyperliquid or /{ARCHIVE}"}))
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
                reply = dialect.handle(request, applies)
            except BadRequest as exc:
                reply = exc.reply
        if reply.headers.pop("X-Replay-Limited", None):
            with self.lock:
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
        with self.lock:
            if self.faults.seed != self._rng_seed:
                self._rng = random.Random(self.faults.seed)
                self._rng_seed = self.faults.seed
            return [self._rng.random() for _ in range(n)]

    def draw_fault(self, rate: float) -> bool:
        """One seeded draw: True with probability `rate`."""
        return rate > 0 and self._draw(1)[0] < rate

    def perturb(self, rows: list, applies: bool) -> list:
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
            with self.lock:
                banned_until = self.bans.get(exchange, 0.0)
                if draws[1] < faults.rate_418 and banned_until <= now:
                    banned_until = self.bans[exchange] = now + faults.ban_s
            if banned_until > now:
                return self.dialects[exchange].banned(banned_until)
            if draws[2] < faults.rate_429:
                return self.dialects[exchange].rate_limited(now + faults.retry_after_s)
        if draws[3] < faults.rate_5xx:
            status = (500, 502, 503, 504)[int(draws[3] / max(faults.rate_5xx, 1e-12) * 4) % 4]
            return Reply(status, raw=f"<html><body><h1>{status} Server Error</h1></body></html>".encode(),
                         content_type="text/html")
        return None
