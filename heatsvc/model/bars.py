"""Bars as MODEL.md section 1 defines them: field names, normalisation and the validity rules.

Every path into the model (the engine, the store, the exchange clients) checks bars here, so an
invalid bar is rejected at the door with the market, time and field named.
"""
from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone

import numpy as np

PRICES = ("open", "high", "low", "close")
REQUIRED = ("time_ms", *PRICES, "volume", "open_interest")
OPTIONAL = ("taker_buy_volume", "quote_volume", "long_short_ratio")
FIELDS = ("time_ms", *PRICES, "volume", "taker_buy_volume", "quote_volume", "open_interest",
          "long_short_ratio")
STEP_MS = 300_000


def format_time(ms: int) -> str:
    """UTC ISO time of a millisecond timestamp, as errors and logs print it."""
    return datetime.fromtimestamp(int(ms) / 1000, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_time(text: str, option: str = "--end") -> int:
    """ISO time (UTC unless an offset is given) in milliseconds."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValueError(f"{option}: {text!r} is not an ISO time such as 2025-10-11T00:00Z") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def normalize(bars: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Contiguous float64 arrays (int64 times) of equal length; absent optional fields become NaN.

    Raises ValueError naming a missing, unknown or wrongly sized field.
    """
    missing = [f for f in REQUIRED if f not in bars]
    if missing:
        raise ValueError(f"bars: missing required field(s) {', '.join(missing)}")
    unknown = sorted(set(bars) - set(FIELDS))
    if unknown:
        raise ValueError(f"bars: unknown field(s) {', '.join(unknown)}; expected {', '.join(FIELDS)}")
    out: dict[str, np.ndarray] = {}
    n = None
    for name in FIELDS:
        if name not in bars or bars[name] is None:
            continue
        raw = np.asarray(bars[name])
        if raw.ndim != 1:
            raise ValueError(f"bars: field {name} must be one-dimensional, got shape {raw.shape}")
        if name == "time_ms":
            if raw.dtype.kind not in "iu" and not (raw.dtype.kind == "f" and np.all(np.isfinite(raw))
                                                   and np.all(raw == np.floor(raw))):
                raise ValueError(f"bars: field time_ms must hold integer milliseconds, got {raw.dtype}")
            arr = np.ascontiguousarray(raw, dtype=np.int64)
        else:
            try:
                arr = np.ascontiguousarray(raw, dtype=np.float64)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"bars: field {name} is not numeric: {exc}") from None
        if n is None:
            n = len(arr)
        elif len(arr) != n:
            raise ValueError(f"bars: field {name} has {len(arr)} values, time_ms has {n}")
        out[name] = arr
    for name in OPTIONAL:
        if name not in out:
            out[name] = np.full(n, np.nan)
    return out


def invalid_rows(b: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows that break MODEL.md section 1, and for each the first offending field.

    `b` is normalised. Returns (indices, field names); both empty when every bar is valid.
    NaN is 'missing' for open_interest and the optional fields, invalid everywhere else.
    """
    o, h, lo, c = (b[f] for f in PRICES)
    with np.errstate(invalid="ignore"):
        # fast path: low > 0, high finite and low <= open, close <= high imply every price rule
        ok = (lo > 0) & (h < np.inf) & (lo <= np.minimum(o, c)) & (h >= np.maximum(o, c))
        ok &= (b["volume"] >= 0) & (b["volume"] < np.inf)
        for name in ("taker_buy_volume", "quote_volume", "open_interest"):
            ok &= ~((b[name] < 0) | (b[name] == np.inf))
    if ok.all():
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=object)
    checks = []
    with np.errstate(invalid="ignore"):
        for name in PRICES:
            p = b[name]
            checks.append((name, ~((p > 0) & (p < np.inf))))
        checks.append(("high", h < np.maximum(o, c)))
        checks.append(("low", lo > np.minimum(o, c)))
        v = b["volume"]
        checks.append(("volume", ~((v >= 0) & (v < np.inf))))
        for name in ("taker_buy_volume", "quote_volume", "open_interest"):
            x = b[name]
            checks.append((name, (x < 0) | (x == np.inf)))
    bad = checks[0][1].copy()
    for _, mask in checks[1:]:
        bad |= mask
    rows = np.flatnonzero(bad)
    if len(rows) == 0:
        return rows, np.empty(0, dtype=object)
    fields = np.empty(len(rows), dtype=object)
    for name, mask in reversed(checks):
        fields[mask[rows]] = name
    return rows, fields


def describe(b: Mapping[str, np.ndarray], row: int, field: str) -> str:
    """Why one bar is invalid, in words that name the field and its value."""
    value = b[field][row]
    if field == "high":
        if np.isfinite(value) and value > 0:
            return f"high {value:g} is below max(open, close) {max(b['open'][row], b['close'][row]):g}"
    if field == "low":
        if np.isfinite(value) and value > 0:
            return f"low {value:g} is above min(open, close) {min(b['open'][row], b['close'][row]):g}"
    if field in PRICES:
        return f"{field} {value:g} is not a finite positive price"
    return f"{field} {value:g} is negative or infinite"


def check(bars: Mapping[str, np.ndarray], *, market: str = "bars", step_ms: int = STEP_MS) -> dict[str, np.ndarray]:
    """Normalise and validate bars; raise ValueError naming market, time and field of the first bad one."""
    b = check_times(normalize(bars), market=market, step_ms=step_ms)
    check_values(b, market=market)
    return b


def check_times(b: dict[str, np.ndarray], *, market: str, step_ms: int) -> dict[str, np.ndarray]:
    """Times must be step-aligned and strictly increasing."""
    t = b["time_ms"]
    if len(t) == 0:
        raise ValueError(f"{market}: no bars")
    steps = np.diff(t)
    if t[0] % step_ms == 0 and (steps == step_ms).all():  # the common case: aligned, no gaps
        return b
    misaligned = np.flatnonzero(t % step_ms)
    if len(misaligned):
        i = misaligned[0]
        raise ValueError(f"{market} bar {format_time(t[i])}: time_ms {t[i]} is not aligned to the "
                         f"{step_ms // 1000} s step")
    order = np.flatnonzero(steps <= 0)
    if len(order):
        i = order[0] + 1
        raise ValueError(f"{market} bar {format_time(t[i])}: time_ms is not strictly increasing "
                         f"(follows {format_time(t[i - 1])})")
    return b


def check_values(b: Mapping[str, np.ndarray], *, market: str) -> None:
    """Raise ValueError naming market, time and field of the first bar that breaks MODEL.md section 1."""
    rows, fields = invalid_rows(b)
    if len(rows):
        i = int(rows[0])
        raise ValueError(f"{market} bar {format_time(b['time_ms'][i])}: {describe(b, i, fields[0])}")
