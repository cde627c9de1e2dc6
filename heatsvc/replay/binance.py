"""The replay's Binance USD-M futures dialect (fapi.binance.com): klines, open interest and its
statistics (30 days deep), mark price, exchangeInfo with contract types, request weights with
X-MBX-USED-WEIGHT-1M, 429 + Retry-After, then a 418 ban stating its end, and -1008 throttles."""
from __future__ import annotations

import time

import numpy as np

from ..model.bars import STEP_MS
from .scenario import DAY_MS, Series, num
from .wire import BadRequest, Dialect, Reply, Request, retry_after

# Listed but not served (no data): how exchangeInfo shows contracts heatsvc must skip.
UNSERVED_LISTINGS = (("XAUUSDT", "TRADIFI_PERPETUAL"), ("BTCUSDT_261225", "CURRENT_QUARTER"))


def listing(symbol: str, contract_type: str, onboard_ms: int) -> dict:
    """One exchangeInfo symbol record."""
    base = symbol.split("_")[0][:-4]
    return {"symbol": symbol, "pair": symbol.split("_")[0], "contractType": contract_type,
            "deliveryDate": 4133404800000, "onboardDate": onboard_ms, "status": "TRADING", "baseAsset": base,
            "quoteAsset": "USDT", "marginAsset": "USDT", "pricePrecision": 8, "quantityPrecision": 3,
            "baseAssetPrecision": 8, "quotePrecision": 8,
            "underlyingType": "TRADIFI" if contract_type == "TRADIFI_PERPETUAL" else "COIN", "filters": [
                {"filterType": "PRICE_FILTER", "minPrice": "0.00000001", "maxPrice": "10000000",
                 "tickSize": "0.00000001"},
                {"filterType": "LOT_SIZE", "minQty": "0.001", "maxQty": "1000000", "stepSize": "0.001"}],
            "orderTypes": ["LIMIT", "MARKET"], "timeInForce": ["GTC", "IOC", "FOK", "GTX"]}


def throttled(as_400: bool) -> Reply:
    """-1008, system-level protection: HTTP 503 or 400 (recorded body, banbox/banbot#114)."""
    return Reply(400 if as_400 else 503, {"code": -1008, "msg": "Server is currently overloaded with other "
                                                                 "requests. Please try again in a few minutes."},
                 {"X-Replay-Limited": "1"})


class BinanceDialect(Dialect):
    """Binance USD-M futures REST."""

    name = "binance"

    def banned(self, until_s: float) -> Reply:
        return Reply(418, {"code": -1003, "msg": f"Way too much request weight used; IP banned until "
                                                 f"{int(until_s * 1000)}. Please use the websocket for live "
                                                 f"updates to avoid bans."},
                     {"Retry-After": retry_after(until_s, time.time()), "X-Replay-Limited": "1"})

    def rate_limited(self, until_s: float) -> Reply:
        return Reply(429, {"code": -1003, "msg": f"Too many requests; current limit of IP(127.0.0.1) is "
                                                 f"{self.limits.binance_weight} requests per minute. Please use "
                                                 f"the websocket for live updates to avoid polling the API."},
                     {"Retry-After": retry_after(until_s, time.time()), "X-Replay-Limited": "1"})

    def handle(self, req: Request, applies: bool) -> Reply:
        routes = {
            "/fapi/v1/klines": (self.klines, None),
            "/fapi/v1/openInterest": (self.open_interest, 1),
            "/fapi/v1/premiumIndex": (self.premium_index, 1),
            "/fapi/v1/exchangeInfo": (self.exchange_info, 1),
            "/fapi/v1/ticker/24hr": (self.ticker_24hr, None),
            "/fapi/v1/time": (self.server_time, 1),
            "/fapi/v1/ping": (lambda r, a: Reply(200, {}), 1),
            "/futures/data/openInterestHist": (self.oi_hist, 0),
            "/futures/data/topLongShortPositionRatio": (self.ratio_hist, 0),
        }
        route = routes.get(req.path)
        if route is None:
            return Reply(404, raw=b"<html><body><h1>404 Not Found</h1></body></html>", content_type="text/html")
        handler, weight = route
        if applies and self.rx.draw_fault(self.rx.faults.rate_1008):
            return throttled(self.rx.draw_fault(0.5))
        if weight is None and req.path == "/fapi/v1/ticker/24hr":
            weight = 1 if req.get("symbol") else 40
        elif weight is None:  # klines: weight by limit
            try:
                limit = binance_int(req, "limit") or 500
            except BadRequest as exc:
                return exc.reply
            weight = 1 if limit < 100 else 2 if limit < 500 else 5 if limit <= 1000 else 10
        limits = self.limits
        now = time.time()
        with self.rx.lock:
            banned_until = self.rx.bans.get("binance", 0.0)
            if banned_until > now:
                return self.banned(banned_until)
            used, reset = self.rx.windows.add("binance-weight", weight, limits.binance_window_s, now)
            data_used, data_reset = (self.rx.windows.add("binance-data", 1, limits.binance_data_window_s, now)
                                     if req.path.startswith("/futures/data/") else (0, 0))
            limited = used > limits.binance_weight or data_used > limits.binance_data_requests
            if limited:
                strikes, _ = self.rx.strikes.add("429", 1, limits.binance_window_s, now)
                if strikes > limits.binance_ban_after:
                    self.rx.bans["binance"] = now + limits.binance_ban_s
                    return self.banned(now + limits.binance_ban_s)
        headers = {"X-MBX-USED-WEIGHT-1M": str(int(used))}
        if limited:
            reply = self.rate_limited(reset if used > limits.binance_weight else data_reset)
        else:
            try:
                reply = handler(req, applies)
            except BadRequest as exc:
                reply = exc.reply
        reply.headers.update(headers)
        return reply

    def requested(self, req: Request) -> Series:
        symbol = binance_required(req, "symbol")
        s = self.series(symbol)
        if s is None:
            raise BadRequest(binance_error(-1121, "Invalid symbol."))
        return s

    def klines(self, req: Request, applies: bool) -> Reply:
        s = self.requested(req)
        if binance_required(req, "interval") != "5m":
            raise BadRequest(binance_error(-1120, "Invalid interval."))
        limit = binance_limit(req, default=500, top=1500)
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
        return Reply(200, self.perturb(out, applies))

    def history(self, req: Request, snaps: np.ndarray) -> np.ndarray:
        """Shared paging of the /futures/data statistics: the latest `limit` snapshots of the range."""
        if binance_required(req, "period") != "5m":
            raise BadRequest(binance_error(-1130, "parameter 'period' is invalid."))
        limit = binance_limit(req, default=30, top=500)
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

    def oi_hist(self, req: Request, applies: bool) -> Reply:
        s = self.requested(req)
        picks = self.history(req, s.oi_snap)
        out = []
        for k in picks:
            i = int(s.oi_rows[k])
            oi = float(s.oi[i])
            out.append({"symbol": s.market.split(":")[1], "sumOpenInterest": num(oi),
                        "sumOpenInterestValue": num(oi * float(s.c[i])), "CMCCirculatingSupply": "0",
                        "timestamp": int(s.oi_snap[k])})
        return Reply(200, self.perturb(out, applies))

    def ratio_hist(self, req: Request, applies: bool) -> Reply:
        s = self.requested(req)
        picks = self.history(req, s.ratio_snap)
        out = []
        for k in picks:
            r = float(s.ratio[s.ratio_rows[k]])
            out.append({"symbol": s.market.split(":")[1], "longShortRatio": num(r, 4),
                        "longAccount": num(r / (1 + r), 4), "shortAccount": num(1 / (1 + r), 4),
                        "timestamp": int(s.ratio_snap[k])})
        return Reply(200, self.perturb(out, applies))

    def open_interest(self, req: Request, applies: bool) -> Reply:
        s = self.requested(req)
        now = self.now_ms()
        oi = s.open_interest(now)
        return Reply(200, {"symbol": s.market.split(":")[1], "openInterest": num(oi or 0.0, 3), "time": now})

    def ticker_24hr(self, req: Request, applies: bool) -> Reply:
        """24 h statistics per symbol (all symbols without ?symbol=)."""
        symbol = req.get("symbol")
        if symbol is not None and self.series(symbol) is None:
            raise BadRequest(binance_error(-1121, "Invalid symbol."))
        now = self.now_ms()
        out = []
        for sym in [symbol] if symbol else self.symbols():
            s = self.series(sym)
            st, price = s.stats_24h(now), s.price(now) or 0.0
            out.append({"symbol": sym, "priceChange": num(price - st["open"]), "lastPrice": num(price),
                        "openPrice": num(st["open"]), "highPrice": num(st["high"]), "lowPrice": num(st["low"]),
                        "volume": num(st["volume"], 3), "quoteVolume": num(st["quote"], 2),
                        "openTime": now - DAY_MS, "closeTime": now})
        return Reply(200, out[0] if symbol else out)

    def premium_index(self, req: Request, applies: bool) -> Reply:
        now = self.now_ms()
        symbol = req.get("symbol")
        symbols = [symbol] if symbol else self.symbols()
        out = []
        for sym in symbols:
            s = self.series(sym)
            if s is None:
                raise BadRequest(binance_error(-1121, "Invalid symbol."))
            price = s.price(now) or 0.0
            out.append({"symbol": sym, "markPrice": num(price), "indexPrice": num(price),
                        "estimatedSettlePrice": num(price), "lastFundingRate": "0.00010000",
                        "interestRate": "0.00010000", "nextFundingTime": (now // (8 * 3_600_000) + 1) * 8 * 3_600_000,
                        "time": now})
        return Reply(200, out[0] if symbol else out)

    def exchange_info(self, req: Request, applies: bool) -> Reply:
        # Like the real USD-M endpoint, ?symbol= is ignored: every symbol is listed.
        symbols = [listing(sym, "PERPETUAL", self.series(sym).first_ms) for sym in self.symbols()]
        symbols += [listing(sym, kind, self.now_ms()) for sym, kind in UNSERVED_LISTINGS]
        limits = self.limits
        return Reply(200, {"timezone": "UTC", "serverTime": self.now_ms(), "futuresType": "U_MARGINED",
                           "rateLimits": [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1,
                                           "limit": limits.binance_weight},
                                          {"rateLimitType": "ORDERS", "interval": "MINUTE", "intervalNum": 1,
                                           "limit": 1200}],
                           "exchangeFilters": [], "assets": [], "symbols": symbols})

    def server_time(self, req: Request, applies: bool) -> Reply:
        return Reply(200, {"serverTime": self.now_ms()})


def binance_error(code: int, msg: str, status: int = 400) -> Reply:
    return Reply(status, {"code": code, "msg": msg})


def binance_required(req: Request, name: str) -> str:
    value = req.get(name)
    if value is None:
        raise BadRequest(binance_error(-1102, f"Mandatory parameter '{name}' was not sent, was empty/null, "
                                              f"or malformed."))
    return value


def binance_limit(req: Request, *, default: int, top: int) -> int:
    """The `limit` parameter: `default` when absent, -1130 outside [1, top]."""
    limit = binance_int(req, "limit")
    limit = default if limit is None else limit
    if not 1 <= limit <= top:
        raise BadRequest(binance_error(-1130, "Data sent for parameter 'limit' is not valid."))
    return limit


def binance_int(req: Request, name: str) -> int | None:
    value = req.get(name)
    if value is None:
        return None
    if not (value.isdigit() and len(value) <= 20):
        raise BadRequest(binance_error(-1100, f"Illegal characters found in parameter '{name}'; legal range is "
                                              f"'^[0-9]{{1,20}}$'."))
    return int(value)
