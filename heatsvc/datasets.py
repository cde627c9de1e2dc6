"""Bundled market data: the recorded Binance HYPEUSDT crash window and seeded synthetic markets.

Both come as the engine's bars (see heatsvc.model.bars). The recorded files are Binance's public USD-M
futures kline rows and daily "metrics" archive rows, 2025-09-28 to 2025-10-16, taken unchanged from
the public repository Lazzmatazz74/btc-futures-data (data/HYPEUSDT-5m.csv, data/HYPEUSDT-metrics.csv)
and stored gzip-compressed in heatsvc/data/.
"""
from __future__ import annotations

import csv
import gzip
import math
import zlib
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

import numpy as np

from .model import bars as barlib
from .model.bars import STEP_MS

RECORDED_SYMBOL = "HYPEUSDT"
RECORDED_MARKET = f"binance:{RECORDED_SYMBOL}"
KLINES_FILE = "binance-um-HYPEUSDT-klines-5m.csv.gz"
METRICS_FILE = "binance-um-HYPEUSDT-metrics-5m.csv.gz"


def read_rows(name: str) -> list[dict[str, str]]:
    """Rows of one bundled CSV file, as dicts of strings (header names as keys)."""
    with resources.files("heatsvc.data").joinpath(name).open("rb") as raw:
        with gzip.open(raw, "rt", newline="") as text:
            return list(csv.DictReader(text))


def metrics_time_ms(create_time: str) -> int:
    """A metrics row's create_time ('YYYY-MM-DD HH:MM:SS', UTC) in milliseconds."""
    dt = datetime.strptime(create_time, "%Y-%m-%d %H:%M:%S").replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def recorded_bars() -> dict[str, np.ndarray]:
    """The recorded HYPEUSDT bars: klines joined with open interest and top-trader position ratio.

    A metrics snapshot at time X is the open interest at the end of the bar opening at X - 5 min.
    The klines carry no total quote volume, so quote_volume is missing (NaN).
    """
    klines = read_rows(KLINES_FILE)
    t = np.array([int(r["open_time"]) for r in klines], dtype=np.int64)
    bars = {"time_ms": t}
    for field, column in (("open", "open"), ("high", "high"), ("low", "low"), ("close", "close"),
                          ("volume", "volume"), ("taker_buy_volume", "taker_buy_base")):
        bars[field] = np.array([float(r[column]) for r in klines])
    oi = np.full(len(t), np.nan)
    ratio = np.full(len(t), np.nan)
    index = {int(ms): i for i, ms in enumerate(t)}
    for r in read_rows(METRICS_FILE):
        i = index.get(metrics_time_ms(r["create_time"]) - STEP_MS)
        if i is not None:
            oi[i] = float(r["sum_open_interest"])
            ratio[i] = float(r["sum_toptrader_long_short_ratio"])
    bars["open_interest"] = oi
    bars["long_short_ratio"] = ratio
    bars["quote_volume"] = np.full(len(t), np.nan)
    return bars


# Synthetic markets: what each symbol looks like (price near the end, open interest in base units,
# typical 5-minute volume), so every lookback up to a year has data.
SYMBOLS = {
    "BTCUSDT": (95_000.0, 85_000.0, 900.0),
    "ETHUSDT": (3_400.0, 2_200_000.0, 25_000.0),
    "SOLUSDT": (180.0, 9_000_000.0, 90_000.0),
}
EXCHANGE_SCALE = {"binance": 1.0, "bybit": 0.55, "okx": 0.35}


def smooth(x: np.ndarray, width: int) -> np.ndarray:
    """Centred moving average of `width` samples, edges padded with the end values."""
    width = max(1, min(width, len(x)))
    padded = np.pad(x, (width // 2, width - 1 - width // 2), mode="edge")
    return np.convolve(padded, np.ones(width) / width, "valid")


def synthetic_bars(symbol: str = "BTCUSDT", exchange: str = "binance", *, days: float = 365,
                   end_ms: int = 1_760_572_800_000, seed: int | None = None,
                   step_ms: int = STEP_MS) -> dict[str, np.ndarray]:
    """A seeded, plausible market: log-normal price with volatility clusters and rare violent wicks,
    open interest that builds in trends and flushes on wicks, taker flow and long/short ratios.

    The price path depends only on the symbol (and seed), so exchanges of one symbol move together
    and differ by a small basis, their own volume and their own open interest.
    """
    base_price, base_oi, base_vol = SYMBOLS.get(symbol, (100.0, 1_000_000.0, 10_000.0))
    sym_seed = zlib.crc32(symbol.encode()) if seed is None else seed
    n = int(round(days * 86_400_000 / step_ms))
    if n < 1:
        raise ValueError(f"days: {days} gives no bars at a {step_ms // 1000} s step")
    rng = np.random.default_rng(sym_seed)
    vol_regime = np.exp(np.convolve(rng.normal(0, 0.35, n + 288), np.ones(288) / 17, "valid")[:n])
    sigma = 0.0016 * vol_regime
    ret = rng.standard_t(4, n) * sigma / np.sqrt(2) + rng.normal(0, 2e-5, 1).item()
    logp = np.cumsum(ret)
    logp -= 0.85 * smooth(logp, 8640)
    logp += np.log(base_price) - logp[-1]
    close = np.exp(logp)
    open_ = np.empty(n)
    open_[0] = close[0] / np.exp(ret[0])
    open_[1:] = close[:-1]
    wick = np.abs(rng.normal(0, 1, (2, n))) * sigma * 0.8
    crash = rng.random(n) < 1 / 2500
    wick[0, crash] += rng.uniform(0.03, 0.10, crash.sum())
    squeeze = rng.random(n) < 1 / 4000
    wick[1, squeeze] += rng.uniform(0.02, 0.07, squeeze.sum())
    high = np.maximum(open_, close) * np.exp(wick[1])
    low = np.minimum(open_, close) * np.exp(-wick[0])

    ex = np.random.default_rng([sym_seed, zlib.crc32(exchange.encode())])
    scale = EXCHANGE_SCALE.get(exchange, 0.5)
    basis = np.exp(ex.normal(0, 1.5e-4, n))
    open_, high, low, close = (x * basis for x in (open_, high, low, close))
    activity = vol_regime * (1 + 40 * np.abs(ret) / sigma.mean() * 0.02) * (1 + 6 * (crash | squeeze))
    volume = base_vol * scale * activity * ex.lognormal(0, 0.35, n)
    buy_share = np.clip(0.5 + 35 * ret + ex.normal(0, 0.06, n), 0.02, 0.98)
    taker = volume * buy_share
    vwap = np.clip((open_ + high + low + 2 * close) / 5 * (1 + ex.normal(0, 2e-4, n)), low, high)
    quote = volume * vwap
    doi = ex.normal(0.00015, 0.0012, n) + 0.4 * np.abs(ret) - 0.002 * (vol_regime - 1)
    doi[crash | squeeze] -= ex.uniform(0.04, 0.12, (crash | squeeze).sum())
    log_oi = np.cumsum(doi)
    log_oi -= smooth(log_oi, 2016)
    oi = base_oi * scale * np.exp(log_oi - log_oi[-1])
    log_ratio = np.cumsum(ex.normal(0, 0.01, n) - 0.5 * ret)
    ratio = np.exp(0.2 + log_ratio - smooth(log_ratio, 2016))
    t = (end_ms // step_ms * step_ms) - step_ms * np.arange(n, 0, -1, dtype=np.int64)
    return {"time_ms": t, "open": open_, "high": high, "low": low, "close": close,
            "volume": volume, "taker_buy_volume": taker, "quote_volume": quote,
            "open_interest": oi, "long_short_ratio": ratio}



def read_bars_file(path: str) -> dict[str, np.ndarray]:
    """Bars from an .npz (arrays named as heatsvc.model.bars.FIELDS) or a CSV with those column names
    (an empty cell is a missing value); the engine then checks every bar."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"--data: {path!r} is not 'recorded', 'synthetic:SYMBOL' or an existing .npz/.csv file")
    if p.suffix.lower() == ".npz":
        try:
            with np.load(p, allow_pickle=False) as npz:
                return {k: npz[k] for k in npz.files}
        except (OSError, ValueError) as exc:
            raise ValueError(f"--data: {path!r} is not a readable .npz file: {exc}") from None
    if p.suffix.lower() != ".csv":
        raise ValueError(f"--data: {path!r} must be a .npz or .csv bars file")
    with open(p, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        names = [n.strip() for n in reader.fieldnames or []]
        missing = [n for n in barlib.REQUIRED if n not in names]
        if missing:
            raise ValueError(f"--data: {path!r} lacks column(s) {', '.join(missing)} "
                             f"(columns are named as heatsvc.model.bars.FIELDS: {', '.join(barlib.FIELDS)})")
        columns: dict[str, list] = {n: [] for n in names if n in barlib.FIELDS}
        for line, row in enumerate(reader, start=2):
            for name in columns:
                cell = (row.get(name) or "").strip()
                try:
                    columns[name].append(int(cell) if name == "time_ms" else float(cell) if cell else math.nan)
                except ValueError:
                    raise ValueError(f"--data: {path!r} line {line}: {name} {cell!r} is not a number") from None
    if not columns["time_ms"]:
        raise ValueError(f"--data: {path!r} holds no bars")
    return {k: np.array(v, dtype=np.int64 if k == "time_ms" else np.float64) for k, v in columns.items()}


def load(data: str, market: str | None = None, end_ms: int | None = None) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    """Bars named by a --data option, by market, and the view's market name: "recorded" (the crash),
    "synthetic:SYMBOL" (with --market exchange:SYMBOL or all:SYMBOL), or a .npz/.csv bars file.
    Bars opening at or after end_ms are left out."""
    market, by_market = _load(data, market)
    if end_ms is not None:
        for name, b in by_market.items():
            keep = np.asarray(b["time_ms"]) < end_ms
            if not keep.any():
                raise ValueError(f"--end {barlib.format_time(end_ms)}: {name} has no bars before it")
            by_market[name] = {k: np.asarray(v)[keep] for k, v in b.items()}
    return market, by_market


def _load(data: str, market: str | None) -> tuple[str, dict[str, dict[str, np.ndarray]]]:
    if data == "recorded":
        if market not in (None, RECORDED_MARKET):
            raise ValueError(f"--market: the recorded data is {RECORDED_MARKET}, not {market}")
        return RECORDED_MARKET, {RECORDED_MARKET: recorded_bars()}
    if data == "synthetic" or data.startswith("synthetic:"):
        symbol = data.partition(":")[2] or (market or "").partition(":")[2]
        exchange = (market or f"binance:{symbol}").partition(":")[0]
        if symbol not in SYMBOLS:
            raise ValueError(f"--data: synthetic symbol {symbol!r} is unknown; use synthetic:SYMBOL with one of "
                             f"{', '.join(SYMBOLS)}")
        market = market or f"binance:{symbol}"
        if market.partition(":")[2] != symbol or exchange not in (*EXCHANGE_SCALE, "all"):
            raise ValueError(f"--market: {market!r} does not fit synthetic {symbol}; use exchange:{symbol} with an "
                             f"exchange of {', '.join(EXCHANGE_SCALE)}, or all:{symbol}")
        chosen = tuple(EXCHANGE_SCALE) if exchange == "all" else (exchange,)
        return market, {f"{ex}:{symbol}": synthetic_bars(symbol, ex) for ex in chosen}
    label = market or Path(data).stem
    return label, {label: read_bars_file(data)}
