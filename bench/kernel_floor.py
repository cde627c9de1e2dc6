"""The kernel against the model's floor, timed in the same run so that their ratio holds on any machine.

kernel_floor.c is the least work MODEL.md sections 6-7 need, in plain C (`cc -O2`). For each view this
alternates rounds of the floor and of heatsvc (the kernel alone, and `compute_heatmap` end to end) on a
synthetic year of BTCUSDT, 400 rows x 288 columns, and reports medians and the median of the per-round
ratios; then the nine lookbacks in one `compute_heatmaps` call, and the first call in a fresh process.

    python bench/kernel_floor.py [--rounds 7] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS, COLUMNS = 400, 288
VIEWS = ("1d", "7d", "3M", "1Y")
HERE = Path(__file__).resolve().parent
FRESH = """
import json, sys, time
from heatsvc import datasets
from heatsvc.model import _kernel, bars as barlib, engine  # imported before timing: the first call measures first use
market = barlib.check(datasets.synthetic_bars("BTCUSDT", "binance", days=365, seed=20251010))
lookback = sys.argv[1]
times = []
for _ in range(3):
    t = time.perf_counter()
    engine.compute_heatmap(market, lookback=lookback, rows=400, columns=288)
    times.append(time.perf_counter() - t)
print(json.dumps(times))
"""


def build_floor(workdir: str) -> str:
    """Compile kernel_floor.c as its header says (cc -O2 ... -lm); returns the binary's path."""
    binary = os.path.join(workdir, "kernel_floor")
    subprocess.run(["cc", "-O2", "-o", binary, str(HERE / "kernel_floor.c"), "-lm"], check=True)
    return binary


def floor_ms(binary: str, bars: int, reps: int) -> float:
    """The floor's own median over `reps` runs inside one process, in ms."""
    out = subprocess.run([binary, str(bars), str(ROWS), str(COLUMNS), str(reps)], check=True,
                         capture_output=True, text=True).stdout
    return float(out.split()[0])


def median_ms(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def measure(rounds: int, reps: int) -> dict:
    from heatsvc import datasets
    from heatsvc.model import _kernel, engine
    from heatsvc.model import bars as barlib

    market = barlib.check(datasets.synthetic_bars("BTCUSDT", "binance", days=365, seed=20251010))
    end = int(market["time_ms"][-1])
    with tempfile.TemporaryDirectory() as tmp:
        binary = build_floor(tmp)
        results = {}
        for lookback in VIEWS:
            span = engine.LOOKBACKS[lookback]
            bars = span // barlib.STEP_MS
            view = engine._prepare(market, end_ms=end, span_ms=span, columns=COLUMNS, rows=ROWS,
                                   price_range=None, params=engine.ModelParams(), per_tier=False)
            rows = {"floor": [], "kernel": [], "end to end": []}
            for r in range(rounds):
                order = ("floor", "ours") if r % 2 == 0 else ("ours", "floor")
                for who in order:
                    if who == "floor":
                        rows["floor"].append(floor_ms(binary, bars, reps))
                    else:
                        rows["kernel"].append(median_ms(lambda: _kernel.evolve_view(view), reps))
                        rows["end to end"].append(median_ms(
                            lambda: engine.compute_heatmap(market, lookback=lookback, rows=ROWS, columns=COLUMNS), reps))
            results[lookback] = summarise(bars, rows)
        bars_all = sum(engine.LOOKBACKS.values()) // barlib.STEP_MS
        rows = {"floor": [], "kernel": [], "end to end": []}
        lookbacks = list(engine.LOOKBACKS)
        views = [engine._prepare(market, end_ms=end, span_ms=engine.LOOKBACKS[lb], columns=COLUMNS, rows=ROWS,
                                 price_range=None, params=engine.ModelParams(), per_tier=False) for lb in lookbacks]
        for r in range(rounds):
            rows["floor"].append(sum(floor_ms(binary, engine.LOOKBACKS[lb] // barlib.STEP_MS, reps) for lb in lookbacks))
            rows["kernel"].append(median_ms(lambda: _kernel.evolve_views(views), reps))
            rows["end to end"].append(median_ms(
                lambda: engine.compute_heatmaps(market, lookbacks=lookbacks, rows=ROWS, columns=COLUMNS), reps))
        results["all nine"] = summarise(bars_all, rows)
    return results


def summarise(bars: int, rows: dict) -> dict:
    out = {"bars": bars}
    for name, values in rows.items():
        out[f"{name} ms"] = statistics.median(values)
    for name in ("kernel", "end to end"):
        out[f"{name} / floor"] = statistics.median(a / b for a, b in zip(rows[name], rows["floor"]))
    return out


def fresh(lookback: str) -> list[float]:
    """compute_heatmap's first three calls in a new process (after imports and data): first-touch costs."""
    out = subprocess.run([sys.executable, "-c", FRESH, lookback], check=True, capture_output=True, text=True).stdout
    return [t * 1e3 for t in json.loads(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--reps", type=int, default=15, help="runs per round, of which each side takes the median")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    results = measure(args.rounds, args.reps)
    results["fresh process"] = {lb: [fresh(lb) for _ in range(args.rounds)] for lb in ("7d", "1Y")}
    print(f"{args.rounds} rounds of {args.reps} runs each; medians\n")
    print("| view | bars | floor (C) | kernel | kernel / floor | compute_heatmap | end to end / floor |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        if name == "fresh process":
            continue
        print(f"| {name} | {r['bars']:,} | {r['floor ms']:.2f} ms | {r['kernel ms']:.2f} ms | {r['kernel / floor']:.2f} "
              f"| {r['end to end ms']:.2f} ms | {r['end to end / floor']:.2f} |")
    print("\n| fresh process | first call | second | third |\n|---|---:|---:|---:|")
    for lb, runs in results["fresh process"].items():
        first, second, third = (statistics.median(r[i] for r in runs) for i in range(3))
        print(f"| {lb} | {first:.2f} ms | {second:.2f} ms | {third:.2f} ms |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
