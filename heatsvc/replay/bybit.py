"""The replay's Bybit v5 dialect, category=linear (api.bybit.com): klines, open interest (both
sides in openInterest, one side in singleOpenInterest), account ratio, tickers, instruments with
cursor paging, the {retCode, retMsg, result} envelope with X-Bapi-Limit headers, retCode 10006, and
the IP limit's "403, access too frequent" ban of at least 10 minutes."""
from __future__ import annotations

import time

import numpy as np

from .scenario import Series, num
from .wire import BadRequest, Dialect, Reply, Request


class BybitDialect(Dialect):
    """Bybit v5 market REST."""

    name = "bybit"

    def banned(self, until_s: float) -> Reply:
        return Reply(403, raw=b"403 Forbidden: access too frequent", content_type="text/plain",
                     headers={"X-Replay-Limited": "1"})

    def rate_limited(self, until_s: float) -> Reply:
        reply = bybit_envelope({}, 10006, "Too many visits!")
        reply.payload["time"] = self.now_ms()  # type: ignore[index]
        reply.headers.update({"X-Bapi-Limit": str(self.limits.bybit_requests), "X-Bapi-Limit-Status": "0",
                              "X-Bapi-Limit-Reset-Timestamp": str(int(until_s * 1000)), "X-Replay-Limited": "1"})
        return reply

    def handle(self, req: Request, applies: bool) -> Reply:
        routes = {
            "/v5/market/kline": self.kline,
            "/v5/market/open-interest": self.open_interest,
            "/v5/market/account-ratio": self.account_ratio,
            "/v5/market/tickers": self.tickers,
            "/v5/market/instruments-info": self.instruments,
            "/v5/market/time": self.server_time,
        }
        handler = routes.get(req.path)
        if handler is None:
            return Reply(404, raw=b"404 page not found", content_type="text/plain")
        now = time.time()
        limits = self.limits
        with self.rx.lock:
            banned_until = self.rx.bans.get("bybit", 0.0)
            if banned_until > now:
                return self.banned(banned_until)
            used, reset = self.rx.windows.add("bybit", 1, limits.bybit_window_s, now)
            if used > limits.bybit_requests:   # the IP limit: "403, access too frequent", 10 minutes at least
                self.rx.bans["bybit"] = now + limits.bybit_ban_s
                return self.banned(now + limits.bybit_ban_s)
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

    def requested(self, req: Request, category_required: bool = True) -> Series:
        category = req.get("category")
        if category is None and category_required:
            raise BadRequest(bybit_envelope({}, 10001, "params error: category is required"))
        if category not in (None, "linear"):
            raise BadRequest(bybit_envelope({}, 10001, "Not supported symbols"))
        symbol = req.get("symbol")
        if symbol is None:
            raise BadRequest(bybit_envelope({}, 10001, "params error: symbol is required"))
        s = self.series(symbol)
        if s is None:
            raise BadRequest(bybit_envelope({}, 10001, "Not supported symbols"))
        return s

    def kline(self, req: Request, applies: bool) -> Reply:
        s = self.requested(req, category_required=False)
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
                               "list": self.perturb(out, applies)})

    def paged(self, req: Request, snaps: np.ndarray, default_limit: int,
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

    def open_interest(self, req: Request, applies: bool) -> Reply:
        s = self.requested(req)
        if bybit_required(req, "intervalTime") != "5min":
            raise BadRequest(bybit_envelope({}, 10001, "params error: intervalTime invalid"))
        picks, cursor = self.paged(req, s.oi_snap, 50, 200)
        rows = [{"openInterest": num(2 * float(s.oi[s.oi_rows[k]])),   # "the sum of both sides"
                 "singleOpenInterest": num(float(s.oi[s.oi_rows[k]])), "timestamp": str(int(s.oi_snap[k]))}
                for k in picks]
        return bybit_envelope({"symbol": s.market.split(":")[1], "category": "linear",
                               "list": self.perturb(rows, applies), "nextPageCursor": cursor})

    def account_ratio(self, req: Request, applies: bool) -> Reply:
        s = self.requested(req)
        if bybit_required(req, "period") != "5min":
            raise BadRequest(bybit_envelope({}, 10001, "params error: period invalid"))
        picks, cursor = self.paged(req, s.ratio_snap, 50, 500)
        sym = s.market.split(":")[1]
        rows = []
        for k in picks:
            r = float(s.ratio[s.ratio_rows[k]])
            rows.append({"symbol": sym, "buyRatio": num(r / (1 + r), 4), "sellRatio": num(1 / (1 + r), 4),
                         "timestamp": str(int(s.ratio_snap[k]))})
        return bybit_envelope({"list": self.perturb(rows, applies), "nextPageCursor": cursor})

    def tickers(self, req: Request, applies: bool) -> Reply:
        if bybit_required(req, "category") != "linear":
            raise BadRequest(bybit_envelope({}, 10001, "Not supported symbols"))
        symbol = req.get("symbol")
        if symbol is not None and self.series(symbol) is None:
            raise BadRequest(bybit_envelope({}, 10001, "Not supported symbols"))
        now = self.now_ms()
        out = []
        for sym in [symbol] if symbol else self.symbols():
            s = self.series(sym)
            price = s.price(now) or 0.0
            oi = s.open_interest(now) or 0.0
            st = s.stats_24h(now)
            out.append({"symbol": sym, "lastPrice": num(price), "indexPrice": num(price), "markPrice": num(price),
                        "prevPrice24h": num(st["open"]),
                        "price24hPcnt": num(price / st["open"] - 1 if st["open"] else 0.0, 6),
                        "highPrice24h": num(st["high"]), "lowPrice24h": num(st["low"]),
                        "prevPrice1h": num(st["price_1h"]), "openInterest": num(2 * oi),
                        "openInterestValue": num(2 * oi * price, 2), "singleOpenInterest": num(oi),
                        "singleOpenInterestValue": num(oi * price, 2), "turnover24h": num(st["quote"], 4),
                        "volume24h": num(st["volume"], 4), "fundingRate": "0.0001",
                        "nextFundingTime": str((now // (8 * 3_600_000) + 1) * 8 * 3_600_000),
                        "predictedDeliveryPrice": "", "basisRate": "", "deliveryFeeRate": "", "deliveryTime": "0",
                        "ask1Size": "1", "bid1Price": num(price), "ask1Price": num(price), "bid1Size": "1",
                        "basis": "", "fundingIntervalHour": "8"})
        return bybit_envelope({"category": "linear", "list": out})

    def instruments(self, req: Request, applies: bool) -> Reply:
        """Instrument records, `limit` per page (default 500, at most 1000) with nextPageCursor."""
        if bybit_required(req, "category") != "linear":
            raise BadRequest(bybit_envelope({}, 10001, "Not supported symbols"))
        symbol = req.get("symbol")
        symbols = [symbol] if symbol else self.symbols()
        limit = bybit_int(req, "limit", 500, 1000)
        cursor = req.get("cursor")
        first = int(cursor) if cursor and cursor.isdigit() else 0
        out = []
        for sym in symbols[first:first + limit]:
            s = self.series(sym)
            if s is None:
                continue  # the real endpoint answers an empty list for an unknown symbol
            out.append({"symbol": sym, "contractType": "LinearPerpetual", "status": "Trading",
                        "baseCoin": sym[:-4], "quoteCoin": "USDT", "settleCoin": "USDT",
                        "launchTime": str(s.first_ms), "deliveryTime": "0", "priceScale": "8",
                        "fundingInterval": 480})
        more = first + limit < len(symbols)
        return bybit_envelope({"category": "linear", "list": out,
                               "nextPageCursor": str(first + limit) if more else ""})

    def server_time(self, req: Request, applies: bool) -> Reply:
        now = self.now_ms()
        return bybit_envelope({"timeSecond": str(now // 1000), "timeNano": str(now * 1_000_000)})


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
