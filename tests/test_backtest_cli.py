"""`heatsvc backtest` end to end on a few days of the recorded data: outputs, numbers, errors."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from heatsvc import cli, datasets
from heatsvc.backtest import run, scoring, truth
from heatsvc.model import engine
from heatsvc.store import Store

FEW_DAYS = ["--start", "2025-10-07T00:00Z", "--end", "2025-10-12T00:00Z"]   # the crash included
NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?")


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("backtest")
    code = cli.main(["backtest", "--data", "recorded", "--lookback", "1d,3d", *FEW_DAYS, "--out", str(out)])
    assert code == 0
    return out, json.loads((out / "accuracy.json").read_text()), (out / "ACCURACY.md").read_text()


def numbers_in(value) -> set[float]:
    """Every number in a JSON value, including those written inside its strings (times, names)."""
    if isinstance(value, dict):
        return set().union(*(numbers_in(v) | numbers_in(k) for k, v in value.items())) if value else set()
    if isinstance(value, list):
        return set().union(*(numbers_in(v) for v in value)) if value else set()
    if isinstance(value, bool) or value is None:
        return set()
    if isinstance(value, (int, float)):
        return {float(value)}
    return {float(x) for x in NUMBER.findall(str(value))}


def test_the_command_writes_the_report_json_and_plots(outputs):
    out, doc, text = outputs
    for name in ("accuracy-scores.png", "accuracy-deciles.png", "accuracy-magnet.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in text
    assert list(doc["lookbacks"]) == ["1d", "3d"]
    assert doc["data"]["days"] == 5 and doc["data"]["bars"] == 5 * 288
    assert doc["truth"]["used"] == ["proxy"]
    # 1d: t_k from 10-08 00:00 to 10-11 00:00 hourly; 3d: from 10-10 00:00
    assert doc["lookbacks"]["1d"]["evaluations"] == 73 and doc["lookbacks"]["3d"]["evaluations"] == 25
    assert text.index("## Declared before any result") < text.index("## Verdict") < text.index("## Results")
    assert doc["verdict"]["one_line"] in text


def test_every_number_in_the_report_is_in_the_json(outputs):
    _, doc, text = outputs
    summary = {**doc, "lookbacks": {lb: {k: v for k, v in e.items() if k != "series"}
                                    for lb, e in doc["lookbacks"].items()}}
    known = numbers_in(summary)   # the per-t_k series left out: the report's numbers are the summaries'
    missing = [x for x in NUMBER.findall(text) if float(x) not in known]
    assert not missing


def test_intervals_contain_their_means_and_verdicts_follow_them(outputs):
    _, doc, _ = outputs
    for entry in doc["lookbacks"].values():
        proxy = entry["truths"]["proxy"]
        for metric in ("spearman", "cosine"):
            for ci in proxy["scores"][metric].values():
                assert ci["low"] <= ci["mean"] <= ci["high"] and -1 <= ci["low"] and ci["high"] <= 1
            for diff in proxy["differences"][metric].values():
                expected = ("skill" if diff["low"] > 0 else "worse than the baseline" if diff["high"] < 0
                            else "no skill shown")
                assert diff["skill"] == expected
        m = entry["magnet"]
        assert m["magnet_first"] + m["mirror_first"] + m["same_bar"] == m["n"]
        assert m["n"] + m["neither_touched_or_no_magnet"] == entry["evaluations"]


def test_a_series_value_is_the_score_of_the_view_computed_directly(outputs):
    """The loop's slices give the engine's own view: recompute one t_k from scratch with 288 columns."""
    _, doc, _ = outputs
    series = doc["lookbacks"]["3d"]["series"]
    k = 7
    t_k = series["time_ms"][k]
    bars = datasets.recorded_bars()
    keep = (bars["time_ms"] >= 1_759_795_200_000) & (bars["time_ms"] < t_k)   # from --start to t_k
    hm = engine.compute_heatmap({f: v[keep] for f, v in bars.items()}, lookback="3d")
    grid = truth.Grid.from_edges(hm.price_edges)
    ahead = (bars["time_ms"] >= t_k) & (bars["time_ms"] < t_k + 86_400_000)
    doi = run.open_interest_change(bars["open_interest"])[ahead]
    out = truth.proxy(grid, hm.price, bars["high"][ahead], bars["low"][ahead], bars["close"][ahead], doi)
    heat = np.where(grid.centres() > hm.price, hm.short[:, -1], hm.long[:, -1])
    rho, cos = scoring.score(heat[out.traded], out.values[out.traded])
    assert series["proxy"]["spearman"]["model"][k] == pytest.approx(rho, abs=1e-4)
    assert series["proxy"]["cosine"]["model"][k] == pytest.approx(cos, abs=1e-4)


def test_a_store_is_read_and_realised_absence_is_said(tmp_path):
    bars = datasets.recorded_bars()
    keep = (bars["time_ms"] >= 1_760_000_000_000) & (bars["time_ms"] < 1_760_000_000_000 + 3 * 86_400_000)
    path = tmp_path / "store.sqlite3"
    with Store(path) as store:
        store.upsert("binance:HYPEUSDT", {f: v[keep] for f, v in bars.items()})
    out = tmp_path / "out"
    assert cli.main(["backtest", "--store", str(path), "--market", "binance:HYPEUSDT", "--lookback", "1d",
                     "--no-sensitivity", "--resamples", "200", "--out", str(out)]) == 0
    doc = json.loads((out / "accuracy.json").read_text())
    assert "issue 13" in doc["truth"]["realised"]
    assert "sensitivity" not in doc["lookbacks"]["1d"]
    assert doc["data"]["source"] == f"store {path}"


@pytest.mark.parametrize("argv, message", [
    (["--data", "recorded", "--market", "binance:BTCUSDT"], "--market"),
    (["--data", "recorded", "--lookback", "5d"], "'5d' is unknown"),
    (["--data", "recorded", "--horizon", "24x"], "--horizon"),
    (["--data", "recorded", "--every", "7m"], "--every"),
    (["--data", "recorded", "--end", "2025-10-02T00:00Z", "--lookback", "7d"], "too little data for a 7d lookback"),
    (["--store", "/nonexistent/heatsvc.sqlite3", "--market", "binance:X"], "--store"),
    (["--data", "synthetic:BTCUSDT", "--market", "all:BTCUSDT"], "aggregate"),
])
def test_bad_input_is_a_clear_error(argv, message, capsys, tmp_path):
    assert cli.main(["backtest", *argv, "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_store_market_names_those_it_holds(tmp_path, capsys):
    path = tmp_path / "store.sqlite3"
    bars = datasets.recorded_bars()
    with Store(path) as store:
        store.upsert("binance:HYPEUSDT", {f: v[:10] for f, v in bars.items()})
    assert cli.main(["backtest", "--store", str(path), "--market", "binance:ETHUSDT", "--out", str(tmp_path)]) == 2
    assert "holds binance:HYPEUSDT" in capsys.readouterr().err


def test_no_number_is_nan_in_the_json(outputs):
    _, doc, _ = outputs
    assert all(math.isfinite(x) for x in numbers_in(doc))


def test_realised_liquidations_slot_in_beside_the_proxy():
    """With recorded events covering part of the data, those horizons are scored against both truths."""
    from heatsvc.backtest import report
    bars = datasets.recorded_bars()
    start, day = 1_759_968_000_000, 86_400_000     # 2025-10-09T00:00Z, three days
    keep = (bars["time_ms"] >= start) & (bars["time_ms"] < start + 3 * day)
    b = {f: v[keep] for f, v in bars.items()}
    doi = run.open_interest_change(b["open_interest"])
    falls = np.flatnonzero(doi < 0)
    # made-up events: where open interest fell, longs at the bar's low and shorts at its high
    events = truth.Realised(
        time_ms=np.repeat(b["time_ms"][falls] + 1000, 2), side=np.tile([1, -1], len(falls)),
        price=np.column_stack([b["low"][falls], b["high"][falls]]).ravel(),
        notional=np.repeat(-doi[falls] * b["close"][falls] / 2, 2),
        spans=np.array([[start, start + 5 * day // 2]]))   # the recorder ran for the first 2.5 days only
    s = run.Settings(resamples=100, sensitivity=False)
    _, series, summary, seconds = run.run(b, "binance:HYPEUSDT", ["1d"], s, events)
    scored = ~np.isnan(series["1d"].scores[("realised", "model", "spearman")])
    # t_k hourly from day 1; a horizon is covered only if it ends by 2.5 days: t_k in [24 h, 36 h], 13 of them
    covered = series["1d"].time_ms[scored]
    assert 10 <= len(covered) <= 13
    assert covered.min() >= start + day and covered.max() <= start + 3 * day // 2
    assert summary["1d"]["truths"]["realised"]["scored"] == len(covered)
    assert summary["1d"]["truths"]["proxy"]["scored"] > 1
    doc = report.document(market="binance:HYPEUSDT", source="test", command="test", bars=b, lookbacks=["1d"],
                          settings=s, series=series, summary=summary, seconds=seconds, realised_note="test events")
    text = report.markdown(doc)
    assert "### Scores against the proxy" in text and "### Scores against realised liquidations" in text
    assert doc["truth"]["used"] == ["proxy", "realised"]


def test_the_published_report_only_shows_numbers_of_its_json():
    """docs/ACCURACY.md as committed: generated by the command, every number in docs/accuracy.json."""
    from pathlib import Path
    docs = Path(__file__).resolve().parents[1] / "docs"
    doc = json.loads((docs / "accuracy.json").read_text())
    text = (docs / "ACCURACY.md").read_text()
    summary = {**doc, "lookbacks": {lb: {k: v for k, v in e.items() if k != "series"}
                                    for lb, e in doc["lookbacks"].items()}}
    known = numbers_in(summary)
    assert not [x for x in NUMBER.findall(text) if float(x) not in known]
    assert doc["command"].startswith("heatsvc backtest --data recorded") and doc["verdict"]["one_line"] in text
