"""The Hyperliquid positions poller: reads `clearinghouseState` of known accounts within its own share
of the per-IP weight budget and keeps each account's latest positions with their read time.

Accounts come from the trades stream (both sides of every trade) and an optional address file. Each
cycle reads the accounts holding the largest positions in the served coins first, then the rest in
rotation; a cycle spends at most one period's share (share x 1,200 weight a minute / 2 weight a read,
e.g. 0.4 -> 240 reads a minute), spreads its reads over the cycle and lasts at least `cycle_s`. Memory is bounded: at most
`max_accounts` accounts, and an account found without positions `drop_after` reads in a row is
forgotten (address-file accounts are kept).
"""
from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from ...model.positions import Position, PositionSnapshot
from ..base import ExchangeError, ExchangeUnavailable
from .client import WEIGHT_PER_MINUTE, WEIGHTS, HyperliquidClient
from .weights import WeightWindow

log = logging.getLogger("heatsvc.exchanges")
ADDRESS = re.compile(r"0x[0-9a-f]{40}")
READ_WEIGHT = WEIGHTS["clearinghouseState"]


def load_addresses(path: str | Path) -> list[str]:
    """Account addresses from a file, one a line ("0x" + 40 hex digits), # comments and blank lines
    ignored; ValueError naming the file and line of anything else."""
    out = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        text = line.split("#", 1)[0].strip().lower()
        if not text:
            continue
        if not ADDRESS.fullmatch(text):
            raise ValueError(f"{path}:{n}: {line.strip()[:60]!r} is not an account address (0x + 40 hex digits)")
        out.append(text)
    return out


@dataclass
class Account:
    """What the poller knows of one account."""
    positions: list[Position] = field(default_factory=list)
    read_ms: int | None = None       # when its positions were read
    empty_reads: int = 0             # reads in a row without a position in a served coin
    pinned: bool = False             # from the address file: never dropped


class PositionPoller:
    """Latest positions of known Hyperliquid accounts, read within `share` of the weight budget."""

    def __init__(self, client: HyperliquidClient, coins, *, share: float = 0.4, addresses=(),
                 max_accounts: int = 50_000, drop_after: int = 3, top_fraction: float = 0.25,
                 cycle_s: float = 60.0, concurrency: int = 4, period_s: float = 60.0):
        if not 0 < share <= 1:
            raise ValueError(f"hyperliquid poller: share must be in (0, 1], got {share}")
        self.client, self.coins = client, set(coins)
        self.window = WeightWindow(share * WEIGHT_PER_MINUTE, period_s)
        self.per_cycle = int(self.window.limit // READ_WEIGHT)
        self.max_accounts, self.drop_after, self.top_fraction = max_accounts, drop_after, top_fraction
        self.cycle_s, self.concurrency = cycle_s, concurrency
        self.accounts: dict[str, Account] = {}
        self._rotation: list[str] = []
        self._next = 0
        self.reads = self.failures = self.dropped = self.overflow = self.cycles = 0
        self.last_cycle: dict[str, float] = {}     # reads, seconds, reads per minute of the last cycle
        for a in addresses:
            self.accounts.setdefault(a.lower(), Account(pinned=True))

    # ----- accounts ------------------------------------------------------------------------
    def add_accounts(self, addresses) -> None:
        """Accounts heard of (the trades stream's users); beyond max_accounts new ones are not kept."""
        for a in addresses:
            if a in self.accounts or not ADDRESS.fullmatch(a):
                continue
            if len(self.accounts) >= self.max_accounts:
                self.overflow += 1
                continue
            self.accounts[a] = Account()

    def notional(self, address: str) -> float:
        return sum(p.position_value for p in self.accounts[address].positions if p.coin in self.coins)

    def schedule(self) -> list[str]:
        """One cycle's reads: the largest accounts (top_fraction of the cycle), then the rest in rotation."""
        budget = min(self.per_cycle, len(self.accounts))
        ranked = sorted((a for a, acc in self.accounts.items() if acc.positions), key=self.notional, reverse=True)
        top = ranked[:int(budget * self.top_fraction)]
        chosen, taken = list(top), set(top)
        turns = 0    # a rotation that ends inside the cycle starts again, so every cycle reads its budget
        while len(chosen) < budget and turns < 2:
            if self._next >= len(self._rotation):
                self._rotation, self._next = list(self.accounts), 0
                turns += 1
                continue
            a = self._rotation[self._next]
            self._next += 1
            if a in self.accounts and a not in taken:
                chosen.append(a)
                taken.add(a)
        return chosen

    # ----- reading -------------------------------------------------------------------------
    async def run(self) -> None:
        """Read cycles until cancelled; a cycle with no account known waits for the trades stream."""
        while True:
            started = time.monotonic()
            await self.cycle()
            wait = self.cycle_s if self.accounts else min(1.0, self.cycle_s)   # none yet: look again soon
            await asyncio.sleep(max(0.0, wait - (time.monotonic() - started)))

    async def cycle(self) -> int:
        """Read one schedule, spread over 90 % of cycle_s (no burst at the start of each minute);
        returns the accounts read."""
        todo = self.schedule()
        started = time.monotonic()
        spacing = 0.9 * self.cycle_s / max(1, len(todo))
        done = 0
        queue = list(reversed(todo))

        async def worker():
            nonlocal done
            while queue:
                k = len(todo) - len(queue)
                a = queue.pop()
                await asyncio.sleep(max(0.0, started + k * spacing - time.monotonic()))
                if await self.read(a):
                    done += 1
        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(todo)))))
        took = time.monotonic() - started
        self.cycles += 1
        self.last_cycle = {"reads": done, "seconds": took,
                           "reads_per_minute": done * 60.0 / max(took, self.cycle_s, 1e-9)}
        return done

    async def read(self, address: str) -> bool:
        """Read one account within the poller's share; False when it could not be read now."""
        ticket = await self.window.acquire(READ_WEIGHT)
        try:
            positions, read_ms = await self.client.clearinghouse_state(address)
        except ExchangeUnavailable as exc:        # held or down: the cycle pauses, the account stays
            self.failures += 1
            log.info("hyperliquid poller: %s not read: %s", address, exc)
            await asyncio.sleep(max(0.0, min(60.0, self.client.banned_until - time.monotonic())))
            return False
        except ExchangeError as exc:              # refused: this address is of no use
            self.failures += 1
            log.warning("hyperliquid poller: %s refused: %s; forgotten", address, exc)
            self.accounts.pop(address, None)
            return False
        finally:
            ticket.release()
        self.reads += 1
        acc = self.accounts.get(address)
        if acc is None:
            return True
        acc.positions, acc.read_ms = positions, read_ms
        served = any(p.coin in self.coins for p in positions)
        acc.empty_reads = 0 if served else acc.empty_reads + 1
        if acc.empty_reads >= self.drop_after and not acc.pinned:
            del self.accounts[address]
            self.dropped += 1
        return True

    # ----- what the service reads ----------------------------------------------------------
    def snapshot(self, coin: str) -> PositionSnapshot:
        """Every known position in `coin`, with the exchange's open interest and mark from the latest
        metaAndAssetCtxs sample, and how many accounts it rests on."""
        positions, times = [], []
        read = 0
        for acc in self.accounts.values():
            if acc.read_ms is None:
                continue
            read += 1
            held = [p for p in acc.positions if p.coin == coin]
            if held:
                positions.extend(held)
                times.append(acc.read_ms)
        latest = self.client.samples.latest(coin)
        return PositionSnapshot(
            coin=coin, time_ms=max(times) if times else (latest[0] if latest else 0), positions=positions,
            open_interest=latest[1] if latest else None, mark_px=latest[2] if latest else None,
            accounts_known=len(self.accounts), accounts_read=read, oldest_read_ms=min(times) if times else None,
            meta={"reads": self.reads, "cycles": self.cycles, "failures": self.failures, "dropped": self.dropped,
                  "overflow": self.overflow, "weight_share_per_minute": self.window.limit,
                  "sampled_ms": latest[0] if latest else None, **self.last_cycle})
