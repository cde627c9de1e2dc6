"""Instructions per bar of the kernel and of the model's floor (kernel_floor.c), counted by valgrind's
callgrind: unlike seconds, a count does not move with the machine's load, so it shows what a change
to the kernel saves while other work runs. Each side is run with 1 and 1 + REPS repetitions and the
difference is divided, so set-up and data generation drop out.

    python bench/kernel_instructions.py [LOOKBACK ...]      (needs valgrind: apt-get install valgrind)
"""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
from pathlib import Path

from kernel_floor import COLUMNS, ROWS, build_floor

REPS = 3
KERNEL = """
import sys
from heatsvc import datasets
from heatsvc.model import _kernel, bars as barlib, engine
market = barlib.check(datasets.synthetic_bars("BTCUSDT", "binance", days=365, seed=20251010))
view = engine._prepare(market, end_ms=int(market["time_ms"][-1]), span_ms=engine.LOOKBACKS[sys.argv[1]],
                       columns=COLUMNS, rows=ROWS, price_range=None, params=engine.ModelParams(), per_tier=False)
for _ in range(int(sys.argv[2])):
    _kernel.evolve_view(view)
""".replace("COLUMNS", str(COLUMNS)).replace("ROWS", str(ROWS))


def collected(command: list[str], toggle: str | None = None) -> int:
    """Instructions callgrind counted (only inside functions matching `toggle`, if given)."""
    args = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    if toggle:
        args.append(f"--toggle-collect={toggle}")
    err = subprocess.run(args + command, capture_output=True, text=True, check=True).stderr
    return int(re.search(r"Collected : (\d+)", err).group(1))


def main(lookbacks: list[str]) -> None:
    from heatsvc.model import bars as barlib
    from heatsvc.model import engine

    with tempfile.TemporaryDirectory() as tmp:
        floor = build_floor(tmp)
        script = Path(tmp, "kernel.py")
        script.write_text(KERNEL)
        print("| view | bars | kernel instructions / bar | floor instructions / bar | ratio |\n|---|---:|---:|---:|---:|")
        for lb in lookbacks:
            bars = engine.LOOKBACKS[lb] // barlib.STEP_MS
            kernel = [collected([sys.executable, str(script), lb, str(n)], "*_kernel_run*") for n in (1, 1 + REPS)]
            base = [collected([floor, str(bars), str(ROWS), str(COLUMNS), str(n)]) for n in (1, 1 + REPS)]
            k, f = (kernel[1] - kernel[0]) / REPS / bars, (base[1] - base[0]) / REPS / bars
            print(f"| {lb} | {bars:,} | {k:,.0f} | {f:,.0f} | {k / f:.2f} |")


if __name__ == "__main__":
    main(sys.argv[1:] or ["7d", "1Y"])
