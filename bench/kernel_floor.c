/* A copy of the project's shared reference floor.c (../shared/bench/floor.c), kept here so that the benchmark
 * needs nothing outside the repository. bench/kernel_floor.py compiles it with cc -O2 and times it in the same
 * run as the kernel. Unchanged below this comment. */
/* The floor: the least work any implementation of MODEL.md sections 6-7 must do for one view,
 * written as plainly fast C, timed in the same run as heatsvc's kernel so their ratio is machine-free.
 *   - lazy decay and close: one scale factor per tier, O(1) per bar (renormalised when tiny);
 *   - one log per depositing bar, tiers at constant row offsets, linear split over two rows;
 *   - sweeps amortised and log-free: each side keeps its occupied extent and compares the bar's low and
 *     high with that row's edge price, zeroing rows only when price reaches in;
 *   - snapshots: tiers x occupied rows multiply-adds per column, per side.
 * Usage: floor BARS ROWS COLUMNS REPEATS  -> prints the median time in ms. Inputs are a seeded random walk. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

#define J 5
static const double LEV[J] = {5, 10, 25, 50, 100}, W[J] = {.15, .30, .25, .20, .10};
static const double HL_BARS[J] = {30 * 288., 14 * 288., 5 * 288., 2 * 288., 288.};

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static unsigned long long rng = 88172645463325252ULL;
static double uni(void) { rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17; return (rng >> 11) * (1.0 / 9007199254740992.0); }

int main(int argc, char **argv) {
    int n = argc > 1 ? atoi(argv[1]) : 105120, R = argc > 2 ? atoi(argv[2]) : 400;
    int C = argc > 3 ? atoi(argv[3]) : 288, reps = argc > 4 ? atoi(argv[4]) : 15;
    int K = R + 2 * (R / 4);                       /* internal rows: margin outside the shown range */
    double *lo = malloc(n * sizeof *lo), *hi = malloc(n * sizeof *hi), *e = malloc(n * sizeof *e), *doi = malloc(n * sizeof *doi);
    double p = 100, oi = 1e6;
    for (int t = 0; t < n; t++) {                  /* random walk with OI moves, half the bars depositing */
        double o = p; p *= exp((uni() - .5) * .01);
        hi[t] = fmax(o, p) * (1 + uni() * .002); lo[t] = fmin(o, p) * (1 - uni() * .002);
        e[t] = lo[t] + (hi[t] - lo[t]) * uni(); doi[t] = (uni() - .5) * 2e3; oi += doi[t];
    }
    double pmin = 1e300, pmax = 0;
    for (int t = 0; t < n; t++) { pmin = fmin(pmin, lo[t]); pmax = fmax(pmax, hi[t]); }
    double p_lo = pmin * 0.5, p_hi = pmax * 1.3, lrho = log(p_hi / p_lo) / K, inv = 1 / lrho;
    double off_l[J], off_s[J], dec[J];
    for (int j = 0; j < J; j++) {
        off_l[j] = log((1 - 1 / LEV[j]) / (1 - .004)) * inv - .5;
        off_s[j] = log((1 + 1 / LEV[j]) / (1 + .004)) * inv - .5;
        dec[j] = exp2(-1 / HL_BARS[j]);
    }
    int step = (n + C - 1) / C, cols = (n + step - 1) / step;
    double *bl = malloc((size_t)J * K * sizeof *bl), *bs = malloc((size_t)J * K * sizeof *bs);
    double *out = malloc((size_t)2 * cols * R * sizeof *out), *times = malloc(reps * sizeof *times), check = 0;
    double *edge = malloc((size_t)(K + 1) * sizeof *edge);          /* edge[k] = lower price of row k */
    for (int k = 0; k <= K; k++) edge[k] = p_lo * exp(k * lrho);
    for (int rep = 0; rep < reps; rep++) {
        double t0 = now(), sc[J], oi_prev = 1e6;
        memset(bl, 0, (size_t)J * K * sizeof *bl); memset(bs, 0, (size_t)J * K * sizeof *bs);
        for (int j = 0; j < J; j++) sc[j] = 1;
        int ltop = -1, sbot = K;                   /* long cells live in [0, ltop], short in [sbot, K) */
        double u0 = log(p_lo);
        for (int t = 0, c = 0; t < n; t++) {
            for (int j = 0; j < J; j++) sc[j] *= dec[j];
            for (; ltop >= 0 && edge[ltop + 1] > lo[t]; ltop--) for (int j = 0; j < J; j++) bl[j * K + ltop] = 0;
            for (; sbot < K && edge[sbot] <= hi[t]; sbot++) for (int j = 0; j < J; j++) bs[j * K + sbot] = 0;
            if (doi[t] < 0) { double f = 1 + doi[t] / oi_prev; for (int j = 0; j < J; j++) sc[j] *= f; }
            else if (doi[t] > 0) {
                double u = (log(e[t]) - u0) * inv, a = doi[t] * e[t];
                for (int j = 0; j < J; j++) {
                    double x = u + off_l[j], y = u + off_s[j], m = a * W[j] / sc[j];
                    int k = (int)x; double f = x - k;
                    bl[j * K + k] += .5 * m * (1 - f); bl[j * K + k + 1] += .5 * m * f; if (k + 1 > ltop) ltop = k + 1;
                    k = (int)y; f = y - k;
                    bs[j * K + k] += .5 * m * (1 - f); bs[j * K + k + 1] += .5 * m * f; if (k < sbot) sbot = k;
                }
            }
            oi_prev += doi[t];
            for (int j = 0; j < J; j++) if (sc[j] < 1e-200) { sc[j] = 1; } /* never reached here; keeps the branch honest */
            if ((t + 1) % step == 0 || t == n - 1) {
                double *ol = out + (size_t)c * R, *os = out + (size_t)(cols + c) * R;
                for (int r = 0; r < R; r++) { ol[r] = 0; os[r] = 0; }
                int a = R / 4, lend = ltop + 1 - a, sbeg = sbot - a;   /* occupied shown rows per side */
                if (lend > R) lend = R;
                if (sbeg < 0) sbeg = 0;
                for (int j = 0; j < J; j++) {
                    const double *pl = bl + j * K + a, *ps = bs + j * K + a; double s = sc[j];
                    for (int r = 0; r < lend; r++) ol[r] += pl[r] * s;
                    for (int r = sbeg; r < R; r++) os[r] += ps[r] * s;
                }
                c++;
            }
        }
        times[rep] = now() - t0;
        for (int i = 0; i < 2 * cols * R; i++) check += out[i];
    }
    qsort(times, reps, sizeof *times, cmp);
    printf("%.4f %g\n", times[reps / 2] * 1e3, check);
    return 0;
}
