"""Recorded liquidations and the spans the recorder covered, in the store's SQLite file (WAL).

Events are deduplicated on their natural key (market, time, side, price, quantity), so a message seen
again after a reconnect is stored once; each batch is one transaction with synchronous=FULL, so a
crash loses at most the batch being written and never leaves a part of one. Coverage spans are kept
per exchange; time outside them is missing, never zero (MODEL.md section 12).
"""
from __future__ import annotations

import numpy as np

from .model.realised import Liquidation, merge_spans
from .store import SQLiteFile

SCHEMA = """
CREATE TABLE IF NOT EXISTS liquidations (
    market TEXT NOT NULL,
    time_ms INTEGER NOT NULL,
    long INTEGER NOT NULL,            -- 1: a long position was liquidated, 0: a short
    price REAL NOT NULL,
    quantity REAL NOT NULL,
    PRIMARY KEY (market, time_ms, long, price, quantity)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS coverage (
    exchange TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    PRIMARY KEY (exchange, start_ms)
) WITHOUT ROWID;
"""


class LiquidationStore(SQLiteFile):
    """Writer: the recorder (add, cover); readers: the service and the backtest, on their own threads."""
    schema = SCHEMA


    def add(self, events: list[Liquidation]) -> int:
        """Store one batch in one transaction; returns how many were new."""
        db = self._db()
        rows = [(e.market, e.time_ms, int(e.side == "long"), e.price, e.quantity) for e in events]
        db.execute("BEGIN IMMEDIATE")
        try:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO liquidations VALUES (?, ?, ?, ?, ?)", rows)
            added = db.total_changes - before
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return added

    def cover(self, exchange: str, start_ms: int, end_ms: int) -> None:
        """Record that the exchange's stream was heard over [start_ms, end_ms]; a span reported again
        as it grows (same start) keeps its longest end."""
        if end_ms < start_ms:
            raise ValueError(f"{exchange}: coverage span ends before it starts ({start_ms} > {end_ms})")
        self._db().execute("INSERT INTO coverage VALUES (?, ?, ?) ON CONFLICT (exchange, start_ms) "
                           "DO UPDATE SET end_ms = max(end_ms, excluded.end_ms)", (exchange, start_ms, end_ms))

    def load(self, market: str, start_ms: int, end_ms: int) -> dict[str, np.ndarray]:
        """The market's liquidations in [start_ms, end_ms), by time: time_ms, long (bool), price, quantity."""
        rows = self._db().execute("SELECT time_ms, long, price, quantity FROM liquidations WHERE market = ? "
                                  "AND time_ms >= ? AND time_ms < ? ORDER BY time_ms", (market, start_ms, end_ms)).fetchall()
        a = np.array(rows, dtype=np.float64).reshape(-1, 4)
        return {"time_ms": a[:, 0].astype(np.int64), "long": a[:, 1].astype(bool), "price": a[:, 2],
                "quantity": a[:, 3]}

    def spans(self, exchange: str, start_ms: int, end_ms: int) -> np.ndarray:
        """The exchange's covered spans meeting [start_ms, end_ms), merged and clipped to it."""
        rows = self._db().execute("SELECT start_ms, end_ms FROM coverage WHERE exchange = ? AND end_ms > ? "
                                  "AND start_ms < ?", (exchange, start_ms, end_ms)).fetchall()
        return np.clip(merge_spans(rows), start_ms, end_ms)

    def prune(self, before_ms: int) -> int:
        """Retention: drop events and spans that end before `before_ms`; returns the events dropped."""
        db = self._db()
        dropped = db.execute("DELETE FROM liquidations WHERE time_ms < ?", (before_ms,)).rowcount
        db.execute("DELETE FROM coverage WHERE end_ms < ?", (before_ms,))
        return dropped
