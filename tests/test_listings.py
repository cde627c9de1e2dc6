"""A market newly listed while the service runs, selected by the configured patterns, is served from
then on (no restart): backfilled, in ListMarkets and health, and in its symbol's aggregate."""
from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from heatsvc.datasets import synthetic_bars
from heatsvc.replay import ReplayExchange
from heatsvc.v1 import heatmap_service_pb2 as pb
from test_service import END, SERVING, START, Stack, error_of, small_datasets


def test_a_new_listing_the_patterns_select_is_served_without_a_restart(tmp_path):
    data = small_datasets()
    data["bybit:ETHUSDT"] = synthetic_bars("ETHUSDT", "bybit", days=3, end_ms=END)
    with ReplayExchange(datasets=data, start_ms=START) as replay:
        replay.delist("bybit:ETHUSDT")                       # not listed yet when the service starts
        stack = Stack(replay, tmp_path / "bars.sqlite3")
        try:
            zones = pb.GetZonesRequest(view=pb.View(market="bybit:ETHUSDT", lookback="1d"))
            assert error_of(stack.stub.GetZones, zones, timeout=30).code() == grpc.StatusCode.NOT_FOUND
            stack.refresher.selectors = {"bybit": (("*USDT",), None)}
            stack.call(stack.refresher.check_listings())      # the daily check, while it is still unlisted
            assert "bybit:ETHUSDT" not in stack.refresher.markets
            replay.delisted.clear()                           # the exchange lists it now
            stack.call(stack.refresher.check_listings())
            assert "bybit:ETHUSDT" in stack.refresher.markets
            health = health_pb2_grpc.HealthStub(stack.channel)
            deadline = time.monotonic() + 60
            status = None
            while time.monotonic() < deadline:
                try:
                    status = health.Check(health_pb2.HealthCheckRequest(service="bybit:ETHUSDT"), timeout=5).status
                except grpc.RpcError:
                    status = None                             # not known to health yet
                if status == SERVING:
                    break
                time.sleep(0.2)
            assert status == SERVING
            report = stack.stub.GetZones(zones, timeout=30).zones
            assert report.market == "bybit:ETHUSDT" and report.price > 0
            listed = {m.market: m for m in stack.stub.ListMarkets(pb.ListMarketsRequest(), timeout=30).markets}
            assert "bybit:ETHUSDT" in listed
            assert sorted(listed["all:ETHUSDT"].components) == ["binance:ETHUSDT", "bybit:ETHUSDT"]
            assert stack.store.count("bybit:ETHUSDT") > 0, "backfilled"
        finally:
            stack.close()
