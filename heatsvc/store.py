"""The bar store: every market's 5-minute bars in one SQLite file (WAL), keyed by (market, time).

Writes are idempotent upserts: a bar seen twice is stored once, a later value may fill a missing
one but a known value is never replaced by a missing (NaN) one. Each upsert is one transaction
with synchronous=FULL, so a bar is either fully committed and survives a crash, or absent.
A bar's values are stored as one 80-byte record (little-endian int64 time, float64 fields) so a
year of one market (105,120 bars) loads into arrays from a single SELECT in well under 200 ms.
"""
from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import platformdirs

from .model.bars import FIELDS, STEP_MS, normalize

VALUES = FIELDS[1:]
RECORD = np.dtype([("time_ms", "<i8")] + [(f, "<f8") for f in VALUES])
# Prices and volume describe the bar as last seen (a forming bar grows until it closes); the
# others are optional or may be missing, so a missing newcomer keeps what is already known.
KEEP_KNOWN = ("taker_buy_volume", "quote_volume", "open_interest", "long_short_ratio")
DAY_MS = 86_400_000

SCHEMA = """
CREATE TABLE IF NOT EXISTS markets (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS bars (
    market INTEGER NOT NULL REFERENCES markets(id),
    time_ms INTEGER NOT NULL,
    record BLOB NOT NULL,
    PRIMARY KEY (market, time_ms)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS marks (
    market INTEGER NOT NULL REFERENCES markets(id),
    key TEXT NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (market, key)
) WITHOUT ROWID;
"""
RANGE = "FROM bars WHERE market = ? AND time_ms >= ? AND time_ms < ? ORDER BY time_ms"


def default_path() -> Path:
    """Where the store lives unless configured: the user's data directory for heatsvc."""
    return Path(platformdirs.user_data_dir("heatsvc")) / "heatsvc.sqlite3"


def empty_bars() -> dict[str, np.ndarray]:
    """Engine bars with no rows."""
    return {f: np.empty(0, dtype=np.int64 if f == "time_ms" else np.float64) for f in FIELDS}


class SQLiteFile:
    """One SQLite file in WAL mode with a connection per thread: one writer, readers on other threads.
    Subclasses give their `schema`; close() closes every thread's connection."""
    schema = ""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        db = self._db()
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(self.schema)

    def _db(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use."""
        if self._closed:
            raise ValueError(f"store {self.path} is closed")
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=30.0, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA busy_timeout=30000")
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    def close(self) -> None:
        """Close every connection (all threads); later calls raise ValueError."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            for db in self._connections:
                db.close()
            self._connections.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Store(SQLiteFile):
    """SQLite bar store shared by the refresher (writer) and the service (readers on other threads).

    Each thread gets its own connection; WAL lets readers run while the writer commits.
    """
    schema = SCHEMA

    def __init__(self, path: str | os.PathLike | None = None, *, retention_days: int = 400):
        if retention_days <= 0:
            raise ValueError(f"retention_days must be positive, got {retention_days}")
        self.retention_ms = int(retention_days * DAY_MS)
        self._ids: dict[str, int] = {}
        super().__init__(path)

    def _market_id(self, market: str, create: bool) -> int | None:
        if market in self._ids:
            return self._ids[market]
        db = self._db()
        row = db.execute("SELECT id FROM markets WHERE name = ?", (market,)).fetchone()
        if row is None:
            if not create:
                return None
            db.execute("INSERT OR IGNORE INTO markets (name) VALUES (?)", (market,))
            row = db.execute("SELECT id FROM markets WHERE name = ?", (market,)).fetchone()
        self._ids[market] = row[0]
        return row[0]

    def upsert(self, market: str, bars: Mapping[str, np.ndarray]) -> int:
        """Store validated bars of one market in one transaction; returns the number of rows given.

        Rows older than the retention window (counted back from the market's newest bar) are dropped.
        """
        b = normalize(bars)
        n = len(b["time_ms"])
        if n == 0:
            return 0
        misaligned = np.flatnonzero(b["time_ms"] % STEP_MS)
        if len(misaligned):
            raise ValueError(f"{market}: time_ms {b['time_ms'][misaligned[0]]} is not aligned to 5 minutes")
        order = np.argsort(b["time_ms"], kind="stable")
        rec = np.empty(n, RECORD)
        for f in FIELDS:
            rec[f] = b[f][order]
        _, last = np.unique(rec["time_ms"][::-1], return_index=True)  # duplicates in one call: last wins
        rec = rec[n - 1 - last]
        db = self._db()
        mid = self._market_id(market, create=True)
        db.execute("BEGIN IMMEDIATE")
        try:
            old = self._records(mid, int(rec["time_ms"][0]), int(rec["time_ms"][-1]) + 1)
            at = np.minimum(np.searchsorted(rec["time_ms"], old["time_ms"]), len(rec) - 1)
            same = rec["time_ms"][at] == old["time_ms"]
            at, old = at[same], old[same]
            for f in KEEP_KNOWN:
                x = rec[f][at]
                rec[f][at] = np.where(np.isnan(x), old[f], x)
            db.executemany("INSERT OR REPLACE INTO bars (market, time_ms, record) VALUES (?, ?, ?)",
                           zip([mid] * len(rec), rec["time_ms"].tolist(), [r.tobytes() for r in rec]))
            newest = db.execute("SELECT MAX(time_ms) FROM bars WHERE market = ?", (mid,)).fetchone()[0]
            db.execute("DELETE FROM bars WHERE market = ? AND time_ms < ?", (mid, newest - self.retention_ms))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return n

    def load(self, market: str, start_ms: int | None = None, end_ms: int | None = None) -> dict[str, np.ndarray]:
        """One market's bars with open time in [start_ms, end_ms), sorted; empty arrays if none."""
        mid = self._market_id(market, create=False)
        if mid is None:
            return empty_bars()
        lo = -(2 ** 63) if start_ms is None else int(start_ms)
        hi = 2 ** 63 - 1 if end_ms is None else int(end_ms)
        rec = self._records(mid, lo, hi)
        if len(rec) == 0:
            return empty_bars()
        return {f: np.ascontiguousarray(rec[f]) for f in FIELDS}

    def _records(self, mid: int, lo: int, hi: int) -> np.ndarray:
        rows = self._db().execute(f"SELECT record {RANGE}", (mid, lo, hi)).fetchall()
        return np.frombuffer(b"".join([r[0] for r in rows]), RECORD)

    def times(self, market: str, start_ms: int, end_ms: int) -> np.ndarray:
        """Open times of the stored bars in [start_ms, end_ms), sorted."""
        mid = self._market_id(market, create=False)
        if mid is None:
            return np.empty(0, dtype=np.int64)
        rows = self._db().execute(f"SELECT time_ms {RANGE}", (mid, int(start_ms), int(end_ms))).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def gaps(self, market: str, start_ms: int, end_ms: int) -> list[tuple[int, int]]:
        """Ranges [a, b) of 5-minute bar times within [start_ms, end_ms) that the store lacks."""
        start = -(-int(start_ms) // STEP_MS) * STEP_MS
        end = int(end_ms)
        if start >= end:
            return []
        t = self.times(market, start, end)
        edges = np.concatenate(([start - STEP_MS], t, [-(-end // STEP_MS) * STEP_MS]))
        holes = np.flatnonzero(np.diff(edges) > STEP_MS)
        return [(int(edges[i] + STEP_MS), int(min(edges[i + 1], end))) for i in holes]

    def last_time(self, market: str) -> int | None:
        """Open time of the market's newest stored bar, or None."""
        mid = self._market_id(market, create=False)
        if mid is None:
            return None
        return self._db().execute("SELECT MAX(time_ms) FROM bars WHERE market = ?", (mid,)).fetchone()[0]

    def count(self, market: str) -> int:
        """Number of stored bars of a market."""
        mid = self._market_id(market, create=False)
        if mid is None:
            return 0
        return self._db().execute("SELECT COUNT(*) FROM bars WHERE market = ?", (mid,)).fetchone()[0]

    def scale(self, market: str, field: str, factor: float) -> int:
        """Multiply one value field of every stored bar of a market by `factor`, in one transaction
        (a unit correction; missing values stay missing); returns the number of bars."""
        if field not in VALUES:
            raise ValueError(f"scale: {field!r} is not a bar value field ({', '.join(VALUES)})")
        mid = self._market_id(market, create=False)
        if mid is None:
            return 0
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            rec = self._records(mid, -(2 ** 63), 2 ** 63 - 1).copy()
            rec[field] *= factor
            db.executemany("UPDATE bars SET record = ? WHERE market = ? AND time_ms = ?",
                           zip([r.tobytes() for r in rec], [mid] * len(rec), rec["time_ms"].tolist()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return len(rec)

    def mark(self, market: str, key: str) -> int | None:
        """A remembered integer about a market (e.g. where the exchange's history begins), or None."""
        mid = self._market_id(market, create=False)
        if mid is None:
            return None
        row = self._db().execute("SELECT value FROM marks WHERE market = ? AND key = ?", (mid, key)).fetchone()
        return None if row is None else row[0]

    def set_mark(self, market: str, key: str, value: int) -> None:
        """Remember an integer about a market (committed at once)."""
        mid = self._market_id(market, create=True)
        self._db().execute("INSERT OR REPLACE INTO marks (market, key, value) VALUES (?, ?, ?)", (mid, key, int(value)))

    def markets(self) -> list[str]:
        """Names of the markets that have bars, sorted."""
        rows = self._db().execute("SELECT name FROM markets WHERE EXISTS "
                                  "(SELECT 1 FROM bars WHERE bars.market = markets.id) ORDER BY name").fetchall()
        return [r[0] for r in rows]
