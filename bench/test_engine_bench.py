"""Kernel benchmarks (pytest-benchmark): the three backends on one seeded synthetic year of 5-minute
bars, 400 rows x 288 columns, and all nine lookbacks (in one call, and one call each). Run with the
README's command; `python bench/report.py FILE.json` turns the results into the README's table.
bench/kernel_floor.py times the kernel against the model's floor in C."""
from __future__ import annotations

import pytest

from heatsvc.model import bars as barlib
from heatsvc import datasets
from heatsvc.model import engine

ROWS, COLUMNS = 400, 288
# the python backend loops over every cell of the book on every bar: only the shortest view is reasonable
CASES = [(b, lb) for b in ("cython", "numpy") for lb in ("1d", "7d", "1M", "3M", "1Y")] + [("python", "1d")]


@pytest.fixture(scope="module")
def market():
    return barlib.check(datasets.synthetic_bars("BTCUSDT", "binance", days=365, seed=20251010))


@pytest.mark.parametrize("backend, lookback", CASES, ids=[f"{b}-{lb}" for b, lb in CASES])
def test_view(benchmark, market, backend, lookback):
    benchmark.group = f"view {lookback}"
    benchmark.extra_info.update(backend=backend, lookback=lookback,
                                bars=engine.LOOKBACKS[lookback] // barlib.STEP_MS)
    slow = backend != "cython"
    run = lambda: engine.compute_heatmap(market, lookback=lookback, rows=ROWS, columns=COLUMNS,  # noqa: E731
                                         backend=backend)
    heatmap = benchmark.pedantic(run, rounds=3 if slow else 30, iterations=1, warmup_rounds=0 if slow else 2)
    assert heatmap.long.shape == (ROWS, COLUMNS) and heatmap.balance.deposited > 0


def test_nine_lookbacks(benchmark, market):
    """All nine lookbacks of the market in one compute_heatmaps call: the bars are checked once."""
    benchmark.group = "nine lookbacks"
    benchmark.extra_info.update(backend="cython", lookback="all nine, one call",
                                bars=sum(engine.LOOKBACKS.values()) // barlib.STEP_MS)
    run = lambda: engine.compute_heatmaps(market, lookbacks=list(engine.LOOKBACKS), rows=ROWS,  # noqa: E731
                                          columns=COLUMNS)
    heatmaps = benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=1)
    assert len(heatmaps) == 9


def test_nine_lookbacks_one_call_each(benchmark, market):
    benchmark.group = "nine lookbacks"
    benchmark.extra_info.update(backend="cython", lookback="all nine, a call each",
                                bars=sum(engine.LOOKBACKS.values()) // barlib.STEP_MS)

    def run():
        return [engine.compute_heatmap(market, lookback=lb, rows=ROWS, columns=COLUMNS) for lb in engine.LOOKBACKS]

    heatmaps = benchmark.pedantic(run, rounds=20, iterations=1, warmup_rounds=1)
    assert len(heatmaps) == 9


def test_kernel_only_1y(benchmark, market):
    """The kernel alone on the 1Y view, without validation and view set-up: what bounds the whole."""
    from heatsvc.model import _kernel
    benchmark.group = "view 1Y"
    benchmark.extra_info.update(backend="cython kernel only", lookback="1Y", bars=engine.LOOKBACKS["1Y"] // barlib.STEP_MS)
    span = engine.LOOKBACKS["1Y"]
    view = engine._prepare(market, end_ms=int(market["time_ms"][-1]), span_ms=span, columns=COLUMNS, rows=ROWS,
                           price_range=None, params=engine.ModelParams(), per_tier=False)
    out = benchmark.pedantic(_kernel.evolve_view, args=(view,), rounds=30, iterations=1, warmup_rounds=2)
    assert out["long"].shape == (ROWS, COLUMNS)
