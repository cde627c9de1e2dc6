"""Subject names and the JetStream stream that keeps the latest message of each: where an owner publishes
a view's zone report and grid, and its heartbeat (its shard's market catalogue)."""
from __future__ import annotations

import zlib
from dataclasses import dataclass

PREFIX = "heatsvc.v1"
STREAM = "HEATSVC_V1"
KINDS = ("zones", "grid")       # a view's ZoneReport, and its Heatmap (published when the grid changed)
SENT_HEADER = "Heatsvc-Sent-Ms"         # heartbeat: the owner's wall clock when sent
INTERVAL_HEADER = "Heatsvc-Heartbeat-Ms"
GRID_HEADER = "Heatsvc-Grid"            # zones: the version of the view's grid they go with
SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


def token(name: str) -> str:
    """`name` as one subject token: letters, digits and '-' stay, anything else becomes _XX (hex), so
    "binance:BTCUSDT" is "binance_3ABTCUSDT" and the mapping is reversible."""
    return "".join(c if c in SAFE else "".join(f"_{b:02X}" for b in c.encode()) for c in name)


def untoken(text: str) -> str:
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "_":
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out += text[i].encode()
            i += 1
    return out.decode()


def view(market: str, lookback: str, kind: str) -> str:
    """heatsvc.v1.<market>.<lookback>.<zones|grid>"""
    return f"{PREFIX}.{token(market)}.{token(lookback)}.{kind}"


def parse_view(subject: str) -> tuple[str, str, str] | None:
    """(market, lookback, kind) of a view subject; None for any other subject."""
    parts = subject.split(".")
    if len(parts) != 5 or f"{parts[0]}.{parts[1]}" != PREFIX or parts[4] not in KINDS:
        return None
    return untoken(parts[2]), untoken(parts[3]), parts[4]


def owner(shard: Shard) -> str:
    """heatsvc.v1.owners.<i>: an owner's heartbeat, its shard's ListMarketsResponse."""
    return f"{PREFIX}.owners.{shard.index}"


def zones_and_owners() -> list[str]:
    """What an edge consumes: every view's zones and every heartbeat (grids are fetched when asked for)."""
    return [f"{PREFIX}.*.*.zones", f"{PREFIX}.owners.*"]


def parse_owner(subject: str) -> int | None:
    parts = subject.split(".")
    if len(parts) == 4 and parts[2] == "owners" and parts[3].isdigit():
        return int(parts[3])
    return None


@dataclass(frozen=True)
class Shard:
    """Shard `index` of `count`: the markets whose symbol's crc32 is index modulo count, so an aggregate
    "all:SYMBOL" lives with its exchanges' markets."""
    index: int
    count: int

    @classmethod
    def parse(cls, text: str, where: str = "--shard") -> Shard:
        i, sep, n = text.partition("/")
        if not sep or not (i.isdigit() and n.isdigit()) or not 0 <= int(i) < int(n):
            raise ValueError(f"{where} = {text!r} is invalid: use I/N with 0 <= I < N, e.g. 0/2")
        return cls(int(i), int(n))

    def owns(self, symbol: str) -> bool:
        return zlib.crc32(symbol.encode()) % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"
