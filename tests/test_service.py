"""The heatsvc.v1 gRPC service on 127.0.0.1 with a real client, fed by the real replay exchange,
exchange clients, store and refresher: every RPC, streams, sharing, coalescing, errors, health
and the graceful shutdown of a real `heatsvc serve` process."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from heatsvc import datasets
from heatsvc.model import zones
from heatsvc.config import parse, with_overrides
from heatsvc.model.engine import ModelParams, compute_aggregate, compute_heatmap
from heatsvc.exchanges import make_client
from heatsvc.refresher import Refresher
from heatsvc.replay import ReplayExchange
from heatsvc.service.errors import field_violations
from heatsvc.service.server import Server
from heatsvc.store import Store
from heatsvc.v1 import heatmap_service_pb2 as pb
from heatsvc.v1 import heatmap_service_pb2_grpc as pb_grpc

DAY = 86_400_000
STEP = 300_000
END = 1_760_572_800_000                 # where the synthetic data ends (2025-10-16)
START = END - DAY + 150_000             # the replay clock starts a day before, mid-bar
MARKETS = ("binance:BTCUSDT", "bybit:BTCUSDT", "binance:ETHUSDT")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def small_datasets() -> dict:
    """Three days of synthetic bars per market, ending where the bundled synthetic data ends."""
    return {m: datasets.synthetic_bars(m.split(":")[1], m.split(":")[0], days=3, end_ms=END) for m in MARKETS}


def config_for(replay: ReplayExchange, **limits):
    data = {"server": {"backend": "cython"}, "data": {"lookbacks": ["12h", "1d"], "history_days": 2,
                                                      "refresh_interval_s": 3600},
            "exchanges": {"binance": {"symbols": ["BTCUSDT", "ETHUSDT"], "base_url": replay.base_url("binance"),
                                      "archive_url": replay.archive_url()},
                          "bybit": {"symbols": ["BTCUSDT"], "base_url": replay.base_url("bybit")}},
            "limits": limits}
    return parse(data, env={})


class Stack:
    """Replay exchange, store, refresher and gRPC server on loopback; the asyncio parts run on a
    loop in a background thread so the tests can use the ordinary blocking gRPC client.
    `server` changes Config fields (TLS, token_file); `credentials` makes the channel a TLS one;
    `config` replaces the default configuration (config_for)."""

    def __init__(self, replay: ReplayExchange, store_path, *, start_refresher=True, auth_token=None,
                 server: dict | None = None, credentials: grpc.ChannelCredentials | None = None,
                 config=None, **limits):
        self.replay = replay
        config = config_for(replay, **limits) if config is None else config
        self.config = with_overrides(config, auth_token=auth_token, **(server or {}))
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.store = Store(store_path)
        self.call(self._start(start_refresher))
        options = [("grpc.max_receive_message_length", -1)]
        self.channel = grpc.secure_channel(self.target, credentials, options) if credentials else \
            grpc.insecure_channel(self.target, options)
        self.stub = pb_grpc.HeatmapServiceStub(self.channel)

    def call(self, coro, timeout: float = 90):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self, start_refresher: bool) -> None:
        self.clients = {ex.name: make_client(ex.name, ex.base_url, now_ms=self.replay.now_ms,   # the replay's clock
                                             **({"archive_url": ex.archive_url} if ex.archive_url else {}))
                        for ex in self.config.exchanges}
        self.refresher = Refresher(self.store, self.clients, self.config.markets, interval_s=3600,
                                   history_days=2, now_ms=self.replay.now_ms)
        self.server = Server(self.config, self.store, self.refresher)
        self.port = await self.server.start("127.0.0.1:0")
        self.target = f"127.0.0.1:{self.port}"
        if start_refresher:
            await self.start_refresher()

    async def start_refresher(self) -> None:
        await self.refresher.start()
        await self.refresher.wait_ready(timeout=60)

    @property
    def service(self):
        return self.server.service

    def step(self, ms: int = STEP) -> None:
        """Move the replay clock and refresh every market now, as the periodic refresh would."""
        self.replay.step(ms)

        async def refresh():
            for m in self.config.markets:
                await self.refresher.refresh(m)
        self.call(refresh())

    def close(self) -> None:
        self.channel.close()

        async def stop():
            await self.server.stop(grace=1)
            await self.refresher.stop()
            for c in self.clients.values():
                await c.aclose()
        self.call(stop())
        self.store.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture(scope="module")
def replay():
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as rx:
        yield rx


@pytest.fixture(scope="module")
def stack(replay, tmp_path_factory):
    s = Stack(replay, tmp_path_factory.mktemp("store") / "bars.sqlite3", queue_depth=2)
    yield s
    s.close()


def view(market="binance:BTCUSDT", lookback="1d", **kw) -> pb.View:
    return pb.View(market=market, lookback=lookback, **kw)


def grid(g: pb.Grid) -> np.ndarray:
    return np.frombuffer(g.data, dtype="<f4").reshape(g.rows, g.columns)


def expected(stack: Stack, market: str, lookback: str, **kw):
    """The engine's own result on the stored bars: what the service must have served."""
    if market.startswith("all:"):
        parts = [m for m in stack.config.markets if m.endswith(market[3:])]
        return compute_aggregate({m: stack.store.load(m) for m in parts}, lookback=lookback, backend="python", **kw)
    return compute_heatmap(stack.store.load(market), lookback=lookback, market=market, backend="python", **kw)


def error_of(fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kw)
    return info.value


# ---- unary RPCs ------------------------------------------------------------------------------

def test_list_markets(stack):
    resp = stack.stub.ListMarkets(pb.ListMarketsRequest(), timeout=10)
    by_name = {m.market: m for m in resp.markets}
    assert set(by_name) == {*MARKETS, "all:BTCUSDT", "all:ETHUSDT"}
    assert list(resp.lookbacks) == ["12h", "1d"]
    assert resp.max_cells == 2_000_000
    assert [t.leverage for t in resp.parameters.tiers] == [t.leverage for t in ModelParams().tiers]
    btc = by_name["binance:BTCUSDT"]
    assert (btc.exchange, btc.symbol, btc.aggregate) == ("binance", "BTCUSDT", False)
    assert btc.status == pb.MARKET_STATUS_OK
    assert btc.last_bar_time.ToMilliseconds() == stack.store.last_time("binance:BTCUSDT")
    agg = by_name["all:BTCUSDT"]
    assert agg.aggregate and list(agg.components) == ["binance:BTCUSDT", "bybit:BTCUSDT"]


def test_get_heatmap_matches_the_engine(stack):
    req = pb.GetHeatmapRequest(view=view(rows=120, columns=48), include_candles=True, include_intensity=True,
                               include_tiers=True, boost=0.5)
    resp = stack.stub.GetHeatmap(req, timeout=30)
    h = resp.heatmap
    want = expected(stack, "binance:BTCUSDT", "1d", rows=120, columns=48, per_tier=True)
    assert (h.long_notional.rows, h.long_notional.columns) == (120, 48) and len(h.long_notional.data) == 4 * 120 * 48
    scale = max(want.long.max(), want.short.max())
    np.testing.assert_allclose(grid(h.long_notional), want.long, rtol=1e-6, atol=scale * 1e-6)
    np.testing.assert_allclose(grid(h.short_notional), want.short, rtol=1e-6, atol=scale * 1e-6)
    np.testing.assert_allclose(h.price_edges, want.price_edges, rtol=1e-12)
    assert [t.ToMilliseconds() for t in h.column_times] == want.column_times.tolist()
    np.testing.assert_allclose(h.candles.close, want.candles[:, 3])
    np.testing.assert_allclose(h.swept_long, want.swept_long, rtol=1e-9, atol=1e-6)
    assert h.data_time.ToMilliseconds() == want.time_end_ms
    assert h.v_max == pytest.approx(scale)
    intensity = grid(h.long_intensity)
    np.testing.assert_allclose(intensity, (want.long / scale) ** 0.5, atol=1e-5)
    assert len(h.tiers) == 5
    np.testing.assert_allclose(sum(grid(t.long_notional) for t in h.tiers), want.long, rtol=1e-4, atol=scale * 1e-5)
    assert [t.half_life_days for t in h.parameters.tiers] == [30, 14, 5, 2, 1]
    assert h.parameters.step.ToMilliseconds() == STEP
    assert list(h.markets) == ["binance:BTCUSDT"]
    assert resp.zones.market == "binance:BTCUSDT" and resp.zones.v_max > 0


def test_get_zones_matches_section_9(stack):
    resp = stack.stub.GetZones(pb.GetZonesRequest(view=view(), zone_options=pb.ZoneOptions(threshold=0.1, top=3)),
                               timeout=30)
    z = resp.zones
    hm = expected(stack, "binance:BTCUSDT", "1d")
    want = zones.zones(hm, z.price, threshold=0.1, top=3)
    assert [round(x.peak_price, 6) for x in z.above] == [round(x.peak_price, 6) for x in want.above]
    assert [x.notional for x in z.below] == pytest.approx([x.notional for x in want.below], rel=1e-6)
    assert all(x.side == pb.ZONE_SIDE_SHORT and x.peak_price > z.price for x in z.above)
    assert all(x.side == pb.ZONE_SIDE_LONG and x.peak_price < z.price for x in z.below)
    assert z.skew == pytest.approx(want.skew, abs=1e-6)
    assert pb.SkewLabel.Name(z.skew_label) == f"SKEW_LABEL_{want.skew_label}"
    assert z.magnet.peak_price == pytest.approx(want.magnet.peak_price)
    assert z.total_above == pytest.approx(want.total_above, rel=1e-6)
    # cumulative curves run outward from the price and never decrease
    assert list(z.long_curve.price) == sorted(z.long_curve.price, reverse=True)
    assert all(p < z.price for p in z.long_curve.price)
    assert np.all(np.diff(z.long_curve.notional) >= 0) and np.all(np.diff(z.short_curve.notional) >= 0)
    assert z.short_curve.notional[-1] == pytest.approx(want.cumulative_short.max(), rel=1e-6)


def test_aggregate_view_sums_the_exchanges(stack):
    resp = stack.stub.GetHeatmap(pb.GetHeatmapRequest(view=view("all:BTCUSDT", "12h", rows=80, columns=36)),
                                 timeout=30)
    want = expected(stack, "all:BTCUSDT", "12h", rows=80, columns=36)
    assert sorted(resp.heatmap.markets) == ["binance:BTCUSDT", "bybit:BTCUSDT"]
    scale = max(want.long.max(), want.short.max())
    np.testing.assert_allclose(grid(resp.heatmap.long_notional), want.long, rtol=1e-6, atol=scale * 1e-6)


# ---- errors ----------------------------------------------------------------------------------

BAD = [
    (view("binance:NOPEUSDT"), {}, grpc.StatusCode.NOT_FOUND, None),
    (view("kraken:BTCUSDT"), {}, grpc.StatusCode.NOT_FOUND, None),
    (view("BTCUSDT"), {}, grpc.StatusCode.INVALID_ARGUMENT, "view.market"),
    (view(lookback="2d"), {}, grpc.StatusCode.INVALID_ARGUMENT, "view.lookback"),
    (view(lookback="1Y"), {}, grpc.StatusCode.INVALID_ARGUMENT, "view.lookback"),  # not offered here
    (view(rows=10_001), {}, grpc.StatusCode.INVALID_ARGUMENT, "view.rows"),
    (view(columns=20_000), {}, grpc.StatusCode.INVALID_ARGUMENT, "view.columns"),
    (view(rows=2000, columns=1001), {}, grpc.StatusCode.INVALID_ARGUMENT, "view.rows"),
    (view(price_range=pb.PriceRange(low=90_000, high=80_000)), {}, grpc.StatusCode.INVALID_ARGUMENT,
     "view.price_range"),
    (view(price_range=pb.PriceRange(low=-1, high=80_000)), {}, grpc.StatusCode.INVALID_ARGUMENT, "view.price_range"),
    (view(), {"threshold": 1.0}, grpc.StatusCode.INVALID_ARGUMENT, "zone_options.threshold"),
    (view(), {"threshold": -0.1}, grpc.StatusCode.INVALID_ARGUMENT, "zone_options.threshold"),
    (view(), {"threshold": float("nan")}, grpc.StatusCode.INVALID_ARGUMENT, "zone_options.threshold"),
    (view(), {"top": 1000}, grpc.StatusCode.INVALID_ARGUMENT, "zone_options.top"),
]


@pytest.mark.parametrize("bad_view, zone_kw, code, field", BAD)
def test_bad_requests_get_the_right_status_and_field(stack, bad_view, zone_kw, code, field):
    for call in (lambda: stack.stub.GetZones(pb.GetZonesRequest(view=bad_view, zone_options=pb.ZoneOptions(**zone_kw)),
                                             timeout=10),
                 lambda: next(stack.stub.StreamHeatmap(pb.StreamHeatmapRequest(
                     view=bad_view, zone_options=pb.ZoneOptions(**zone_kw)), timeout=10))):
        err = error_of(call)
        assert err.code() == code, err.details()
        if field:
            assert field in [f for f, _ in field_violations(err)], err.details()
        else:
            assert bad_view.market.split(":")[0] in err.details() or bad_view.market in err.details()


@pytest.mark.parametrize("kw, field", [({"boost": 0.0}, "boost"), ({"boost": 1.5}, "boost"),
                                       ({"include_tiers": True, "view": view(rows=2000, columns=400)},
                                        "include_tiers")])
def test_bad_heatmap_options(stack, kw, field):
    kw.setdefault("view", view())
    err = error_of(stack.stub.GetHeatmap, pb.GetHeatmapRequest(**kw), timeout=10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(err)] == [field]


def test_every_bad_field_is_named_at_once(stack):
    req = pb.GetZonesRequest(view=view(lookback="5m", rows=20_000), zone_options=pb.ZoneOptions(threshold=2))
    err = error_of(stack.stub.GetZones, req, timeout=10)
    assert {f for f, _ in field_violations(err)} >= {"view.lookback", "view.rows", "zone_options.threshold"}


def test_price_range_too_fine_for_the_data_is_refused(stack):
    req = pb.GetZonesRequest(view=view(rows=10_000, columns=10, price_range=pb.PriceRange(low=95_000, high=95_001)))
    err = error_of(stack.stub.GetZones, req, timeout=30)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(err)] == ["view.price_range"]


def test_stream_zones_view_count_is_bounded(stack):
    for views in ([], [view()] * 65):
        err = error_of(lambda: next(stack.stub.StreamZones(pb.StreamZonesRequest(views=views), timeout=10)))
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert [f for f, _ in field_violations(err)] == ["views"]
    err = error_of(lambda: next(stack.stub.StreamZones(pb.StreamZonesRequest(
        views=[view(), view(lookback="3M")]), timeout=10)))
    assert [f for f, _ in field_violations(err)] == ["views[1].lookback"]


def test_garbage_request_bytes_do_not_hurt_the_server(stack):
    raw = stack.channel.unary_unary("/heatsvc.v1.HeatmapService/GetZones")
    err = error_of(raw, b"\xff\xff\xff\xff", timeout=10)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(err)] == ["request"]
    assert stack.stub.ListMarkets(pb.ListMarketsRequest(), timeout=10).markets


def test_views_of_one_market_read_the_store_once_per_data_version(stack):
    """1d then 12h of one market after a refresh: one store read (the 12h view slices the 1d bars),
    and both still equal the engine on the stored bars."""
    reads = []
    real_load = stack.store.load
    stack.store.load = lambda market, *a, **kw: reads.append(market) or real_load(market, *a, **kw)
    try:
        stack.step()
        served = {lb: stack.stub.GetHeatmap(pb.GetHeatmapRequest(view=view("binance:ETHUSDT", lb, rows=50, columns=20)),
                                            timeout=30) for lb in ("1d", "12h")}
    finally:
        stack.store.load = real_load
    for lookback, resp in served.items():
        want = expected(stack, "binance:ETHUSDT", lookback, rows=50, columns=20)
        np.testing.assert_allclose(grid(resp.heatmap.long_notional), want.long, rtol=1e-6, atol=1e-6 * want.long.max())
    assert reads.count("binance:ETHUSDT") == 1, reads


# ---- streams ---------------------------------------------------------------------------------

def test_stream_snapshot_then_an_update_per_refresh(stack):
    call = stack.stub.StreamHeatmap(pb.StreamHeatmapRequest(view=view(rows=100, columns=24)), timeout=60)
    first = next(call)
    assert first.kind == pb.UPDATE_KIND_SNAPSHOT and first.HasField("heatmap") and first.HasField("zones")
    t0 = first.heatmap.data_time.ToMilliseconds()
    seen = []
    for _ in range(2):
        stack.step()
        msg = next(call)
        assert msg.kind == pb.UPDATE_KIND_HEATMAP and msg.HasField("heatmap")
        seen.append(msg)
    assert [m.sequence for m in seen] == [first.sequence + 1, first.sequence + 2]
    assert seen[-1].heatmap.data_time.ToMilliseconds() == t0 + 2 * STEP
    assert not any(m.gap_skipped for m in seen)
    call.cancel()


def test_zones_only_stream_never_carries_grids(stack):
    call = stack.stub.StreamHeatmap(pb.StreamHeatmapRequest(view=view("binance:ETHUSDT", "12h"), zones_only=True),
                                    timeout=60)
    first = next(call)
    assert first.kind == pb.UPDATE_KIND_SNAPSHOT and not first.HasField("heatmap")
    assert first.zones.market == "binance:ETHUSDT"
    stack.step()
    msg = next(call)
    assert msg.kind in (pb.UPDATE_KIND_HEATMAP, pb.UPDATE_KIND_ZONES) and not msg.HasField("heatmap")
    assert msg.zones.data_time.ToMilliseconds() > first.zones.data_time.ToMilliseconds()
    call.cancel()


def test_price_only_moves_send_zone_updates(stack):
    call = stack.stub.StreamHeatmap(pb.StreamHeatmapRequest(view=view(rows=90, columns=30)), timeout=60)
    first = next(call)
    before = stack.service.computations
    stack.step(60_000)  # inside the forming bar: the price moves, no bar closes
    msg = next(call)
    assert msg.kind == pb.UPDATE_KIND_ZONES and not msg.HasField("heatmap")
    assert msg.sequence == first.sequence + 1
    assert msg.zones.price != first.zones.price
    assert stack.service.computations == before
    call.cancel()
    stack.step(STEP - 60_000)


def test_many_subscribers_share_one_computation(stack):
    req = pb.StreamHeatmapRequest(view=view(rows=77, columns=33))
    before = stack.service.computations
    calls = [stack.stub.StreamHeatmap(req, timeout=60) for _ in range(20)]
    firsts = [next(c) for c in calls]
    assert stack.service.computations == before + 1
    assert len({f.SerializeToString() for f in firsts}) == 1
    topics = [t for k, t in stack.service.topics.items() if k[0] == "view" and k[1].rows == 77]
    assert len(topics) == 1 and len(topics[0].subscribers) == 20
    stack.step()
    updates = [next(c) for c in calls]
    assert stack.service.computations == before + 2
    assert {u.sequence for u in updates} == {firsts[0].sequence + 1}
    assert len({u.SerializeToString() for u in updates}) == 1
    for c in calls:
        c.cancel()


def stall_one_of_two(stack, rows: int, updates: int):
    """Two streams of a big view (rows x 288 float32 grids fill the transport window of a reader that
    stops reading): one read through `updates` refreshes, the other stalled meanwhile and then read up to
    the latest. Returns (the read one's first sequence, its update sequences, what the stalled one got)."""
    req = pb.StreamHeatmapRequest(view=view(rows=rows, columns=288))
    slow_channel = grpc.insecure_channel(stack.target, options=[("grpc.max_receive_message_length", -1),
                                                                ("grpc.http2.bdp_probe", 0)])
    slow = pb_grpc.HeatmapServiceStub(slow_channel).StreamHeatmap(req, timeout=90)
    fast = stack.stub.StreamHeatmap(req, timeout=90)
    try:
        next(slow)
        first = next(fast).sequence
        fast_seqs = []
        for _ in range(updates):
            stack.step()
            msg = next(fast)
            assert not msg.gap_skipped
            fast_seqs.append(msg.sequence)
        got = []
        while not got or got[-1].sequence < fast_seqs[-1]:
            got.append(next(slow))
        return first, fast_seqs, got
    finally:
        slow.cancel()
        fast.cancel()
        slow_channel.close()


def test_slow_reader_is_coalesced_while_a_fast_one_keeps_every_update(stack):
    first, fast_seqs, got = stall_one_of_two(stack, rows=2000, updates=8)   # ~4.6 MB messages
    assert fast_seqs == list(range(first + 1, first + 9))
    skipped = [m for m in got if m.gap_skipped]   # the slow reader is owed fewer messages, ending at the latest
    assert skipped, [m.sequence for m in got]
    assert all(m.kind == pb.UPDATE_KIND_SNAPSHOT and m.skipped_updates > 0 for m in skipped)
    assert len(got) < 8
    assert got[-1].sequence == fast_seqs[-1] and got[-1].HasField("heatmap")


def test_stream_zones_of_many_views(stack):
    views = [view(), view("all:BTCUSDT", "12h"), view("binance:ETHUSDT", "1d", rows=50)]
    call = stack.stub.StreamZones(pb.StreamZonesRequest(views=views, zone_options=pb.ZoneOptions(top=2)), timeout=60)
    first = next(call)
    assert first.kind == pb.UPDATE_KIND_SNAPSHOT
    assert [r.view_index for r in first.reports] == [0, 1, 2]
    assert [r.zones.market for r in first.reports] == ["binance:BTCUSDT", "all:BTCUSDT", "binance:ETHUSDT"]
    assert all(len(r.zones.above) <= 2 for r in first.reports)
    stack.step()
    changed = set()
    while changed != {0, 1, 2}:
        msg = next(call)
        assert msg.kind == pb.UPDATE_KIND_ZONES and msg.sequence > first.sequence
        changed |= {r.view_index for r in msg.reports}
    call.cancel()


def test_reflection_lists_the_services(stack):
    stub = reflection_pb2_grpc.ServerReflectionStub(stack.channel)
    resp = next(stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]),
                                          timeout=10))
    names = {s.name for s in resp.list_services_response.service}
    assert {"heatsvc.v1.HeatmapService", "grpc.health.v1.Health"} <= names


# ---- limits, auth, health ----------------------------------------------------------------------

@pytest.fixture()
def small(replay, tmp_path):
    """A second server (its own store and refresher, not yet started) with tight limits and a token."""
    s = Stack(replay, tmp_path / "bars.sqlite3", start_refresher=False, max_streams=2, auth_token="s3cret")
    yield s
    s.close()


def test_health_unavailable_then_serving_then_shutdown(small):
    auth = [("authorization", "Bearer s3cret")]
    health = health_pb2_grpc.HealthStub(small.channel)
    watch = health.Watch(health_pb2.HealthCheckRequest(service=""), timeout=60)
    assert next(watch).status == NOT_SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="binance:BTCUSDT"), timeout=5).status == NOT_SERVING
    err = error_of(small.stub.GetZones, pb.GetZonesRequest(view=view()), timeout=10, metadata=auth)
    assert err.code() == grpc.StatusCode.UNAVAILABLE and "not loaded" in err.details()
    small.call(small.start_refresher())
    assert next(watch).status == SERVING
    deadline = time.monotonic() + 10
    while health.Check(health_pb2.HealthCheckRequest(service="binance:BTCUSDT"), timeout=5).status != SERVING:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert small.stub.GetZones(pb.GetZonesRequest(view=view()), timeout=30, metadata=auth).zones.v_max > 0
    small.call(small.server.service.begin_shutdown())
    assert next(watch).status == NOT_SERVING


def test_token_and_stream_limit(small):
    auth = [("authorization", "Bearer s3cret")]
    small.call(small.start_refresher())
    for md in ([], [("authorization", "Bearer wrong")]):
        err = error_of(small.stub.ListMarkets, pb.ListMarketsRequest(), timeout=10, metadata=md)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    req = pb.StreamHeatmapRequest(view=view(lookback="12h"), zones_only=True)
    calls = [small.stub.StreamHeatmap(req, timeout=60, metadata=auth) for _ in range(2)]
    assert all(next(c).kind == pb.UPDATE_KIND_SNAPSHOT for c in calls)
    err = error_of(lambda: next(small.stub.StreamHeatmap(req, timeout=10, metadata=auth)))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    calls[0].cancel()
    deadline = time.monotonic() + 10
    while small.service.streams > 1:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    again = small.stub.StreamHeatmap(req, timeout=60, metadata=auth)
    assert next(again).kind == pb.UPDATE_KIND_SNAPSHOT
    again.cancel()
    calls[1].cancel()


# ---- a real `heatsvc serve` process ----------------------------------------------------------

def test_sigterm_ends_open_streams_cleanly(tmp_path):
    proc = subprocess.Popen(
        [sys.executable, "-m", "heatsvc.cli", "serve", "--demo", "--listen", "127.0.0.1:0", "--quiet",
         "--demo-history-days", "1", "--store", str(tmp_path / "demo.sqlite3")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        port = None
        while port is None:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            if "serving heatsvc.v1 on" in line:
                port = int(line.split(" on ")[1].split()[0].rsplit(":", 1)[1])
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        health = health_pb2_grpc.HealthStub(channel)
        watch = health.Watch(health_pb2.HealthCheckRequest(service="binance:HYPEUSDT"), timeout=120)
        while next(watch).status != SERVING:
            pass
        stub = pb_grpc.HeatmapServiceStub(channel)
        streams = [stub.StreamHeatmap(pb.StreamHeatmapRequest(view=view("binance:HYPEUSDT", "12h"), zones_only=True),
                                      timeout=120) for _ in range(3)]
        assert all(next(s).kind == pb.UPDATE_KIND_SNAPSHOT for s in streams)
        proc.send_signal(signal.SIGTERM)
        assert next(watch).status == NOT_SERVING
        for s in streams:
            for _ in s:  # updates may still arrive; the stream then ends
                pass
            assert s.code() == grpc.StatusCode.OK
        assert proc.wait(timeout=30) == 0
        assert "stopped" in proc.stderr.read()
        channel.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# ---- configuration -----------------------------------------------------------------------------

def test_config_file_env_overrides_and_errors(tmp_path):
    from heatsvc import cli
    from heatsvc.config import load

    path = tmp_path / "heatsvc.toml"
    path.write_text('[server]\nlisten = "127.0.0.1:6000"\n[data]\nlookbacks = ["7d", "1d"]\n'
                    '[exchanges.okx]\nsymbols = ["solusdt"]\nbase_url = "http://127.0.0.1:1/okx"\n'
                    '[model]\n[[model.tiers]]\nleverage = 10\nweight = 1.0\nhalf_life_days = "inf"\n')
    cfg = load(path, env={"HEATSVC_AUTH_TOKEN": "abc", "HEATSVC_OKX_BASE_URL": "http://127.0.0.1:2/okx"})
    assert cfg.markets == ["okx:SOLUSDT"] and cfg.lookbacks == ("1d", "7d")
    assert cfg.listen == "127.0.0.1:6000" and cfg.auth_token == "abc" and cfg.backend == "cython"
    assert cfg.exchanges[0].base_url == "http://127.0.0.1:2/okx"
    assert cfg.params.tiers[0].half_life_days == float("inf")
    assert cfg.max_message_bytes() > 6 * 4 * 2_000_000
    default = load(None, env={})
    assert len(default.markets) == 6 and default.exchanges[0].base_url == "https://fapi.binance.com"
    for text, words in (('[server]\nlisten = 5\n', "server.listen"), ('[data]\nlookbacks = ["2d"]\n', "data.lookbacks"),
                        ('[exchanges.kraken]\n', "kraken"), ('[limits]\nmax_cells = -1\n', "limits.max_cells"),
                        ('[model]\n[[model.tiers]]\nleverage = 10\nweight = 0.5\n', "weights must sum to 1"),
                        ('[serve]\n', "unknown key"), ('x = [', "heatsvc.toml")):
        path.write_text(text)
        with pytest.raises(ValueError, match=words.replace("[", r"\[")):
            load(path, env={})
    assert cli.main(["serve", "--config", str(tmp_path / "missing.toml")]) == 2


def test_a_second_server_on_a_taken_port_is_refused_not_sharing_it(stack):
    """gRPC sets SO_REUSEPORT by default on Linux, so two servers could silently split one port's
    clients; a single-process server turns it off (cluster edges turn it on on purpose)."""
    second = Server(stack.config, stack.store, stack.refresher)
    with pytest.raises(ValueError, match=f"cannot listen on 127.0.0.1:{stack.port}"):
        stack.call(second.start(f"127.0.0.1:{stack.port}"))
    stack.call(second.stop(grace=0))
