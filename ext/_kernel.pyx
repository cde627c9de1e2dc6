# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The "cython" backend: MODEL.md sections 5-7 in one pass over the bars with the GIL released.

Work per bar is constant, not proportional to the book:
* decay and close are per-tier scale factors s[j] (a cell's notional is stored * s[j]), applied lazily;
* per-tier stored totals give the book total B without reading it;
* each side keeps its occupied row range, so a sweep touches only rows that may hold notional and
  a wick that misses the range costs two comparisons (checked against the row edges, no logarithm);
* the book is laid out row-major with the tiers of a row adjacent, so a snapshot reads each row once.
The plain reference is heatsvc/engine_python.py; tests check that both agree on every cell.
"""
import numpy as np

from libc.math cimport log, isnan, isfinite
from libc.stdint cimport int64_t
from libc.string cimport memset

cdef double RENORMALIZE_BELOW = 1e-150  # fold a tier's scale back into its cells before it underflows
cdef double EDGE_MARGIN = 1e-9          # relative margin on row edges: beyond it, no logarithm is needed


cdef enum:
    MAX_TIERS = 32                      # heatsvc.model.engine.MAX_TIERS


cdef struct Side:
    double* book        # K x J, row-major: the tiers of a row are adjacent
    double* total       # per tier, sum of stored cells
    Py_ssize_t lo, hi   # occupied internal rows [lo, hi]; empty when hi < lo


cdef inline Py_ssize_t ifloor(double x) noexcept nogil:
    cdef Py_ssize_t k = <Py_ssize_t>x
    return k - 1 if x < k else k


cdef inline double side_total(const Side* s, const double* scale, Py_ssize_t J) noexcept nogil:
    cdef Py_ssize_t j
    cdef double t = 0.0
    for j in range(J):
        t += scale[j] * s.total[j]
    return t


cdef inline double side_clear(Side* s, const double* scale, Py_ssize_t J, Py_ssize_t K) noexcept nogil:
    """Empty a whole side: zero its occupied rows and totals; return the notional it held."""
    cdef Py_ssize_t j
    cdef double held = side_total(s, scale, J)
    if s.hi >= s.lo:
        memset(s.book + s.lo * J, 0, (s.hi - s.lo + 1) * J * sizeof(double))
    for j in range(J):
        s.total[j] = 0.0
    s.lo = K
    s.hi = -1
    return held


cdef inline double sweep_rows(Side* s, Py_ssize_t a, Py_ssize_t b, const double* scale,
                              Py_ssize_t J) noexcept nogil:
    """Zero rows [a, b] of one side; return the notional removed."""
    cdef Py_ssize_t k, j
    cdef double removed = 0.0
    cdef double per_tier[MAX_TIERS]
    cdef double* cell
    for j in range(J):
        per_tier[j] = 0.0
    for k in range(a, b + 1):
        cell = s.book + k * J
        for j in range(J):
            per_tier[j] += cell[j]
            cell[j] = 0.0
    for j in range(J):
        s.total[j] -= per_tier[j]
        removed += per_tier[j] * scale[j]
    return removed


cdef inline void fold_scale(Side* L, Side* S, double* scale, Py_ssize_t J, Py_ssize_t j) noexcept nogil:
    """Multiply tier j's stored cells by its scale and reset the scale to 1."""
    cdef Py_ssize_t k
    cdef double f = scale[j]
    for k in range(L.lo, L.hi + 1):
        L.book[k * J + j] *= f
    for k in range(S.lo, S.hi + 1):
        S.book[k * J + j] *= f
    L.total[j] *= f
    S.total[j] *= f
    scale[j] = 1.0


cdef inline double snapshot_side(const Side* s, const double* scale, Py_ssize_t J, Py_ssize_t offset,
                                 Py_ssize_t R, Py_ssize_t C, Py_ssize_t c, double* grid,
                                 double* tiers) noexcept nogil:
    """Write column c of one side (shown rows only) into grid (R x C) and, if given, tiers (J x R x C).

    Returns the notional outside the shown rows."""
    cdef Py_ssize_t k, j, a = s.lo, b = s.hi
    cdef double cell, shown = 0.0
    cdef const double* row
    if a < offset:
        a = offset
    if b > offset + R - 1:
        b = offset + R - 1
    for k in range(a, b + 1):
        row = s.book + k * J
        cell = 0.0
        for j in range(J):
            cell += row[j] * scale[j]
        grid[(k - offset) * C + c] = cell
        shown += cell
        if tiers != NULL:
            for j in range(J):
                tiers[(j * R + k - offset) * C + c] = row[j] * scale[j]
    return side_total(s, scale, J) - shown


cdef struct Bars:
    const double* o
    const double* h
    const double* lw
    const double* cl
    const double* vol
    const double* taker
    const double* qvol
    const double* oi
    const double* ratio
    const int64_t* column
    Py_ssize_t n


cdef struct Grid:
    double p_lo, log_rho
    Py_ssize_t offset, R, C, K, J
    const double* edges     # K + 1 internal row edges
    const double* u_long    # per tier: ln(long liquidation / entry) / ln rho
    const double* u_short
    double u_long_min, u_long_max, u_short_min, u_short_max
    const double* weight
    double weight_sum
    const double* decay
    const double* inv_decay


cdef struct Out:
    double* long_grid
    double* short_grid
    double* long_tiers      # NULL unless per-tier grids are asked for
    double* short_tiers
    double* swept_long
    double* swept_short
    double* candles
    double* off_long
    double* off_short
    double* acc             # deposited, decayed, swept, closed, book


cdef inline void snapshot(const Side* L, const Side* S, const double* scale, const Grid* g, Out* out,
                          Py_ssize_t c) noexcept nogil:
    out.off_long[c] = snapshot_side(L, scale, g.J, g.offset, g.R, g.C, c, out.long_grid, out.long_tiers)
    out.off_short[c] = snapshot_side(S, scale, g.J, g.offset, g.R, g.C, c, out.short_grid, out.short_tiers)


cdef void run(const Bars* b, double oi_prev, const Grid* g, Side* L, Side* S, double* scale,
              Out* out) noexcept nogil:
    # Hot state lives in locals: the extension is built without strict aliasing, so fields read
    # through pointers would be reloaded after every store into the book.
    cdef Py_ssize_t i, j, k0, r, col = 0, bar_col, J = g.J, K = g.K, offset = g.offset
    cdef double e, lam, taker_share, ratio_share, d_oi, market, x, ue, phi, a, n, n_j, swl, sws, resid, B, f, v
    cdef double deposited = 0.0, decayed = 0.0, swept = 0.0, closed = 0.0
    cdef double log_rho = g.log_rho, p_lo = g.p_lo
    cdef double* lbook = L.book
    cdef double* sbook = S.book
    cdef double* ltot = L.total
    cdef double* stot = S.total
    cdef const double* weight = g.weight
    cdef const double* u_long = g.u_long
    cdef const double* u_short = g.u_short
    cdef const double* decay = g.decay
    cdef const double* edges = g.edges
    cdef double* cdl
    cdef double inv_scale[MAX_TIERS]
    cdef double inv_log_rho = 1 / log_rho, log_p_lo = log(p_lo)
    for j in range(J):
        inv_scale[j] = 1 / scale[j]
    for i in range(b.n):
        bar_col = b.column[i]
        while col < bar_col:
            snapshot(L, S, scale, g, out, col)
            col += 1
        # section 5: change of open interest (entry price and long share only matter on deposits)
        d_oi = 0.0
        market = oi_prev * b.cl[i]  # the market's open interest before this bar, in quote currency
        if not isnan(b.oi[i]):
            if not isnan(oi_prev):
                d_oi = b.oi[i] - oi_prev
            oi_prev = b.oi[i]
        # 1. decay
        B = 0.0
        for j in range(J):
            B += scale[j] * (ltot[j] + stot[j]) * (1 - decay[j])
            scale[j] *= decay[j]
            inv_scale[j] *= g.inv_decay[j]
            if scale[j] < RENORMALIZE_BELOW:
                fold_scale(L, S, scale, J, j)
                inv_scale[j] = 1.0
        decayed += B
        # 2. sweep: longs at rows >= row(low), shorts at rows <= row(high)
        swl = 0.0
        if L.hi >= L.lo and b.lw[i] < edges[L.hi + 1] * (1 + EDGE_MARGIN):
            r = ifloor(log(b.lw[i] / p_lo) / log_rho) + offset
            if r <= L.lo:
                swl = side_clear(L, scale, J, K)
            elif r <= L.hi:
                swl = sweep_rows(L, r, L.hi, scale, J)
                L.hi = r - 1
        sws = 0.0
        if S.hi >= S.lo and b.h[i] > edges[S.lo] * (1 - EDGE_MARGIN):
            r = ifloor(log(b.h[i] / p_lo) / log_rho) + offset
            if r >= S.hi:
                sws = side_clear(S, scale, J, K)
            elif r >= S.lo:
                sws = sweep_rows(S, S.lo, r, scale, J)
                S.lo = r + 1
        swept += swl + sws
        out.swept_long[bar_col] += swl
        out.swept_short[bar_col] += sws
        # 3. close the residual of a fall in open interest: its share of the market closes that share of every cell
        if d_oi < 0:
            resid = -d_oi * b.cl[i] - swl - sws
            B = side_total(L, scale, J) + side_total(S, scale, J)
            if resid > 0 and B > 0 and market > 0:
                if resid >= market:
                    closed += side_clear(L, scale, J, K) + side_clear(S, scale, J, K)
                    for j in range(J):
                        scale[j] = 1.0
                        inv_scale[j] = 1.0
                else:
                    f = 1 - resid / market
                    closed += B - B * f
                    v = 1 / f
                    for j in range(J):
                        scale[j] *= f
                        inv_scale[j] *= v
                        if scale[j] < RENORMALIZE_BELOW:
                            fold_scale(L, S, scale, J, j)
                            inv_scale[j] = 1.0
        # 4. open: each tier's share at its liquidation prices, split between the two nearest row centres
        elif d_oi > 0:
            if b.qvol[i] > 0 and b.vol[i] > 0:
                e = b.qvol[i] / b.vol[i]
            else:
                e = (b.h[i] + b.lw[i] + b.cl[i]) / 3
            if e < b.lw[i]:
                e = b.lw[i]
            if e > b.h[i]:
                e = b.h[i]
            if b.vol[i] > 0:
                taker_share = (b.vol[i] / 2 if isnan(b.taker[i]) else b.taker[i]) / b.vol[i]
            else:
                taker_share = 0.5
            v = b.ratio[i]
            ratio_share = v / (1 + v) if v > 0 and isfinite(v) else taker_share
            lam = 0.5 * taker_share + 0.5 * ratio_share
            lam = 0.1 if lam < 0.1 else (0.9 if lam > 0.9 else lam)
            n = d_oi * e
            ue = (log(e) - log_p_lo) * inv_log_rho + (offset - 0.5)
            for j in range(J):
                n_j = n * weight[j] * inv_scale[j]   # the tier's notional in stored units
                a = lam * n_j
                x = ue + u_long[j]
                k0 = ifloor(x)
                phi = x - k0
                lbook[k0 * J + j] += a * (1 - phi)
                lbook[(k0 + 1) * J + j] += a * phi
                ltot[j] += a
                a = n_j - a
                x = ue + u_short[j]
                k0 = ifloor(x)
                phi = x - k0
                sbook[k0 * J + j] += a * (1 - phi)
                sbook[(k0 + 1) * J + j] += a * phi
                stot[j] += a
            deposited += n * g.weight_sum
            # floor is monotonic, so the tiers' extreme offsets give the rows just written
            L.lo = min(L.lo, ifloor(ue + g.u_long_min))
            L.hi = max(L.hi, ifloor(ue + g.u_long_max) + 1)
            S.lo = min(S.lo, ifloor(ue + g.u_short_min))
            S.hi = max(S.hi, ifloor(ue + g.u_short_max) + 1)
        # the column's candle
        cdl = out.candles + 4 * bar_col
        if isnan(cdl[0]):
            cdl[0] = b.o[i]
            cdl[1] = b.h[i]
            cdl[2] = b.lw[i]
        if b.h[i] > cdl[1]:
            cdl[1] = b.h[i]
        if b.lw[i] < cdl[2]:
            cdl[2] = b.lw[i]
        cdl[3] = b.cl[i]
    while col < g.C:  # 5. snapshot the last column, and the columns a gap or the data's end leaves
        snapshot(L, S, scale, g, out, col)
        col += 1
    out.acc[0] = deposited
    out.acc[1] = decayed
    out.acc[2] = swept
    out.acc[3] = closed
    out.acc[4] = side_total(L, scale, J) + side_total(S, scale, J)


cdef const double* ptr(const double[::1] a) noexcept:
    return &a[0] if a.shape[0] else NULL


cdef double* mptr(double[::1] a) noexcept:
    return &a[0] if a.shape[0] else NULL


def evolve_view(view):
    """Run a prepared heatsvc.model.engine.View through the kernel; returns the backend result dict."""
    p = view.params
    cdef Py_ssize_t J = len(p.tiers), K = view.book_rows, R = view.rows, C = view.columns
    lr = view.log_rho
    u_long = np.array([log((1 - 1 / t.leverage) / (1 - t.maintenance_margin)) / lr for t in p.tiers])
    u_short = np.array([log((1 + 1 / t.leverage) / (1 + t.maintenance_margin)) / lr for t in p.tiers])
    weight = np.array([t.weight for t in p.tiers])
    decay = p.decay_factors()
    inv_decay = 1 / decay
    edges = view.p_lo * np.exp(lr * (np.arange(K + 1) - view.offset))
    out = {"long": np.zeros((R, C)), "short": np.zeros((R, C)), "swept_long": np.zeros(C),
           "swept_short": np.zeros(C), "off_range_long": np.zeros(C), "off_range_short": np.zeros(C),
           "candles": np.full((C, 4), np.nan)}
    if view.per_tier:
        out["per_tier_long"], out["per_tier_short"] = np.zeros((J, R, C)), np.zeros((J, R, C))
    acc = np.zeros(5)
    books = np.zeros((2, K * J))
    totals = np.zeros((2, J))
    scale = np.ones(J)
    column = np.ascontiguousarray(view.column, dtype=np.int64)

    cdef Bars bars
    src = view.bars
    bars.o, bars.h, bars.lw, bars.cl = ptr(src["open"]), ptr(src["high"]), ptr(src["low"]), ptr(src["close"])
    bars.vol, bars.taker, bars.qvol = ptr(src["volume"]), ptr(src["taker_buy_volume"]), ptr(src["quote_volume"])
    bars.oi, bars.ratio = ptr(src["open_interest"]), ptr(src["long_short_ratio"])
    cdef const int64_t[::1] col_view = column
    bars.column = &col_view[0] if column.shape[0] else NULL
    bars.n = column.shape[0]
    cdef Grid g
    g.p_lo, g.log_rho, g.offset, g.R, g.C, g.K, g.J = view.p_lo, lr, view.offset, R, C, K, J
    g.edges, g.u_long, g.u_short, g.weight, g.decay = ptr(edges), ptr(u_long), ptr(u_short), ptr(weight), ptr(decay)
    g.inv_decay = ptr(inv_decay)
    g.weight_sum = weight.sum()
    g.u_long_min, g.u_long_max, g.u_short_min, g.u_short_max = u_long.min(), u_long.max(), u_short.min(), u_short.max()
    cdef Out o
    o.long_grid, o.short_grid = mptr(out["long"].reshape(-1)), mptr(out["short"].reshape(-1))
    o.long_tiers = mptr(out["per_tier_long"].reshape(-1)) if view.per_tier else NULL
    o.short_tiers = mptr(out["per_tier_short"].reshape(-1)) if view.per_tier else NULL
    o.swept_long, o.swept_short = mptr(out["swept_long"]), mptr(out["swept_short"])
    o.off_long, o.off_short = mptr(out["off_range_long"]), mptr(out["off_range_short"])
    o.candles, o.acc = mptr(out["candles"].reshape(-1)), mptr(acc)
    cdef Side L, S
    L.book, S.book = mptr(books[0]), mptr(books[1])
    L.total, S.total = mptr(totals[0]), mptr(totals[1])
    L.lo, L.hi, S.lo, S.hi = K, -1, K, -1
    cdef double oi_prev = view.oi_prev
    cdef double* sc = mptr(scale)
    with nogil:
        run(&bars, oi_prev, &g, &L, &S, sc, &o)
    out["off_range_long"] = np.maximum(out["off_range_long"], 0.0)
    out["off_range_short"] = np.maximum(out["off_range_short"], 0.0)
    out["balance"] = dict(deposited=acc[0], decayed=acc[1], swept=acc[2], closed=acc[3], book=acc[4])
    return out
