"""Measured position snapshots (Hyperliquid), in the store's SQLite file: one row per coin and time
holding every position's size, entry, value, leverage and liquidation price, so a map can be
drawn later on any grid. Account addresses are not kept: the map does not need them.
Also the named parameter profiles fitted to those snapshots (heatsvc compare --save-profile).
"""
from __future__ import annotations

import json
import zlib

import numpy as np

from .model.engine import ModelParams, Tier
from .model.positions import Position, PositionSnapshot
from .store import SQLiteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS measured (
    coin TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    positions BLOB NOT NULL,          -- zlib of float64 columns, see COLUMNS
    meta TEXT NOT NULL,               -- JSON: open interest, mark, accounts known/read, oldest read
    PRIMARY KEY (coin, time_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profiles (
    name TEXT PRIMARY KEY,
    params TEXT NOT NULL,             -- JSON: tiers [[leverage, weight, maintenance_margin, half_life_days]], step_ms, mu
    source TEXT NOT NULL
);
"""
COLUMNS = ("size", "entry_px", "position_value", "leverage", "liquidation_px", "cross", "margin_used")


def pack(positions: list[Position]) -> bytes:
    a = np.array([(p.size, p.entry_px, p.position_value, p.leverage,
                   np.nan if p.liquidation_px is None else p.liquidation_px, p.leverage_type == "cross",
                   p.margin_used) for p in positions], dtype="<f8").reshape(-1, len(COLUMNS))
    return zlib.compress(a.tobytes(), 6)


def unpack(coin: str, blob: bytes) -> list[Position]:
    a = np.frombuffer(zlib.decompress(blob), dtype="<f8").reshape(-1, len(COLUMNS))
    return [Position("", coin, size, entry, value, lev, "cross" if cross else "isolated",
                     None if np.isnan(liq) else float(liq), margin)
            for size, entry, value, lev, liq, cross, margin in a.tolist()]


class MeasuredStore(SQLiteFile):
    """Writer: the service's measured-map recorder; readers: GetMeasuredMap and compare."""
    schema = SCHEMA

    def add(self, snapshot: PositionSnapshot) -> None:
        """Keep one snapshot (a second one at the same coin and time replaces it)."""
        meta = {"open_interest": snapshot.open_interest, "mark_px": snapshot.mark_px,
                "accounts_known": snapshot.accounts_known, "accounts_read": snapshot.accounts_read,
                "oldest_read_ms": snapshot.oldest_read_ms}
        self._db().execute("INSERT OR REPLACE INTO measured VALUES (?, ?, ?, ?)",
                           (snapshot.coin, snapshot.time_ms, pack(snapshot.positions), json.dumps(meta)))

    def at(self, coin: str, time_ms: int | None = None) -> PositionSnapshot | None:
        """The newest snapshot at or before time_ms (None: the latest); None if there is none."""
        if time_ms is None:
            row = self._db().execute("SELECT time_ms, positions, meta FROM measured WHERE coin = ? "
                                     "ORDER BY time_ms DESC LIMIT 1", (coin,)).fetchone()
        else:
            row = self._db().execute("SELECT time_ms, positions, meta FROM measured WHERE coin = ? AND time_ms <= ? "
                                     "ORDER BY time_ms DESC LIMIT 1", (coin, time_ms)).fetchone()
        if row is None:
            return None
        time_ms, blob, meta = row
        meta = json.loads(meta)
        return PositionSnapshot(coin, time_ms, unpack(coin, blob), meta["open_interest"], meta["mark_px"],
                                meta["accounts_known"], meta["accounts_read"], meta["oldest_read_ms"])

    def times(self, coin: str) -> list[int]:
        return [r[0] for r in self._db().execute("SELECT time_ms FROM measured WHERE coin = ? ORDER BY time_ms",
                                                 (coin,))]

    def prune(self, before_ms: int) -> int:
        """Retention: drop snapshots older than before_ms; returns how many."""
        return self._db().execute("DELETE FROM measured WHERE time_ms < ?", (before_ms,)).rowcount

    def save_profile(self, name: str, params: ModelParams, source: str) -> None:
        """Keep (or replace) a named parameter profile."""
        data = {"tiers": [[t.leverage, t.weight, t.maintenance_margin, t.half_life_days] for t in params.tiers],
                "step_ms": params.step_ms, "mu": params.mu}
        self._db().execute("INSERT OR REPLACE INTO profiles VALUES (?, ?, ?)", (name, json.dumps(data), source))

    def profiles(self) -> dict[str, tuple[ModelParams, str]]:
        """Every saved profile: name -> (parameters, source)."""
        out = {}
        for name, data, source in self._db().execute("SELECT name, params, source FROM profiles ORDER BY name"):
            d = json.loads(data)
            out[name] = (ModelParams(tiers=tuple(Tier(*t) for t in d["tiers"]), step_ms=d["step_ms"], mu=d["mu"]),
                         source)
        return out
