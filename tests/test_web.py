"""The web gateway (heatsvc web) as a real process on 127.0.0.1, a gRPC client of the real service
(tests/test_service.py's Stack), driven with the `websockets` library: what it sends matches the
service's own answers, one upstream stream serves many sockets, bad messages get errors, the token
is required everywhere, and every response carries the Content-Security-Policy."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time

import grpc
import httpx
import numpy as np
import pytest
import websockets

from test_service import Stack, small_datasets, START
from heatsvc.replay import ReplayExchange
from heatsvc.v1 import heatmap_service_pb2 as pb
from heatsvc.web import frames

TOKEN = "web-test-token-5b1d"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """`heatsvc web` in a process of its own; kill() and start() again keep the same port."""

    def __init__(self, target: str, token: str | None = None, port: int | None = None):
        self.target, self.token = target, token
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None
        self.start()

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("HEATSVC_TOKEN", "HEATSVC_AUTH_TOKEN")}
        if self.token:
            env["HEATSVC_TOKEN"] = self.token
        self.proc = subprocess.Popen([sys.executable, "-m", "heatsvc", "web", "--target", self.target,
                                      "--listen", f"127.0.0.1:{self.port}"], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stdout.read()
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise AssertionError("the gateway did not start")

    def health(self) -> dict:
        return httpx.get(f"{self.url}/health", timeout=5).json()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="module")
def web_replay():
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as rx:
        yield rx


@pytest.fixture(scope="module")
def web_stack(web_replay, tmp_path_factory):
    s = Stack(web_replay, tmp_path_factory.mktemp("webstore") / "bars.sqlite3")
    yield s
    s.close()


@pytest.fixture(scope="module")
def gateway(web_stack):
    g = Gateway(web_stack.target)
    yield g
    g.close()


def ws_url(g: Gateway) -> str:
    return g.url.replace("http://", "ws://") + "/ws"


async def recv_until(ws, pred, timeout=20.0):
    """Messages (JSON as dicts, frames parsed) until pred(message) holds; returns that message."""
    deadline = time.monotonic() + timeout
    while True:
        raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
        msg = frames.parse_frame(raw) | {"type": "frame"} if isinstance(raw, bytes) else json.loads(raw)
        if pred(msg):
            return msg


async def subscribe(ws, **kw) -> dict:
    """Subscribe; returns {subscribed, view, frame, zones} of the new view."""
    msg = {"type": "subscribe", "req": 1, "market": "binance:BTCUSDT", "lookback": "1d", "threshold": 0.2,
           "boost": 1.0, "tiers": None} | kw
    await ws.send(json.dumps(msg))
    sub = await recv_until(ws, lambda m: m["type"] == "subscribed" or m["type"] == "error")
    assert sub["type"] == "subscribed", sub
    got = {"subscribed": sub}
    while len(got) < 4:
        m = await recv_until(ws, lambda m: m.get("sub", m.get("view")) == sub["view"]
                             and m["type"] in ("view", "frame", "zones"))
        got[m["type"]] = m
    return got


def run(coro):
    return asyncio.run(coro)


# ---- encodings ------------------------------------------------------------------------------------

def test_frame_round_trip_and_intensity_as_the_engine():
    rng = np.random.default_rng(1)
    long = (rng.random((40, 30)) ** 4 * 1e6).astype(np.float32)
    short = (rng.random((40, 30)) ** 4 * 2e6).astype(np.float32)
    data = frames.grid_frame(7, 42, long, short, 0.5)
    f = frames.parse_frame(data)
    assert (f["sub"], f["sequence"], f["rows"], f["columns"], f["boost"]) == (7, 42, 40, 30, 0.5)
    v_max = max(long.max(), short.max())
    assert f["v_max"] == pytest.approx(v_max)
    assert len(data) == 32 + 2 * 40 * 30
    np.testing.assert_array_equal(f["long"], np.rint(255 * (long / v_max) ** 0.5).astype(np.uint8))
    np.testing.assert_array_equal(f["short"], np.rint(255 * (short / v_max) ** 0.5).astype(np.uint8))
    assert f["short"].max() == 255 and f["long"].min() >= 0
    with pytest.raises(ValueError):
        frames.parse_frame(b"XXXX" + data[4:])


# ---- the gateway over WebSockets ------------------------------------------------------------------

def test_markets_view_frame_and_zones_match_the_service(gateway, web_stack):
    listed = web_stack.stub.ListMarkets(pb.ListMarketsRequest())

    async def go():
        async with websockets.connect(ws_url(gateway), max_size=None) as ws:
            markets = await recv_until(ws, lambda m: m["type"] == "markets")
            got = await subscribe(ws, market="all:BTCUSDT", boost=0.5, threshold=0.1)
            return markets, got
    markets, got = run(go())
    assert [m["market"] for m in markets["markets"]] == [m.market for m in listed.markets]
    assert "all:BTCUSDT" in [m["market"] for m in markets["markets"]]
    assert markets["lookbacks"] == list(listed.lookbacks) and markets["token_required"] is False
    assert len(markets["tiers"]) == len(listed.parameters.tiers)

    view = pb.View(market="all:BTCUSDT", lookback="1d")
    hm = web_stack.stub.GetHeatmap(pb.GetHeatmapRequest(view=view, include_candles=True)).heatmap
    frame = got["frame"]
    assert (frame["rows"], frame["columns"]) == (hm.long_notional.rows, hm.long_notional.columns) == (400, 288)
    assert frame["v_max"] == pytest.approx(hm.v_max, rel=1e-6)
    long = frames.grid(hm.long_notional)
    expect = np.rint(255 * (long / hm.v_max) ** 0.5)
    assert np.abs(frame["long"].astype(int) - expect).max() <= 1     # float32 rounding at most one step
    assert frame["long"].max() > 100 and frame["short"].max() > 100
    assert got["view"]["price_edges"] == pytest.approx(list(hm.price_edges))
    assert got["view"]["column_times"] == [t.ToMilliseconds() for t in hm.column_times]
    assert got["view"]["candles"]["close"][-1] == pytest.approx(hm.candles.close[-1])
    assert got["view"]["swept_long"] == pytest.approx(list(hm.swept_long))
    # no recorder here: every column is unheard, so realised liquidations are missing (null), never 0
    assert got["view"]["coverage"] == list(hm.coverage) and set(got["view"]["coverage"]) <= {0.0}
    assert got["view"]["realised_long"] == [None] * len(hm.realised_long)

    zones = web_stack.stub.GetZones(pb.GetZonesRequest(view=view, zone_options=pb.ZoneOptions(threshold=0.1))).zones
    assert [z["notional"] for z in got["zones"]["above"]] == pytest.approx([z.notional for z in zones.above])
    assert [z["low"] for z in got["zones"]["below"]] == pytest.approx([z.price_low for z in zones.below])
    assert got["zones"]["skew_label"] == frames.SKEW[zones.skew_label]
    assert got["zones"]["magnet"]["peak"] == pytest.approx(zones.magnet.peak_price)


def test_tier_toggles_sum_only_the_chosen_tiers(gateway, web_stack):
    async def go():
        async with websockets.connect(ws_url(gateway), max_size=None) as ws:
            return await subscribe(ws, tiers=[True, False, False, True, False], boost=1.0)
    got = run(go())
    hm = web_stack.stub.GetHeatmap(pb.GetHeatmapRequest(view=pb.View(market="binance:BTCUSDT", lookback="1d"),
                                                        include_tiers=True)).heatmap
    long = frames.grid(hm.tiers[0].long_notional) + frames.grid(hm.tiers[3].long_notional)
    short = frames.grid(hm.tiers[0].short_notional) + frames.grid(hm.tiers[3].short_notional)
    v_max = max(long.max(), short.max())
    assert got["frame"]["v_max"] == pytest.approx(v_max, rel=1e-6)
    assert v_max < hm.v_max
    assert np.abs(got["frame"]["short"].astype(int) - np.rint(255 * short / v_max)).max() <= 1


def test_one_upstream_stream_per_view_and_updates_reach_every_socket(gateway, web_stack):
    async def go():
        sockets = [await websockets.connect(ws_url(gateway), max_size=None) for _ in range(4)]
        try:
            firsts = [await subscribe(ws, market="binance:ETHUSDT", lookback="12h") for ws in sockets]
            health = gateway.health()
            assert len({f["subscribed"]["view"] for f in firsts}) == 1     # one feed shared by all four
            await asyncio.to_thread(web_stack.step)
            updates = [await recv_until(ws, lambda m: m["type"] == "view" and m["seq"] > firsts[0]["view"]["seq"])
                       for ws in sockets]
            other = await subscribe(sockets[0], market="binance:ETHUSDT", lookback="1d")
            return health, firsts, updates, other, gateway.health()
        finally:
            for ws in sockets:
                await ws.close()
    health, firsts, updates, other, after = run(go())
    assert health["views"] == 1 and health["browsers"] == 4
    assert all(u["data_time"] > firsts[0]["view"]["data_time"] for u in updates)
    assert other["subscribed"]["view"] != firsts[0]["subscribed"]["view"]
    assert after["views"] == 2


def test_a_stalled_socket_does_not_hold_back_the_others(gateway, web_stack):
    async def go():
        stalled = await websockets.connect(ws_url(gateway), max_size=None, max_queue=1)
        await stalled.send(json.dumps({"type": "subscribe", "market": "bybit:BTCUSDT", "lookback": "1d"}))
        async with websockets.connect(ws_url(gateway), max_size=None) as ws:
            first = await subscribe(ws, market="bybit:BTCUSDT", lookback="1d")
            seq = first["view"]["seq"]
            for _ in range(3):       # the stalled socket reads nothing all along
                await asyncio.to_thread(web_stack.step)
                msg = await recv_until(ws, lambda m: m["type"] == "view" and m["seq"] > seq, timeout=15)
                seq = msg["seq"]
            health = gateway.health()
        await stalled.close()
        return health, seq, first["view"]["seq"]
    health, seq, first = run(go())
    assert seq >= first + 3
    assert health["browsers"] >= 2


@pytest.mark.parametrize("message, field", [
    ("not json", "message"),
    (json.dumps({"type": "subscribe", "market": "nowhere:XYZ", "lookback": "1d"}), "market"),
    (json.dumps({"type": "subscribe", "market": "binance:BTCUSDT", "lookback": "9y"}), "lookback"),
    (json.dumps({"type": "subscribe", "market": "binance:BTCUSDT", "lookback": "1d", "threshold": 1.5}), "threshold"),
    (json.dumps({"type": "subscribe", "market": "binance:BTCUSDT", "lookback": "1d", "boost": 0}), "boost"),
    (json.dumps({"type": "subscribe", "market": "binance:BTCUSDT", "lookback": "1d", "boost": "big"}), "boost"),
    (json.dumps({"type": "subscribe", "market": "binance:BTCUSDT", "lookback": "1d", "tiers": [True]}), "tiers"),
    (json.dumps({"type": "explode"}), "type"),
    (json.dumps([1, 2, 3]), "type"),
    ("x" * 5000, "message"),
    (b"\x00\x01binary", "message"),
])
def test_bad_browser_messages_get_an_error_and_the_socket_goes_on(gateway, message, field):
    async def go():
        async with websockets.connect(ws_url(gateway), max_size=None) as ws:
            await ws.send(message)
            err = await recv_until(ws, lambda m: m["type"] == "error")
            got = await subscribe(ws, market="binance:BTCUSDT", lookback="12h")
            return err, got
    err, got = run(go())
    assert err["field"] == field and err["message"]
    assert got["frame"]["rows"] == 400
    assert gateway.health()["status"] == "ok" and gateway.proc.poll() is None


def test_every_response_has_the_csp_and_the_page_is_served(gateway):
    for path in ("/", "/static/app.js", "/static/vendor/lightweight-charts.standalone.production.mjs",
                 "/static/vendor/LICENSE", "/static/vendor/NOTICE", "/health"):
        r = httpx.get(gateway.url + path, timeout=5)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    page = httpx.get(gateway.url + "/").text
    assert "never a price prediction" in page and "TradingView" in page and "https://" not in page.replace(
        'href="https://www.tradingview.com/"', "")


def test_csv_export_is_the_exact_notional(gateway, web_stack):
    r = httpx.get(f"{gateway.url}/export.csv", params={"market": "binance:BTCUSDT", "lookback": "12h"}, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    lines = r.text.splitlines()
    assert lines[0] == "column_time_utc,price_low,price_high,long_notional,short_notional"
    hm = web_stack.stub.GetHeatmap(pb.GetHeatmapRequest(view=pb.View(market="binance:BTCUSDT", lookback="12h"))).heatmap
    long, short = frames.grid(hm.long_notional), frames.grid(hm.short_notional)
    assert len(lines) - 1 == int(((long > 0) | (short > 0)).sum())
    total = sum(float(line.split(",")[3]) for line in lines[1:])
    assert total == pytest.approx(float(long.sum(dtype=np.float64)), rel=1e-5)
    bad = httpx.get(f"{gateway.url}/export.csv", params={"market": "binance:BTCUSDT", "lookback": "5y"}, timeout=5)
    assert bad.status_code == 400 and "lookback" in bad.text


def test_the_token_is_required_on_every_request_and_socket(web_stack):
    g = Gateway(web_stack.target, token=TOKEN)
    try:
        assert httpx.get(g.url + "/").status_code == 303       # to the login form
        for path in ("/static/app.js", "/export.csv?market=binance:BTCUSDT&lookback=1d", "/static/vendor/LICENSE"):
            assert httpx.get(g.url + path).status_code == 401, path
        wrong = httpx.post(g.url + "/login", data={"token": "wrong"})
        assert wrong.status_code == 401 and "Wrong token" in wrong.text and "heatsvc_session" not in wrong.headers.get(
            "set-cookie", "")
        ok = httpx.post(g.url + "/login", data={"token": TOKEN})
        assert ok.status_code == 303 and TOKEN not in ok.headers["set-cookie"]
        cookies = ok.cookies
        assert httpx.get(g.url + "/static/app.js", cookies=cookies).status_code == 200
        assert httpx.get(g.url + "/static/app.js", headers={"authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert httpx.get(g.url + "/static/app.js", headers={"authorization": "Bearer nope"}).status_code == 401

        async def sockets():
            async with websockets.connect(ws_url(g)) as ws:
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == 4401
            cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
            async with websockets.connect(ws_url(g), additional_headers={"cookie": cookie}, max_size=None) as ws:
                markets = await recv_until(ws, lambda m: m["type"] == "markets")
                assert markets["token_required"] is True
            async with websockets.connect(ws_url(g), additional_headers={"cookie": cookie},
                                          origin="http://evil.example") as ws:
                with pytest.raises(websockets.ConnectionClosed) as info:
                    await ws.recv()
                assert info.value.rcvd.code == 4403
        run(sockets())
    finally:
        g.close()


def test_zone_events_reach_the_socket_as_the_service_sends_them(gateway, web_stack):
    import threading

    view = pb.View(market="binance:BTCUSDT", lookback="12h")
    call = web_stack.stub.StreamZoneEvents(pb.StreamZoneEventsRequest(
        views=[view], zone_options=pb.ZoneOptions(threshold=0.3)))
    direct: list[dict] = []
    first = threading.Event()

    def read():
        try:
            for msg in call:
                direct.extend(frames.event(ev) for ev in msg.events)
                first.set()
        except grpc.RpcError:       # cancelled at the end of the test
            pass
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert first.wait(20)              # the snapshot: the direct stream is in place

    async def go():
        async with websockets.connect(ws_url(gateway), max_size=None) as ws:
            await subscribe(ws, market="binance:BTCUSDT", lookback="12h", threshold=0.3)
            await asyncio.sleep(0.5)   # the gateway's own events stream has had its snapshot
            latest = None
            for _ in range(12):
                await asyncio.to_thread(web_stack.step, 3 * 300_000)
                try:
                    while True:
                        latest = (await recv_until(ws, lambda m: m["type"] == "events", timeout=1.5))["events"]
                except asyncio.TimeoutError:
                    pass
                if direct and latest == direct[-20:]:
                    break
            return latest
    try:
        latest = run(go())
    finally:
        call.cancel()
    assert direct, "no zone events in 12 refreshes: the test data no longer exercises them"
    assert latest == direct[-20:]
    assert {e["kind"] for e in latest} <= {"ZONE_NEW", "ZONE_SWEPT", "PRICE_NEAR", "MAGNET_CHANGED", "SKEW_FLIPPED"}


def test_serve_web_hook_runs_the_gateway_on_the_server_loop(web_stack):
    """`heatsvc serve --web`: the gateway started on the server's own event loop, then stopped."""
    from heatsvc.config import with_overrides
    from heatsvc.web.cli import start_embedded

    port = free_port()
    config = with_overrides(web_stack.config, listen="127.0.0.1:0")
    page = web_stack.call(start_embedded(config, web_stack.port, f"127.0.0.1:{port}"))
    try:
        url = f"http://127.0.0.1:{port}"
        assert httpx.get(url + "/health", timeout=5).json()["upstream"] == "ok"

        async def go():
            async with websockets.connect(f"ws://127.0.0.1:{port}/ws", max_size=None) as ws:
                return await subscribe(ws, market="all:ETHUSDT", lookback="12h")
        assert run(go())["frame"]["rows"] == 400
    finally:
        web_stack.call(page.stop())
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
