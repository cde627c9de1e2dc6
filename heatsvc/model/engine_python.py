"""The "python" backend: MODEL.md sections 5-7 as a plain loop over bars and cells.

Small and obvious, slow by design: it is the reference the other backends are tested against.
"""
from __future__ import annotations

import math

import numpy as np


def entry_price(o, h, lo, c, volume, quote_volume):
    """MODEL.md section 5: VWAP when both volumes are > 0, else typical price; clamped into [low, high]."""
    if quote_volume > 0 and volume > 0:  # NaN compares False: a missing quote volume falls back
        e = quote_volume / volume
    else:
        e = (h + lo + c) / 3
    return min(max(e, lo), h)


def long_share(volume, taker_buy_volume, ratio):
    """MODEL.md section 5: lambda, the long share of new leveraged exposure."""
    if volume > 0:
        taker = volume / 2 if math.isnan(taker_buy_volume) else taker_buy_volume
        taker_share = taker / volume
    else:
        taker_share = 0.5
    ratio_share = ratio / (1 + ratio) if ratio > 0 and math.isfinite(ratio) else taker_share
    return min(max(0.5 * taker_share + 0.5 * ratio_share, 0.1), 0.9)


def evolve(view) -> dict:
    p = view.params
    tiers = p.tiers
    J, K, R, C = len(tiers), view.book_rows, view.rows, view.columns
    decay = [2.0 ** (-(p.step_ms / 86_400_000) / t.half_life_days) for t in tiers]
    book = {side: [[0.0] * K for _ in range(J)] for side in ("long", "short")}
    grids = {side: [[0.0] * C for _ in range(R)] for side in ("long", "short")}
    tier_grids = {side: [[[0.0] * C for _ in range(R)] for _ in range(J)] for side in ("long", "short")}
    off = {side: [0.0] * C for side in ("long", "short")}
    swept_col = {side: [0.0] * C for side in ("long", "short")}
    candles = [[math.nan] * 4 for _ in range(C)]
    acc = dict(deposited=0.0, decayed=0.0, swept=0.0, closed=0.0)

    def u(price):
        return math.log(price / view.p_lo) / view.log_rho

    def row(price):  # internal row of a price, clamped to the book
        return min(max(math.floor(u(price)) + view.offset, -1), K)

    def snapshot(c):
        for side in ("long", "short"):
            shown = 0.0
            for r in range(R):
                k = r + view.offset
                cell = 0.0
                for j in range(J):
                    cell += book[side][j][k]
                    tier_grids[side][j][r][c] = book[side][j][k]
                grids[side][r][c] = cell
                shown += cell
            off[side][c] = sum(sum(tier) for tier in book[side]) - shown

    b = view.bars
    oi_prev = view.oi_prev
    col = 0
    for i in range(len(b["time_ms"])):
        o, h, lo, c = (float(b[f][i]) for f in ("open", "high", "low", "close"))
        vol, oi = float(b["volume"][i]), float(b["open_interest"][i])
        bar_col = int(view.column[i])
        while col < bar_col:
            snapshot(col)
            col += 1
        # section 5
        e = entry_price(o, h, lo, c, vol, float(b["quote_volume"][i]))
        lam = long_share(vol, float(b["taker_buy_volume"][i]), float(b["long_short_ratio"][i]))
        market_oi = oi_prev  # OI_prev: the last known open interest before this bar
        if math.isnan(oi):
            d_oi = 0.0
        else:
            d_oi = 0.0 if math.isnan(oi_prev) else oi - oi_prev
            oi_prev = oi
        # 1. decay
        for side in ("long", "short"):
            for j in range(J):
                for k in range(K):
                    before = book[side][j][k]
                    book[side][j][k] = before * decay[j]
                    acc["decayed"] += before - book[side][j][k]
        # 2. sweep
        swept = {"long": 0.0, "short": 0.0}
        for side, ks in (("long", range(max(row(lo), 0), K)), ("short", range(0, min(row(h), K - 1) + 1))):
            for j in range(J):
                for k in ks:
                    swept[side] += book[side][j][k]
                    book[side][j][k] = 0.0
        acc["swept"] += swept["long"] + swept["short"]
        # 3. close: the residual's share of the market's open interest closes that share of every cell
        if d_oi < 0 and market_oi * c > 0:
            residual = max(0.0, -d_oi * c - swept["long"] - swept["short"])
            total = sum(sum(sum(tier) for tier in book[side]) for side in ("long", "short"))
            if total > 0:
                f = 1 - min(1.0, residual / (market_oi * c))
                for side in ("long", "short"):
                    for j in range(J):
                        for k in range(K):
                            book[side][j][k] *= f
                acc["closed"] += total * (1 - f)
        # 4. open
        if d_oi > 0:
            notional = d_oi * e
            for j, t in enumerate(tiers):
                for side, share, liq in (("long", lam, t.long_liquidation), ("short", 1 - lam, t.short_liquidation)):
                    a = share * t.weight * notional
                    x = u(liq(e)) - 0.5
                    k0 = math.floor(x)
                    phi = x - k0
                    book[side][j][k0 + view.offset] += a * (1 - phi)
                    book[side][j][k0 + 1 + view.offset] += a * phi
                    acc["deposited"] += a
        swept_col["long"][bar_col] += swept["long"]
        swept_col["short"][bar_col] += swept["short"]
        candle = candles[bar_col]
        if math.isnan(candle[0]):
            candle[0], candle[1], candle[2] = o, h, lo
        candle[1], candle[2], candle[3] = max(candle[1], h), min(candle[2], lo), c
    while col < C:  # 5. snapshot: the last column, and columns that a gap or the data's end leaves
        snapshot(col)
        col += 1

    out = {
        "long": np.array(grids["long"]), "short": np.array(grids["short"]),
        "swept_long": np.array(swept_col["long"]), "swept_short": np.array(swept_col["short"]),
        "off_range_long": np.array(off["long"]), "off_range_short": np.array(off["short"]),
        "candles": np.array(candles).reshape(C, 4),
        "balance": dict(acc, book=sum(sum(sum(tier) for tier in book[s]) for s in ("long", "short"))),
    }
    if view.per_tier:
        out["per_tier_long"] = np.array(tier_grids["long"])
        out["per_tier_short"] = np.array(tier_grids["short"])
    return out
