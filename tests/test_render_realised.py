"""`heatsvc render` draws realised liquidations (recorded, MODEL.md section 12) over the estimated bars
under the heatmap, and a column the recorder did not hear as a gap: no bar at all, not a zero."""
from __future__ import annotations

import dataclasses

import numpy as np
from matplotlib.image import imread

from heatsvc import datasets, render
from heatsvc.model.engine import DAY_MS, compute_heatmap


def test_realised_bars_beside_the_estimate_with_gaps_as_gaps(tmp_path):
    bars = datasets.recorded_bars()
    bars = {k: v[bars["time_ms"] < 1_760_140_800_000] for k, v in bars.items()}
    hm = compute_heatmap(bars, lookback="1d", market="binance:HYPEUSDT", columns=48)
    scene = render.scene_from_heatmap(hm, market="binance:HYPEUSDT", lookback="1d")
    n = scene.columns
    peak = float(max(scene.swept_long.max(), scene.swept_short.max()))
    long = np.full(n, 0.6 * peak)
    short = np.full(n, 0.6 * peak)
    gap = slice(n // 2 - 4, n // 2 + 4)          # eight columns never heard
    long[gap] = short[gap] = np.nan
    layout = render.render_heatmap(dataclasses.replace(scene, realised_long=long, realised_short=short),
                                   tmp_path / "r.png")
    img = imread(tmp_path / "r.png")[:, :, :3]
    panel = layout.panels["swept"]
    yellow = np.abs(img - np.array([0xf0, 0xc4, 0x19]) / 255).max(axis=-1) <= 0.08

    def columns_with_yellow(first: int, last: int) -> int:
        x0 = panel.pixel(scene.column_times[first] / DAY_MS, 0)[0]
        x1 = panel.pixel((scene.column_times[last] + scene.column_ms) / DAY_MS, 0)[0]
        box = yellow[int(panel.top) + 2:int(panel.bottom) - 2, int(x0) + 2:int(x1) - 2]
        return int(box.any(axis=0).sum())

    assert columns_with_yellow(2, n // 2 - 6) > 10, "heard columns have their realised bars"
    assert columns_with_yellow(n // 2 - 3, n // 2 + 2) == 0, "a column not heard is a gap, not a bar at zero"
    plain = render.render_heatmap(scene, tmp_path / "plain.png")
    assert not (np.abs(imread(tmp_path / "plain.png")[:, :, :3] - np.array([0xf0, 0xc4, 0x19]) / 255)
                .max(axis=-1) <= 0.08)[int(plain.panels["swept"].top):int(plain.panels["swept"].bottom)].any()
