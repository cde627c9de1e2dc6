"""Seeded random markets for the engine tests: gaps, missing open interest, zero-volume and flat
bars, missing optional fields, violent wicks, and prices anywhere from 1e-6 to 1e6."""
from __future__ import annotations

import numpy as np

STEP = 300_000
T0 = 1_700_000_000_000 // STEP * STEP


def random_market(seed: int, n: int | None = None, price: float | None = None) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300)) if n is None else n
    price = 10 ** rng.uniform(-6, 6) if price is None else price
    sigma = rng.uniform(0.001, 0.02)
    close = price * np.exp(np.cumsum(rng.normal(0, sigma, n)))
    open_ = np.concatenate(([close[0] * np.exp(rng.normal(0, sigma))], close[:-1]))
    wick = np.abs(rng.normal(0, sigma, (2, n))) + (rng.random((2, n)) < 0.03) * rng.uniform(0.02, 0.2, (2, n))
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    flat = rng.random(n) < 0.05
    open_[flat] = high[flat] = low[flat] = close[flat]
    volume = rng.lognormal(3, 1, n)
    volume[rng.random(n) < 0.05] = 0.0
    taker = volume * rng.random(n)
    taker[rng.random(n) < 0.1] = np.nan
    quote = volume * rng.uniform(low, high)
    quote[rng.random(n) < 0.2] = np.nan
    oi = 1e3 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    oi[rng.random(n) < 0.1] = np.nan
    ratio = rng.lognormal(0, 0.5, n)
    ratio[rng.random(n) < 0.1] = np.nan
    ratio[rng.random(n) < 0.03] = 0.0
    gaps = rng.random(n) < 0.08
    steps = 1 + gaps * rng.integers(1, 20, n)
    time = T0 + STEP * np.cumsum(steps)
    return {"time_ms": time, "open": open_, "high": high, "low": low, "close": close, "volume": volume,
            "taker_buy_volume": taker, "quote_volume": quote, "open_interest": oi, "long_short_ratio": ratio}
