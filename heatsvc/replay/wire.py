"""What every replay dialect shares: the parsed request, the reply, the fixed-window counters the
dialects enforce their limits with, and the Dialect base a dialect module subclasses."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

if TYPE_CHECKING:
    from .scenario import Limits, Series
    from .server import ReplayExchange

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
    """A parsed request: path below the exchange prefix, single-valued query parameters, and the
    body of a POST (Hyperliquid's /info takes JSON)."""

    def __init__(self, path: str, query: str, body: bytes = b""):
        self.path = path
        self.params = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        self.body = body

    def get(self, name: str) -> str | None:
        value = self.params.get(name)
        return value if value not in (None, "") else None


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


class Dialect:
    """One exchange's REST dialect, served under /<name>/ by the ReplayExchange `rx`."""

    name = ""

    def __init__(self, rx: ReplayExchange):
        self.rx = rx

    @property
    def limits(self) -> Limits:
        return self.rx.limits

    def now_ms(self) -> int:
        return self.rx.now_ms()

    def series(self, symbol: str | None) -> Series | None:
        """The bars behind one of this exchange's symbols, None if it does not list it."""
        market = f"{self.name}:{symbol}"
        listed = symbol and market in self.rx.markets() and market not in self.rx.delisted
        return self.rx.series(market) if listed else None

    def symbols(self) -> list[str]:
        """The exchange's listed symbols (delisted ones are gone, as on the real exchanges)."""
        return [m.split(":", 1)[1] for m in self.rx.markets()
                if m.startswith(self.name + ":") and m not in self.rx.delisted]

    def perturb(self, rows: list, applies: bool) -> list:
        return self.rx.perturb(rows, applies)

    def handle(self, req: Request, applies: bool) -> Reply:
        """Answer one request (limits included)."""
        raise NotImplementedError

    def banned(self, until_s: float) -> Reply:
        """The exchange's answer during an IP ban ending at real time until_s."""
        return self.rate_limited(until_s)

    def rate_limited(self, until_s: float) -> Reply:
        """The exchange's rate-limit answer, the limit resetting at real time until_s."""
        raise NotImplementedError


def retry_after(until_s: float, now_s: float) -> str:
    """A Retry-After value in whole seconds (0 only when the scenario asks for no wait)."""
    return str(max(0, math.ceil(until_s - now_s)))
