"""What every exchange client shares: one pooled HTTP client, retries with capped jittered
backoff, rate-limit pacing and ban handling, and validation of bars at the door.

A client answers in engine bars (heatsvc.model.bars field names). Rows that break MODEL.md section 1
are dropped, logged with exchange, symbol, time and field, and counted; the rest is kept.
"""
from __future__ import annotations

import asyncio
import json
import logging
import random
import ssl
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache

import httpx
import numpy as np

from .. import metrics
from ..model.bars import FIELDS, STEP_MS, describe, format_time, invalid_rows, normalize

log = logging.getLogger("heatsvc.exchanges")

DAY_MS = 86_400_000
MAX_BODY_BYTES = 16 << 20      # a JSON answer larger than this is hostile (the largest real one is ~1 MB)
MAX_SEEN_REJECTS = 100_000   # rejected rows remembered (so not recounted); past it, new ones count again
BAN_MEMORY_S = 3600.0   # a ban within this long after the last one ended counts as repeated (waits longer)
MAX_TIME_MS = 4_102_444_800_000   # 2100-01-01: a bar time past this (or before 1970) is hostile
# What reading a payload of the wrong shape raises (a string for a number, an object for a list, ...)
MALFORMED = (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError, ZeroDivisionError)


@dataclass(frozen=True)
class Listing:
    """A linear perpetual the exchange lists as trading, with its 24 h quote volume: USDT-margined, or
    on Hyperliquid USDC-margined and named by its coin."""
    symbol: str            # written the Binance way: BTCUSDT (Hyperliquid: the coin, HYPE)
    quote_volume: float


class ExchangeError(Exception):
    """The exchange refused a request for a reason retrying will not fix (bad symbol, bad parameter)."""

    def __init__(self, exchange: str, message: str, *, status: int | None = None, code: str | int | None = None,
                 kind: str = "refused"):
        super().__init__(f"{exchange}: {message}")
        self.exchange, self.status, self.code = exchange, status, code
        self.kind = kind   # for heatsvc_fetch_errors_total: "refused", or "too_large" for an oversized answer


class ExchangeUnavailable(Exception):
    """The exchange did not answer usefully after every retry, or it has banned or throttled us for
    longer than we wait inside one request (`banned_until`, time.monotonic(), says until when)."""

    def __init__(self, exchange: str, message: str, *, banned_until: float | None = None):
        super().__init__(f"{exchange}: {message}")
        self.exchange, self.banned_until = exchange, banned_until


class Retry(Exception):
    """One attempt failed in a way worth retrying; `wait_s` overrides the backoff when set."""

    def __init__(self, reason: str, wait_s: float | None = None):
        super().__init__(reason)
        self.wait_s = wait_s


class RateWindow:
    """At most `limit` requests in any `period_s` seconds, however the server counts them: a request
    counts from the moment it is let through until `period_s` after its answer arrived, so requests
    that queue on our side (a busy connection pool, a slow server) cannot reach the server in a burst."""

    def __init__(self, limit: int, period_s: float):
        self.limit, self.period_s = limit, period_s
        self.done: deque[float] = deque()     # when recent answers arrived (time.monotonic())
        self.pending = 0                      # let through, not answered yet

    async def acquire(self) -> RateWindow:
        while True:
            now = time.monotonic()
            while self.done and now - self.done[0] >= self.period_s:
                self.done.popleft()
            if len(self.done) + self.pending < self.limit:
                self.pending += 1
                return self
            await asyncio.sleep(self.period_s - (now - self.done[0]) + 0.001 if self.done else 0.01)

    def release(self) -> None:
        """The request let through by acquire() has its answer (or failed)."""
        self.pending -= 1
        self.done.append(time.monotonic())


@cache
def tls_context() -> ssl.SSLContext:
    """httpx's default verifying TLS context, made once for every client (loading the CA bundle takes ~50 ms)."""
    return httpx.create_ssl_context()


def retry_after(response: httpx.Response, default: float | None) -> float | None:
    """Seconds the server asked us to wait (Retry-After, in seconds), else `default`."""
    value = response.headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else default
    except ValueError:
        return default


def failure_kind(exc: BaseException) -> str:
    """The heatsvc_fetch_errors_total kind of one failed attempt (one of metrics.FETCH_ERROR_KINDS)."""
    if isinstance(exc, Retry):
        reason = str(exc)
        for prefix, kind in (("rate limited", "rate_limited"), ("server error", "server_error"),
                             ("truncated", "truncated")):
            if reason.startswith(prefix):
                return kind
        return "malformed"          # bad JSON, or an envelope / payload of the wrong shape
    if isinstance(exc, ExchangeUnavailable):
        return "banned"             # HTTP 418 / 403
    if isinstance(exc, ExchangeError):
        return exc.kind
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.RemoteProtocolError) and "message body" in str(exc):
        return "truncated"          # h11: "peer closed connection without sending complete message body"
    if isinstance(exc, httpx.DecodingError):
        return "malformed"
    if isinstance(exc, httpx.TransportError):
        return "connection"
    return "other"


class ExchangeClient:
    """Base of the Binance, Bybit, OKX and Hyperliquid clients: transport, retries, pacing, validation."""

    name = "exchange"
    default_base_url = ""
    BAN_FLOOR_S = 0.0      # the shortest ban the exchange documents (Bybit: 10 minutes)
    OI_CONVENTION = 1      # raised when the meaning of the open interest the client returns changes;
    LEGACY_OI_FACTOR = 1.0  # stored values of older conventions are multiplied by this, once
    min_refresh_s = 0.0     # the refresher refreshes this client's markets no more often than this

    def __init__(self, base_url: str | None = None, *, timeout_s: float = 10.0, max_retries: int = 6,
                 backoff_s: float = 0.5, backoff_cap_s: float = 30.0, max_wait_s: float = 60.0,
                 ban_probe_s: float = 30.0, ban_cap_s: float = 21_600.0, ban_floor_s: float | None = None,
                 now_ms: Callable[[], int] | None = None,
                 seed: int | None = None, max_body_bytes: int = MAX_BODY_BYTES):
        self.base_url = (base_url or self.default_base_url).rstrip("/")
        self.max_body_bytes = max_body_bytes
        self.attempt_s = 3 * timeout_s   # a whole answer must arrive within this, however slowly it drips
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=min(5.0, timeout_s)),
                                      limits=httpx.Limits(max_connections=8, max_keepalive_connections=4),
                                      headers={"User-Agent": "heatsvc/0.1"}, verify=tls_context())
        self.max_retries, self.backoff_s, self.backoff_cap_s = max_retries, backoff_s, backoff_cap_s
        self.max_wait_s = max_wait_s
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.random = random.Random(seed)
        self.banned_until = 0.0          # time.monotonic() before which we send nothing to base_url's host
        self.hold_reason: str | None = None   # why: "banned (HTTP 418 ...)" or "rate limited (...)"
        self.hold_is_ban = False
        self.ban_probe_s, self.ban_cap_s = ban_probe_s, ban_cap_s
        self.ban_floor_s = self.BAN_FLOOR_S if ban_floor_s is None else ban_floor_s
        self.bans = 0                    # bans in a row (a ban of unstated length waits longer each time)
        self.requests: Counter[str] = Counter()   # answered requests per path
        self.retries: Counter[str] = Counter()    # why attempts were retried
        self.rejected: Counter[str] = Counter()   # distinct invalid rows dropped per symbol
        self._seen_rejects: set[tuple] = set()    # (symbol, time, field, why) counted once, however often refetched
        self.last_problem: str | None = None
        # bar ranges per symbol an answer could not cover yet (a statistics file not published or cut
        # short): the refresher records them as gaps and fetches them again later
        self.incomplete: defaultdict[str, list[tuple[int, int]]] = defaultdict(list)
        for kind in metrics.FETCH_ERROR_KINDS:   # every kind shows up at 0, so rate() works from the start
            metrics.FETCH_ERRORS.labels(self.name, kind)

    # ----- transport -----------------------------------------------------------------------
    @property
    def degraded(self) -> bool:
        """True while a ban or a demanded pause (HTTP 418/403, 429 with Retry-After) is being waited out."""
        return time.monotonic() < self.banned_until

    def hold_state(self) -> str | None:
        """What keeps us from sending to this exchange now ("banned ... for 540 s more"), or None."""
        left = self.banned_until - time.monotonic()
        if left <= 0:
            return None
        return f"{self.name}: {self.hold_reason}; sending nothing for {left:.0f} s more"

    def hold(self, seconds: float, reason: str, *, ban: bool) -> None:
        """Send nothing to the exchange's host for `seconds` (never shortening a hold already running),
        logged and shown in metrics. A ban also makes every caller give up at once until it ends."""
        until = time.monotonic() + max(0.0, seconds)
        if until <= self.banned_until:
            return
        self.banned_until, self.hold_reason, self.hold_is_ban = until, reason, ban
        metrics.HELD_UNTIL.labels(self.name).set(time.time() + seconds)
        metrics.HOLDS.labels(self.name, "banned" if ban else "rate_limited").inc()
        log.warning("%s: %s; sending nothing to %s for %.1f s", self.name, reason, self.base_url, seconds)

    def ban_guess_s(self) -> float:
        """How long to stay away after a ban whose length the exchange did not state: its documented
        floor, doubled with each ban in a row, capped at ban_cap_s."""
        return min(self.ban_cap_s, max(self.ban_floor_s, self.ban_probe_s) * 2 ** self.bans)

    def backoff(self, attempt: int) -> float:
        """Capped exponential backoff with full jitter over its upper half."""
        ceiling = min(self.backoff_cap_s, self.backoff_s * 2 ** attempt)
        return ceiling * (0.5 + 0.5 * self.random.random())

    async def pace(self, path: str, weight: int) -> RateWindow | None:
        """Wait, if needed, so that this request stays within the exchange's limits; returns the
        RateWindow it was let through by (released when the answer is in), if any."""
        return None

    def observe(self, path: str, response: httpx.Response) -> None:
        """Learn from the response's rate-limit headers."""

    def check_body(self, path: str, response: httpx.Response, body):
        """The payload of a decoded answer; raise ExchangeError or Retry on an error envelope."""
        return body

    async def request(self, path: str, params: Mapping | None = None, *, weight: int = 1,
                      url: str | None = None, raw: bool = False, max_bytes: int | None = None,
                      parse: Callable | None = None, json_body=None):
        """GET base_url + path (POST `json_body` when given), retrying what is worth retrying; returns the decoded payload
        (or the body bytes when raw), or what `parse` makes of it: a payload that `parse` finds of
        the wrong shape is a malformed answer, retried. Bodies beyond max_bytes (default
        max_body_bytes) are refused unread. Raises ExchangeError (permanent) or ExchangeUnavailable."""
        target = (url or self.base_url) + path
        last = "no attempt"
        for attempt in range(self.max_retries + 1):
            if not url:
                await self.wait_hold()
            window = await self.pace(path, weight)
            wait = None
            try:
                try:
                    response, body = await self.fetch(path, target, params, max_bytes or self.max_body_bytes,
                                                      json_body)
                finally:
                    if window is not None:
                        window.release()
                self.requests["archive" if url else path] += 1
                self.observe(path, response)
                return self.answer(path, response, body, raw=raw, parse=parse)
            except Retry as exc:
                last, wait, failed = str(exc), exc.wait_s, exc
            except httpx.TimeoutException as exc:
                last, failed = f"timeout ({type(exc).__name__})", exc
            except (httpx.TransportError, httpx.DecodingError) as exc:
                last, failed = f"transport error: {type(exc).__name__}: {exc}", exc
            except (ExchangeError, ExchangeUnavailable) as exc:   # not retried: count it and pass it on
                metrics.FETCH_ERRORS.labels(self.name, failure_kind(exc)).inc()
                raise
            metrics.FETCH_ERRORS.labels(self.name, failure_kind(failed)).inc()
            self.retries[last.split(":")[0].split(" (")[0]] += 1
            self.last_problem = f"{path}: {last}"
            if attempt == self.max_retries:
                break
            if wait and not url:                 # the exchange named a pause: the whole host keeps it
                self.hold(wait, f"rate limited ({path}: {last})", ban=False)
                continue
            delay = self.backoff(attempt) if wait is None else wait
            log.info("%s %s: %s; retry %d in %.2f s", self.name, path, last, attempt + 1, delay)
            await asyncio.sleep(delay)
        raise ExchangeUnavailable(self.name, f"{path}: gave up after {self.max_retries + 1} attempts: {last}")

    async def wait_hold(self) -> None:
        """Before sending: sit out a short demanded pause; raise ExchangeUnavailable during a ban or a
        pause longer than max_wait_s (the caller records a gap and comes back later)."""
        left = self.banned_until - time.monotonic()
        if left <= 0:
            return
        if self.hold_is_ban or left > self.max_wait_s:
            word = "banned" if self.hold_is_ban else "held"
            raise ExchangeUnavailable(self.name, f"{word} for {left:.0f} s more ({self.hold_reason})",
                                      banned_until=self.banned_until)
        await asyncio.sleep(left)

    def banned_for(self, response: httpx.Response, body: bytes) -> float | None:
        """Seconds of a ban the exchange states in its answer (besides Retry-After), else None."""
        return None

    def transient(self, response: httpx.Response, body: bytes) -> Retry | None:
        """A Retry for an error answer the exchange documents as transient (a throttle), else None."""
        return None

    async def fetch(self, path: str, target: str, params: Mapping | None, limit: int,
                    json_body=None) -> tuple[httpx.Response, bytes]:
        """One GET (a POST of `json_body` when given): the response and its body, streamed and abandoned
        as soon as it exceeds `limit` bytes, or when the whole answer takes longer than attempt_s."""
        method = "GET" if json_body is None else "POST"
        try:
            async with asyncio.timeout(self.attempt_s):
                async with self.http.stream(method, target, params=params, json=json_body) as response:
                    declared = response.headers.get("Content-Length", "")
                    chunks, size = [], 0
                    if declared.isdigit() and int(declared) > limit:
                        size = int(declared)        # refused unread
                    else:
                        async for chunk in response.aiter_bytes():
                            size += len(chunk)
                            if size > limit:
                                break
                            chunks.append(chunk)
                    if size > limit:
                        raise ExchangeError(self.name, f"{path}: answer of more than {limit} bytes refused",
                                            status=response.status_code, kind="too_large")
                    return response, b"".join(chunks)
        except TimeoutError:
            raise httpx.ReadTimeout(f"no complete answer within {self.attempt_s:g} s") from None

    def answer(self, path: str, response: httpx.Response, body: bytes, *, raw: bool, parse: Callable | None = None):
        """Turn one HTTP answer into a payload, a Retry, an ExchangeError or an ExchangeUnavailable."""
        status = response.status_code
        if status in (418, 403):
            # The stated ban (Retry-After, or a time in the body) in full; else our own guess, never
            # shorter than the exchange's documented floor, doubling with each ban in a row.
            stated = [s for s in (retry_after(response, None), self.banned_for(response, body)) if s is not None]
            ban = max(stated) if stated else self.ban_guess_s()
            self.bans += 1
            what = {418: "IP ban", 403: "forbidden: IP rate limit / WAF"}[status]
            self.last_problem = f"{path}: HTTP {status} ({what}) {body[:80].decode('utf-8', 'replace')!r}"
            self.hold(ban, f"banned (HTTP {status} on {path}, {'stated' if stated else 'unstated, guessed'} "
                           f"{ban:.0f} s)", ban=True)
            raise ExchangeUnavailable(self.name, f"HTTP {status} on {path}; banned for {ban:.0f} s",
                                      banned_until=self.banned_until)
        if time.monotonic() - self.banned_until > BAN_MEMORY_S:
            self.bans = 0                # bans only grow while they keep coming
        throttle = self.transient(response, body)
        if throttle is not None:
            raise throttle
        if status == 429:
            raise Retry("rate limited (HTTP 429)", retry_after(response, None))
        if status >= 500:
            raise Retry(f"server error (HTTP {status})")
        if raw:
            if status == 404:
                return None
            if status != 200:
                raise ExchangeError(self.name, f"{path}: HTTP {status}", status=status)
            declared = response.headers.get("Content-Length")
            if declared is not None and declared.isdigit() and int(declared) != len(body):
                raise Retry("truncated body")
            return body
        try:
            payload = self.check_body(path, response, json.loads(body))
            return payload if parse is None else parse(payload)
        except RecursionError:      # JSON nested deeper than the interpreter's stack
            raise Retry(f"malformed body (HTTP {status}, nested too deeply)") from None
        except MALFORMED as exc:    # not JSON (ValueError), or `parse` found the wrong shape
            raise Retry(f"malformed body (HTTP {status}, {len(body)} bytes): {type(exc).__name__}: "
                        f"{str(exc)[:120]}") from None

    async def aclose(self) -> None:
        """Close the pooled connections."""
        await self.http.aclose()

    def take_incomplete(self, symbol: str) -> list[tuple[int, int]]:
        """The ranges the last fetches of `symbol` could not cover yet (then forgotten here)."""
        return self.incomplete.pop(symbol, [])

    # ----- the public face (each exchange implements these) --------------------------------
    async def fetch_bars(self, symbol: str, start_ms: int, end_ms: int) -> dict[str, np.ndarray]:
        """Closed bars whose open time is in [start_ms, end_ms), validated, sorted, one per time."""
        raise NotImplementedError

    async def fetch_live(self, symbol: str) -> tuple[dict[str, np.ndarray], float, float]:
        """(bars holding the forming bar, possibly empty; current open interest; mark price)."""
        raise NotImplementedError

    async def check_symbol(self, symbol: str) -> None:
        """Raise ExchangeError naming the symbol unless the exchange trades it as a linear perpetual."""
        raise NotImplementedError

    async def list_perpetuals(self) -> list[Listing]:
        """Every USDT-margined linear perpetual trading now, with its 24 h quote volume (market discovery)."""
        raise NotImplementedError

    def lists(self, symbol: str) -> bool:
        """True when list_perpetuals covers `symbol`'s kind (so its absence there means delisted)."""
        return symbol.endswith("USDT")

    # ----- building bars -------------------------------------------------------------------
    def bars(self, symbol: str, rows: Mapping[str, Sequence], start_ms: int, end_ms: int) -> dict[str, np.ndarray]:
        """Engine bars from parsed columns: keep times in [start_ms, end_ms) on the 5-minute grid,
        absorb duplicates and disorder (last row of a time wins), drop and log invalid rows."""
        b = normalize({f: np.asarray(rows[f], dtype=np.int64 if f == "time_ms" else np.float64)
                       for f in FIELDS if f in rows})
        t = b["time_ms"]
        keep = (t >= start_ms) & (t < end_ms) & (t % STEP_MS == 0)
        if not keep.all():
            b = {f: v[keep] for f, v in b.items()}
            t = b["time_ms"]
        if len(t) == 0:
            return b
        order = np.argsort(t, kind="stable")
        _, last = np.unique(t[order][::-1], return_index=True)
        pick = order[len(t) - 1 - last]
        b = {f: v[pick] for f, v in b.items()}
        return self.drop_invalid(symbol, b)


    def forming_bar(self, symbol: str, cols: dict[str, list], open_interest: float) -> dict[str, np.ndarray]:
        """The newest parsed row as the forming bar, carrying the current open interest."""
        if cols["time_ms"]:
            newest = int(np.argmax(cols["time_ms"]))
            cols = {f: [v[newest]] for f, v in cols.items()}
        forming = cols["time_ms"][0] if cols["time_ms"] else 0
        return self.bars(symbol, {**cols, "open_interest": [open_interest] * len(cols["time_ms"])},
                         forming, forming + STEP_MS)
    def drop_invalid(self, symbol: str, b: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Remove rows that break MODEL.md section 1, logging and counting each one."""
        rows, fields = invalid_rows(b)
        if len(rows) == 0:
            return b
        for i, field in zip(rows, fields):
            self._count_reject(symbol, int(b["time_ms"][i]), field, describe(b, int(i), field))
        keep = np.ones(len(b["time_ms"]), dtype=bool)
        keep[rows] = False
        return {f: v[keep] for f, v in b.items()}

    def reject(self, symbol: str, time_ms: int | None, field: str, why: str) -> None:
        """Log and count one row that could not even be parsed."""
        self._count_reject(symbol, time_ms, field, f"{field} {why}")

    def _count_reject(self, symbol: str, time_ms: int | None, field: str, why: str) -> None:
        """Log and count a rejected row the first time it is seen: refetching a gap brings the same
        bad rows back, and they are not new problems."""
        key = (symbol, time_ms, field, why if time_ms is None else "")
        if key in self._seen_rejects:
            return
        if len(self._seen_rejects) < MAX_SEEN_REJECTS:
            self._seen_rejects.add(key)
        when = format_time(time_ms) if time_ms is not None and 0 <= time_ms < MAX_TIME_MS else "?"
        log.warning("%s:%s bar %s rejected: %s", self.name, symbol, when, why)
        self.rejected[symbol] += 1
        metrics.REJECTED_ROWS.labels(f"{self.name}:{symbol}").inc()


def number(value) -> float:
    """A float from an exchange's string or number; '' and None are missing (NaN)."""
    if value is None or value == "":
        return float("nan")
    return float(value)


def bar_time(value) -> int:
    """A time in ms from an exchange's number or string; ValueError unless it lies in 1970..2100."""
    t = int(value)
    if not 0 <= t < MAX_TIME_MS:
        raise ValueError(f"time {t} is not between 1970 and 2100")
    return t


def listed(payload) -> list:
    """The payload, which must be a JSON list (a `parse` for ExchangeClient.request)."""
    if not isinstance(payload, list):
        raise TypeError(f"expected a list, got {type(payload).__name__}")
    return payload


def windows(start_ms: int, end_ms: int, bars_per_call: int) -> list[tuple[int, int]]:
    """Split [start_ms, end_ms) into consecutive windows of at most bars_per_call bars."""
    span = bars_per_call * STEP_MS
    return [(s, min(s + span, end_ms)) for s in range(start_ms, end_ms, span)]


def join_by_time(t: np.ndarray, times: Sequence[int], values: Sequence[float]) -> np.ndarray:
    """Values placed at their matching bar times in t (NaN where none); later entries win."""
    out = np.full(len(t), np.nan)
    if len(t) == 0 or len(times) == 0:
        return out
    times = np.asarray(times, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    at = np.searchsorted(t, times)
    ok = (at < len(t)) & (t[np.minimum(at, len(t) - 1)] == times) & ~np.isnan(values)
    out[at[ok]] = values[ok]
    return out


def align_down(ms: int) -> int:
    """The open time of the 5-minute bar containing ms."""
    return int(ms) // STEP_MS * STEP_MS
