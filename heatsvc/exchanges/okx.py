"""OKX v5, USDT-margined perpetual swaps: history candles, contract open-interest history and the
top traders' long/short position ratio.

Answers come in the envelope {code, msg, data} with string codes; errors often arrive with HTTP
200. Candles are newest first and `confirm` is "0" on the forming bar. Volumes and open interest
are taken in the base currency (volCcy, oiCcy), not in contracts; where an answer lacks them, contracts
are converted with the instrument's ctVal x ctMult read from /api/v5/public/instruments (never
hard-coded). Symbols are written the Binance
way (BTCUSDT) and mapped to OKX instrument ids (BTC-USDT-SWAP). A statistics row stamped X is the
snapshot at the END of the bar opening at X - 5 min. OKX keeps only the latest 1,440 statistics
rows, so older bars have no open interest here; paging stops at the first empty page.
"""
from __future__ import annotations

import httpx
import numpy as np

from ..model.bars import STEP_MS
from .base import (MALFORMED, ExchangeClient, ExchangeError, Listing, RateWindow, Retry, align_down, bar_time,
                   join_by_time, number, windows)

CANDLES_PER_CALL = 300         # history-candles answers up to 300 rows per request
STATS_PER_CALL = 100
QUOTES = ("USDT", "USDC", "USD")
RATE_LIMIT_CODES = {"50011", "50061"}
SERVER_CODES = {"50001", "50004", "50013", "50026"}
# Per-endpoint limits (requests per 2 s, per IP) from OKX's reference, a little under the edge.
LIMITS = {
    "/api/v5/market/history-candles": 18,
    "/api/v5/rubik/stat/contracts/open-interest-history": 9,
    "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader": 4,
    "/api/v5/public/open-interest": 18,
    "/api/v5/public/mark-price": 9,
    "/api/v5/public/instruments": 18,
    "/api/v5/market/tickers": 18,
}
OI_PATH = "/api/v5/rubik/stat/contracts/open-interest-history"
RATIO_PATH = "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader"


def inst_id(symbol: str) -> str:
    """OKX swap instrument id of a symbol: BTCUSDT -> BTC-USDT-SWAP."""
    for quote in QUOTES:
        if symbol.endswith(quote) and len(symbol) > len(quote):
            return f"{symbol[:-len(quote)]}-{quote}-SWAP"
    raise ExchangeError("okx", f"symbol {symbol!r} does not end in a known quote currency ({', '.join(QUOTES)})")


def contract_size(instrument: dict) -> float:
    """Base units per contract of an OKX instrument record: ctVal x ctMult (ValueError if absent)."""
    size = float(instrument["ctVal"]) * float(instrument.get("ctMult") or 1)
    if not size > 0:
        raise ValueError(f"{instrument.get('instId')}: ctVal x ctMult = {size} is not positive")
    return size


class OkxClient(ExchangeClient):
    """OKX v5 public REST for perpetual swaps."""

    name = "okx"
    default_base_url = "https://www.okx.com"

    def __init__(self, base_url: str | None = None, *, limits: dict[str, int] | None = None, **kw):
        super().__init__(base_url, **kw)
        self.windows = {path: RateWindow(n, 2.0) for path, n in {**LIMITS, **(limits or {})}.items()}
        self.contract_size: dict[str, float] = {}   # symbol -> base units per contract (ctVal x ctMult)

    async def pace(self, path: str, weight: int) -> RateWindow | None:
        window = self.windows.get(path)
        return None if window is None else await window.acquire()

    def check_body(self, path: str, response: httpx.Response, body):
        if not isinstance(body, dict) or "code" not in body:
            if response.status_code != 200:
                raise ExchangeError(self.name, f"{path}: HTTP {response.status_code}", status=response.status_code)
            raise Retry(f"malformed envelope: {str(body)[:80]}")
        code = str(body["code"])
        if code == "0":
            data = body.get("data")
            if not isinstance(data, list):
                raise Retry("malformed envelope: data is not a list")
            return data
        if code in RATE_LIMIT_CODES:
            raise Retry(f"rate limited (code {code})")
        if code in SERVER_CODES:
            raise Retry(f"server error (code {code})")
        raise ExchangeError(self.name, f"{path}: code {code[:20]}: {str(body.get('msg'))[:200]}",
                            status=response.status_code, code=code)

    async def list_perpetuals(self) -> list[Listing]:
        """Live linear SWAP instruments settled in USDT, with their contract sizes, ranked by the 24 h
        quote volume of /api/v5/market/tickers (volCcy24h, base, x last)."""
        def usdt_swaps(data) -> dict[str, float]:
            return {str(d["instId"])[:-len("-SWAP")].replace("-", ""): contract_size(d) for d in data
                    if d.get("state") == "live" and d.get("ctType") == "linear"
                    and str(d.get("instId", "")).endswith("-USDT-SWAP")}

        sizes = await self.request("/api/v5/public/instruments", {"instType": "SWAP"}, parse=usdt_swaps)
        volumes = await self.request("/api/v5/market/tickers", {"instType": "SWAP"}, parse=lambda rows: {
            str(t["instId"])[:-len("-SWAP")].replace("-", ""): number(t.get("volCcy24h")) * number(t.get("last"))
            for t in rows})
        self.contract_size.update(sizes)
        return [Listing(symbol, volumes.get(symbol, 0.0)) for symbol in sizes]

    async def check_symbol(self, symbol: str) -> None:
        inst = inst_id(symbol)

        def record(data) -> tuple[str, float] | None:   # (state, contract size), read inside the answer
            found = next((d for d in data if d.get("instId") == inst), None)
            return None if found is None else (found.get("state", "live"), contract_size(found))

        try:
            found = await self.request("/api/v5/public/instruments", {"instType": "SWAP", "instId": inst},
                                       parse=record)
        except ExchangeError as exc:
            raise ExchangeError(self.name, f"symbol {symbol!r} ({inst}): {exc}", code=exc.code) from None
        if found is None or found[0] != "live":
            raise ExchangeError(self.name, f"symbol {symbol!r} ({inst}) is not a live swap")
        self.contract_size[symbol] = found[1]

    async def fetch_bars(self, symbol: str, start_ms: int, end_ms: int) -> dict[str, np.ndarray]:
        inst = inst_id(symbol)
        start = -(-int(start_ms) // STEP_MS) * STEP_MS
        end = int(end_ms)
        cols = {f: [] for f in ("time_ms", "open", "high", "low", "close", "volume", "quote_volume")}
        for a, b in windows(start, end, CANDLES_PER_CALL):
            data = await self.request("/api/v5/market/history-candles", {"instId": inst, "bar": "5m", "after": b,
                                                                          "before": a - 1, "limit": CANDLES_PER_CALL})
            self.parse_candles(symbol, data, cols, closed_only=True)
        bars = self.bars(symbol, {**cols, "open_interest": np.full(len(cols["time_ms"]), np.nan)}, start, end)
        t = bars["time_ms"]
        if len(t) == 0:
            return bars
        lo, hi = int(t[0]), int(t[-1]) + STEP_MS
        oi_t, oi_v = await self.stats(symbol, OI_PATH, lo, hi, lambda r: self.base_units(symbol, r[2], r[1]))
        ratio_t, ratio_v = await self.stats(symbol, RATIO_PATH, lo, hi, lambda r: number(r[1]))
        bars["open_interest"] = join_by_time(t, oi_t, oi_v)
        bars["long_short_ratio"] = join_by_time(t, ratio_t, ratio_v)
        return self.drop_invalid(symbol, bars)

    async def fetch_live(self, symbol: str) -> tuple[dict[str, np.ndarray], float, float]:
        inst = inst_id(symbol)
        data = await self.request("/api/v5/market/history-candles", {"instId": inst, "bar": "5m", "limit": 1})
        open_interest = await self.request("/api/v5/public/open-interest", {"instType": "SWAP", "instId": inst},
                                           parse=lambda oi: self.base_units(symbol, oi[0].get("oiCcy"), oi[0].get("oi"))
                                           if oi else float("nan"))
        price = await self.request("/api/v5/public/mark-price", {"instType": "SWAP", "instId": inst},
                                   parse=lambda mark: number(mark[0].get("markPx")) if mark else float("nan"))
        cols = {f: [] for f in ("time_ms", "open", "high", "low", "close", "volume", "quote_volume")}
        self.parse_candles(symbol, data, cols, closed_only=False)
        return self.forming_bar(symbol, cols, open_interest), open_interest, price

    def base_units(self, symbol: str, in_base, in_contracts) -> float:
        """A size in base units: the answer's base-currency figure, else contracts x the instrument's
        ctVal x ctMult (known once check_symbol has read the instrument)."""
        value = number(in_base)
        if value == value or symbol not in self.contract_size:
            return value
        return number(in_contracts) * self.contract_size[symbol]

    def parse_candles(self, symbol: str, data, cols: dict[str, list], *, closed_only: bool) -> None:
        """Append rows [ts, o, h, l, c, vol (contracts), volCcy (base), volCcyQuote, confirm]."""
        for r in data:
            try:
                if closed_only and str(r[8]) != "1":
                    continue
                values = (bar_time(r[0]), float(r[1]), float(r[2]), float(r[3]), float(r[4]),
                          self.base_units(symbol, r[6], r[5]), number(r[7]))
            except MALFORMED as exc:
                self.reject(symbol, None, "candle", f"unparsable ({exc})")
                continue
            for f, v in zip(cols, values):
                cols[f].append(v)

    async def stats(self, symbol: str, path: str, start: int, end: int, value):
        """(bar times, values) of a rubik statistics endpoint for bars in [start, end), newest window
        first; stops at the first empty window (OKX keeps only its latest rows)."""
        ts, vs = [], []
        for a, b in reversed(windows(start, end, STATS_PER_CALL)):
            data = await self.request(path, {"instId": inst_id(symbol), "period": "5m", "begin": a + STEP_MS - 1,
                                             "end": b + STEP_MS, "limit": STATS_PER_CALL})
            if not data:
                break
            for r in data:
                try:
                    t, v = align_down(bar_time(r[0])) - STEP_MS, value(r)
                except MALFORMED as exc:
                    self.reject(symbol, None, path.rsplit("/", 1)[-1], f"unparsable ({exc})")
                    continue
                ts.append(t)
                vs.append(v)
        return ts, vs
