"""Hyperliquid perpetuals (USDC-margined): every read is `POST /info` with a JSON body {"type": ...}.

Markets are `hyperliquid:COIN` (the exchange's coin name, e.g. HYPE). What heatsvc reads:
* `metaAndAssetCtxs`: [meta {universe: [{name, szDecimals, maxLeverage, isDelisted?}]}, [ctx per
  asset, same order: openInterest (coins; read as one side, not yet settled: MODEL.md §16), markPx, oraclePx, funding, dayNtlVlm (USDC), as
  strings]]. Listing, ranking (dayNtlVlm) and the open-interest samples (oi).
* `candleSnapshot` {coin, interval "5m", startTime, endTime}: [{t (open ms), T (close ms), s, i, o,
  c, h, l, v (base volume), n}], at most 500 a call, only the latest 5,000 candles exist. Candles carry
  no taker-buy volume: the trades stream's share is used where it covered the bar (flow).
* `clearinghouseState` {user}: one account's positions with their liquidation prices (parse_positions).

Limits (per IP): 1,200 weight a minute; clearinghouseState weighs 2, metaAndAssetCtxs 20,
candleSnapshot 20 plus more per 60 candles returned. Every request first fits its weight into one
WeightWindow at `weight_share` of that budget; an HTTP 429 (body `null`) holds the whole host,
longer each time in a row, visible in health and heatsvc_holds_total.
"""
from __future__ import annotations

import contextvars
import json
import logging
import math

import httpx
import numpy as np

from ...model.bars import STEP_MS
from ...model.positions import Position
from ..base import MALFORMED, ExchangeClient, ExchangeError, Listing, Retry, align_down, bar_time, number
from .flow import TakerFlow
from .oi import OiSamples
from .weights import Ticket, WeightWindow

log = logging.getLogger("heatsvc.exchanges")

WEIGHT_PER_MINUTE = 1_200
WEIGHTS = {"clearinghouseState": 2, "metaAndAssetCtxs": 20, "candleSnapshot": 20}
CANDLES_PER_CALL = 500
CANDLES_KEPT = 5_000           # the API serves only the latest 5,000 candles of an interval
THROTTLE_S = 5.0               # first hold after an HTTP 429, doubled with each one in a row
THROTTLE_CAP_S = 60.0
SAMPLE_FRESH_MS = 120_000      # fetch_live uses the sampler's open interest when this recent
_TICKET: contextvars.ContextVar[Ticket | None] = contextvars.ContextVar("hyperliquid_ticket", default=None)


def candle_weight(n: int) -> int:
    """Weight of a candleSnapshot answer of n candles (20, plus 1 per 60 started: an upper bound)."""
    return WEIGHTS["candleSnapshot"] + math.ceil(n / 60)


def parse_positions(user: str, payload) -> tuple[list[Position], int | None, list[str]]:
    """A clearinghouseState answer as (positions, the answer's `time` if stated, problems): zero
    sizes are skipped, a position that breaks Position's rules is left out and named in problems."""
    if not isinstance(payload, dict) or not isinstance(payload.get("assetPositions"), list):
        raise TypeError(f"clearinghouseState for {user}: expected an object with assetPositions")
    out, problems = [], []
    for entry in payload["assetPositions"]:
        p = entry["position"]
        size = float(p["szi"])
        if size == 0:
            continue
        lev = p.get("leverage") or {}
        liq = p.get("liquidationPx")
        try:
            out.append(Position(user=user.lower(), coin=str(p["coin"]), size=size, entry_px=float(p["entryPx"]),
                                position_value=float(p["positionValue"]), leverage=float(lev["value"]),
                                leverage_type=str(lev["type"]),
                                liquidation_px=None if liq is None else float(liq),
                                margin_used=number(p.get("marginUsed")) if p.get("marginUsed") is not None else 0.0))
        except ValueError as exc:
            problems.append(str(exc))
    stated = payload.get("time")
    return out, (int(stated) if stated is not None else None), problems


class HyperliquidClient(ExchangeClient):
    """Hyperliquid public info API for perpetuals, within a share of the per-IP weight budget."""

    name = "hyperliquid"
    default_base_url = "https://api.hyperliquid.xyz"

    def __init__(self, base_url: str | None = None, *, weight_share: float = 0.8, samples: OiSamples | None = None,
                 flow: TakerFlow | None = None, min_refresh_s: float = 0.0, **kw):
        super().__init__(base_url, **kw)
        self.min_refresh_s = min_refresh_s
        if not 0 < weight_share <= 1:
            raise ValueError(f"hyperliquid: weight_share must be in (0, 1], got {weight_share}")
        self.budget = WeightWindow(weight_share * WEIGHT_PER_MINUTE, 60.0)
        self.samples = samples if samples is not None else OiSamples()
        self.flow = flow if flow is not None else TakerFlow()
        self.throttles = 0             # HTTP 429s in a row
        self.bad_positions = 0         # positions left out for breaking Position's rules
        self.universe: dict[str, bool] = {}   # coin -> delisted, from the last metaAndAssetCtxs
        self.universe_ms: int | None = None

    # ----- transport -----------------------------------------------------------------------
    async def pace(self, path: str, weight: int) -> Ticket:
        ticket = await self.budget.acquire(weight)
        _TICKET.set(ticket)
        return ticket

    async def fetch(self, path, target, params, limit, json_body=None):
        response, body = await super().fetch(path, target, params, limit, json_body)
        ticket = _TICKET.get()
        if ticket is not None and isinstance(json_body, dict) and json_body.get("type") == "candleSnapshot":
            try:               # the true weight depends on the candles returned
                rows = json.loads(body)
                ticket.settle(candle_weight(len(rows)) if isinstance(rows, list) else WEIGHTS["candleSnapshot"])
            except ValueError:
                pass
        return response, body

    def transient(self, response: httpx.Response, body: bytes) -> Retry | None:
        status = response.status_code
        if status == 429:
            self.throttles += 1
            wait = min(THROTTLE_CAP_S, THROTTLE_S * 2 ** (self.throttles - 1))
            return Retry(f"rate limited (HTTP 429, body {body[:20].decode('utf-8', 'replace')!r})", wait)
        if 400 <= status < 500:     # 422 "Failed to deserialize the JSON body ...": our request is wrong
            raise ExchangeError(self.name, f"/info: HTTP {status}: {body[:200].decode('utf-8', 'replace')}",
                                status=status)
        return None

    def observe(self, path: str, response: httpx.Response) -> None:
        if response.status_code == 200:
            self.throttles = 0

    async def info(self, body: dict, weight: int, parse=None):
        """POST /info with `body`, reserving `weight` of the budget."""
        return await self.request("/info", weight=weight, json_body=body, parse=parse)

    # ----- market data ---------------------------------------------------------------------
    async def sample(self) -> dict[str, tuple[bool, float, float, float]]:
        """One metaAndAssetCtxs read: coin -> (delisted, open interest, mark, 24 h notional volume);
        records every live coin's open-interest sample at our clock's time of the answer."""
        def read(payload):
            meta, ctxs = payload
            universe = meta["universe"]
            if len(universe) != len(ctxs):
                raise ValueError(f"metaAndAssetCtxs: {len(universe)} assets but {len(ctxs)} contexts")
            return {str(u["name"]): (bool(u.get("isDelisted", False)), number(c.get("openInterest")),
                                     number(c.get("markPx")), number(c.get("dayNtlVlm")))
                    for u, c in zip(universe, ctxs)}

        assets = await self.info({"type": "metaAndAssetCtxs"}, WEIGHTS["metaAndAssetCtxs"], parse=read)
        now = self.now_ms()
        for coin, (delisted, oi, mark, _) in assets.items():
            if not delisted:
                self.samples.add(coin, now, oi, mark)
        self.universe = {coin: a[0] for coin, a in assets.items()}
        self.universe_ms = now
        return assets

    async def list_perpetuals(self) -> list[Listing]:
        """Every listed (not delisted) perpetual, with its 24 h notional volume in USDC (dayNtlVlm)."""
        assets = await self.sample()
        return [Listing(coin, vol) for coin, (delisted, _, _, vol) in assets.items() if not delisted]

    def lists(self, symbol: str) -> bool:
        return True          # every perpetual is in metaAndAssetCtxs (delisted ones flagged)

    async def check_symbol(self, symbol: str) -> None:
        if self.universe_ms is None or self.now_ms() - self.universe_ms > 60_000:
            await self.sample()
        if symbol not in self.universe:
            raise ExchangeError(self.name, f"coin {symbol!r} is not a Hyperliquid perpetual (names are coins: HYPE, BTC)")
        if self.universe[symbol]:
            raise ExchangeError(self.name, f"coin {symbol!r} is delisted")

    async def candles(self, symbol: str, start_ms: int, end_ms: int) -> dict[str, list]:
        """Parsed 5-minute candles with open times in [start_ms, end_ms), in calls of at most 500;
        nothing is asked for older than the latest 5,000 candles (the API has none)."""
        cols = {f: [] for f in ("time_ms", "open", "high", "low", "close", "volume")}
        oldest = align_down(self.now_ms()) - (CANDLES_KEPT - 1) * STEP_MS
        start = max(-(-int(start_ms) // STEP_MS) * STEP_MS, oldest)
        for a in range(start, int(end_ms), CANDLES_PER_CALL * STEP_MS):
            b = min(a + CANDLES_PER_CALL * STEP_MS, int(end_ms))
            req = {"coin": symbol, "interval": "5m", "startTime": a, "endTime": b - 1}
            rows = await self.info({"type": "candleSnapshot", "req": req}, candle_weight(CANDLES_PER_CALL))
            for r in rows if isinstance(rows, list) else ():
                try:
                    values = (bar_time(r["t"]), float(r["o"]), float(r["h"]), float(r["l"]), float(r["c"]),
                              float(r["v"]))
                except MALFORMED as exc:
                    self.reject(symbol, None, "candle", f"unparsable ({exc})")
                    continue
                for f, v in zip(cols, values):
                    cols[f].append(v)
        return cols

    async def fetch_bars(self, symbol: str, start_ms: int, end_ms: int) -> dict[str, np.ndarray]:
        """Closed bars in [start_ms, end_ms): candles, open interest stamped from the samples, taker
        share and VWAP from the trades stream where it covered the bar (else missing)."""
        end = min(int(end_ms), align_down(self.now_ms()))      # closed bars only
        cols = await self.candles(symbol, start_ms, end)
        bars = self.bars(symbol, {**cols, "open_interest": np.full(len(cols["time_ms"]), np.nan)}, start_ms, end)
        t = bars["time_ms"]
        if len(t) == 0:
            return bars
        share, vwap = self.flow.columns(symbol, t)
        bars["taker_buy_volume"] = share * bars["volume"]
        bars["quote_volume"] = vwap * bars["volume"]
        bars["open_interest"] = self.samples.stamp(symbol, t)
        return self.drop_invalid(symbol, bars)

    async def fetch_live(self, symbol: str) -> tuple[dict[str, np.ndarray], float, float]:
        now = self.now_ms()
        cols = await self.candles(symbol, align_down(now), align_down(now) + STEP_MS)
        latest = self.samples.latest(symbol)
        if latest is None or now - latest[0] > SAMPLE_FRESH_MS:
            await self.sample()
            latest = self.samples.latest(symbol)
        oi, mark = (latest[1], latest[2]) if latest is not None else (math.nan, math.nan)
        return self.forming_bar(symbol, cols, oi), oi, mark

    async def clearinghouse_state(self, user: str) -> tuple[list[Position], int]:
        """One account's open positions and the time they were read (the answer's, else our clock's)."""
        positions, stated, problems = await self.info({"type": "clearinghouseState", "user": user},
                                                      WEIGHTS["clearinghouseState"],
                                                      parse=lambda p: parse_positions(user, p))
        for problem in problems:       # logged, not counted per account (accounts are unbounded labels)
            self.bad_positions += 1
            log.warning("hyperliquid: position left out: %s", problem)
        return positions, stated if stated is not None else self.now_ms()
