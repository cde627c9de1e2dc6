"""The cluster (heatsvc.cluster) on 127.0.0.1 with a real nats-server, real owner and edge processes
started by the project's launcher, and the replay exchange stepped by the test: an edge gives the same
stream messages as a single process on the same replay; a dead owner's views go stale and recover when a
new owner starts; killing an edge moves clients to the other; a restarted nats-server recovers.

The tests share one cluster and run in order (each leaves it whole again)."""
from __future__ import annotations

import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heatsvc.cluster.launcher import Cluster
from heatsvc.cluster.nats_server import binary
from heatsvc.cluster.subjects import Shard
from heatsvc.v1 import heatmap_service_pb2 as pb
from heatsvc.v1 import heatmap_service_pb2_grpc as pb_grpc
from test_service import replay, stack, view  # noqa: F401 (fixtures: the stepped replay, the single process)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
OWNERS = 2
BTC = "binance:BTCUSDT"
BTC_SHARD = next(i for i in range(OWNERS) if Shard(i, OWNERS).owns("BTCUSDT"))
ETH_SHARD = next(i for i in range(OWNERS) if Shard(i, OWNERS).owns("ETHUSDT"))
TIMEOUT = 60

pytest.importorskip("nats", reason="the cluster needs nats-py (pip install -e '.[test]')")
try:
    binary()
except ValueError as exc:
    pytest.skip(str(exc), allow_module_level=True)


@pytest.fixture(scope="module")
def single(stack):
    """The single process on the same replay (test_service's stack): the reference."""
    return stack


@pytest.fixture(scope="module")
def cluster(replay, single, tmp_path_factory):
    c = Cluster(replay, tmp_path_factory.mktemp("cluster"), owners=OWNERS, edges=2, lookbacks=("12h", "1d"),
                history_days=2, refresh_interval_s=0.2, heartbeat_s=0.25)
    c.start()
    c.channel = grpc.insecure_channel(c.target, [("grpc.max_receive_message_length", -1)])
    c.stub = pb_grpc.HeatmapServiceStub(c.channel)
    c.health = health_pb2_grpc.HealthStub(c.channel)
    try:
        wait_until(lambda: all(published(c, m) for m in single.config.markets), "every market published")
        yield c
    finally:
        c.channel.close()
        c.stop()


def wait_until(check, what: str, timeout: float = TIMEOUT):
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"not true after {timeout} s: {what}"
        time.sleep(0.05)
    return result


def published(c, market: str) -> bool:
    try:
        c.stub.GetZones(pb.GetZonesRequest(view=view(market, "12h")), timeout=5)
        return True
    except grpc.RpcError:
        return False


def health(c, service: str = ""):
    try:
        return c.health.Check(health_pb2.HealthCheckRequest(service=service), timeout=2).status
    except grpc.RpcError:
        return None


def same_zones(c, single, market: str, lookback: str) -> bool:
    request = pb.GetZonesRequest(view=view(market, lookback))
    return c.stub.GetZones(request, timeout=5) == single.stub.GetZones(request, timeout=5)


def step(single) -> None:
    single.step()   # the replay clock moves (the owners follow it) and the single process refreshes


def catch_up(edge, expected, limit: int = 4) -> None:
    """Read the edge's stream until its update equals the single process's `expected` (sequence aside).

    An owner refreshes on its own timer while the test moves the replay clock, so a refresh can land
    between the clock's step and the owner's next reading of it (or between its candle and price
    requests): it then publishes the new price on the old grid first, an update the single process,
    refreshed after the step, never has. Those are let through here; nothing else is."""
    seen = []
    for _ in range(limit):
        msg = next(edge)
        if unsequenced(msg) == unsequenced(expected):
            return
        seen.append(msg)
        assert msg.zones.data_time.ToMilliseconds() < expected.zones.data_time.ToMilliseconds(), msg
    raise AssertionError(f"the edge did not reach the single process's update in {limit} messages: {seen}")


def unsequenced(msg):
    out = type(msg)()
    out.CopyFrom(msg)
    out.sequence = 0
    return out


def test_an_edge_streams_exactly_what_a_single_process_streams(cluster, single):
    heat = pb.StreamHeatmapRequest(view=view(BTC, "12h"))
    zones = pb.StreamZonesRequest(views=[view("binance:ETHUSDT", "1d"), view("all:BTCUSDT", "12h")])
    wait_until(lambda: all(same_zones(cluster, single, m, lb) for m in ("binance:ETHUSDT", BTC) for lb in ("12h", "1d")),
               "the edge answers GetZones as the single process does")
    streams = [(cluster.stub.StreamHeatmap(heat, timeout=120), single.stub.StreamHeatmap(heat, timeout=120)),
               (cluster.stub.StreamZones(zones, timeout=120), single.stub.StreamZones(zones, timeout=120))]
    for edge, one in streams:
        assert next(edge) == next(one)   # the snapshots
    edge_heat, one_heat = streams[0]
    for _ in range(4):
        step(single)
        expected = next(one_heat)
        assert expected.kind == pb.UPDATE_KIND_HEATMAP and expected.HasField("heatmap")
        catch_up(edge_heat, expected)
    # the aggregate's exchanges refresh one after the other: compare the state once both have settled
    wait_until(lambda: same_zones(cluster, single, "all:BTCUSDT", "12h"), "aggregate zones equal")
    for call in (c for pair in streams for c in pair):
        call.cancel()
    heatmap = pb.GetHeatmapRequest(view=view(BTC, "12h"))   # the grid, fetched by the edge on demand
    wait_until(lambda: cluster.stub.GetHeatmap(heatmap, timeout=5).heatmap == single.stub.GetHeatmap(
        heatmap, timeout=5).heatmap, "the edge's GetHeatmap equals the single process's")
    for method, request in ((cluster.stub.GetMeasuredMap, pb.GetMeasuredMapRequest(view=view(BTC, "12h"))),
                            (cluster.stub.GetLiquidations, pb.GetLiquidationsRequest(market=BTC))):
        with pytest.raises(grpc.RpcError) as refused:
            method(request, timeout=5)
        assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED and "edge" in refused.value.details()


def test_a_dead_owner_goes_stale_and_a_new_one_recovers_without_losing_updates(cluster, single):
    heat = pb.StreamHeatmapRequest(view=view(BTC, "12h"), zones_only=True)
    edge, one = cluster.stub.StreamHeatmap(heat, timeout=120), single.stub.StreamHeatmap(heat, timeout=120)
    assert next(edge) == next(one)
    before = cluster.stub.GetZones(pb.GetZonesRequest(view=view(BTC, "12h")), timeout=5).zones

    cluster.kill_owner(BTC_SHARD)
    wait_until(lambda: health(cluster, BTC) == NOT_SERVING, "the dead owner's market NOT_SERVING")
    step(single)
    missed = next(one)
    time.sleep(1)
    stale = cluster.stub.GetZones(pb.GetZonesRequest(view=view(BTC, "12h")), timeout=5).zones
    assert stale.stale and stale.data_time == before.data_time   # the last state, marked
    listed = {m.market: m for m in cluster.stub.ListMarkets(pb.ListMarketsRequest(), timeout=5).markets}
    assert listed[BTC].stale and listed["all:BTCUSDT"].stale
    if ETH_SHARD != BTC_SHARD:   # the other shard is unaffected
        assert not listed["binance:ETHUSDT"].stale and health(cluster, "binance:ETHUSDT") == SERVING

    cluster.start_owner(BTC_SHARD)
    # the new owner may first publish its warm-up state; within a few messages the edge has the state
    # the single process reached meanwhile
    catch_up(edge, missed)
    wait_until(lambda: health(cluster, BTC) == SERVING, "SERVING again")
    assert not cluster.stub.GetZones(pb.GetZonesRequest(view=view(BTC, "12h")), timeout=5).zones.stale
    for _ in range(2):   # and from then on, every update
        step(single)
        catch_up(edge, next(one))
    for market in (BTC, "all:BTCUSDT"):
        for lookback in ("12h", "1d"):
            wait_until(lambda: same_zones(cluster, single, market, lookback), f"{market} {lookback} equal")
    edge.cancel()
    one.cancel()


def call_again(call, *args, **kw):
    """A unary call retried while UNAVAILABLE, as a client does when its server went away."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return call(*args, timeout=5, **kw)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_killing_an_edge_moves_its_clients_to_the_other(cluster, single):
    request = pb.StreamHeatmapRequest(view=view(BTC, "1d"), zones_only=True)
    zones = pb.GetZonesRequest(view=view(BTC, "1d"))
    stream = cluster.stub.StreamHeatmap(request, timeout=120)
    assert next(stream).zones == single.stub.GetZones(zones, timeout=5).zones
    broken = False
    for j in (0, 1):   # one of the two holds the channel's connection
        cluster.kill_edge(j)
        step(single)   # an update is due: the stream gives it, or fails if its edge died
        expected = single.stub.GetZones(zones, timeout=5)
        wait_until(lambda: call_again(cluster.stub.GetZones, zones) == expected, "the other edge answers")
        try:
            msg = next(stream)
            while msg.zones != expected.zones:   # see catch_up
                assert msg.zones.data_time.ToMilliseconds() < expected.zones.data_time.ToMilliseconds()
                msg = next(stream)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc
            broken = True
            stream = cluster.stub.StreamHeatmap(request, timeout=120)
            assert next(stream).zones == expected.zones   # the snapshot, from the other edge
        cluster.start_edge(j)
    assert broken
    stream.cancel()


def test_a_restarted_edge_rebuilds_from_the_retained_state(cluster, single):
    for j in list(cluster.edges):
        cluster.kill_edge(j)
    cluster.start_edge(0)   # alone: every answer below comes from it
    try:
        wait_until(lambda: health(cluster, BTC) == SERVING, "the new edge SERVING")
        for market in single.config.markets:
            assert same_zones(cluster, single, market, "1d")
    finally:
        cluster.start_edge(1)


def test_a_nats_restart_is_not_serving_then_recovers(cluster, single):
    heat = pb.StreamHeatmapRequest(view=view(BTC, "12h"), zones_only=True)
    cluster.nats.stop()
    wait_until(lambda: health(cluster) == NOT_SERVING and health(cluster, BTC) == NOT_SERVING,
               "edges NOT_SERVING without NATS")
    assert cluster.stub.GetZones(pb.GetZonesRequest(view=view(BTC, "12h")), timeout=5).zones.stale
    cluster.nats.start()
    wait_until(lambda: health(cluster) == SERVING and health(cluster, BTC) == SERVING, "SERVING after the restart")
    edge, one = cluster.stub.StreamHeatmap(heat, timeout=120), single.stub.StreamHeatmap(heat, timeout=120)
    assert unsequenced(next(edge)) == unsequenced(next(one))
    step(single)
    catch_up(edge, next(one))
    edge.cancel()
    one.cancel()
