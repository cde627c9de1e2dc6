"""Binance USD-M futures: klines, open-interest and top-trader statistics, and the daily metrics
archive (data.binance.vision) for open interest older than the API's 30 days.

A statistics row stamped X (API `timestamp` or archive `create_time`) is the snapshot at the END of
the bar that opens at X - 5 min. Request weights follow Binance's table; the used weight comes
back in X-MBX-USED-WEIGHT-1M and we pause before reaching the per-minute limit.
"""
from __future__ import annotations

import asyncio
import csv
import re
import io
import logging
import time
import zipfile
import zlib
from datetime import datetime, timezone

import json

import httpx
import numpy as np

from .. import metrics
from ..model.bars import STEP_MS, format_time
from ..datasets import metrics_time_ms
from .base import (DAY_MS, MALFORMED, ExchangeClient, ExchangeError, Listing, RateWindow, Retry, align_down,
                   bar_time, join_by_time, listed, number, windows)

log = logging.getLogger("heatsvc.exchanges")

KLINES_PER_CALL = 1500
STATS_PER_CALL = 500
STATS_DAYS = 30                    # openInterestHist / topLongShortPositionRatio keep ~30 days
STATS_MARGIN_MS = 3_600_000        # ask the archive for the last hour before that edge
ARCHIVE_MAX_BYTES = 1 << 20        # one day of metrics is ~30 kB; anything near this is hostile
ARCHIVE_MAX_ROWS = 1000            # a day has 288
ARCHIVE_MAX_MEMBERS = 16           # a day's zip holds one csv
ARCHIVE_COLUMNS = ["create_time", "symbol", "sum_open_interest", "sum_open_interest_value",
                   "count_toptrader_long_short_ratio", "sum_toptrader_long_short_ratio", "count_long_short_ratio",
                   "sum_taker_long_short_vol_ratio"]
ARCHIVE_PATH = "/data/futures/um/daily/metrics/{s}/{s}-metrics-{d}.zip"
ARCHIVE_LABEL_CHANGE_MS = 1_782_345_600_000   # 2026-06-25T00:00Z: create_time became the period's start
SERVED_CONTRACT = "PERPETUAL"      # TRADIFI_PERPETUAL (stocks, commodities) and quarterlies are not served
BAN_UNTIL = re.compile(r"banned until (\d{13})")


def kline_weight(limit: int) -> int:
    """Request weight of /fapi/v1/klines for a given limit (Binance's table)."""
    return 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10


def read_metrics_archive(data: bytes, max_bytes: int = ARCHIVE_MAX_BYTES) -> list[dict[str, str]]:
    """Rows of one daily metrics zip. Refuses archives that would inflate beyond max_bytes, whatever
    their headers claim (each member is read with a hard cap), that hold too many members or rows,
    or whose members are encrypted or neither stored nor deflated (zipfile inflates a bzip2 or LZMA
    piece whole, so a few hundred bytes could become gigabytes)."""
    rows: list[dict[str, str]] = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        members = [i for i in zf.infolist() if not i.is_dir()]
        if len(members) > ARCHIVE_MAX_MEMBERS:
            raise ExchangeError("binance", f"metrics archive holds {len(members)} files; a day's holds one",
                                kind="too_large")
        if sum(i.file_size for i in members) > max_bytes:
            raise ExchangeError("binance", f"metrics archive would inflate to more than {max_bytes} bytes",
                                kind="too_large")
        budget = max_bytes
        for info in members:
            if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
                raise ExchangeError("binance", f"metrics archive member {info.filename[:40]!r} is encrypted or "
                                    f"compressed with method {info.compress_type}, not stored or deflated",
                                    kind="malformed")
            with zf.open(info) as member:
                text = member.read(budget + 1)
            if len(text) > budget:
                raise ExchangeError("binance", f"metrics archive inflates beyond {max_bytes} bytes",
                                    kind="too_large")
            budget -= len(text)
            text = text.decode("utf-8")
            columns = None if text.startswith("create_time") else ARCHIVE_COLUMNS
            for row in csv.DictReader(io.StringIO(text, newline=""), fieldnames=columns):
                if len(rows) == ARCHIVE_MAX_ROWS:
                    raise ExchangeError("binance", f"metrics archive holds more than {ARCHIVE_MAX_ROWS} rows; "
                                                   f"a day has 288", kind="too_large")
                rows.append(row)
    return rows


def archive_bar_time(create_ms: int, day_ms: int) -> int:
    """The open time of the bar whose END a metrics row describes. Files of days before 2026-06-25
    stamp the snapshot taken at T as T (rows 00:05 .. 00:00 next day): bar T - 5 min. From 2026-06-25
    the row stamped T holds the snapshot taken at T + 5 min (rows 00:00 .. 23:55): bar T
    (binance/binance-public-data#491). The file's day decides, so the 00:00 stamp that both files of
    the change carry maps to two different bars, as it should."""
    return align_down(create_ms) - (STEP_MS if day_ms < ARCHIVE_LABEL_CHANGE_MS else 0)


def positive(value) -> float:
    """A statistic from the archive: zero or empty means missing, not zero."""
    x = number(value)
    return x if x > 0 else float("nan")


class BinanceClient(ExchangeClient):
    """Binance USD-M futures REST (fapi) plus the public data archive."""

    name = "binance"
    default_base_url = "https://fapi.binance.com"
    default_archive_url = "https://data.binance.vision"

    def __init__(self, base_url: str | None = None, *, archive_url: str | None = None,
                 weight_limit: int = 2400, weight_safety: float = 0.8, **kw):
        super().__init__(base_url, **kw)
        self.archive_url = (archive_url or self.default_archive_url).rstrip("/")
        self.weight_limit, self.weight_safety = weight_limit, weight_safety
        self.used_weight = 0
        self.weight_minute = 0
        self.max_used_weight = 0           # highest X-MBX-USED-WEIGHT-1M seen (reporting)
        self.stats_window = RateWindow(1000, 300.0)   # /futures/data: 1000 requests per 5 min per IP
        self._archive_cache: dict[tuple[str, int], list[tuple[int, float, float]]] = {}
        self._contracts: dict[str, tuple[str, str]] | None = None   # symbol -> (contractType, status)

    # ----- rate limits ---------------------------------------------------------------------
    async def pace(self, path: str, weight: int) -> RateWindow | None:
        if path.startswith("/futures/data/"):
            return await self.stats_window.acquire()
        if weight == 0:
            return None
        while True:
            minute = int(time.time() // 60)
            if minute != self.weight_minute:
                self.weight_minute, self.used_weight = minute, 0
            if self.used_weight + weight <= self.weight_limit * self.weight_safety:
                self.used_weight += weight
                return None
            wait = (minute + 1) * 60 - time.time() + 0.05
            log.info("binance: used weight %d of %d this minute; pausing %.1f s", self.used_weight,
                     self.weight_limit, wait)
            await asyncio.sleep(wait)

    def observe(self, path: str, response: httpx.Response) -> None:
        used = response.headers.get("X-MBX-USED-WEIGHT-1M")
        if used is not None and used.isdigit():
            self.weight_minute = int(time.time() // 60)
            self.used_weight = int(used)
            self.max_used_weight = max(self.max_used_weight, int(used))

    def banned_for(self, response: httpx.Response, body: bytes) -> float | None:
        """A 418's body states the ban's end: "IP banned until 1659761931230" (ms)."""
        found = BAN_UNTIL.search(body[:400].decode("utf-8", "replace"))
        return None if found is None else max(0.0, int(found.group(1)) / 1000 - time.time())

    def transient(self, response: httpx.Response, body: bytes) -> Retry | None:
        """-1008 ("request throttled by system-level protection", HTTP 400 or 503) is a throttle:
        retried with backoff, never taken for a bad request."""
        if response.status_code in (400, 503) and b"-1008" in body[:200]:
            try:
                code = json.loads(body).get("code")
            except (ValueError, AttributeError):
                return None
            if code == -1008:
                return Retry(f"rate limited (HTTP {response.status_code} code -1008, system-level protection)")
        return None

    def check_body(self, path: str, response: httpx.Response, body):
        if response.status_code != 200 or (isinstance(body, dict) and isinstance(body.get("code"), int)
                                           and body["code"] < 0):
            code = body.get("code") if isinstance(body, dict) else None
            msg = str(body.get("msg") if isinstance(body, dict) else body)[:200]
            if code == -1003:
                raise Retry("rate limited (code -1003)")
            raise ExchangeError(self.name, f"{path}: HTTP {response.status_code} code {str(code)[:20]}: {msg}",
                                status=response.status_code, code=code)
        return body

    # ----- public face ---------------------------------------------------------------------
    async def contracts(self) -> dict[str, tuple[str, str]]:
        """Every USD-M symbol in exchangeInfo: (contractType, status), fetched once."""
        if self._contracts is None:
            self._contracts = await self.request("/fapi/v1/exchangeInfo", weight=1, parse=lambda info: {
                str(s["symbol"]): (str(s.get("contractType", "")), str(s.get("status", "")))
                for s in info["symbols"]})
        return self._contracts

    async def list_perpetuals(self) -> list[Listing]:
        """PERPETUAL contracts TRADING against USDT (exchangeInfo, read afresh), ranked by the 24 h quote
        volume of /fapi/v1/ticker/24hr (weight 40 for all symbols)."""
        def usdt_perpetuals(info) -> list[str]:
            return [str(s["symbol"]) for s in info["symbols"] if s.get("contractType") == SERVED_CONTRACT
                    and s.get("status") == "TRADING" and s.get("quoteAsset") == "USDT"]

        self._contracts = None
        symbols = await self.request("/fapi/v1/exchangeInfo", weight=1, parse=usdt_perpetuals)
        volumes = await self.request("/fapi/v1/ticker/24hr", weight=40, parse=lambda rows: {
            str(r["symbol"]): number(r.get("quoteVolume")) for r in listed(rows)})
        return [Listing(symbol, volumes.get(symbol, 0.0)) for symbol in symbols]

    async def check_symbol(self, symbol: str) -> None:
        """Only PERPETUAL contracts that are TRADING are served: TRADIFI_PERPETUAL (stock and commodity
        perpetuals, which trade in their market's hours) and dated quarterlies are refused by name."""
        kind, status = (await self.contracts()).get(symbol, ("", ""))
        if not kind:
            raise ExchangeError(self.name, f"symbol {symbol!r} is not listed on USD-M futures")
        if kind != SERVED_CONTRACT:
            raise ExchangeError(self.name, f"symbol {symbol!r} is a {kind} contract; heatsvc serves "
                                           f"{SERVED_CONTRACT} contracts only")
        if status != "TRADING":
            raise ExchangeError(self.name, f"symbol {symbol!r} is {status or 'not trading'}, not TRADING")

    async def fetch_bars(self, symbol: str, start_ms: int, end_ms: int) -> dict[str, np.ndarray]:
        start = -(-int(start_ms) // STEP_MS) * STEP_MS
        end = int(end_ms)
        cols = {f: [] for f in ("time_ms", "open", "high", "low", "close", "volume", "quote_volume",
                                "taker_buy_volume")}
        for a, b in windows(start, end, KLINES_PER_CALL):
            limit = -(-(b - a) // STEP_MS)      # no more than the window holds: a short one weighs 1, not 10
            await self.request("/fapi/v1/klines", {"symbol": symbol, "interval": "5m", "startTime": a,
                                                   "endTime": b - 1, "limit": limit},
                               weight=kline_weight(limit),
                               parse=lambda rows: self.parse_klines(symbol, rows, cols))
        bars = self.bars(symbol, {**cols, "open_interest": np.full(len(cols["time_ms"]), np.nan)}, start, end)
        t = bars["time_ms"]
        if len(t) == 0:
            return bars
        oi_t, oi_v, ratio_t, ratio_v = await self.fetch_stats(symbol, int(t[0]), int(t[-1]) + STEP_MS)
        bars["open_interest"] = join_by_time(t, oi_t, oi_v)
        bars["long_short_ratio"] = join_by_time(t, ratio_t, ratio_v)
        return self.drop_invalid(symbol, bars)

    async def fetch_live(self, symbol: str) -> tuple[dict[str, np.ndarray], float, float]:
        cols = {f: [] for f in ("time_ms", "open", "high", "low", "close", "volume", "quote_volume",
                                "taker_buy_volume")}
        await self.request("/fapi/v1/klines", {"symbol": symbol, "interval": "5m", "limit": 2},
                           weight=kline_weight(2), parse=lambda rows: self.parse_klines(symbol, rows, cols))
        open_interest = await self.request("/fapi/v1/openInterest", {"symbol": symbol}, weight=1,
                                           parse=lambda oi: number(oi.get("openInterest")))
        price = await self.request("/fapi/v1/premiumIndex", {"symbol": symbol}, weight=1,
                                   parse=lambda mark: number(mark.get("markPrice")))
        return self.forming_bar(symbol, cols, open_interest), open_interest, price

    # ----- helpers -------------------------------------------------------------------------
    def parse_klines(self, symbol: str, rows, cols: dict[str, list]) -> None:
        """Append kline rows [open time, o, h, l, c, volume, close time, quote volume, trades,
        taker buy base, taker buy quote, ignore] to the column lists; unparsable rows are rejected."""
        for r in listed(rows):
            try:
                values = (bar_time(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]),
                          number(r[7]), number(r[9]))
            except MALFORMED as exc:
                self.reject(symbol, r[0] if isinstance(r, list) and r and isinstance(r[0], int) else None,
                            "kline", f"unparsable ({exc})")
                continue
            for f, v in zip(cols, values):
                cols[f].append(v)

    async def fetch_stats(self, symbol: str, start: int, end: int):
        """Open interest and top-trader position ratio for bars in [start, end), as (bar times,
        values) pairs: the API for the last 30 days, the daily archive before that."""
        floor = align_down(self.now_ms() - STATS_DAYS * DAY_MS + STATS_MARGIN_MS) + STEP_MS
        api = {"oi": ([], []), "ratio": ([], [])}
        archive_until = min(max(start, floor), end)
        for a, b in windows(max(start, floor), end, STATS_PER_CALL):
            try:
                for path, key, (ts, vs) in (("/futures/data/openInterestHist", "sumOpenInterest", api["oi"]),
                                            ("/futures/data/topLongShortPositionRatio", "longShortRatio",
                                             api["ratio"])):
                    rows = await self.request(path, {"symbol": symbol, "period": "5m", "limit": STATS_PER_CALL,
                                                     "startTime": a + STEP_MS, "endTime": b + STEP_MS - 1},
                                              parse=listed)
                    for r in rows:
                        try:
                            t, v = align_down(bar_time(r["timestamp"])) - STEP_MS, positive(r[key])
                        except MALFORMED as exc:
                            self.reject(symbol, None, key, f"unparsable ({exc})")
                            continue
                        ts.append(t)
                        vs.append(v)
            except ExchangeError as exc:
                if exc.code != -1130:
                    raise
                archive_until = b       # older than the API keeps: read it from the archive instead
        archived = await self.fetch_archive(symbol, start, archive_until) if start < archive_until else []
        # Archive entries first, API entries after: where both exist the API's value wins.
        oi_t = [r[0] for r in archived] + api["oi"][0]
        oi_v = [r[1] for r in archived] + api["oi"][1]
        ratio_t = [r[0] for r in archived] + api["ratio"][0]
        ratio_v = [r[2] for r in archived] + api["ratio"][1]
        return oi_t, oi_v, ratio_t, ratio_v

    async def archive_day(self, symbol: str, day: str) -> list[tuple[int, float, float]]:
        """One day's metrics rows as (bar time, OI, ratio), the day given as YYYY-MM-DD."""
        day_ms = int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)
        return (await self.archive_file(symbol, day_ms))[0]

    async def fetch_archive(self, symbol: str, start: int, end: int) -> list[tuple[int, float, float]]:
        """(bar time, open interest, top-trader ratio) for bars in [start, end) from daily metrics zips;
        a day missing or cut short is recorded in `incomplete` (a gap to refetch), never read as zeros."""
        out = []
        for day in range(start // DAY_MS * DAY_MS, end, DAY_MS):
            rows, complete_until = await self.archive_file(symbol, day)
            out.extend(r for r in rows if start <= r[0] < end)
            lo, hi = max(start, complete_until), min(end, day + DAY_MS)
            if lo < hi:
                self.incomplete[symbol].append((lo, hi))
        return out

    async def archive_file(self, symbol: str, day_ms: int) -> tuple[list[tuple[int, float, float]], int]:
        """One day's metrics as ([(bar time, OI, ratio)], the end of the bars the file covers without a
        cut: day_ms when it is missing, the day's end when it reaches the day's last bar). Only whole
        days are cached: a missing or truncated file is asked for again next time."""
        key = (symbol, day_ms)
        if key in self._archive_cache:
            return self._archive_cache[key], day_ms + DAY_MS
        day = datetime.fromtimestamp(day_ms / 1000, timezone.utc).strftime("%Y-%m-%d")
        path = ARCHIVE_PATH.format(s=symbol, d=day)
        rows = None
        for attempt in range(self.max_retries + 1):
            data = await self.request(path, url=self.archive_url, raw=True, weight=0,
                                      max_bytes=ARCHIVE_MAX_BYTES)
            if data is None:
                log.info("binance: no metrics archive %s (not published yet, or missing): a gap to refetch", path)
                return [], day_ms
            try:
                rows = read_metrics_archive(data)
                break
            except ExchangeError as exc:   # hostile: too large, too many files or rows, odd compression
                metrics.FETCH_ERRORS.labels(self.name, exc.kind).inc()
                raise
            except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError, csv.Error, ValueError,
                    NotImplementedError, IndexError) as exc:   # zipfile's errors for corrupt or unsupported
                # archives (IndexError: a member with an empty name, which ZipInfo.is_dir indexes)
                metrics.FETCH_ERRORS.labels(self.name, "malformed").inc()
                log.info("binance: damaged archive %s (%s); retrying", path, exc)
                self.retries["malformed archive"] += 1
                await asyncio.sleep(self.backoff(attempt))
        if rows is None:
            raise ExchangeError(self.name, f"{path}: archive still damaged after {self.max_retries + 1} tries")
        out = []
        for r in rows:
            try:
                bar = archive_bar_time(metrics_time_ms(r["create_time"].strip()), day_ms)
                if day_ms <= bar < day_ms + DAY_MS:     # the other regime's 00:00 row belongs to the next file
                    out.append((bar, positive(r["sum_open_interest"]), positive(r["sum_toptrader_long_short_ratio"])))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                self.reject(symbol, None, "metrics", f"unparsable archive row ({exc})")
        last_bar = day_ms + DAY_MS - STEP_MS
        if not any(bar == last_bar for bar, _, _ in out):
            covered = max((bar for bar, _, _ in out), default=day_ms - STEP_MS) + STEP_MS
            log.info("binance: metrics archive %s stops before %s: the rest is a gap to refetch", path,
                     format_time(covered))
            return out, covered
        if len(self._archive_cache) > 8:
            self._archive_cache.pop(next(iter(self._archive_cache)))
        self._archive_cache[key] = out
        return out, day_ms + DAY_MS
