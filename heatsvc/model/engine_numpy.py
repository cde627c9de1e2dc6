"""The "numpy" backend: per-bar quantities vectorised over bars, then a loop over bars in which
each step of MODEL.md section 6 is one array operation over the whole book.

This is the fair peer a numpy user would write; the Cython kernel is measured against it.
"""
from __future__ import annotations

import math

import numpy as np


def bar_quantities(b: dict[str, np.ndarray], oi_prev: float):
    """MODEL.md section 5 for every bar at once: entry price, long share, change of open interest and
    OI_prev (the last known open interest before each bar, NaN where none is known)."""
    h, lo, c, vol = b["high"], b["low"], b["close"], b["volume"]
    with np.errstate(invalid="ignore", divide="ignore"):
        vwap_ok = (b["quote_volume"] > 0) & (vol > 0)
        e = np.where(vwap_ok, b["quote_volume"] / vol, (h + lo + c) / 3)
        e = np.minimum(np.maximum(e, lo), h)
        taker = np.where(np.isnan(b["taker_buy_volume"]), vol / 2, b["taker_buy_volume"])
        taker_share = np.where(vol > 0, taker / np.where(vol > 0, vol, 1), 0.5)
        r = b["long_short_ratio"]
        ok = (r > 0) & np.isfinite(r)
        ratio_share = np.where(ok, r / (1 + np.where(ok, r, 0)), taker_share)
    lam = np.clip(0.5 * taker_share + 0.5 * ratio_share, 0.1, 0.9)
    oi = b["open_interest"]
    known = np.isfinite(oi)
    # last known open interest strictly before each bar (carried over gaps in the OI series)
    last = np.maximum.accumulate(np.where(known, np.arange(len(oi)), -1))
    prev_idx = np.concatenate(([-1], last[:-1]))
    prev = np.where(prev_idx >= 0, oi[np.maximum(prev_idx, 0)], oi_prev)
    d_oi = np.where(known & np.isfinite(prev), oi - prev, 0.0)
    return e, lam, d_oi, prev


def evolve(view) -> dict:
    p = view.params
    J, K, R, C = len(p.tiers), view.book_rows, view.rows, view.columns
    decay = p.decay_factors()[:, None]
    weights = np.array([t.weight for t in p.tiers])
    long_factor = np.array([(1 - 1 / t.leverage) / (1 - t.maintenance_margin) for t in p.tiers])
    short_factor = np.array([(1 + 1 / t.leverage) / (1 + t.maintenance_margin) for t in p.tiers])
    tier_idx = np.arange(J)
    b = view.bars
    e_all, lam_all, doi_all, prev_all = bar_quantities(b, view.oi_prev)

    book = np.zeros((2, J, K))  # side (0 long, 1 short), tier, internal row
    shown = slice(view.offset, view.offset + R)
    out = {"long": np.zeros((R, C)), "short": np.zeros((R, C)), "swept_long": np.zeros(C),
           "swept_short": np.zeros(C), "off_range_long": np.zeros(C), "off_range_short": np.zeros(C),
           "candles": np.full((C, 4), np.nan)}
    tiers = np.zeros((2, J, R, C)) if view.per_tier else None
    acc = dict(deposited=0.0, decayed=0.0, swept=0.0, closed=0.0)

    def snapshot(c):
        visible = book[:, :, shown]
        grid = visible.sum(axis=1)
        out["long"][:, c], out["short"][:, c] = grid
        off = book.sum(axis=(1, 2)) - grid.sum(axis=1)
        out["off_range_long"][c], out["off_range_short"][c] = off
        if tiers is not None:
            tiers[:, :, :, c] = visible

    cols = view.column.tolist()
    lows, highs, closes = b["low"].tolist(), b["high"].tolist(), b["close"].tolist()
    col = 0
    for i, bar_col in enumerate(cols):
        while col < bar_col:
            snapshot(col)
            col += 1
        before = book.sum()
        book *= decay
        acc["decayed"] += before - book.sum()
        r_low = min(max(math.floor(math.log(lows[i] / view.p_lo) / view.log_rho) + view.offset, 0), K)
        r_high = min(max(math.floor(math.log(highs[i] / view.p_lo) / view.log_rho) + view.offset, -1), K - 1)
        swept_long = book[0, :, r_low:].sum()
        book[0, :, r_low:] = 0.0
        swept_short = book[1, :, :r_high + 1].sum()
        book[1, :, :r_high + 1] = 0.0
        acc["swept"] += swept_long + swept_short
        d_oi = doi_all[i]
        market = prev_all[i] * closes[i]
        if d_oi < 0 and market > 0:
            residual = max(0.0, -d_oi * closes[i] - swept_long - swept_short)
            total = book.sum()
            if total > 0:
                f = 1 - min(1.0, residual / market)
                book *= f
                acc["closed"] += total * (1 - f)
        elif d_oi > 0:
            e, lam = e_all[i], lam_all[i]
            notional = d_oi * e
            for side, share, factor in ((0, lam, long_factor), (1, 1 - lam, short_factor)):
                amount = share * weights * notional
                x = np.log(e * factor / view.p_lo) / view.log_rho - 0.5
                k0 = np.floor(x).astype(np.int64)
                phi = x - k0
                book[side, tier_idx, k0 + view.offset] += amount * (1 - phi)
                book[side, tier_idx, k0 + 1 + view.offset] += amount * phi
                acc["deposited"] += amount.sum()
        out["swept_long"][bar_col] += swept_long
        out["swept_short"][bar_col] += swept_short
    while col < C:
        snapshot(col)
        col += 1

    if len(cols):  # column candles: open of the first bar, max high, min low, close of the last
        column = view.column
        starts = np.flatnonzero(np.diff(column, prepend=-1))
        ends = np.append(starts[1:], len(column)) - 1
        present = column[starts]
        out["candles"][present] = np.column_stack([
            b["open"][starts], np.maximum.reduceat(b["high"], starts),
            np.minimum.reduceat(b["low"], starts), b["close"][ends]])
    out["balance"] = dict(acc, book=float(book.sum()))
    if tiers is not None:
        out["per_tier_long"], out["per_tier_short"] = tiers
    return out
