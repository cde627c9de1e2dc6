"""Parameter profiles and the measured-map RPCs' errors over the real gRPC server (test_service's Stack)."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from heatsvc.measured_store import MeasuredStore
from heatsvc.model.engine import ModelParams, Tier
from heatsvc.replay import ReplayExchange
from heatsvc.service.errors import field_violations
from heatsvc.v1 import heatmap_service_pb2 as pb
from test_service import START, Stack, error_of, small_datasets

ALL_5X = ModelParams(tiers=(Tier(5, 1.0, 0.004, 30), Tier(10, 0.0, 0.004, 14), Tier(25, 0.0, 0.004, 5),
                            Tier(50, 0.0, 0.004, 2), Tier(100, 0.0, 0.004, 1)))


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "bars.sqlite3"
    with MeasuredStore(path) as store:
        store.save_profile("all-5x", ALL_5X, "a test profile: every position at 5x")
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as replay:
        s = Stack(replay, path)
        yield s
        s.close()


def grids(stack, **view):
    r = stack.stub.GetHeatmap(pb.GetHeatmapRequest(view=pb.View(market="binance:BTCUSDT", lookback="1d", rows=50,
                                                                columns=20, **view)), timeout=30)
    h = r.heatmap
    return h, np.frombuffer(h.long_notional.data, "<f4"), np.frombuffer(h.short_notional.data, "<f4")


def test_a_view_may_use_a_saved_profile_and_the_market_list_names_it(stack):
    listed = stack.stub.ListMarkets(pb.ListMarketsRequest(), timeout=30)
    assert [(p.name, [t.weight for t in p.parameters.tiers]) for p in listed.profiles] == \
        [("all-5x", [1.0, 0.0, 0.0, 0.0, 0.0])]
    default, dl, ds = grids(stack)
    profiled, pl, ps = grids(stack, profile="all-5x")
    assert [t.weight for t in profiled.parameters.tiers] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [t.weight for t in default.parameters.tiers] == [0.15, 0.30, 0.25, 0.20, 0.10]
    assert not np.array_equal(dl, pl), "the profile changed the book"
    # all at 5x: every long liquidation price is e * 0.8 / 0.996, far below the price: none near it
    price = profiled.current_price
    edges = np.array(profiled.price_edges)
    near = (edges[:-1] > price * 0.9) & (edges[1:] < price)
    grid_l = pl.reshape(50, -1)
    assert grid_l[near, -1].sum() == 0 and dl.reshape(50, -1)[near, -1].sum() > 0


def test_unknown_profiles_and_markets_without_public_positions_are_refused_by_name(stack):
    e = error_of(stack.stub.GetZones, pb.GetZonesRequest(view=pb.View(market="binance:BTCUSDT", lookback="1d",
                                                                       profile="nope")), timeout=30)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(e) == [("view.profile", "profile 'nope' is not known; profiles: all-5x")]
    e = error_of(stack.stub.GetMeasuredMap, pb.GetMeasuredMapRequest(view=pb.View(market="binance:BTCUSDT",
                                                                                   lookback="1d")), timeout=30)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert field_violations(e)[0][0] == "view.market" and "positions are public" in field_violations(e)[0][1]
    e = error_of(stack.stub.CompareMeasured, pb.CompareMeasuredRequest(
        view=pb.View(market="binance:BTCUSDT", lookback="1d"), save_profile="bad name!"), timeout=30)
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(e)] == ["view.market", "save_profile"]
