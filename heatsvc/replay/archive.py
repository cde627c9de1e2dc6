"""The replay's Binance public data archive (data.binance.vision): one zipped CSV of 5-minute
metrics per symbol and day, published once the day is over, S3's NoSuchKey 404 otherwise. Files of
days before 2026-06-25 run 00:05 .. 00:00 next day (row T = snapshot at T); from 2026-06-25 they run
00:00 .. 23:55 (row T = snapshot at T + 5 min), as binance/binance-public-data#491 records."""
from __future__ import annotations

import csv
import io
import math
import random
import zipfile
import zlib
from datetime import datetime, timezone

import numpy as np

from ..model.bars import STEP_MS
from .scenario import DAY_MS
from .wire import Dialect, Reply, Request

LABEL_CHANGE_MS = 1_782_345_600_000   # 2026-06-25T00:00Z


class ArchiveDialect(Dialect):
    """data.binance.vision's daily USD-M metrics files."""

    name = "binance-archive"

    def handle(self, req: Request, applies: bool) -> Reply:
        path = req.path
        name = path.rsplit("/", 1)[-1]
        symbol = path[len(ARCHIVE_PREFIX):].split("/")[0] if path.startswith(ARCHIVE_PREFIX) else ""
        s = self.rx.series(f"binance:{symbol}") if f"binance:{symbol}" in self.rx.markets() else None
        stem = f"{symbol}-metrics-"
        day = name[len(stem):-len(".zip")] if name.startswith(stem) and name.endswith(".zip") else ""
        if s is None or path != f"{ARCHIVE_PREFIX}{symbol}/{name}" or not day:
            return archive_missing(path)
        try:
            day_ms = int(datetime.strptime(day, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp() * 1000)
        except ValueError:
            return archive_missing(path)
        if day_ms + DAY_MS > self.now_ms():
            return archive_missing(path)  # the day is not complete yet
        # Every file holds the snapshots taken in (day, day + 1 day]; how they are labelled changed on
        # 2026-06-25 (binance/binance-public-data#491): before, at their time; from then on, 5 min earlier.
        shift = 0 if day_ms < LABEL_CHANGE_MS else STEP_MS
        lo, hi = np.searchsorted(s.oi_snap, [day_ms + 1, day_ms + DAY_MS + 1], "left")
        if lo == hi:
            return archive_missing(path)
        rows = []
        for k in range(int(lo), int(hi)):
            i = int(s.oi_rows[k])
            oi, c, r = float(s.oi[i]), float(s.c[i]), float(s.ratio[i])
            ratio = r if math.isfinite(r) else 1.0
            sell = float(s.v[i] - s.tb[i])
            stamp = datetime.fromtimestamp((int(s.oi_snap[k]) - shift) / 1000, timezone.utc)
            rows.append([stamp.strftime("%Y-%m-%d %H:%M:%S"), symbol, f"{oi:.8f}", f"{oi * c:.8f}",
                         f"{ratio ** 0.8:.8f}", f"{ratio:.8f}", f"{ratio ** 0.6:.8f}",
                         f"{float(s.tb[i]) / sell if sell > 0 else 1.0:.8f}"])
        if self.rx.archive_quirks:
            rows = archive_quirks(rows, seed=zlib.crc32(f"{symbol}-{day}".encode()))
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(ARCHIVE_COLUMNS)
        writer.writerows(rows)
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(f"{symbol}-metrics-{day}.csv", text.getvalue())
        data = buf.getvalue()
        return Reply(200, raw=data, content_type="application/zip")


ARCHIVE_PREFIX = "/data/futures/um/daily/metrics/"
ARCHIVE_COLUMNS = ("create_time", "symbol", "sum_open_interest", "sum_open_interest_value",
                   "count_toptrader_long_short_ratio", "sum_toptrader_long_short_ratio",
                   "count_long_short_ratio", "sum_taker_long_short_vol_ratio")


def archive_missing(path: str) -> Reply:
    """The S3-style 404 data.binance.vision answers for a file that does not exist (yet)."""
    key = path.lstrip("/")
    return Reply(404, raw=(f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>NoSuchKey</Code>'
                           f"<Message>The specified key does not exist.</Message><Key>{key}</Key></Error>").encode(),
                 content_type="application/xml")


def archive_quirks(rows: list[list[str]], seed: int) -> list[list[str]]:
    """What real metrics files do now and then: a row repeated, a row skipped, a row of zeros."""
    rng = random.Random(seed)
    out = []
    for row in rows:
        u = rng.random()
        if u < 0.02:
            continue
        if u < 0.04:
            row = row[:2] + ["0"] * (len(row) - 2)
        out.append(row)
        if rng.random() < 0.02:
            out.append(list(row))
    return out


# ---------------------------------------------------------------------------------------------
