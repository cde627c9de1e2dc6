"""Measured positions: what a public-ledger exchange (Hyperliquid) reports per account, each with its
real liquidation price. The measured liquidation map (heatsvc.model.measured) is built from these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Position:
    """One account's open position in one coin, as `clearinghouseState` states it."""
    user: str                     # account address, "0x..." lower case
    coin: str                     # the exchange's coin name, e.g. "HYPE"
    size: float                   # signed size in coins: > 0 long, < 0 short (`szi`)
    entry_px: float               # average entry price (quote currency)
    position_value: float         # notional at the mark price (quote currency), > 0
    leverage: float               # `leverage.value`
    leverage_type: str            # "cross" or "isolated"
    liquidation_px: float | None  # None: the exchange gives none (e.g. a cross account far from liquidation)
    margin_used: float = 0.0

    def __post_init__(self):
        if self.size == 0 or not math.isfinite(self.size):
            raise ValueError(f"{self.user} {self.coin}: position size must be finite and non-zero, got {self.size!r}")
        if not (self.position_value > 0 and math.isfinite(self.position_value)):
            raise ValueError(f"{self.user} {self.coin}: positionValue must be finite and > 0, "
                             f"got {self.position_value!r}")
        if not (self.leverage > 0 and math.isfinite(self.leverage)):
            raise ValueError(f"{self.user} {self.coin}: leverage must be finite and > 0, got {self.leverage!r}")
        if self.liquidation_px is not None and not (self.liquidation_px > 0 and math.isfinite(self.liquidation_px)):
            raise ValueError(f"{self.user} {self.coin}: liquidationPx must be finite and > 0 or absent, "
                             f"got {self.liquidation_px!r}")

    @property
    def side(self) -> str:
        return "long" if self.size > 0 else "short"


@dataclass
class PositionSnapshot:
    """Every known position in one coin at one time, with what is needed to judge its coverage."""
    coin: str
    time_ms: int                   # when the newest account in it was read
    positions: list[Position]
    open_interest: float | None    # the exchange's open interest in coins at time_ms (None: unknown)
    mark_px: float | None
    accounts_known: int            # accounts discovered so far
    accounts_read: int             # accounts whose state is in this snapshot
    oldest_read_ms: int | None = None   # the stalest account state included
    meta: dict = field(default_factory=dict)
