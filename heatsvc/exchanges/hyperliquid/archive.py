"""Importer for Hyperliquid's S3 archive of asset contexts (s3://hyperliquid-archive/asset_ctxs/
YYYYMMDD.csv.lz4, requester pays, uploaded about monthly, "no guarantee of timely updates and data may
be missing"): one CSV row per coin and snapshot with the header
time,coin,funding,open_interest,prev_day_px,day_ntl_vlm,premium,oracle_px,mark_px,mid_px,impact_bid_px,impact_ask_px.
heatsvc reads time, coin, open_interest (coins) and mark_px into its open-interest samples, so bars
older than its own sampling get open interest. Files are LZ4 frames: read with the `lz4` module when
installed, else the `lz4` command; plain .csv files are read as they are.
"""
from __future__ import annotations

import csv
import io
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from .oi import OiSamples

COLUMNS = ("time", "coin", "open_interest", "mark_px")


def archive_time(text: str) -> int:
    """Milliseconds of an archive `time` ("2025-10-24 20:00:00.000" or ISO with Z), UTC."""
    dt = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def read_text(path: Path) -> str:
    """The CSV text of a .csv or .csv.lz4 file; ValueError if an .lz4 file cannot be decompressed here."""
    raw = path.read_bytes()
    if not path.name.endswith(".lz4"):
        return raw.decode("utf-8")
    try:
        import lz4.frame  # optional: not a dependency of heatsvc
        return lz4.frame.decompress(raw).decode("utf-8")
    except ImportError:
        pass
    if shutil.which("lz4") is None:
        raise ValueError(f"{path}: an LZ4 file, and neither the lz4 module nor the lz4 command is available; "
                         f"decompress it with `unlz4 {path.name}` and import the .csv")
    done = subprocess.run(["lz4", "-dc", str(path)], capture_output=True, check=False)
    if done.returncode != 0:
        raise ValueError(f"{path}: lz4 could not decompress it: {done.stderr.decode(errors='replace')[:200]}")
    return done.stdout.decode("utf-8")


def import_asset_ctxs(samples: OiSamples, paths, coins=None) -> int:
    """Add the open interest and mark of `coins` (None: all) from archive files to `samples`; returns
    the rows taken. ValueError names the file and line of a row that cannot be read."""
    taken = 0
    for path in map(Path, paths):
        reader = csv.DictReader(io.StringIO(read_text(path)))
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
        if missing:
            raise ValueError(f"{path}: not an asset_ctxs file: no column(s) {', '.join(missing)} in its header")
        for row in reader:
            if coins is not None and row["coin"] not in coins:
                continue
            try:
                samples.add(row["coin"], archive_time(row["time"]), float(row["open_interest"]), float(row["mark_px"]))
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{path}:{reader.line_num}: unreadable row ({exc})") from None
            taken += 1
    return taken
