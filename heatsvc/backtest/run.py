"""The evaluation loop of MODEL.md section 15 and its summary with bootstrap intervals.

For each lookback and each evaluation time t_k: the view's newest column (engine.compute_heatmap on
the bars up to t_k, one column, default grid; the fast cython backend), the two baselines on the
same grid, what happened over (t_k, t_k + H], the scores, the magnet test. Each view is computed
once per t_k and tier mix; the bars it needs are a slice, so a t_k costs one window, not the history.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

import numpy as np

from ..model import bars as barlib
from ..model import engine
from ..model.zones import proximity_weight
from . import scoring, sensitivity, truth

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
PREDICTORS = ("model", "volume_profile", "distance_prior")
BASELINES = PREDICTORS[1:]
METRICS = ("spearman", "cosine")
UNITS = {"m": 60_000, "h": HOUR_MS, "d": DAY_MS}


def parse_duration(text: str, option: str, step_ms: int = barlib.STEP_MS) -> int:
    """A duration such as 30m, 1h, 24h or 2d in milliseconds: positive and a whole number of bars."""
    match = re.fullmatch(r"\s*(\d+)\s*([mhd])\s*", str(text))
    if not match:
        raise ValueError(f"{option}: {text!r} is not a duration such as 30m, 1h, 24h or 2d")
    ms = int(match[1]) * UNITS[match[2]]
    if ms <= 0 or ms % step_ms:
        raise ValueError(f"{option}: {text!r} must be a positive multiple of the {step_ms // 60_000}-minute bar")
    return ms


def parse_lookbacks(text: str) -> list[str]:
    """A comma-separated list of lookback names of MODEL.md section 7, e.g. 1d,3d,7d."""
    names = [n.strip() for n in str(text).split(",") if n.strip()]
    if not names:
        raise ValueError("--lookback: give at least one lookback, e.g. 7d or 1d,3d,7d")
    for name in names:
        if name not in engine.LOOKBACKS:
            raise ValueError(f"--lookback: {name!r} is unknown; use {', '.join(engine.LOOKBACKS)} (comma-separated)")
    if len(set(names)) != len(names):
        raise ValueError(f"--lookback: {text!r} names a lookback twice")
    return names


@dataclass(frozen=True)
class Settings:
    """Everything a run depends on besides the bars (MODEL.md section 15 defaults)."""
    horizon_ms: int = DAY_MS
    every_ms: int = HOUR_MS
    rows: int = 400
    block_ms: int = DAY_MS
    resamples: int = 2000
    seed: int = 15
    d0: float = 2.0           # distance prior 1 / (1 + |d| / d0), d in %
    threshold: float = 0.2    # zone threshold for the dominant magnet (MODEL.md section 9)
    sensitivity: bool = True

    @property
    def block(self) -> int:
        """Bootstrap block length in evaluation times."""
        return max(1, round(self.block_ms / self.every_ms))


@dataclass
class Series:
    """Per evaluation time of one lookback: the scores (NaN where not scored), magnet outcomes, deciles."""
    lookback: str
    time_ms: np.ndarray
    price: np.ndarray
    scores: dict[tuple[str, str, str], np.ndarray]   # (truth, predictor, metric) -> per t_k
    magnet: np.ndarray                                  # 1, 0, 0.5 or NaN per t_k
    magnet_distance_pct: np.ndarray
    model_cold: np.ndarray                              # share of the scored rows where the model has no heat
    truth_share: dict[tuple[str, str], np.ndarray]      # (truth, predictor) -> per-decile sums of shares
    row_share: dict[tuple[str, str], np.ndarray]
    off_grid: dict[str, float] = field(default_factory=dict)   # truth -> share of its total off the grid
    skipped: dict[str, int] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def evaluation_times(time_ms: np.ndarray, lookback_ms: int, s: Settings, step_ms: int = barlib.STEP_MS):
    """t_k every `every` (aligned to it) after a warm-up of one lookback, with a whole horizon of data
    after it. Returns the times, the index of the bar closing at each, and the counts skipped for gaps."""
    first = int(time_ms[0]) + lookback_ms
    last = int(time_ms[-1]) + step_ms - s.horizon_ms
    candidates = np.arange(-(-first // s.every_ms) * s.every_ms, last + 1, s.every_ms, dtype=np.int64)
    index = np.searchsorted(time_ms, candidates - step_ms)
    index = np.minimum(index, len(time_ms) - 1)
    closes_here = time_ms[index] == candidates - step_ms
    ahead = np.minimum(index + s.horizon_ms // step_ms, len(time_ms) - 1)
    whole = closes_here & (time_ms[ahead] == candidates + s.horizon_ms - step_ms)
    skipped = {"no bar closing at t_k": int((~closes_here).sum()),
               "gap in the horizon": int((closes_here & ~whole).sum())}
    return candidates[whole], index[whole], skipped


def open_interest_change(oi: np.ndarray) -> np.ndarray:
    """MODEL.md section 5: dOI = OI - last known OI before the bar; 0 where either is unknown."""
    known = np.isfinite(oi)
    last = np.maximum.accumulate(np.where(known, np.arange(len(oi)), -1))
    prev = np.concatenate(([-1], last[:-1]))
    doi = np.where(known & (prev >= 0), oi - oi[np.maximum(prev, 0)], 0.0)
    return doi


def volume_profile(grid: truth.Grid, high: np.ndarray, low: np.ndarray, quote: np.ndarray) -> np.ndarray:
    """Baseline: each bar's quote volume spread evenly over the rows its range traded."""
    lo = np.clip(grid.row(low), 0, grid.rows - 1)
    hi = np.clip(grid.row(high), 0, grid.rows - 1)
    each = quote / (hi - lo + 1)
    steps = np.bincount(lo, each, grid.rows + 1) - np.bincount(hi + 1, each, grid.rows + 1)
    return np.cumsum(steps)[:grid.rows]


def decile_shares(predicted: np.ndarray, happened: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows ranked by predicted heat into deciles (0 = coldest, ties share a decile): the share of what
    happened in each decile, and the share of rows in it (what a predictor without skill would get)."""
    r = scoring.ranks(predicted)
    decile = np.minimum(9, ((r - 1) * 10 // len(r)).astype(np.int64))
    return (np.bincount(decile, happened, 10) / happened.sum(), np.bincount(decile, minlength=10) / len(r))


class Backtest:
    """One market's bars, ready to evaluate any lookback: validated once, derived series computed once."""

    def __init__(self, bars, market: str, settings: Settings, realised: truth.Realised | None = None):
        self.b = barlib.check(bars, market=market)
        self.market, self.s, self.realised = market, settings, realised
        b = self.b
        self.doi = open_interest_change(b["open_interest"])
        known = np.isfinite(b["open_interest"])
        self.last_oi = np.maximum.accumulate(np.where(known, np.arange(len(known)), -1))
        fallback = b["volume"] * (b["high"] + b["low"] + b["close"]) / 3
        self.quote = np.where(np.isfinite(b["quote_volume"]), b["quote_volume"], fallback)
        self.mixes = sensitivity.MIXES if settings.sensitivity else sensitivity.MIXES[:1]

    def times(self, lookback: str):
        span = engine.lookback_ms(lookback, barlib.STEP_MS)
        t = self.b["time_ms"]
        times, index, skipped = evaluation_times(t, span, self.s)
        if len(times) == 0:
            have = (int(t[-1]) + barlib.STEP_MS - int(t[0])) / DAY_MS
            need = (span + self.s.horizon_ms) / DAY_MS
            raise ValueError(f"{self.market}: too little data for a {lookback} lookback (the warm-up) and a "
                             f"{self.s.horizon_ms / HOUR_MS:g} h horizon: they need more than {need:g} days of "
                             f"bars, the data holds {have:.2f} days ({barlib.format_time(t[0])} to "
                             f"{barlib.format_time(t[-1])}) with no gap-free stretch long enough")
        return span, times, index, skipped

    def outcomes(self, grid: truth.Grid, price: float, t_k: int, h: slice) -> dict[str, truth.Outcome]:
        """What happened over the horizon (bars h): the proxy, and realised liquidations where covered."""
        b, end = self.b, t_k + self.s.horizon_ms
        out = {"proxy": truth.proxy(grid, price, b["high"][h], b["low"][h], b["close"][h], self.doi[h])}
        if self.realised is not None and self.realised.covers(t_k, end):
            out["realised"] = truth.realised(grid, price, b["high"][h], b["low"][h], self.realised,
                                             self.realised.between(t_k, end))
        return out

    def predictions(self, views: dict, grid: truth.Grid, price: float, window: slice) -> dict[str, np.ndarray]:
        """Per row: each view's heat (shorts above the price, longs below) and the two baselines."""
        centres = grid.centres()
        heat = {name: np.where(centres > price, v.short[:, -1], v.long[:, -1]) for name, v in views.items()}
        b = self.b
        heat["volume_profile"] = volume_profile(grid, b["high"][window], b["low"][window], self.quote[window])
        heat["distance_prior"] = proximity_weight(100 * (centres - price) / price, self.s.d0)
        return heat

    def evaluate(self, lookback: str) -> Series:
        """Every evaluation time of one lookback."""
        span, times, index, skipped = self.times(lookback)
        b, s, t = self.b, self.s, self.b["time_ms"]
        n, ahead = len(times), s.horizon_ms // barlib.STEP_MS
        truths = ("proxy", "realised") if self.realised is not None else ("proxy",)
        names = [(m.name if m.name != sensitivity.DEFAULT else "model") for m in self.mixes]
        predictors = list(dict.fromkeys(["model", *BASELINES, *names]))
        scores = {(tr, p, m): np.full(n, np.nan) for tr in truths for p in predictors for m in METRICS}
        share = {(tr, p): np.zeros(10) for tr in truths for p in PREDICTORS}
        rows_share = {(tr, p): np.zeros(10) for tr in truths for p in PREDICTORS}
        magnet, distance, cold = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        totals = {tr: [0.0, 0.0] for tr in truths}
        clock = {"views": 0.0, "scoring": 0.0}
        for k, (t_k, i) in enumerate(zip(times.tolist(), index.tolist())):
            i0 = int(np.searchsorted(t, t_k - span))
            start = max(0, int(self.last_oi[i0 - 1])) if i0 > 0 else 0
            window = {f: v[start:i + 1] for f, v in b.items()}
            tick = time.perf_counter()
            views = {name: engine.compute_heatmap(window, lookback=lookback, columns=1, rows=s.rows,
                                                  params=mix.params, market=self.market)
                     for name, mix in zip(names, self.mixes)}
            tock = time.perf_counter()
            clock["views"] += tock - tick
            hm = views["model"]
            grid, price = truth.Grid.from_edges(hm.price_edges), hm.price
            h = slice(i + 1, i + 1 + ahead)
            high, low = b["high"][h], b["low"][h]
            outcomes = self.outcomes(grid, price, t_k, h)
            heat = self.predictions(views, grid, price, slice(i0, i + 1))
            for tr, out in outcomes.items():
                totals[tr][0] += out.total
                totals[tr][1] += out.off_grid
                happened = out.values[out.traded]
                if not scoring.scorable(happened):
                    continue
                if tr == "proxy":
                    cold[k] = float(np.mean(heat["model"][out.traded] == 0))
                for p in predictors:
                    predicted = heat[p][out.traded]
                    scores[(tr, p, "spearman")][k], scores[(tr, p, "cosine")][k] = scoring.score(predicted, happened)
                    if p in PREDICTORS:
                        a, r = decile_shares(predicted, happened)
                        share[(tr, p)] += a
                        rows_share[(tr, p)] += r
            report = engine.zones(hm, threshold=s.threshold)
            if report.magnet is not None:
                magnet[k] = scoring.magnet_outcome(high, low, price, report.magnet.peak_price)
                distance[k] = report.magnet.distance_pct
            clock["scoring"] += time.perf_counter() - tock
        off = {tr: (v[1] / v[0] if v[0] > 0 else 0.0) for tr, v in totals.items()}
        return Series(lookback, times, b["close"][index], scores, magnet, distance, cold, share, rows_share,
                      off, skipped, clock)


def summarise(series: Series, s: Settings) -> dict:
    """Bootstrap intervals of one lookback: mean scores, model minus each baseline, the magnet test,
    deciles, and the out-of-sample sensitivity of the tier mixes. Plain numbers, ready for JSON."""
    boot = scoring.BlockBootstrap(len(series.time_ms), s.block, s.resamples, s.seed)
    truths = sorted({tr for tr, _, _ in series.scores}, key=("proxy", "realised").index)
    cold = series.model_cold[~np.isnan(series.model_cold)]
    out: dict = {"evaluations": int(len(series.time_ms)), "blocks": round(len(series.time_ms) / boot.block, 1),
                 "skipped": series.skipped, "truths": {},
                 "scored_rows_without_model_heat_percent": 100 * float(cold.mean()) if len(cold) else None}
    for tr in truths:
        scored = ~np.isnan(series.scores[(tr, "model", "spearman")])
        entry = {"scored": int(scored.sum()), "off_grid_percent": 100 * series.off_grid[tr],
                 "scores": {}, "differences": {}}
        for m in METRICS:
            entry["scores"][m] = {p: boot.interval(series.scores[(tr, p, m)]) for p in PREDICTORS}
            entry["differences"][m] = {}
            for base in BASELINES:
                diff = boot.interval(series.scores[(tr, "model", m)] - series.scores[(tr, base, m)])
                diff["skill"] = {"above": "skill", "below": "worse than the baseline"}.get(
                    scoring.verdict(diff), "no skill shown")
                entry["differences"][m][base] = diff
        count = max(1, int(scored.sum()))
        entry["deciles"] = {}
        for p in PREDICTORS:
            happened, rows = series.truth_share[(tr, p)] / count, series.row_share[(tr, p)] / count
            lift = np.divide(happened, rows, out=np.full(10, np.nan), where=rows > 0)
            entry["deciles"][p] = {"share_of_what_happened": happened.tolist(), "share_of_rows": rows.tolist(),
                                   "lift": lift.tolist()}
        out["truths"][tr] = entry
    m = series.magnet
    magnet = boot.interval(m)
    magnet["verdict"] = {"above": "magnet first more often than 0.5", "below": "magnet first less often than 0.5"}.get(
        scoring.verdict(magnet, 0.5), "not distinguishable from 0.5")
    magnet.update({"magnet_first": int((m == 1).sum()), "mirror_first": int((m == 0).sum()),
                   "same_bar": int((m == 0.5).sum()), "neither_touched_or_no_magnet": int(np.isnan(m).sum()),
                   "median_distance_pct": float(np.nanmedian(np.abs(series.magnet_distance_pct)))
                   if np.isfinite(series.magnet_distance_pct).any() else None})
    out["magnet"] = magnet
    if s.sensitivity:
        out["sensitivity"] = sensitivity_summary(series, s)
    return out


def sensitivity_summary(series: Series, s: Settings) -> dict:
    """Choose the mix on the first half by the declared criterion; judge every mix on the second half."""
    first, second = sensitivity.halves(series.time_ms, s.horizon_ms, s.every_ms)
    tr, metric = sensitivity.CRITERION
    key = lambda name: "model" if name == sensitivity.DEFAULT else name  # noqa: E731
    first_means = {}
    for mix in sensitivity.MIXES:
        x = series.scores[(tr, key(mix.name), metric)][first]
        first_means[mix.name] = float(np.nanmean(x)) if np.isfinite(x).any() else None
    chosen = sensitivity.choose({k: v for k, v in first_means.items() if v is not None})
    n2 = int(second.sum())
    when = lambda mask, i: barlib.format_time(series.time_ms[mask][i])  # noqa: E731
    out = {"first_half": {"evaluations": int(first.sum()), "from": when(first, 0), "to": when(first, -1),
                          "mean": first_means},
           "chosen": chosen,
           "second_half": {"evaluations": n2, "from": when(second, 0), "to": when(second, -1)}}
    boot = scoring.BlockBootstrap(n2, s.block, s.resamples, s.seed)
    for m in METRICS:
        out["second_half"][m] = {mix.name: boot.interval(series.scores[(tr, key(mix.name), m)][second])
                                 for mix in sensitivity.MIXES}
        diff = boot.interval(series.scores[(tr, key(chosen), m)][second] - series.scores[(tr, "model", m)][second])
        diff["verdict"] = scoring.verdict(diff) if chosen != sensitivity.DEFAULT else "the default was chosen"
        out["second_half"][f"chosen_minus_default_{m}"] = diff
    crit = out["second_half"][f"chosen_minus_default_{metric}"]
    out["change_default"] = bool(chosen != sensitivity.DEFAULT and crit["mean"] is not None and crit["low"] > 0)
    return out


def run(bars, market: str, lookbacks: list[str], settings: Settings,
        realised: truth.Realised | None = None) -> tuple[Backtest, dict[str, Series], dict[str, dict], float]:
    """Evaluate every lookback; returns the backtest, the per-t_k series, their summaries and the seconds taken."""
    started = time.perf_counter()
    bt = Backtest(bars, market, settings, realised)
    for lookback in lookbacks:  # fail on too little data before any work
        bt.times(lookback)
    series, summary = {}, {}
    for lookback in lookbacks:
        series[lookback] = bt.evaluate(lookback)
        tick = time.perf_counter()
        summary[lookback] = summarise(series[lookback], settings)
        series[lookback].seconds["bootstrap"] = time.perf_counter() - tick
    return bt, series, summary, time.perf_counter() - started

