"""Bybit v5, linear perpetuals: klines, open interest and the long/short account ratio.

Answers come in the envelope {retCode, retMsg, result, time}; lists are newest first and numbers
are strings. Bybit publishes no taker-buy volume in klines (missing -> the model uses volume/2) and
no top-trader position ratio: its account ratio (buyRatio / sellRatio) stands in for it.
An open-interest or ratio row stamped X is the snapshot at the END of the bar opening at X - 5 min.

Open interest: Bybit documents `openInterest` as "the sum of both sides" (docs/v5/market/open-interest,
since 2023-11) and, from 2026-06-11, adds `singleOpenInterest`, "the single side". The model takes
one side (MODEL.md section 1), so heatsvc reads `singleOpenInterest`; an answer without it (older
deployments, testnet) gives half of `openInterest`, which is what "the sum of both sides" of
matched positions means. So `all:SYMBOL` aggregates never count Bybit twice.
An HTTP 403 ("access too frequent") is an IP ban of at least 10 minutes (docs/v5/rate-limit).
"""
from __future__ import annotations

import asyncio
import logging
import time

import httpx
import numpy as np

from ..model.bars import STEP_MS
from .base import (MALFORMED, ExchangeClient, ExchangeError, Listing, RateWindow, Retry, align_down, bar_time,
                   join_by_time, listed, number, windows)

log = logging.getLogger("heatsvc.exchanges")

KLINES_PER_CALL = 1000
OI_PER_CALL = 200
RATIO_PER_CALL = 500
MAX_PAGES = 50                 # cursor pages followed inside one window before giving up on it
RATE_LIMIT_CODES = {10006, 10018}
SERVER_CODES = {10000, 10016}


def one_side(row) -> float:
    """One side of a Bybit open-interest record: singleOpenInterest, else half of openInterest
    (documented as the sum of both sides)."""
    single = row.get("singleOpenInterest")
    if single is not None and single != "":
        return number(single)
    return number(row.get("openInterest")) / 2


def page(result) -> tuple[list, str | None]:
    """One page of a v5 statistics answer: its rows and the cursor of the next page."""
    return listed(result.get("list")), result.get("nextPageCursor")


class BybitClient(ExchangeClient):
    """Bybit v5 market REST for the linear category."""

    name = "bybit"
    default_base_url = "https://api.bybit.com"
    INSTRUMENTS_PER_CALL = 1000
    OI_CONVENTION = 2       # 1: openInterest as returned (both sides); 2: one side
    LEGACY_OI_FACTOR = 0.5
    BAN_FLOOR_S = 600.0    # "403, access too frequent": "wait for at least 10 minutes" (docs/v5/rate-limit)

    def __init__(self, base_url: str | None = None, *, requests_per_5s: int = 500, **kw):
        super().__init__(base_url, **kw)
        self.window = RateWindow(requests_per_5s, 5.0)   # Bybit: 600 requests / 5 s per IP
        self.paused_until = 0.0
        self.min_remaining: int | None = None            # lowest X-Bapi-Limit-Status seen (reporting)

    async def pace(self, path: str, weight: int) -> RateWindow:
        wait = self.paused_until - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        return await self.window.acquire()

    def observe(self, path: str, response: httpx.Response) -> None:
        remaining = response.headers.get("X-Bapi-Limit-Status")
        reset = response.headers.get("X-Bapi-Limit-Reset-Timestamp")
        if remaining is None or not remaining.isdigit():
            return
        self.min_remaining = int(remaining) if self.min_remaining is None else min(self.min_remaining, int(remaining))
        if int(remaining) <= 1 and reset is not None and reset.isdigit():
            wait = min(5.0, max(0.0, (int(reset) - time.time() * 1000) / 1000))
            self.paused_until = time.monotonic() + (wait or 1.0)

    def check_body(self, path: str, response: httpx.Response, body):
        if not isinstance(body, dict) or "retCode" not in body:
            if response.status_code != 200:
                raise ExchangeError(self.name, f"{path}: HTTP {response.status_code}", status=response.status_code)
            raise Retry(f"malformed envelope: {str(body)[:80]}")
        code = body["retCode"]
        if code == 0:
            result = body.get("result")
            if not isinstance(result, dict):
                raise Retry("malformed envelope: no result")
            return result
        if code in RATE_LIMIT_CODES:
            raise Retry(f"rate limited (retCode {code})")
        if code in SERVER_CODES:
            raise Retry(f"server error (retCode {code})")
        raise ExchangeError(self.name, f"{path}: retCode {str(code)[:20]}: {str(body.get('retMsg'))[:200]}",
                            status=response.status_code, code=code)

    async def list_perpetuals(self) -> list[Listing]:
        """LinearPerpetual instruments Trading and settled in USDT (instruments-info, 1,000 a page,
        following nextPageCursor), ranked by the tickers' turnover24h (USDT)."""
        def usdt_perpetuals(result) -> tuple[list[str], str | None]:
            rows, cursor = page(result)
            return [str(i["symbol"]) for i in rows if i.get("contractType") == "LinearPerpetual"
                    and i.get("status") == "Trading" and i.get("settleCoin", i.get("quoteCoin")) == "USDT"], cursor

        symbols, cursor = [], None
        for _ in range(MAX_PAGES):
            params = {"category": "linear", "limit": self.INSTRUMENTS_PER_CALL}
            if cursor:
                params["cursor"] = cursor
            found, cursor = await self.request("/v5/market/instruments-info", params, parse=usdt_perpetuals)
            symbols += found
            if not cursor:
                break
        turnover = await self.request("/v5/market/tickers", {"category": "linear"}, parse=lambda result: {
            str(t["symbol"]): number(t.get("turnover24h")) for t in listed(result.get("list"))})
        return [Listing(symbol, turnover.get(symbol, 0.0)) for symbol in symbols]

    async def check_symbol(self, symbol: str) -> None:
        statuses = await self.request("/v5/market/instruments-info", {"category": "linear", "symbol": symbol},
                                      parse=lambda result: [i.get("status", "Trading") for i in result.get("list", [])
                                                            if i.get("symbol") == symbol])
        if not statuses or statuses[0] != "Trading":
            raise ExchangeError(self.name, f"symbol {symbol!r} is not a trading linear contract")

    async def fetch_bars(self, symbol: str, start_ms: int, end_ms: int) -> dict[str, np.ndarray]:
        start = -(-int(start_ms) // STEP_MS) * STEP_MS
        end = int(end_ms)
        cols = {f: [] for f in ("time_ms", "open", "high", "low", "close", "volume", "quote_volume")}
        for a, b in windows(start, end, KLINES_PER_CALL):
            await self.request("/v5/market/kline", {"category": "linear", "symbol": symbol, "interval": "5",
                                                    "start": a, "end": b - 1, "limit": KLINES_PER_CALL},
                               parse=lambda result: self.parse_klines(symbol, result, cols))
        bars = self.bars(symbol, {**cols, "open_interest": np.full(len(cols["time_ms"]), np.nan)}, start, end)
        t = bars["time_ms"]
        if len(t) == 0:
            return bars
        lo, hi = int(t[0]), int(t[-1]) + STEP_MS
        oi_t, oi_v = await self.paged(symbol, "/v5/market/open-interest", {"intervalTime": "5min"}, lo, hi,
                                      OI_PER_CALL, one_side)
        ratio_t, ratio_v = await self.paged(symbol, "/v5/market/account-ratio", {"period": "5min"}, lo, hi,
                                            RATIO_PER_CALL, lambda r: number(r["buyRatio"]) / number(r["sellRatio"]))
        bars["open_interest"] = join_by_time(t, oi_t, oi_v)
        bars["long_short_ratio"] = join_by_time(t, ratio_t, ratio_v)
        return self.drop_invalid(symbol, bars)

    async def fetch_live(self, symbol: str) -> tuple[dict[str, np.ndarray], float, float]:
        def values(tick) -> tuple[float, float] | None:
            ticker = next((x for x in tick.get("list", []) if x.get("symbol") == symbol), None)
            return None if ticker is None else (one_side(ticker),
                                                number(ticker.get("markPrice") or ticker.get("lastPrice")))

        cols = {f: [] for f in ("time_ms", "open", "high", "low", "close", "volume", "quote_volume")}
        await self.request("/v5/market/kline", {"category": "linear", "symbol": symbol, "interval": "5", "limit": 1},
                           parse=lambda result: self.parse_klines(symbol, result, cols))
        ticker = await self.request("/v5/market/tickers", {"category": "linear", "symbol": symbol}, parse=values)
        if ticker is None:
            raise ExchangeError(self.name, f"/v5/market/tickers: no ticker for {symbol}")
        open_interest, price = ticker
        return self.forming_bar(symbol, cols, open_interest), open_interest, price

    def parse_klines(self, symbol: str, result, cols: dict[str, list]) -> None:
        """Append rows [startTime, open, high, low, close, volume, turnover] (strings) to the columns."""
        for r in listed(result.get("list")):
            try:
                values = (bar_time(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]), float(r[5]),
                          number(r[6]))
            except MALFORMED as exc:
                self.reject(symbol, None, "kline", f"unparsable ({exc})")
                continue
            for f, v in zip(cols, values):
                cols[f].append(v)

    async def paged(self, symbol: str, path: str, extra: dict, start: int, end: int, per_call: int, value):
        """(bar times, values) of a statistics endpoint for bars in [start, end): one request per window
        of snapshot times, following nextPageCursor (anchored on the window's endTime) until it is empty."""
        ts, vs = [], []
        for a, b in windows(start, end, per_call):
            params = {"category": "linear", "symbol": symbol, **extra, "startTime": a + STEP_MS,
                      "endTime": b + STEP_MS - 1, "limit": per_call}
            for _ in range(MAX_PAGES):
                rows, cursor = await self.request(path, params, parse=page)
                for r in rows:
                    try:
                        t, v = align_down(bar_time(r["timestamp"])) - STEP_MS, value(r)
                    except MALFORMED as exc:
                        self.reject(symbol, None, path.rsplit("/", 1)[-1], f"unparsable ({exc})")
                        continue
                    ts.append(t)
                    vs.append(v)
                if not rows or not cursor:
                    break
                params = {**params, "cursor": cursor}
        return ts, vs
