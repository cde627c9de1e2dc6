"""`heatsvc snapshot | zones | watch` against a real server on 127.0.0.1 (replay exchange, store,
refresher): what they print, what they write, and the exit code and message of every error status."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
from test_service import START, Stack, small_datasets, view

from heatsvc import cli
from heatsvc.client import price_text
from heatsvc.replay import ReplayExchange
from heatsvc.v1 import heatmap_service_pb2 as pb

TOKEN = "t0ken"
AUTH = [("authorization", f"Bearer {TOKEN}")]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as replay:
        s = Stack(replay, tmp_path_factory.mktemp("store") / "bars.sqlite3", max_streams=1, auth_token=TOKEN)
        yield s
        s.close()


def heatsvc(stack, command, *args):
    return cli.main([command, "--target", stack.target, "--token", TOKEN, *args])


def test_zones_prints_the_ranked_table(stack, capsys):
    assert heatsvc(stack, "zones", "--market", "binance:BTCUSDT", "--lookback", "1d", "--top", "3") == 0
    out = capsys.readouterr().out
    report = stack.stub.GetZones(pb.GetZonesRequest(view=view(), zone_options=pb.ZoneOptions(top=3)),
                                 timeout=30, metadata=AUTH).zones
    assert "binance:BTCUSDT 1d zones" in out and "not a forecast" in out
    for z in list(report.above) + list(report.below):
        assert price_text(z.peak_price) in out
    assert price_text(report.price) in out
    label = pb.SkewLabel.Name(report.skew_label).removeprefix("SKEW_LABEL_")
    assert f"skew {report.skew:+.2f} {label}" in out
    assert f"magnet: {'short' if report.magnet.side == pb.ZONE_SIDE_SHORT else 'long'} zone at " \
           f"{price_text(report.magnet.peak_price)}" in out
    biggest = max(z.notional for z in list(report.above) + list(report.below))
    assert "█" * 16 in out and biggest > 0  # the largest zone gets the full bar


def test_snapshot_summary_and_json(stack, capsys, tmp_path):
    path = tmp_path / "view.json"
    assert heatsvc(stack, "snapshot", "--market", "all:BTCUSDT", "--lookback", "12h", "--rows", "60",
                   "--columns", "24", "--json", str(path)) == 0
    out = capsys.readouterr().out
    assert "all:BTCUSDT 12h: 60 rows x 24 columns" in out and "binance:BTCUSDT, bybit:BTCUSDT" in out
    data = json.loads(path.read_text())
    heat = data["heatmap"]
    assert np.array(heat["long_notional"]).shape == (60, 24) and len(heat["price_edges"]) == 61
    resp = stack.stub.GetHeatmap(pb.GetHeatmapRequest(view=view("all:BTCUSDT", "12h", rows=60, columns=24)),
                                 timeout=30, metadata=AUTH)
    want = np.frombuffer(resp.heatmap.long_notional.data, dtype="<f4").reshape(60, 24)
    np.testing.assert_allclose(np.array(heat["long_notional"]), want)
    assert len(heat["candles"]["close"]) == 24
    assert max(map(max, heat["long_intensity"])) == pytest.approx(1.0) or max(map(max, heat["short_intensity"])) \
        == pytest.approx(1.0)


def test_watch_redraws_on_updates(stack, capsys):
    def step_when_subscribed():
        deadline = time.monotonic() + 30
        while stack.service.streams < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        for _ in range(2):
            stack.step()
            time.sleep(0.2)
    stepper = threading.Thread(target=step_when_subscribed)
    stepper.start()
    assert heatsvc(stack, "watch", "--market", "binance:ETHUSDT", "--lookback", "12h", "--count", "3") == 0
    stepper.join()
    out = capsys.readouterr().out
    assert "binance:ETHUSDT 12h zones - update #" in out and "skew" in out


@pytest.mark.parametrize("args, code, words", [
    (["zones", "--market", "kraken:BTCUSDT"], 3, ["NOT_FOUND", "kraken"]),
    (["zones", "--market", "binance:DOGEUSDT"], 3, ["NOT_FOUND", "binance:DOGEUSDT"]),
    (["zones", "--lookback", "2d", "--threshold", "1"], 2,
     ["INVALID_ARGUMENT", "view.lookback:", "zone_options.threshold:"]),
    (["snapshot", "--boost", "0"], 2, ["INVALID_ARGUMENT", "boost:"]),
    (["snapshot", "--rows", "10000", "--columns", "201"], 2, ["INVALID_ARGUMENT", "view.rows:", "2000000"]),
    (["snapshot", "--price-range", "5", "4"], 2, ["view.price_range:"]),
])
def test_errors_are_clear_and_exit_non_zero(stack, capsys, args, code, words):
    assert heatsvc(stack, *args) == code
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_missing_token_and_missing_server(stack, capsys):
    assert cli.main(["zones", "--target", stack.target, "--token", ""]) == 6
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert cli.main(["zones", "--target", "127.0.0.1:1", "--timeout", "5"]) == 4
    err = capsys.readouterr().err
    assert "UNAVAILABLE" in err and "is a server running at 127.0.0.1:1" in err


def test_too_many_streams(stack, capsys):
    held = stack.stub.StreamHeatmap(pb.StreamHeatmapRequest(view=view(lookback="12h"), zones_only=True),
                                    timeout=60, metadata=AUTH)
    assert next(held).kind == pb.UPDATE_KIND_SNAPSHOT
    assert heatsvc(stack, "watch", "--count", "1") == 5
    assert "RESOURCE_EXHAUSTED" in capsys.readouterr().err
    held.cancel()
