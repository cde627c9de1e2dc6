"""Parameter profiles and the measured-map RPCs' errors over the real gRPC server (test_service's Stack)."""
from __future__ import annotations

import grpc
import numpy as np
import pytest

from heatsvc.measured_store import MeasuredStore
from heatsvc.model.bars import STEP_MS
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


# ---- measured maps of hyperliquid:HYPE, from the replay's synthetic accounts read by the real poller ----

HL_START = 1_760_131_200_000 + 3_600_000      # 2025-10-10T22:20Z, an hour after the recorded HYPE crash


@pytest.fixture(scope="module")
def hl(tmp_path_factory):
    from heatsvc.config import parse
    from heatsvc.exchanges.hyperliquid.positions import PositionPoller
    from heatsvc.replay import default_datasets
    from heatsvc.service.measured import MeasuredRecorder

    with ReplayExchange(datasets={"hyperliquid:HYPE": default_datasets(hyperliquid=True)["hyperliquid:HYPE"]},
                        start_ms=HL_START) as replay:
        config = parse({"server": {"backend": "cython"},
                        "data": {"lookbacks": ["12h", "1d"], "history_days": 1.2, "refresh_interval_s": 3600},
                        "exchanges": {"hyperliquid": {"symbols": ["HYPE"], "base_url": replay.base_url("hyperliquid")}}},
                       env={})
        s = Stack(replay, tmp_path_factory.mktemp("store") / "bars.sqlite3", config=config)
        s.poller = PositionPoller(s.clients["hyperliquid"], {"HYPE"}, share=0.5, cycle_s=0, period_s=0.01)
        s.poller.add_accounts(replay.dialects["hyperliquid"].accounts.addresses[:80])   # within a minute's weight
        s.recorder = MeasuredRecorder(s.service.measured, s.poller, ["hyperliquid:HYPE"])

        async def measure():
            await s.clients["hyperliquid"].sample()
            now = replay.now_ms()
            while any(a.read_ms is None or a.read_ms < now for a in s.poller.accounts.values()):
                await s.poller.cycle()
            return await s.recorder.record_once()
        s.measure = lambda: s.call(measure())

        async def sample_bars(n):   # Hyperliquid has no open-interest history: the estimate grows from samples
            for _ in range(n):
                replay.step(STEP_MS)
                await s.clients["hyperliquid"].sample()
                await s.refresher.refresh("hyperliquid:HYPE")
        s.call(sample_bars(8))
        assert s.measure() == 1
        yield s
        s.close()


VIEW = pb.View(market="hyperliquid:HYPE", lookback="1d", rows=120, columns=24)


def test_the_measured_map_places_every_position_at_its_liquidation_price_on_the_views_rows(hl):
    snap = hl.poller.snapshot("HYPE")
    m = hl.stub.GetMeasuredMap(pb.GetMeasuredMapRequest(view=VIEW), timeout=30).map
    heat = hl.stub.GetHeatmap(pb.GetHeatmapRequest(view=VIEW), timeout=30).heatmap
    assert list(m.price_edges) == list(heat.price_edges), "the estimate's rows"
    assert m.time.ToMilliseconds() == snap.time_ms and m.positions == len(snap.positions) > 20
    edges = np.array(m.price_edges)
    for side, sign, grid, off, unpriced in (("long", 1, m.long_notional, m.off_range_long, m.unpriced_long),
                                            ("short", -1, m.short_notional, m.off_range_short, m.unpriced_short)):
        mine = [p for p in snap.positions if p.size * sign > 0]
        priced = [p for p in mine if p.liquidation_px is not None]
        want, _ = np.histogram([p.liquidation_px for p in priced], bins=edges,
                               weights=[p.position_value for p in priced])
        np.testing.assert_allclose(grid, want, rtol=1e-9)
        assert sum(grid) + off + unpriced == pytest.approx(sum(p.position_value for p in mine))
        assert getattr(m, f"{side}_size") == pytest.approx(sum(abs(p.size) for p in mine))
        assert getattr(m, f"coverage_{side}") == pytest.approx(getattr(m, f"{side}_size") / m.open_interest)
        assert unpriced == pytest.approx(sum(p.position_value for p in mine if p.liquidation_px is None)), \
            "positions without a liquidation price are kept apart"
    assert m.open_interest == snap.open_interest > 0 and m.accounts_read == len(hl.poller.accounts)
    assert sum(x.long_notional + x.short_notional for x in m.leverage_mix) == \
        pytest.approx(sum(p.position_value for p in snap.positions))


def test_compare_fits_the_measured_leverage_mix_and_saves_a_profile_views_can_use(hl):
    r = hl.stub.CompareMeasured(pb.CompareMeasuredRequest(view=VIEW, save_profile="hl-fit"), timeout=30)
    snap = hl.poller.snapshot("HYPE")
    leverages = np.array([5, 10, 25, 50, 100])
    share = np.zeros(5)
    for p in snap.positions:
        share[np.argmin(np.abs(np.log(leverages) - np.log(p.leverage)))] += p.position_value
    share /= share.sum()
    assert [t.measured_weight for t in r.tiers] == pytest.approx(share.tolist())
    assert [t.weight for t in r.fitted.tiers] == pytest.approx(share.tolist())
    assert [t.model_weight for t in r.tiers] == [0.15, 0.30, 0.25, 0.20, 0.10]
    assert -1e-9 <= r.cosine_long <= 1 + 1e-9 and r.measured_time.ToMilliseconds() == snap.time_ms
    assert r.estimated_above > 0 and r.estimated_below > 0, "40 minutes of sampled open interest"
    assert r.measured_below > 0 and r.coverage_long > 0 and r.saved_profile == "hl-fit"
    profiles = {p.name: p for p in hl.stub.ListMarkets(pb.ListMarketsRequest(), timeout=30).profiles}
    assert [t.weight for t in profiles["hl-fit"].parameters.tiers] == pytest.approx(share.tolist())
    assert "fitted to hyperliquid:HYPE" in profiles["hl-fit"].source
    fitted = pb.View(market="hyperliquid:HYPE", lookback="1d", rows=120, columns=24, profile="hl-fit")
    z = hl.stub.GetHeatmap(pb.GetHeatmapRequest(view=fitted), timeout=30).heatmap
    assert [t.weight for t in z.parameters.tiers] == pytest.approx(share.tolist())


def test_the_stream_sends_the_map_again_when_a_new_snapshot_is_stored_and_old_times_can_be_asked(hl):
    first_time = hl.stub.GetMeasuredMap(pb.GetMeasuredMapRequest(view=VIEW), timeout=30).map.time
    stream = hl.stub.StreamMeasuredMap(pb.StreamMeasuredMapRequest(view=VIEW), timeout=60)
    first = next(stream).map
    assert first.time == first_time
    hl.replay.step(10 * 60_000)
    assert hl.measure() == 1
    second = next(stream).map
    stream.cancel()
    assert second.time.ToMilliseconds() > first.time.ToMilliseconds()
    old = hl.stub.GetMeasuredMap(pb.GetMeasuredMapRequest(view=VIEW, time=first.time), timeout=30).map
    assert old.time == first.time and list(old.long_notional) == list(first.long_notional)
    before = pb.GetMeasuredMapRequest(view=VIEW)
    before.time.FromMilliseconds(first.time.ToMilliseconds() - 1)
    e = error_of(hl.stub.GetMeasuredMap, before, timeout=30)
    assert e.code() == grpc.StatusCode.NOT_FOUND and "no measured snapshot" in e.details()
