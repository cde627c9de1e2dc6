"""The backtest's outputs: one JSON document with every number, the markdown report written from that
document alone (so every number it shows is in the JSON), and the PNG plots drawn from it too.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..model.bars import STEP_MS, format_time
from ..model.engine import ModelParams
from . import scoring, sensitivity
from .run import BASELINES, DAY_MS, HOUR_MS, METRICS, PREDICTORS, Series, Settings

MARKDOWN = "ACCURACY.md"
JSON = "accuracy.json"
PLOTS = {"scores": "accuracy-scores.png", "deciles": "accuracy-deciles.png", "magnet": "accuracy-magnet.png"}
LABELS = {"model": "model (heatmap)", "volume_profile": "volume profile", "distance_prior": "distance prior"}
COLOURS = {"model": "#d62728", "volume_profile": "#1f77b4", "distance_prior": "#7f7f7f"}


def rounded(x, digits: int = 3):
    """Floats rounded (NaN and infinities become None), recursively through dicts and lists."""
    if isinstance(x, dict):
        return {k: rounded(v, digits) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [rounded(v, digits) for v in x]
    if isinstance(x, (float, np.floating)):
        return round(float(x), digits) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def engine_version() -> dict:
    """Which engine ran: the repository's commit, the newest commit touching the model, and whether
    the model's files had uncommitted changes (then the commit alone does not say what ran)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                                  timeout=10, check=True).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    model_paths = ("heatsvc/model", "ext")
    return {"commit": git("rev-parse", "--short", "HEAD") or "unknown",
            "model_commit": git("log", "-1", "--format=%h", "--", *model_paths) or "unknown",
            "model_commit_subject": git("log", "-1", "--format=%s", "--", *model_paths),
            "model_uncommitted_changes": bool(git("status", "--porcelain", "--", *model_paths))}


def _series_json(series: Series) -> dict:
    """The per-evaluation-time numbers of one lookback (proxy truth), for plots and for checking."""
    out = {"time_ms": series.time_ms.tolist(), "price": rounded(series.price.tolist(), 6),
           "magnet": rounded(series.magnet.tolist(), 1)}
    for tr in sorted({k[0] for k in series.scores}):
        out[tr] = {m: {p: rounded(series.scores[(tr, p, m)].tolist(), 4) for p in PREDICTORS} for m in METRICS}
    return out


def document(*, market: str, source: str, command: str, bars: dict, lookbacks: list[str], settings: Settings,
             series: dict[str, Series], summary: dict[str, dict], seconds: float, realised_note: str) -> dict:
    """Everything the report says, as plain JSON-ready data (numbers rounded as the report shows them)."""
    t = bars["time_ms"]
    views = sum(len(series[lb].time_ms) for lb in lookbacks) * (len(sensitivity.MIXES) if settings.sensitivity else 1)
    view_seconds = sum(series[lb].seconds["views"] for lb in lookbacks)
    lookback_docs = {}
    for lb in lookbacks:
        entry = dict(summary[lb])
        entry["first_evaluation"] = format_time(series[lb].time_ms[0])
        entry["last_evaluation"] = format_time(series[lb].time_ms[-1])
        entry["seconds"] = series[lb].seconds
        lookback_docs[lb] = rounded(entry)
        lookback_docs[lb]["series"] = _series_json(series[lb])
    doc = {
        "title": "How good is the heatmap? heatsvc accuracy report",
        "command": command,
        "generated_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
        "contract": {"model_md": "v2", "judged_by": "section 15", "realised_liquidations": "section 12",
                     "zones": "section 9"},
        "engine": engine_version(),
        "data": {"market": market, "source": source, "first_bar": format_time(t[0]), "last_bar": format_time(t[-1]),
                 "bars": int(len(t)), "days": round((int(t[-1]) + STEP_MS - int(t[0])) / DAY_MS, 2)},
        "settings": {"lookbacks": lookbacks, "horizon_hours": settings.horizon_ms / HOUR_MS,
                     "every_hours": settings.every_ms / HOUR_MS, "rows": settings.rows,
                     "block_hours": settings.block_ms / HOUR_MS, "block_evaluations": settings.block,
                     "resamples": settings.resamples, "seed": settings.seed,
                     "interval_percent": round(100 * scoring.LEVEL),
                     "distance_prior_d0_percent": settings.d0, "zone_threshold": settings.threshold,
                     "grid_margin_percent": 100 * ModelParams().mu, "magnet_null": 0.5,
                     "sensitivity": settings.sensitivity, "deciles": 10},
        "truth": {"used": sorted({k[0] for s in series.values() for k in s.scores}), "realised": realised_note},
        "mixes": [{"name": m.name, "change": m.change, "leverages": [t.leverage for t in m.tiers],
                   "weights": [t.weight for t in m.tiers],
                   "half_lives_days": [None if math.isinf(t.half_life_days) else t.half_life_days for t in m.tiers]}
                  for m in sensitivity.MIXES],
        "selection": {"criterion": "the highest mean Spearman against the proxy over the first half",
                      "judged_on": "the second half only, one horizon after the first half ends",
                      "change_default_if": "the chosen mix is not the default and the 95 % interval of its "
                                           "second-half Spearman minus the default's lies above 0",
                      "added_after_the_first_run": "the defaults are one table for every lookback, so a change "
                                                   "needs the rule met at every lookback by the same mix; this was "
                                                   "added after the first run on the recorded data met the rule at "
                                                   "1d only, and is stricter than the rule above"},
        "lookbacks": lookback_docs,
        "runtime": rounded({"seconds": seconds, "views": views, "view_seconds": view_seconds,
                            "milliseconds_per_view": 1000 * view_seconds / max(1, views)}, 1),
    }
    doc["verdict"] = verdict(doc)
    return doc


# ---- the verdict: only what the intervals allow --------------------------------------------------------

TRUTHS = {"proxy": "the proxy", "realised": "realised liquidations"}


def _claims(doc: dict) -> tuple[list[str], list[str]]:
    """(skill claims, worse-than claims) over truths, lookbacks, metrics and baselines, in words."""
    skill, worse = [], []
    for tr in doc["truth"]["used"]:
        for lb, entry in doc["lookbacks"].items():
            if tr not in entry["truths"]:
                continue
            for m in METRICS:
                for base in BASELINES:
                    d = entry["truths"][tr]["differences"][m][base]
                    text = (f"{LABELS[base]} on {m} at {lb} against {TRUTHS[tr]} (difference {_n(d['mean'])}, "
                            f"interval {_n(d['low'])} to {_n(d['high'])})")
                    if d["skill"] == "skill":
                        skill.append(text)
                    elif d["skill"] == "worse than the baseline":
                        worse.append(text)
    return skill, worse


def _sensitivity_verdict(doc: dict) -> str:
    """What the out-of-sample tier mixes say about the defaults, which are one table for every lookback."""
    sens = {lb: e["sensitivity"] for lb, e in doc["lookbacks"].items()}
    met = {lb: s for lb, s in sens.items() if s["change_default"]}
    if not met:
        return ("Tier mixes, out of sample: no mix chosen on the first half beat the defaults on the second half "
                "with an interval excluding 0, at any lookback: the defaults stay.")
    parts = []
    for lb, s in met.items():
        d = s["second_half"]["chosen_minus_default_spearman"]
        parts.append(f"at {lb} by {s['chosen']} (Spearman difference {_n(d['mean'])}, interval {_n(d['low'])} to "
                     f"{_n(d['high'])})")
    chosen = {s["chosen"] for s in met.values()}
    if len(met) == len(sens) and len(chosen) == 1:
        return (f"Tier mixes, out of sample: the declared rule is met at every lookback by {chosen.pop()}: "
                f"{'; '.join(parts)}. That is evidence to change the defaults (MODEL.md section 3); this command "
                "does not change them itself.")
    others = [lb for lb in sens if lb not in met]
    return (f"Tier mixes, out of sample: the declared rule is met {'; '.join(parts)}, but not at "
            f"{' or '.join(others) or 'every lookback by one mix'}. The defaults are one table for every lookback; "
            "by the stricter rule stated with the declarations, they stay.")


def verdict(doc: dict) -> dict:
    """A plain-language verdict generated from the intervals, never claiming more than they allow."""
    skill, worse = _claims(doc)
    lbs = ", ".join(doc["lookbacks"])
    where = f"{doc['data']['days']:g} days of {doc['data']['market']}"
    if skill:
        head = f"On {where}, the heatmap beats a baseline only where listed below; elsewhere it shows no skill."
    else:
        against = " or ".join(TRUTHS[tr] for tr in doc["truth"]["used"])
        head = (f"No skill: on {where}, the heatmap beats neither baseline (volume profile, distance prior) "
                f"at any lookback ({lbs}) on either score against {against}.")
    details = [f"It beats the {c}." for c in skill] + [f"It is worse than the {c}." for c in worse]
    magnet = {lb: e["magnet"] for lb, e in doc["lookbacks"].items()}
    chance = [lb for lb, m in magnet.items() if m["verdict"] == "not distinguishable from 0.5"]
    if len(chance) == len(magnet):
        details.append("The dominant magnet was touched before its mirror price about as often as a coin flip "
                       f"would be: at every lookback ({lbs}) the interval of the fraction includes 0.5.")
    for lb, m in magnet.items():
        if lb not in chance and m["mean"] is not None:
            details.append(f"At {lb} the magnet was touched first in a fraction {_n(m['mean'])} of the tested "
                           f"times (interval {_n(m['low'])} to {_n(m['high'])}): {m['verdict']}.")
    if doc["settings"]["sensitivity"]:
        details.append(_sensitivity_verdict(doc))
    comparisons = len(METRICS) * len(BASELINES) * len(doc["lookbacks"]) * len(doc["truth"]["used"])
    if worse:
        head += f" It is worse than a baseline in {len(worse)} of {comparisons} comparisons."
    return {"one_line": head, "details": details}


# ---- markdown ------------------------------------------------------------------------------------------

def _n(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _ci(d: dict) -> str:
    return "n/a" if d["mean"] is None else f"{_n(d['mean'])} [{_n(d['low'])}, {_n(d['high'])}]"


def markdown(doc: dict) -> str:
    """The report, written from the JSON document alone."""
    s, data = doc["settings"], doc["data"]
    lbs = list(doc["lookbacks"])
    eng = doc["engine"]
    out = [f"# {doc['title']}", "",
           f"Generated by `{doc['command']}` on {doc['generated_at']}, engine at commit {eng['commit']} "
           f"(model files last changed in commit {eng['model_commit']}"
           + ("; **with uncommitted model changes in the tree**" if eng["model_uncommitted_changes"] else "")
           + f"). Every number below is in [{JSON}]({JSON}). The contract is MODEL.md v2 "
           f"{doc['contract']['judged_by']}.",
           "", "A liquidation heatmap is an estimate of where leveraged positions would be force-closed: "
           "market-risk context, never a price forecast. This report asks how well that estimate matched "
           "what happened next.", ""]
    out += ["## Declared before any result", "",
            "The tier mixes evaluated for sensitivity (each changes one thing from the defaults), and the rule:",
            "", "| mix | change | leverages | weights | half-lives (days) |", "|---|---|---|---|---|"]
    for m in doc["mixes"]:
        hl = ", ".join("none" if h is None else f"{h:g}" for h in m["half_lives_days"])
        out.append(f"| {m['name']} | {m['change']} | {', '.join(f'{x:g}' for x in m['leverages'])} | "
                   f"{', '.join(f'{x:g}' for x in m['weights'])} | {hl} |")
    sel = doc["selection"]
    out += ["", f"Choice: {sel['criterion']}. Judged on {sel['judged_on']}. The defaults change only if "
            f"{sel['change_default_if']}.", "",
            f"Not declared in advance, said here for honesty: {sel['added_after_the_first_run']}.", ""]
    out += ["## Verdict", "", f"**{doc['verdict']['one_line']}**", ""]
    out += [f"- {d}" for d in doc["verdict"]["details"]] + [""]
    out += ["## What was measured", "",
            f"- Data: {data['market']} ({data['source']}), {data['bars']} five-minute bars, {data['first_bar']} to "
            f"{data['last_bar']} ({data['days']:g} days).",
            f"- Evaluation times t_k every {s['every_hours']:g} h after a warm-up of one lookback, each with a whole "
            f"{s['horizon_hours']:g} h horizon of data after it. At each, the view's newest column on its default "
            f"grid ({s['rows']} rows, the window's range widened by {s['grid_margin_percent']:g} %), "
            "P_k = the close at t_k; predicted heat per "
            "row = short heat above P_k, long heat below.",
            "- What happened over (t_k, t_k + H]: realised liquidations (section 12) where recorded with full "
            f"coverage, else the OI-destroyed proxy: each horizon bar that newly trades rows (a new high or low "
            "since t_k) while open interest falls spreads -dOI x close evenly over the rows it newly traded. "
            f"Truth used here: {', '.join(doc['truth']['used'])}. Realised: {doc['truth']['realised']}",
            "- Scores per t_k over the rows newly traded in the horizon: Spearman rank correlation and cosine "
            "similarity between a predictor and what happened. A t_k where what happened does not vary over at "
            "least two rows is not scored; a predictor that is constant or zero on the scored rows scores 0 "
            "(it says nothing about where).",
            f"- Baselines on the same rows: the volume profile (each window bar's quote volume spread evenly over "
            "the rows it traded) and the distance prior 1 / (1 + |d| / d0), "
            f"d0 = {s['distance_prior_d0_percent']:g} %.",
            f"- Intervals: moving-block bootstrap over the t_k, blocks of {s['block_hours']:g} h "
            f"({s['block_evaluations']} evaluation times), {s['resamples']} resamples (seed {s['seed']}), "
            f"{s['interval_percent']} % percentile intervals for each mean score and for model minus baseline "
            "(paired per t_k). Skill is claimed only where the interval of the difference lies above 0.",
            f"- Magnet test: at each t_k the dominant magnet ({doc['contract']['zones']}, zone threshold "
            f"{s['zone_threshold']:g}) and its mirror price (same distance on the other side of P_k); 1 if the "
            "price touches the magnet's peak first within the horizon, 0 if the mirror first, 0.5 if one bar "
            "touches both; times where neither is touched are left out. Its mean is compared with "
            f"{s['magnet_null']:g}.", ""]
    out += ["## Results", ""]
    for tr in doc["truth"]["used"]:
        out += [f"### Scores against {TRUTHS[tr]} (mean over t_k, {s['interval_percent']} % interval)", "",
                "| lookback | score | t_k scored | model | volume profile | distance prior | model - volume profile "
                "| model - distance prior |", "|---|---|---:|---|---|---|---|---|"]
        for lb in lbs:
            e = doc["lookbacks"][lb]["truths"].get(tr)
            if e is None:
                continue
            for m in METRICS:
                sc, df = e["scores"][m], e["differences"][m]
                out.append(f"| {lb} | {m} | {e['scored']} | {_ci(sc['model'])} | {_ci(sc['volume_profile'])} | "
                           f"{_ci(sc['distance_prior'])} | "
                           f"{_ci(df['volume_profile'])}: {df['volume_profile']['skill']} | "
                           f"{_ci(df['distance_prior'])}: {df['distance_prior']['skill']} |")
        out.append("")
    out += ["### Evaluation times", "", "| lookback | first t_k | last t_k | t_k | skipped: no bar at t_k | "
            "skipped: gap in horizon | proxy off the grid (% of its notional) | scored rows without model heat (%) |",
            "|---|---|---|---:|---:|---:|---:|---:|"]
    for lb in lbs:
        e = doc["lookbacks"][lb]
        out.append(f"| {lb} | {e['first_evaluation']} | {e['last_evaluation']} | {e['evaluations']} | "
                   f"{e['skipped']['no bar closing at t_k']} | {e['skipped']['gap in the horizon']} | "
                   f"{_n(e['truths']['proxy']['off_grid_percent'])} | "
                   f"{_n(e['scored_rows_without_model_heat_percent'])} |")
    out += ["", "### Magnet test", "", "| lookback | magnet first (fraction, interval) | tested | magnet first | "
            "mirror first | same bar | left out | median magnet distance (%) | verdict |",
            "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for lb in lbs:
        m = doc["lookbacks"][lb]["magnet"]
        out.append(f"| {lb} | {_ci(m)} | {m['n']} | {m['magnet_first']} | {m['mirror_first']} | {m['same_bar']} | "
                   f"{m['neither_touched_or_no_magnet']} | {_n(m['median_distance_pct'])} | {m['verdict']} |")
    out.append("")
    if s["sensitivity"]:
        out += ["### Tier mixes out of sample", ""]
        for lb in lbs:
            sens = doc["lookbacks"][lb]["sensitivity"]
            f, sh = sens["first_half"], sens["second_half"]
            out += [f"**{lb}**: chosen on the first half ({f['evaluations']} t_k, {f['from']} to {f['to']}): "
                    f"**{sens['chosen']}**. Second half only ({sh['evaluations']} t_k, {sh['from']} to "
                    f"{sh['to']}):", "",
                    "| mix | first-half mean Spearman | second-half Spearman | second-half cosine |",
                    "|---|---|---|---|"]
            for mix in doc["mixes"]:
                name = mix["name"]
                out.append(f"| {name} | {_n(f['mean'][name])} | {_ci(sh['spearman'][name])} | "
                           f"{_ci(sh['cosine'][name])} |")
            ds, dc = sh["chosen_minus_default_spearman"], sh["chosen_minus_default_cosine"]
            out += ["", f"Chosen minus default on the second half: Spearman {_ci(ds)} ({ds['verdict']}), cosine "
                    f"{_ci(dc)} ({dc['verdict']}). Change the defaults by the declared rule: "
                    f"{'yes' if sens['change_default'] else 'no'}.", ""]
    out += ["## Plots", "",
            f"![Scores over time]({PLOTS['scores']})", "",
            f"Scores over time: mean over the trailing {s['block_hours']:g} h of evaluation times, model and "
            "baselines, "
            "against the proxy.", "",
            f"![Predicted heat by decile]({PLOTS['deciles']})", "",
            "Rows ranked by each predictor into deciles at every t_k (ties share a decile): the mean share of what "
            "happened in each decile divided by the mean share of rows there. A predictor without skill sits at 1 "
            "(dashed); a good one rises to the right. The shares are in the JSON under `deciles`.", "",
            f"![Magnet test]({PLOTS['magnet']})", "",
            "The magnet test: the fraction of tested times at which the magnet was touched before its mirror, with "
            "its interval, against 0.5.", ""]
    fewest = min(lbs, key=lambda lb: doc["lookbacks"][lb]["evaluations"])
    few = doc["lookbacks"][fewest]
    out += ["## Limits", "",
            f"- One market ({data['market']}) and {data['days']:g} days. The {s['block_hours']:g} h blocks leave few "
            f"independent blocks (at {fewest}: {few['evaluations']} t_k, {few['blocks']:g} blocks of "
            f"{s['block_evaluations']}), "
            "so the intervals are themselves rough, and bootstrap intervals from few blocks tend to be too narrow "
            "rather than too wide. Horizons of consecutive t_k overlap, which is why blocks are used at all.",
            "- The proxy is noisy: open interest falls for reasons other than liquidations (voluntary closes), and "
            "liquidations in a bar that also opened interest are invisible to it. It is spread evenly over the rows "
            "a bar newly traded, which blurs where in the bar things happened. Its notional on rows outside the "
            "view's grid is not scored (the table above gives the share). A bar that newly trades many rows "
            "spreads its fall thinly, so per row the proxy weighs the rows reached by ordinary bars (usually the "
            "nearer ones) more than those a fast move swept through.",
            "- Cosine weighs rows by size, so a predictor whose mass sits in peaks scores low unless the peaks "
            "are where the most happened. Both baselines are smooth by construction; the model's heat is peaked by "
            "construction (each bar deposits at one price per tier), and some scored rows hold none at all (the "
            "table above gives the share). Spearman only asks for the order.",
            "- Several lookbacks, two scores and two baselines are many comparisons; an interval that excludes 0 "
            "in one of them is weaker evidence than it looks.",
            "- The magnet's mirror is at the same distance in price, so a magnet above is slightly nearer in "
            "log-price than its mirror below.",
            "- Results depend on the engine version named at the top.", ""]
    out += ["## Run it on your own data", "",
            "On a store the service has filled (`heatsvc serve` records bars into it):", "",
            "    heatsvc backtest --store PATH/heatsvc.sqlite3 --market binance:BTCUSDT --lookback 1d,3d,7d "
            "--horizon 24h --every 1h --out accuracy", "",
            "Once the store also holds realised liquidations from the liquidation recorder, horizons it covered "
            "in full are scored against them, the better ground truth, and the report shows both truths. "
            "`--no-sensitivity` skips the tier mixes (six times fewer views); `heatsvc backtest --help` lists "
            "the rest.", ""]
    rt = doc["runtime"]
    out += ["## Runtime", "",
            f"{rt['seconds']:g} s for the whole run ({rt['views']} views in {rt['view_seconds']:g} s, "
            f"{rt['milliseconds_per_view']:g} ms per view with the cython backend, one column each), measured on "
            "a shared machine: approximate.", ""]
    return "\n".join(out)


# ---- plots ---------------------------------------------------------------------------------------------

def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fig.savefig(tmp, format="png", metadata={"Software": "heatsvc backtest"})
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _trailing_mean(x: np.ndarray, width: int) -> np.ndarray:
    valid = ~np.isnan(x)
    sums = np.concatenate(([0.0], np.cumsum(np.where(valid, x, 0.0))))
    counts = np.concatenate(([0], np.cumsum(valid)))
    lo = np.maximum(np.arange(1, len(x) + 1) - width, 0)
    hi = np.arange(1, len(x) + 1)
    n = counts[hi] - counts[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (sums[hi] - sums[lo]) / np.maximum(n, 1), np.nan)


def plots(doc: dict, out_dir: Path) -> None:
    """The three PNGs, drawn from the document."""
    from matplotlib import dates as mdates
    lbs = list(doc["lookbacks"])
    width = doc["settings"]["block_evaluations"]
    title = f"{doc['data']['market']}, {doc['data']['first_bar']} to {doc['data']['last_bar']}"

    fig = _figure(11, 2.6 * len(lbs) + 0.6)
    axes = fig.subplots(len(lbs), 2, squeeze=False, sharex=True)
    for row, lb in enumerate(lbs):
        ser = doc["lookbacks"][lb]["series"]
        when = [datetime.fromtimestamp(t / 1000, timezone.utc) for t in ser["time_ms"]]
        for col, m in enumerate(METRICS):
            ax = axes[row][col]
            for p in PREDICTORS:
                y = np.array([np.nan if v is None else v for v in ser["proxy"][m][p]])
                ax.plot(when, _trailing_mean(y, width), color=COLOURS[p], lw=1.4 if p == "model" else 1.0,
                        label=LABELS[p])
            ax.axhline(0, color="black", lw=0.5)
            ax.set_title(f"{lb} lookback: {m} (trailing {doc['settings']['block_hours']:g} h mean)", fontsize=9)
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d"))
            ax.tick_params(labelsize=8)
    axes[0][0].legend(fontsize=8, loc="best")
    fig.suptitle(f"Scores against the proxy over time, {title}", fontsize=10)
    fig.tight_layout()
    _save(fig, out_dir / PLOTS["scores"])

    fig = _figure(4 * len(lbs) + 0.5, 3.6)
    axes = fig.subplots(1, len(lbs), squeeze=False, sharey=True)[0]
    deciles = np.arange(1, 11)
    for ax, lb in zip(axes, lbs):
        dec = doc["lookbacks"][lb]["truths"]["proxy"]["deciles"]
        for i, p in enumerate(PREDICTORS):
            lift = [np.nan if v is None else v for v in dec[p]["lift"]]
            ax.bar(deciles + (i - 1) * 0.27, lift, width=0.27, color=COLOURS[p], label=LABELS[p])
        ax.axhline(1, color="black", ls="--", lw=0.8)
        ax.set_title(f"{lb} lookback", fontsize=9)
        ax.set_xlabel("decile of predicted heat (10 = hottest)", fontsize=8)
        ax.set_xticks(deciles)
        ax.tick_params(labelsize=8)
    axes[0].set_ylabel("share of what happened / share of rows", fontsize=8)
    axes[0].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Predicted heat by decile vs what happened (proxy; 1 = no skill), {title}", fontsize=10)
    fig.tight_layout()
    _save(fig, out_dir / PLOTS["deciles"])

    fig = _figure(1.6 * len(lbs) + 2.4, 3.6)
    ax = fig.subplots()
    for i, lb in enumerate(lbs):
        m = doc["lookbacks"][lb]["magnet"]
        if m["mean"] is None:
            continue
        ax.bar(i, m["mean"], color=COLOURS["model"], width=0.6)
        ax.errorbar(i, m["mean"], yerr=[[m["mean"] - m["low"]], [m["high"] - m["mean"]]], color="black", capsize=5)
        ax.text(i, 0.03, f"n={m['n']}", ha="center", fontsize=8, color="white")
    ax.axhline(0.5, color="black", ls="--", lw=1)
    ax.set_xticks(range(len(lbs)), lbs)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction: magnet touched before mirror", fontsize=8)
    ax.set_title(f"Magnet test, {doc['settings']['interval_percent']} % intervals\n{title}", fontsize=9)
    fig.tight_layout()
    _save(fig, out_dir / PLOTS["magnet"])


def write(doc: dict, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write the JSON, the markdown and the plots into out_dir (created if missing)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out: {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / JSON, "markdown": out / MARKDOWN, **{k: out / v for k, v in PLOTS.items()}}
    plots(doc, out)
    paths["json"].write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    paths["markdown"].write_text(markdown(doc))
    return paths
