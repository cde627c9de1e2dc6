# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The "cython" backend: MODEL.md sections 5-7 in one pass over the bars with the GIL released.

Work per bar is constant, not proportional to the book:
* decay and close are per-tier scale factors s[j] (a cell's notional is stored * s[j]), applied lazily;
* per-tier stored totals give the book total without reading it;
* each side keeps its occupied row range, so a sweep compares the bar's low or high with the range's
  edge price and takes a logarithm only when the price reaches in;
* one logarithm per depositing bar: each tier's liquidation row is the entry's row plus a constant;
* the book is tier-major (each tier's rows contiguous) and each column is written contiguously,
  so sweeps, folds and snapshots are straight runs over memory that the compiler vectorises.
Columns are written as rows of a (columns x rows) array; the engine hands out its transpose.
The plain reference is heatsvc/model/engine_python.py; tests check that all backends agree on every cell.
"""
import numpy as np

from libc.math cimport log, isnan, isfinite
from libc.stdint cimport int64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memset

cdef extern from *:
    """
    /* One pass of a snapshot: col[i] = (or +=) a[i] * fa + b[i] * fb, b NULL for a single tier. The one
       loop where wider vectors pay: on x86-64 with GCC, an AVX2 clone is chosen at load time where the
       processor has it (the rest of the extension is built for the baseline). */
    #if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    __attribute__((target_clones("avx2", "default")))
    #endif
    static void heatsvc_column_pass(double *restrict col, const double *restrict a, double fa,
                                    const double *restrict b, double fb, Py_ssize_t n, int add) {
        Py_ssize_t i;
        if (b == NULL) {
            if (add) for (i = 0; i < n; i++) col[i] += a[i] * fa;
            else     for (i = 0; i < n; i++) col[i] = a[i] * fa;
        } else {
            if (add) for (i = 0; i < n; i++) col[i] += a[i] * fa + b[i] * fb;
            else     for (i = 0; i < n; i++) col[i] = a[i] * fa + b[i] * fb;
        }
    }
    """
    void column_pass "heatsvc_column_pass" (double* col, const double* a, double fa, const double* b, double fb,
                                            Py_ssize_t n, bint add) noexcept nogil


cdef double RENORMALIZE_BELOW = 1e-150  # fold a tier's scale back into its cells before it underflows
cdef double EDGE_MARGIN = 1e-9          # relative margin on row edges: beyond it, no logarithm is needed


cdef enum:
    MAX_TIERS = 32                      # heatsvc.model.engine.MAX_TIERS


cdef struct Side:
    double* book        # J x K, tier-major
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


cdef inline double run_sum(const double* x, Py_ssize_t n) noexcept nogil:
    """Sum of n doubles with four accumulators (the additions of one run do not wait on each other)."""
    cdef double a0 = 0.0, a1 = 0.0, a2 = 0.0, a3 = 0.0
    cdef Py_ssize_t i = 0
    while i + 4 <= n:
        a0 += x[i]
        a1 += x[i + 1]
        a2 += x[i + 2]
        a3 += x[i + 3]
        i += 4
    while i < n:
        a0 += x[i]
        i += 1
    return (a0 + a1) + (a2 + a3)


cdef inline double take_run(double* x, Py_ssize_t n) noexcept nogil:
    """Zero n doubles and return their sum (sweeps are a few rows: no call to memset)."""
    cdef double a0 = 0.0, a1 = 0.0
    cdef Py_ssize_t i = 0
    while i + 2 <= n:
        a0 += x[i]
        a1 += x[i + 1]
        x[i] = 0.0
        x[i + 1] = 0.0
        i += 2
    if i < n:
        a0 += x[i]
        x[i] = 0.0
    return a0 + a1


cdef inline double side_clear(Side* s, const double* scale, Py_ssize_t J, Py_ssize_t K) noexcept nogil:
    """Empty a whole side: zero its occupied rows and totals; return the notional it held."""
    cdef Py_ssize_t j
    cdef double held = side_total(s, scale, J)
    if s.hi >= s.lo:
        for j in range(J):
            memset(s.book + j * K + s.lo, 0, (s.hi - s.lo + 1) * sizeof(double))
    for j in range(J):
        s.total[j] = 0.0
    s.lo = K
    s.hi = -1
    return held


cdef inline double sweep_rows(Side* s, Py_ssize_t a, Py_ssize_t b, const double* scale, Py_ssize_t J,
                              Py_ssize_t K) noexcept nogil:
    """Zero rows [a, b] of one side; return the notional removed."""
    cdef Py_ssize_t j
    cdef double removed = 0.0, part
    for j in range(J):
        part = take_run(s.book + j * K + a, b - a + 1)
        s.total[j] -= part
        removed += part * scale[j]
    return removed


cdef inline void fold_scale(Side* L, Side* S, double* scale, Py_ssize_t K, Py_ssize_t j) noexcept nogil:
    """Multiply tier j's stored cells by its scale and reset the scale to 1."""
    cdef Py_ssize_t k
    cdef double f = scale[j]
    cdef double* row = L.book + j * K
    for k in range(L.lo, L.hi + 1):
        row[k] *= f
    row = S.book + j * K
    for k in range(S.lo, S.hi + 1):
        row[k] *= f
    L.total[j] *= f
    S.total[j] *= f
    scale[j] = 1.0


cdef inline void clear_outside(double* col, Py_ssize_t a, Py_ssize_t b, Py_ssize_t R) noexcept nogil:
    """Zero rows [0, a) and (b, R) of one column."""
    if a > 0:
        memset(col, 0, a * sizeof(double))
    if b + 1 < R:
        memset(col + b + 1, 0, (R - b - 1) * sizeof(double))


cdef inline double snapshot_side(const Side* s, const double* scale, Py_ssize_t J, Py_ssize_t K,
                                 Py_ssize_t offset, Py_ssize_t R, Py_ssize_t C, Py_ssize_t c, double* grid,
                                 double* tiers) noexcept nogil:
    """Write column c of one side into grid (C x R) and, if given, tiers (J x C x R): every shown row,
    so the output needs no zeroing beforehand. Returns the notional outside the shown rows."""
    cdef Py_ssize_t k, j, a = s.lo, b = s.hi
    cdef double f, off
    cdef double* col = grid + c * R               # col[k - offset] is internal row k
    cdef double* tcol
    cdef const double* row
    if a < offset:
        a = offset
    if b > offset + R - 1:
        b = offset + R - 1
    if b < a:
        a, b = offset + R, offset + R - 1
    clear_outside(col, a - offset, b - offset, R)
    if tiers != NULL:
        for j in range(J):
            clear_outside(tiers + (j * C + c) * R, a - offset, b - offset, R)
    if b < a:
        return side_total(s, scale, J)
    for j in range(0, J, 2):  # two tiers a pass: each pass reads and writes the column once
        column_pass(col + a - offset, s.book + j * K + a, scale[j],
                    s.book + (j + 1) * K + a if j + 1 < J else NULL, scale[j + 1] if j + 1 < J else 0.0,
                    b - a + 1, j > 0)
    if tiers != NULL:
        for j in range(J):
            row = s.book + j * K
            f = scale[j]
            tcol = tiers + (j * C + c) * R
            for k in range(a, b + 1):
                tcol[k - offset] = row[k] * f
    off = side_total(s, scale, J) - run_sum(col + a - offset, b - a + 1)
    return off if off > 0 else 0.0


cdef struct Bars:
    const int64_t* t
    const double* o
    const double* h
    const double* lw
    const double* cl
    const double* vol
    const double* taker
    const double* qvol
    const double* oi
    const double* ratio
    Py_ssize_t n


cdef struct Grid:
    double p_lo, log_rho, oi_prev
    int64_t start_ms, column_ms
    Py_ssize_t offset, R, C, K, J
    const double* edge_dn   # K + 1 internal row edges, each less and plus the rounding margin:
    const double* edge_up   # a price beyond both is on one side of the edge whatever the logarithm rounds
    Py_ssize_t renormalize_every_mask  # check the scales for underflow when (bar & mask) == 0
    const double* u_long    # per tier: ln(long liquidation / entry) / ln rho - 1/2
    const double* u_short
    double u_long_min, u_long_max, u_short_min, u_short_max
    const double* weight
    double weight_sum
    const double* decay
    const double* inv_decay


cdef struct Out:
    double* long_grid       # C x R
    double* short_grid
    double* long_tiers      # J x C x R; NULL unless per-tier grids are asked for
    double* short_tiers
    double* swept_long
    double* swept_short
    double* candles
    double* off_long
    double* off_short
    double* acc             # deposited, decayed, swept, closed, book


cdef struct Job:
    Bars bars
    Grid grid
    Out out
    Side L, S


cdef inline void snapshot(const Side* L, const Side* S, const double* scale, const Grid* g, Out* out,
                          Py_ssize_t c) noexcept nogil:
    out.off_long[c] = snapshot_side(L, scale, g.J, g.K, g.offset, g.R, g.C, c, out.long_grid, out.long_tiers)
    out.off_short[c] = snapshot_side(S, scale, g.J, g.K, g.offset, g.R, g.C, c, out.short_grid, out.short_tiers)


cdef void run(Job* job) noexcept nogil:
    # Hot state lives in locals and local arrays: the extension is built without strict aliasing, so
    # anything read through a pointer would be reloaded after every store into the book.
    cdef const Bars* b = &job.bars
    cdef const Grid* g = &job.grid
    cdef Out* out = &job.out
    cdef Side L = job.L, S = job.S
    cdef Py_ssize_t i, j, k0, r, col = 0, J = g.J, K = g.K, offset = g.offset
    cdef int64_t col_end = g.start_ms + g.column_ms, column_ms = g.column_ms
    cdef Py_ssize_t k, mask = g.renormalize_every_mask
    cdef double e, lam, taker_share, ratio_share, d_oi, market, x, ue, phi, a, n, n_j, swl, sws, resid, B, f, v
    cdef double lw, hg, col_swl = 0.0, col_sws = 0.0
    cdef double deposited = 0.0, swept = 0.0, closed = 0.0, oi_prev = g.oi_prev
    cdef double log_rho = g.log_rho, p_lo = g.p_lo, weight_sum = g.weight_sum
    cdef double u_long_min = g.u_long_min, u_long_max = g.u_long_max
    cdef double u_short_min = g.u_short_min, u_short_max = g.u_short_max
    cdef double* lbook = L.book
    cdef double* sbook = S.book
    cdef double* cell
    cdef const double* edge_dn = g.edge_dn
    cdef const double* edge_up = g.edge_up
    cdef double* cdl
    cdef double scale[MAX_TIERS]
    cdef double inv_scale[MAX_TIERS]
    cdef double ltot[MAX_TIERS]
    cdef double stot[MAX_TIERS]
    cdef double decay[MAX_TIERS]
    cdef double inv_decay[MAX_TIERS]
    cdef double weight[MAX_TIERS]
    cdef double u_long[MAX_TIERS]
    cdef double u_short[MAX_TIERS]
    cdef double inv_log_rho = 1 / log_rho, log_p_lo = log(p_lo)
    for j in range(J):
        scale[j] = 1.0
        inv_scale[j] = 1.0
        ltot[j] = 0.0
        stot[j] = 0.0
        decay[j] = g.decay[j]
        inv_decay[j] = g.inv_decay[j]
        weight[j] = g.weight[j]
        u_long[j] = g.u_long[j]
        u_short[j] = g.u_short[j]
    L.total = ltot
    S.total = stot
    for i in range(b.n):
        while b.t[i] >= col_end:   # 5. snapshot each column the bar has left behind
            out.swept_long[col] = col_swl
            out.swept_short[col] = col_sws
            col_swl = col_sws = 0.0
            snapshot(&L, &S, scale, g, out, col)
            col += 1
            col_end += column_ms
        # section 5: change of open interest (entry price and long share only matter on deposits)
        d_oi = 0.0
        market = oi_prev * b.cl[i]  # the market's open interest before this bar, in quote currency
        if not isnan(b.oi[i]):
            if not isnan(oi_prev):
                d_oi = b.oi[i] - oi_prev
            oi_prev = b.oi[i]
        # 1. decay (what it removes is the balance's remainder: deposited - swept - closed - book)
        for j in range(J):
            scale[j] *= decay[j]
            inv_scale[j] *= inv_decay[j]
        if (i & mask) == 0:
            for j in range(J):
                if scale[j] < RENORMALIZE_BELOW:
                    fold_scale(&L, &S, scale, K, j)
                    inv_scale[j] = 1.0
        # 2. sweep: longs at rows >= row(low), shorts at rows <= row(high). Row k holds longs swept
        # when low < its upper edge, shorts when high >= its lower edge; the walk compares prices with
        # the edges and takes a logarithm only within the rounding margin of one.
        swl = 0.0
        lw = b.lw[i]
        if L.hi >= L.lo and lw < edge_up[L.hi + 1]:
            k = L.hi
            while k >= L.lo and lw < edge_dn[k + 1]:
                k -= 1
            if k >= L.lo and lw < edge_up[k + 1]:
                r = ifloor(log(lw / p_lo) / log_rho) + offset
                if r <= k:
                    k = r - 1
            if k < L.lo:
                swl = side_clear(&L, scale, J, K)
            elif k < L.hi:
                swl = sweep_rows(&L, k + 1, L.hi, scale, J, K)
                L.hi = k
        sws = 0.0
        hg = b.h[i]
        if S.hi >= S.lo and hg >= edge_dn[S.lo]:
            k = S.lo
            while k <= S.hi and hg >= edge_up[k]:
                k += 1
            if k <= S.hi and hg >= edge_dn[k]:
                r = ifloor(log(hg / p_lo) / log_rho) + offset
                if r >= k:
                    k = r + 1
            if k > S.hi:
                sws = side_clear(&S, scale, J, K)
            elif k > S.lo:
                sws = sweep_rows(&S, S.lo, k - 1, scale, J, K)
                S.lo = k
        swept += swl + sws
        col_swl += swl
        col_sws += sws
        # 3. close: the residual's share of the market's open interest closes that share of every cell
        if d_oi < 0:
            resid = -d_oi * b.cl[i] - swl - sws
            if resid > 0 and market > 0:
                B = side_total(&L, scale, J) + side_total(&S, scale, J)
                if B > 0:
                    if resid >= market:
                        closed += side_clear(&L, scale, J, K) + side_clear(&S, scale, J, K)
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
                        for j in range(J):
                            if scale[j] < RENORMALIZE_BELOW:
                                fold_scale(&L, &S, scale, K, j)
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
            ue = (log(e) - log_p_lo) * inv_log_rho + offset
            for j in range(J):
                n_j = n * weight[j] * inv_scale[j]   # the tier's notional in stored units
                a = lam * n_j
                x = ue + u_long[j]
                k0 = <Py_ssize_t>x               # deposits land on rows >= 1: truncation is floor
                phi = x - k0
                cell = lbook + j * K + k0
                cell[0] += a * (1 - phi)
                cell[1] += a * phi
                ltot[j] += a
                a = n_j - a
                x = ue + u_short[j]
                k0 = <Py_ssize_t>x
                phi = x - k0
                cell = sbook + j * K + k0
                cell[0] += a * (1 - phi)
                cell[1] += a * phi
                stot[j] += a
            deposited += n * weight_sum
            # floor is monotonic, so the tiers' extreme offsets give the rows just written
            L.lo = min(L.lo, <Py_ssize_t>(ue + u_long_min))
            L.hi = max(L.hi, <Py_ssize_t>(ue + u_long_max) + 1)
            S.lo = min(S.lo, <Py_ssize_t>(ue + u_short_min))
            S.hi = max(S.hi, <Py_ssize_t>(ue + u_short_max) + 1)
        # the column's candle
        cdl = out.candles + 4 * col
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
        out.swept_long[col] = col_swl
        out.swept_short[col] = col_sws
        col_swl = col_sws = 0.0
        snapshot(&L, &S, scale, g, out, col)
        col += 1
    B = side_total(&L, scale, J) + side_total(&S, scale, J)
    out.acc[0] = deposited
    out.acc[1] = deposited - swept - closed - B
    out.acc[2] = swept
    out.acc[3] = closed
    out.acc[4] = B


cdef const double* ptr(const double[::1] a) noexcept:
    return &a[0] if a.shape[0] else NULL


cdef double* mptr(double[::1] a) noexcept:
    return &a[0] if a.shape[0] else NULL


cdef object prepare(view, Job* job):
    """Fill one job from a heatsvc.model.engine.View; returns the arrays it points into (keep them alive)."""
    p = view.params
    cdef Py_ssize_t j, J = len(p.tiers), K = view.book_rows, R = view.rows, C = view.columns
    cdef Grid* g = &job.grid
    cdef Out* o = &job.out
    lr = view.log_rho
    u_long = np.array([log((1 - 1 / t.leverage) / (1 - t.maintenance_margin)) / lr - 0.5 for t in p.tiers])
    u_short = np.array([log((1 + 1 / t.leverage) / (1 + t.maintenance_margin)) / lr - 0.5 for t in p.tiers])
    weight = np.array([t.weight for t in p.tiers])
    decay = p.decay_factors()
    inv_decay = 1 / decay
    edges = view.p_lo * np.exp(lr * (np.arange(K + 1) - view.offset))
    edge_dn, edge_up = edges * (1 - EDGE_MARGIN), edges * (1 + EDGE_MARGIN)
    # scratch: the books of both sides, the balance
    work = np.zeros(2 * K * J + 5)
    out = {"long": np.empty((C, R)), "short": np.empty((C, R)), "swept_long": np.zeros(C),
           "swept_short": np.zeros(C), "off_range_long": np.empty(C), "off_range_short": np.empty(C),
           "candles": np.full((C, 4), np.nan)}
    if view.per_tier:
        out["per_tier_long"], out["per_tier_short"] = np.empty((J, C, R)), np.empty((J, C, R))
    src = view.bars
    cdef const int64_t[::1] times = src["time_ms"]
    cdef double* w = mptr(work)
    job.bars.t = &times[0] if times.shape[0] else NULL
    job.bars.o, job.bars.h, job.bars.lw = ptr(src["open"]), ptr(src["high"]), ptr(src["low"])
    job.bars.cl, job.bars.vol = ptr(src["close"]), ptr(src["volume"])
    job.bars.taker, job.bars.qvol = ptr(src["taker_buy_volume"]), ptr(src["quote_volume"])
    job.bars.oi, job.bars.ratio = ptr(src["open_interest"]), ptr(src["long_short_ratio"])
    job.bars.n = times.shape[0]
    g.p_lo, g.log_rho, g.oi_prev, g.offset, g.R, g.C, g.K, g.J = view.p_lo, lr, view.oi_prev, view.offset, R, C, K, J
    g.start_ms, g.column_ms = view.start_ms, view.params.step_ms * view.bars_per_column
    g.edge_dn, g.edge_up = ptr(edge_dn), ptr(edge_up)
    g.u_long, g.u_short, g.weight, g.decay = ptr(u_long), ptr(u_short), ptr(weight), ptr(decay)
    # the scales are checked every 16 bars unless one tier's decay could underflow in that time
    g.renormalize_every_mask = 15 if decay.min() ** 16 > 1e-50 else 0
    g.inv_decay = ptr(inv_decay)
    g.weight_sum = weight.sum()
    g.u_long_min, g.u_long_max, g.u_short_min, g.u_short_max = u_long.min(), u_long.max(), u_short.min(), u_short.max()
    o.long_grid, o.short_grid = mptr(out["long"].reshape(-1)), mptr(out["short"].reshape(-1))
    o.long_tiers = mptr(out["per_tier_long"].reshape(-1)) if view.per_tier else NULL
    o.short_tiers = mptr(out["per_tier_short"].reshape(-1)) if view.per_tier else NULL
    o.swept_long, o.swept_short = mptr(out["swept_long"]), mptr(out["swept_short"])
    o.off_long, o.off_short = mptr(out["off_range_long"]), mptr(out["off_range_short"])
    o.candles = mptr(out["candles"].reshape(-1))
    job.L.book, job.S.book = w, w + K * J
    o.acc = w + 2 * K * J
    job.L.lo, job.L.hi, job.S.lo, job.S.hi = K, -1, K, -1
    return out, work, (times, u_long, u_short, weight, decay, inv_decay, edge_dn, edge_up)


cdef dict finish(dict out, work, Py_ssize_t K, Py_ssize_t J):
    """The backend result dict: grids as (rows x columns) views of the column-major buffers."""
    acc = work[2 * K * J:]
    for side in ("long", "short"):
        out[side] = out[side].T
        if f"per_tier_{side}" in out:
            out[f"per_tier_{side}"] = out[f"per_tier_{side}"].transpose(0, 2, 1)
    out["balance"] = dict(deposited=acc[0], decayed=acc[1], swept=acc[2], closed=acc[3], book=acc[4])
    return out


def evolve_views(views):
    """Run prepared heatsvc.model.engine.View objects through the kernel, all in one release of the GIL;
    returns one backend result dict per view."""
    cdef Py_ssize_t n = len(views), i
    cdef Job* jobs = <Job*>malloc(max(n, 1) * sizeof(Job))
    if jobs == NULL:
        raise MemoryError("no memory for the kernel's jobs")
    try:
        kept = []
        for i in range(n):
            kept.append(prepare(views[i], &jobs[i]))
        with nogil:
            for i in range(n):
                run(&jobs[i])
    finally:
        free(jobs)
    return [finish(out, work, view.book_rows, len(view.params.tiers)) for (out, work, _), view in zip(kept, views)]


def evolve_view(view):
    """Run one prepared heatsvc.model.engine.View through the kernel; returns the backend result dict."""
    return evolve_views([view])[0]
