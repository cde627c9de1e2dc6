"""`heatsvc render`: PNGs of the bundled crash, synthetic and file data, and of a real server's answer
on 127.0.0.1; read back, they must be the asked size, not blank, with the hottest cell in the
brightest colour where the grid puts it and the current-price line at the price's height."""
from __future__ import annotations

import importlib.util
import math
import struct
import zlib

import numpy as np
import pytest
from matplotlib import colormaps, colors
from matplotlib.image import imread

from heatsvc import cli, datasets, render
from heatsvc.model.engine import compute_heatmap

CRASH_END = "2025-10-11T00:00Z"
CRASH_END_MS = 1_760_140_800_000
DAY_MS = 86_400_000
BRIGHTEST = np.array(colormaps[render.HEAT_CMAP](1.0)[:3])
DARKEST = np.array(colormaps[render.HEAT_CMAP](0.0)[:3])


def png_chunks(path) -> dict[str, list[bytes]]:
    """The PNG's chunks by type, after checking the signature and every CRC."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, i = {}, 8
    while i < len(data):
        (length,) = struct.unpack(">I", data[i:i + 4])
        kind, body = data[i + 4:i + 8], data[i + 8:i + 8 + length]
        assert struct.unpack(">I", data[i + 8 + length:i + 12 + length])[0] == zlib.crc32(kind + body)
        chunks.setdefault(kind.decode(), []).append(body)
        i += 12 + length
    assert "IEND" in chunks
    return chunks


def read_png(path, width: int, height: int) -> np.ndarray:
    """The picture as rows x columns x RGB floats, after checking it is a valid PNG of that size."""
    w, h = struct.unpack(">II", png_chunks(path)["IHDR"][0][:8])
    assert (w, h) == (width, height)
    img = imread(path)
    assert img.shape[:2] == (height, width)
    return img[:, :, :3]


def assert_not_blank(img: np.ndarray) -> None:
    rgb = (img * 255).astype(np.uint32).reshape(-1, 3)
    colours = np.unique(rgb[:, 0] << 16 | rgb[:, 1] << 8 | rgb[:, 2])
    assert len(colours) > 200 and img.std() > 0.05


def near(img: np.ndarray, colour, tol: float = 0.06) -> np.ndarray:
    return np.abs(img - np.asarray(colour)[:3]).max(axis=-1) <= tol


def cell_box(panel: render.Panel, hm, row: int, col: int, pad: float = 2.0):
    """Pixel rows and columns of grid cell (row, col), computed from the grid itself: time on x,
    ln(price) on y, inside the heat panel's box."""
    col_days = hm.bars_per_column * hm.params.step_ms / DAY_MS
    x0 = hm.column_times[col] / DAY_MS
    lo, hi = hm.price_edges[0], hm.price_edges[-1]
    u = lambda p: math.log(p / lo) / math.log(hi / lo) * hm.rows  # noqa: E731
    (px0, py0), (px1, py1) = panel.pixel(x0, u(hm.price_edges[row])), panel.pixel(x0 + col_days,
                                                                                 u(hm.price_edges[row + 1]))
    return (slice(int(py1 - pad), int(math.ceil(py0 + pad))), slice(int(px0 - pad), int(math.ceil(px1 + pad))))


def price_row(panel: render.Panel, hm, price: float) -> float:
    lo, hi = hm.price_edges[0], hm.price_edges[-1]
    return panel.pixel(panel.xlim[0], math.log(price / lo) / math.log(hi / lo) * hm.rows)[1]


@pytest.fixture(scope="module")
def crash():
    """The recorded HYPEUSDT crash of 2025-10-10: the 7d view ending 2025-10-11T00:00Z."""
    bars = datasets.recorded_bars()
    bars = {k: v[bars["time_ms"] < CRASH_END_MS] for k, v in bars.items()}
    hm = compute_heatmap(bars, lookback="7d", market="binance:HYPEUSDT", per_tier=True)
    return bars, hm, render.scene_from_heatmap(hm, market="binance:HYPEUSDT", lookback="7d")


def test_cli_renders_the_crash(tmp_path, capsys, crash):
    out = tmp_path / "crash.png"
    assert cli.main(["render", "--data", "recorded", "--end", CRASH_END, "--lookback", "7d", "--boost", "0.5",
                     "-o", str(out), "--width", "900", "--height", "560"]) == 0
    img = read_png(out, 900, 560)
    assert_not_blank(img)
    said = capsys.readouterr().out
    assert "HYPEUSDT Binance 7d" in said and "2025-10-10 23:55 UTC" in said and "not a forecast" in said
    text = b"".join(png_chunks(out).get("tEXt", []))
    assert b"HYPEUSDT Binance 7d liquidation heatmap" in text and render.CAPTION.encode() in text
    assert crash[1].time_end_ms == CRASH_END_MS - 300_000


@pytest.mark.parametrize("width, height", [(1200, 700), (400, 288)])
def test_hottest_cell_is_brightest_where_the_grid_puts_it(tmp_path, crash, width, height):
    _, hm, scene = crash
    layout = render.render(scene, tmp_path / "heat.png", width=width, height=height)
    img = read_png(tmp_path / "heat.png", width, height)
    panel = layout.panels["heat"]
    row, col = np.unravel_index(np.argmax(np.maximum(hm.long, hm.short)), hm.long.shape)
    assert near(img[cell_box(panel, hm, row, col)], BRIGHTEST).any()
    box = img[int(panel.top) + 1:int(panel.bottom) - 1, int(panel.left) + 1:int(panel.right) - 1]
    assert near(box, BRIGHTEST).mean() < 0.01        # the brightest colour is rare, not everywhere
    # the lowest rows hold no heat in this view: the darkest colour of the scale
    assert near(img[cell_box(panel, hm, 0, 0, pad=-1)], DARKEST, 0.02).all()


def test_price_line_sits_at_the_price(tmp_path, crash):
    _, hm, scene = crash
    layout = render.render(scene, tmp_path / "heat.png", width=1000, height=600)
    img = read_png(tmp_path / "heat.png", 1000, 600)
    panel = layout.panels["heat"]
    want = price_row(panel, hm, scene.price)
    rows, cols = np.nonzero(near(img[:, int(panel.left) + 2:int(panel.right) - 2], colors.to_rgb(render.PRICE_LINE),
                                 0.1))
    inside = (rows > panel.top) & (rows < panel.bottom)
    assert inside.sum() > 0.8 * (panel.right - panel.left)             # a line across the panel ...
    assert np.all(np.abs(rows[inside] + 0.5 - want) <= 1.5)             # ... at the price, and nowhere else
    assert scene.price == pytest.approx(37.735)


def test_map_bars_per_row_and_stacked_tiers(tmp_path, crash):
    _, hm, scene = crash
    for stack in (False, True):
        path = tmp_path / f"map{stack}.png"
        layout = render.render(scene, path, kind="map", width=1000, height=1100, stack_tiers=stack)
        img = read_png(path, 1000, 1100)
        assert_not_blank(img)
        panel = layout.panels["map"]
        for side, heat in (("long", hm.long[:, -1]), ("short", hm.short[:, -1])):
            row = int(np.argmax(heat))
            assert (hm.row_centres[row] < scene.price) == (side == "long")
            colour = colors.to_rgb(render.LONG_COLOUR if side == "long" else render.SHORT_COLOUR)
            x0, x1 = (int(panel.pixel(f * heat[row], 0)[0]) for f in (0.05, 0.95))
            y = int(panel.pixel(0, row + 0.5)[1])  # a lone row is ~2.5 px tall: take its least blended pixel row
            y = max((y - 1, y, y + 1), key=lambda yy: near(img[yy, x0:x1], colour, 0.02).mean())
            bar = img[y, x0:x1]
            if stack:  # the tiers' colours, in the order of their leverage along the bar
                tiers = [j for j in range(len(scene.leverages)) if scene.tier_long[j][row] + scene.tier_short[j][row]]
                assert len(tiers) >= 1 and not near(bar, colors.to_rgb(render.THEMES["dark"]["bg"])).any()
            else:
                assert near(bar, colour, 0.02).mean() > 0.9
            beyond = img[y, int(panel.pixel(heat[row], 0)[0]) + 2:int(panel.right) - 2]
            assert near(beyond, colour, 0.02).mean() < 0.05                 # the bar ends at its value


def test_synthetic_aggregate_in_the_light_theme(tmp_path, capsys):
    out = tmp_path / "agg.png"
    assert cli.main(["render", "--data", "synthetic:ETHUSDT", "--market", "all:ETHUSDT", "--lookback", "1d",
                     "--rows", "200", "--columns", "96", "--theme", "light", "-o", str(out), "--width", "800",
                     "--height", "500"]) == 0
    img = read_png(out, 800, 500)
    assert_not_blank(img)
    assert near(img[2, 2], (1, 1, 1), 0.01)                       # light background
    assert "ETHUSDT aggregate (binance + bybit + okx) 1d" in capsys.readouterr().out


def test_bars_files_give_the_same_view(tmp_path, crash):
    bars = crash[0]
    np.savez(tmp_path / "bars.npz", **bars)
    with open(tmp_path / "bars.csv", "w") as f:
        names = list(bars)
        f.write(",".join(names) + "\n")
        for i in range(len(bars["time_ms"])):
            f.write(",".join("" if isinstance(v, float) and math.isnan(v) else repr(v)
                             for v in (bars[n][i].item() for n in names)) + "\n")
    scenes = []
    for source in ("recorded", tmp_path / "bars.npz", tmp_path / "bars.csv"):
        args = cli.build_parser().parse_args(["render", "--data", str(source), "--end", CRASH_END, "--lookback", "7d",
                                              "--rows", "100", "--columns", "50", "-o", "x.png"])
        scenes.append(render.local_scene(args))
    assert scenes[1].market == "bars" and scenes[0].market == "binance:HYPEUSDT"
    for other in scenes[1:]:
        np.testing.assert_array_equal(other.long, scenes[0].long)
        np.testing.assert_array_equal(other.short, scenes[0].short)
        assert other.zones.above == scenes[0].zones.above
    assert cli.main(["render", "--data", str(tmp_path / "bars.csv"), "--lookback", "3d", "-o",
                     str(tmp_path / "csv.png"), "--width", "600", "--height", "400"]) == 0
    assert_not_blank(read_png(tmp_path / "csv.png", 600, 400))


@pytest.mark.parametrize("args, words", [
    (["--data", "nope.csv"], ["--data", "nope.csv"]),
    (["--data", "synthetic:DOGEUSDT"], ["DOGEUSDT", "BTCUSDT"]),
    (["--data", "recorded", "--market", "bybit:HYPEUSDT"], ["binance:HYPEUSDT", "bybit:HYPEUSDT"]),
    (["--data", "synthetic:BTCUSDT", "--market", "kraken:BTCUSDT"], ["kraken:BTCUSDT"]),
    (["--end", "yesterday"], ["--end", "yesterday"]),
    (["--end", "2020-01-01"], ["--end", "no bars before it"]),
    (["--lookback", "2d"], ["lookback", "2d"]),
    (["--boost", "0"], ["--boost"]),
    (["--threshold", "1"], ["threshold"]),
    (["--stack-tiers"], ["--stack-tiers", "--kind map"]),
    (["--width", "50"], ["width", "50"]),
    (["--target", "127.0.0.1:1", "--end", CRASH_END], ["--end", "--target"]),
])
def test_bad_options_are_named(tmp_path, capsys, args, words):
    out = tmp_path / "keep.png"
    out.write_bytes(b"already here")
    assert cli.main(["render", *args, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err
    assert out.read_bytes() == b"already here"          # nothing already stored is lost


def test_bad_files_and_outputs_are_named(tmp_path, capsys, crash):
    bars = crash[0]
    (tmp_path / "short.csv").write_text("time_ms,open,high,low,close\n1,2,3,1,2\n")
    (tmp_path / "bad.csv").write_text("time_ms,open,high,low,close,volume,open_interest\n"
                                      f"{bars['time_ms'][0]},2,3,1,x,5,6\n")
    broken = {k: v.copy() for k, v in bars.items()}
    broken["high"][-10] = broken["low"][-10] / 2          # inside the window: the engine checks it
    np.savez(tmp_path / "broken.npz", **broken)
    cases = [(["--data", str(tmp_path / "short.csv")], ["short.csv", "volume", "open_interest"]),
             (["--data", str(tmp_path / "bad.csv")], ["bad.csv", "line 2", "close", "'x'"]),
             (["--data", str(tmp_path / "broken.npz")], ["high", "2025-"]),
             (["-o", str(tmp_path / "pic.jpg")], [".png"]),
             (["-o", str(tmp_path / "nodir" / "pic.png")], ["nodir", "does not exist"])]
    for args, words in cases:
        argv = ["render", "--lookback", "1d", *args]
        if "-o" not in args:
            argv += ["-o", str(tmp_path / "pic.png")]
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert all(w in err for w in words), err
    assert not list(tmp_path.glob("*.png")) and not list(tmp_path.glob(".*.tmp"))


# ---- --target: a real server on 127.0.0.1 ------------------------------------------------------

needs_api = pytest.mark.skipif(importlib.util.find_spec("heatsvc.v1") is None,
                               reason="heatsvc.v1 (the generated gRPC API) is not importable")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from test_service import START, Stack, small_datasets

    from heatsvc.replay import ReplayExchange
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as replay:
        s = Stack(replay, tmp_path_factory.mktemp("store") / "bars.sqlite3")
        yield s
        s.close()


@needs_api
def test_target_gives_the_local_arrays_and_picture(stack, tmp_path, capsys):
    view = ["--market", "binance:BTCUSDT", "--lookback", "1d", "--rows", "120", "--columns", "48"]
    args = cli.build_parser().parse_args(["render", "--target", stack.target, *view, "--boost", "0.7",
                                          "--kind", "map", "--stack-tiers", "-o", "x.png"])
    got, measured = render.fetch_scene(args)
    assert measured is None
    hm = compute_heatmap(stack.store.load("binance:BTCUSDT"), lookback="1d", rows=120, columns=48, per_tier=True,
                         market="binance:BTCUSDT", backend="python")
    want = render.scene_from_heatmap(hm, market="binance:BTCUSDT", lookback="1d", boost=0.7, price=got.price)
    scale = want.v_max
    for name in ("long", "short"):
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-6, atol=scale * 1e-6)
        np.testing.assert_allclose(getattr(got, f"{name}_intensity"), getattr(want, f"{name}_intensity"), atol=1e-5)
        np.testing.assert_allclose(getattr(got, f"tier_{name}"), getattr(want, f"tier_{name}"), rtol=1e-5,
                                   atol=scale * 1e-6)
    np.testing.assert_allclose(got.price_edges, want.price_edges, rtol=1e-12)
    assert got.column_times.tolist() == want.column_times.tolist() and got.column_ms == want.column_ms
    np.testing.assert_allclose(got.candles, want.candles)
    np.testing.assert_allclose(got.swept_long, want.swept_long, rtol=1e-9, atol=1e-6)
    assert got.time_end_ms == want.time_end_ms and got.leverages == want.leverages
    assert [z.peak_price for z in got.zones.above] == pytest.approx([z.peak_price for z in want.zones.above])
    assert [z.notional for z in got.zones.below] == pytest.approx([z.notional for z in want.zones.below], rel=1e-5)
    np.testing.assert_allclose(got.zones.cumulative_long, want.zones.cumulative_long, rtol=1e-5, atol=scale * 1e-5)
    np.testing.assert_allclose(got.zones.cumulative_short, want.zones.cumulative_short, rtol=1e-5, atol=scale * 1e-5)
    assert got.zones.skew_label == want.zones.skew_label

    out = tmp_path / "served.png"
    assert cli.main(["render", "--target", stack.target, *view, "-o", str(out), "--width", "800",
                     "--height", "500"]) == 0
    assert "BTCUSDT Binance 1d" in capsys.readouterr().out
    img = read_png(out, 800, 500)
    layout = render.render(got, tmp_path / "again.png", width=800, height=500)
    row, col = np.unravel_index(np.argmax(np.maximum(hm.long, hm.short)), hm.long.shape)
    assert near(img[cell_box(layout.panels["heat"], hm, row, col)], BRIGHTEST).any()
    assert cli.main(["render", "--target", stack.target, *view, "--kind", "map", "--stack-tiers",
                     "-o", str(tmp_path / "map.png")]) == 0
    assert_not_blank(read_png(tmp_path / "map.png", 1200, 700))


@needs_api
def test_target_errors_keep_their_status(stack, tmp_path, capsys):
    assert cli.main(["render", "--target", stack.target, "--market", "binance:DOGEUSDT", "-o",
                     str(tmp_path / "x.png")]) == 3
    assert "NOT_FOUND" in capsys.readouterr().err
    assert cli.main(["render", "--target", stack.target, "--lookback", "7d", "-o", str(tmp_path / "x.png")]) == 2
    assert "view.lookback" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()
