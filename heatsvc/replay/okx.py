"""The replay's OKX v5 dialect, instType=SWAP (www.okx.com): candles and history-candles (up to 300
rows), rubik statistics (latest entries only, limits per instrument), open interest, mark price,
instrument records with ctVal and ctMult, string codes with 50011 (HTTP 429) for rate limits."""
from __future__ import annotations

import time

import numpy as np

from .scenario import Series, num
from .wire import BadRequest, Dialect, Reply, Request

# Contract sizes (ctVal, base coin per contract) the replay's instruments declare; other coins get 1.
CT_VAL = {"BTC": 0.01, "ETH": 0.1, "SOL": 1.0, "HYPE": 0.1}


class OkxDialect(Dialect):
    """OKX v5 public REST for swaps."""

    name = "okx"

    def rate_limited(self, until_s: float) -> Reply:
        return Reply(429, {"msg": "Too Many Requests", "code": "50011"}, {"X-Replay-Limited": "1"})

    def handle(self, req: Request, applies: bool) -> Reply:
        routes = {
            "/api/v5/market/candles": lambda r, a: self.candles(r, a, recent=True),
            "/api/v5/market/history-candles": lambda r, a: self.candles(r, a, recent=False),
            "/api/v5/rubik/stat/contracts/open-interest-history": self.oi_history,
            "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader": self.ratio,
            "/api/v5/public/open-interest": self.open_interest,
            "/api/v5/public/mark-price": self.mark_price,
            "/api/v5/public/instruments": self.instruments,
            "/api/v5/market/ticker": self.ticker,
            "/api/v5/market/tickers": self.tickers,
            "/api/v5/public/time": lambda r, a: okx_data([{"ts": str(self.now_ms())}]),
        }
        handler = routes.get(req.path)
        if handler is None:
            return Reply(404, {"msg": "", "code": "50030", "data": []})
        rule = self.limits.okx_requests.get(req.path)
        if rule is not None:
            count, window_s = rule
            with self.rx.lock:
                # Trading statistics are limited per IP and instrument, the rest per IP.
                key = ("okx", req.path, req.get("instId") if "/rubik/" in req.path else None)
                used, reset = self.rx.windows.add(key, 1, window_s, time.time())
            if used > count:
                return self.rate_limited(reset)
        try:
            return handler(req, applies)
        except BadRequest as exc:
            return exc.reply

    def requested(self, req: Request) -> tuple[Series, str]:
        inst_id = req.get("instId")
        if inst_id is None:
            raise BadRequest(Reply(400, {"code": "50014", "data": [], "msg": "instId cannot be empty"}))
        for sym in self.symbols():
            if okx_inst_id(sym) == inst_id:
                return self.series(sym), sym
        raise BadRequest(okx_error("51001", "Instrument ID, Instrument ID code, or Spread ID doesn't exist."))

    def window(self, req: Request, times: np.ndarray, n: int, lo_param: str, hi_param: str,
                    max_limit: int, recent: bool) -> range:
        """Newest-first rows of times[:n] strictly between the `before`/`begin` and `after`/`end` bounds."""
        limit = okx_int(req, "limit", 100, max_limit)
        newer, older = okx_int(req, lo_param), okx_int(req, hi_param)
        lo = 0 if newer is None else int(np.searchsorted(times[:n], newer, "right"))
        hi = n if older is None else int(np.searchsorted(times[:n], older, "left"))
        if recent:
            lo = max(lo, n - self.limits.okx_recent_entries)
        return range(hi - 1, max(lo, hi - limit) - 1, -1)

    def candles(self, req: Request, applies: bool, recent: bool) -> Reply:
        s, sym = self.requested(req)
        if (req.get("bar") or "1m") != "5m":
            raise BadRequest(okx_error("51000", "Parameter bar error", status=400))
        now = self.now_ms()
        ct = okx_ct_val(sym)
        out = []
        for i in self.window(req, s.t, s.visible(now), "before", "after", 300, recent):
            b = s.bar(i, now)
            out.append([str(b.time_ms), num(b.open), num(b.high), num(b.low), num(b.close),
                        num(b.volume / ct, 4), num(b.volume), num(b.quote_volume), "1" if b.closed else "0"])
        return okx_data(self.perturb(out, applies))

    def stat_period(self, req: Request) -> None:
        if (req.get("period") or "5m") != "5m":
            raise BadRequest(okx_error("51000", "Parameter period error", status=400))

    def oi_history(self, req: Request, applies: bool) -> Reply:
        s, sym = self.requested(req)
        self.stat_period(req)
        now = self.now_ms()
        n = int(np.searchsorted(s.oi_snap, now, "right"))
        ct = okx_ct_val(sym)
        out = []
        for k in self.window(req, s.oi_snap, n, "begin", "end", 100, True):
            i = int(s.oi_rows[k])
            oi = float(s.oi[i])
            out.append([str(int(s.oi_snap[k])), num(oi / ct, 4), num(oi), num(oi * float(s.c[i]), 4)])
        return okx_data(self.perturb(out, applies))

    def ratio(self, req: Request, applies: bool) -> Reply:
        s, _ = self.requested(req)
        self.stat_period(req)
        now = self.now_ms()
        n = int(np.searchsorted(s.ratio_snap, now, "right"))
        out = [[str(int(s.ratio_snap[k])), num(float(s.ratio[s.ratio_rows[k]]), 4)]
               for k in self.window(req, s.ratio_snap, n, "begin", "end", 100, True)]
        return okx_data(self.perturb(out, applies))

    def swaps(self, req: Request) -> list[tuple[Series, str]]:
        """The instruments an instType=SWAP query with optional instId covers."""
        inst_type = req.get("instType")
        if inst_type is None:
            raise BadRequest(Reply(400, {"code": "50014", "data": [], "msg": "instType cannot be empty"}))
        if inst_type != "SWAP":
            return []
        if req.get("instId") is not None:
            return [self.requested(req)]
        return [(self.series(sym), sym) for sym in self.symbols()]

    def open_interest(self, req: Request, applies: bool) -> Reply:
        now = self.now_ms()
        out = []
        for s, sym in self.swaps(req):
            oi = s.open_interest(now) or 0.0
            out.append({"instType": "SWAP", "instId": okx_inst_id(sym), "oi": num(oi / okx_ct_val(sym), 4),
                        "oiCcy": num(oi), "oiUsd": num(oi * (s.price(now) or 0.0), 4), "ts": str(now)})
        return okx_data(out)

    def mark_price(self, req: Request, applies: bool) -> Reply:
        now = self.now_ms()
        return okx_data([{"instType": "SWAP", "instId": okx_inst_id(sym), "markPx": num(s.price(now) or 0.0),
                          "ts": str(now)} for s, sym in self.swaps(req)])

    def instruments(self, req: Request, applies: bool) -> Reply:
        out = []
        for s, sym in self.swaps(req):
            base = sym[:-4]
            out.append({"instType": "SWAP", "instId": okx_inst_id(sym), "uly": f"{base}-USDT",
                        "instFamily": f"{base}-USDT", "baseCcy": "", "quoteCcy": "", "settleCcy": "USDT",
                        "ctVal": f"{okx_ct_val(sym):g}", "ctMult": "1", "ctValCcy": base, "ctType": "linear",
                        "listTime": str(s.first_ms), "expTime": "", "lever": "100", "tickSz": "0.00000001",
                        "lotSz": "0.01", "minSz": "0.01", "state": "live"})
        return okx_data(out)

    def ticker(self, req: Request, applies: bool) -> Reply:
        s, sym = self.requested(req)
        return okx_data([self.ticker_record(s, sym)])

    def tickers(self, req: Request, applies: bool) -> Reply:
        """Every swap's ticker (instType=SWAP)."""
        if req.get("instType") is None:
            raise BadRequest(Reply(400, {"code": "50014", "data": [], "msg": "instType cannot be empty"}))
        swaps = [(self.series(sym), sym) for sym in self.symbols()] if req.get("instType") == "SWAP" else []
        return okx_data([self.ticker_record(s, sym) for s, sym in swaps])

    def ticker_record(self, s: Series, sym: str) -> dict:
        now = self.now_ms()
        price = s.price(now) or 0.0
        st = s.stats_24h(now)
        return {"instType": "SWAP", "instId": okx_inst_id(sym), "last": num(price), "lastSz": "1",
                "askPx": num(price), "askSz": "1", "bidPx": num(price), "bidSz": "1",
                "open24h": num(st["open"]), "high24h": num(st["high"]), "low24h": num(st["low"]),
                "volCcy24h": num(st["volume"]), "vol24h": num(st["volume"] / okx_ct_val(sym), 4),
                "ts": str(now), "sodUtc0": num(st["open"]), "sodUtc8": num(st["open"])}


def okx_inst_id(symbol: str) -> str:
    """OKX perpetual swap instrument id of a USDT symbol: BTCUSDT -> BTC-USDT-SWAP."""
    return f"{symbol[:-4]}-USDT-SWAP" if symbol.endswith("USDT") else f"{symbol}-SWAP"


def okx_ct_val(symbol: str) -> float:
    """Base coin per OKX contract."""
    return CT_VAL.get(symbol[:-4] if symbol.endswith("USDT") else symbol, 1.0)


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
