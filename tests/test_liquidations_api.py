"""GetLiquidations over the real gRPC server (test_service's Stack): buckets per side with counts and
coverage (uncovered time is NaN, not zero), aggregates over exchanges, the largest events, and errors
naming the bad fields."""
from __future__ import annotations

import math

import grpc
import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from heatsvc.liquidation_store import LiquidationStore
from heatsvc.model.realised import Liquidation
from heatsvc.replay import ReplayExchange
from heatsvc.service.errors import field_violations
from heatsvc.v1 import heatmap_service_pb2 as pb
from test_service import START, Stack, error_of, small_datasets

MIN = 60_000
T0 = START - START % (60 * MIN)   # an hour boundary before the clock


def ts(ms: int) -> timestamp_pb2.Timestamp:
    t = timestamp_pb2.Timestamp()
    t.FromMilliseconds(ms)
    return t


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "bars.sqlite3"
    store = LiquidationStore(path)
    store.add([Liquidation("binance:BTCUSDT", T0 + 10_000, "long", 100.0, 2.0),        # minute 0: 200 long
               Liquidation("binance:BTCUSDT", T0 + 20_000, "short", 101.0, 1.0),       # minute 0: 101 short
               Liquidation("binance:BTCUSDT", T0 + 2 * MIN + 5, "long", 99.0, 10.0),   # minute 2: 990 long
               Liquidation("bybit:BTCUSDT", T0 + 30_000, "long", 100.0, 5.0)])         # minute 0: 500 long
    store.cover("binance", T0, T0 + 3 * MIN)        # binance heard minutes 0-2
    store.cover("bybit", T0, T0 + MIN // 2)         # bybit half of minute 0 only
    store.close()
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as replay:
        s = Stack(replay, path, start_refresher=False)
        yield s
        s.close()


def get(stack, market="binance:BTCUSDT", start=T0, end=T0 + 5 * MIN, bucket_s=60, **kw):
    return stack.stub.GetLiquidations(pb.GetLiquidationsRequest(
        market=market, start_time=ts(start), end_time=ts(end), bucket=duration_pb2.Duration(seconds=bucket_s),
        **kw), timeout=30)


def test_buckets_count_notional_and_coverage_with_missing_time_missing(stack):
    r = get(stack)
    assert r.market == "binance:BTCUSDT" and list(r.markets) == ["binance:BTCUSDT"]
    assert list(r.lower_bound_exchanges) == ["binance"] and r.bucket.seconds == 60
    b = r.buckets
    assert [x.start_time.ToMilliseconds() for x in b] == [T0 + i * MIN for i in range(5)]
    assert (b[0].long_notional, b[0].short_notional, b[0].long_count, b[0].short_count) == (200.0, 101.0, 1, 1)
    assert (b[1].long_notional, b[1].short_notional, b[1].coverage) == (0.0, 0.0, 1.0), "heard and calm: zero"
    assert b[2].long_notional == pytest.approx(990.0) and b[2].long_count == 1
    assert all(math.isnan(x.long_notional) and math.isnan(x.short_notional) and x.coverage == 0 for x in b[3:]), \
        "not heard: missing, not zero"
    assert [(e.notional, e.side) for e in r.largest] == [(990.0, pb.LIQUIDATION_SIDE_LONG),
                                                         (200.0, pb.LIQUIDATION_SIDE_LONG),
                                                         (101.0, pb.LIQUIDATION_SIDE_SHORT)]
    assert len(get(stack, largest=1).largest) == 1


def test_an_aggregate_sums_the_exchanges_heard_and_averages_their_coverage(stack):
    r = get(stack, market="all:BTCUSDT", end=T0 + 3 * MIN)
    assert sorted(r.markets) == ["binance:BTCUSDT", "bybit:BTCUSDT"]
    b = r.buckets
    assert b[0].long_notional == 700.0 and b[0].long_count == 2 and b[0].coverage == pytest.approx(0.75)
    assert b[1].coverage == pytest.approx(0.5) and b[1].long_notional == 0.0, "binance heard minute 1"
    assert r.largest[0].market == "binance:BTCUSDT" and r.largest[1].notional == 500.0


def test_bad_requests_name_their_fields(stack):
    error = error_of(stack.stub.GetLiquidations, pb.GetLiquidationsRequest(
        market="binance:BTCUSDT", bucket=duration_pb2.Duration(seconds=0, nanos=5), largest=5000), timeout=30)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {f for f, _ in field_violations(error)} == {"start_time", "bucket", "largest"}
    error = error_of(get, stack, end=T0 - MIN)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violations(error)[0][0] == "end_time"
    error = error_of(get, stack, start=T0 - 100 * 86_400_000, bucket_s=1)
    assert "more than 10000 buckets" in error.details()
    assert error_of(get, stack, market="kraken:BTCUSDT").code() == grpc.StatusCode.NOT_FOUND
    assert error_of(get, stack, market="BTCUSDT").code() == grpc.StatusCode.INVALID_ARGUMENT


def test_heatmap_columns_carry_realised_liquidations_beside_the_estimate(tmp_path):
    from test_service import view
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as replay:
        s = Stack(replay, tmp_path / "bars.sqlite3")
        try:
            hm = s.stub.GetHeatmap(pb.GetHeatmapRequest(view=view(market="all:BTCUSDT", columns=24)), timeout=60).heatmap
            times = [t.ToMilliseconds() for t in hm.column_times]
            column_ms = times[1] - times[0]
            assert len(hm.realised_long) == len(hm.swept_long) == len(hm.coverage) == 24
            assert all(math.isnan(v) for v in hm.realised_long) and set(hm.coverage) == {0.0}, "nothing recorded"
            store = LiquidationStore(tmp_path / "bars.sqlite3")
            store.add([Liquidation("bybit:BTCUSDT", times[-2] + 1000, "short", 100.0, 3.0)])
            store.cover("bybit", times[-3], times[-1])      # bybit heard columns -3 and -2
            store.close()
            hm = s.stub.GetHeatmap(pb.GetHeatmapRequest(view=view(market="all:BTCUSDT", columns=24, rows=60)),
                                   timeout=60).heatmap   # another view (not a cached answer), the same columns
            assert [t.ToMilliseconds() for t in hm.column_times] == times
            shift = 22
            assert hm.realised_short[shift] == 300.0 and hm.realised_long[shift] == 0.0
            assert hm.coverage[shift] == pytest.approx(0.5), "one of the two exchanges heard it"
            assert hm.coverage[shift - 1] == pytest.approx(0.5) and hm.realised_short[shift - 1] == 0.0
            assert hm.coverage[shift + 1] == 0 and math.isnan(hm.realised_short[shift + 1]), "not heard: missing"
            assert column_ms == times[2] - times[1]
        finally:
            s.close()


def test_stream_liquidations_snapshot_then_committed_events_of_the_chosen_markets(tmp_path):
    import threading

    from heatsvc.recording import Recording
    from heatsvc.replay.streams import StreamServer

    path = tmp_path / "bars.sqlite3"
    store = LiquidationStore(path)
    store.add([Liquidation("binance:BTCUSDT", START - 3000 + i, "long", 100.0 + i, 1.0) for i in range(3)])
    store.close()
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as replay, StreamServer(replay) as streams:
        s = Stack(replay, path, start_refresher=False)

        async def record():
            exchanges = [ex.__class__(ex.name, ex.symbols, ws_url=streams.url(ex.name)) for ex in s.config.exchanges]
            rec = Recording(LiquidationStore(path), exchanges, flush_interval_s=0.05, now_ms=replay.now_ms)
            s.service.recording = rec
            rec.listeners.append(s.service.on_liquidations)
            rec.start()
            return rec
        try:
            one = s.stub.StreamLiquidations(pb.StreamLiquidationsRequest(markets=["binance:BTCUSDT"], snapshot=2),
                                            timeout=120)
            every = s.stub.StreamLiquidations(pb.StreamLiquidationsRequest(), timeout=120)
            first = next(one)
            assert first.kind == pb.UPDATE_KIND_SNAPSHOT and [e.price for e in first.events] == [101.0, 102.0]
            assert [e.price for e in next(every).events] == [100.0, 101.0, 102.0]
            rec = s.call(record())
            stepping = threading.Event()

            def step():   # the replay clock moves on until the test has what it waits for
                while not stepping.wait(0.1):
                    replay.step(300_000)
            stepper = threading.Thread(target=step, daemon=True)
            stepper.start()
            got, markets = [], set()
            while not got:
                msg = next(one)
                assert msg.kind == pb.UPDATE_KIND_LIQUIDATIONS and msg.sequence >= 1
                got += msg.events
            assert {e.market for e in got} == {"binance:BTCUSDT"} and all(e.notional > 0 for e in got)
            while markets != {"binance:BTCUSDT", "binance:ETHUSDT", "bybit:BTCUSDT"}:
                markets |= {e.market for e in next(every).events}
            stepping.set()
            stepper.join()
            stored = LiquidationStore(path).load("binance:BTCUSDT", 0, 2**62)
            assert {e.time.ToMilliseconds() for e in got} <= set(stored["time_ms"].tolist()), "delivered once committed"
            one.cancel()
            every.cancel()
            s.call(rec.stop())
            error = error_of(lambda: next(s.stub.StreamLiquidations(pb.StreamLiquidationsRequest(
                markets=["binance:BTCUSDT"], snapshot=5000), timeout=30)))
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT and field_violations(error)[0][0] == "snapshot"
            error = error_of(lambda: next(s.stub.StreamLiquidations(pb.StreamLiquidationsRequest(
                markets=["okx:BTCUSDT"]), timeout=30)))
            assert error.code() == grpc.StatusCode.NOT_FOUND
        finally:
            s.close()


def test_the_tracker_shows_totals_the_largest_and_follows_new_events(tmp_path, capsys):
    import threading

    from heatsvc.cli import main

    path = tmp_path / "bars.sqlite3"
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as replay:
        s = Stack(replay, path)
        try:
            now = max(t.last_bar_time.ToMilliseconds() for t in s.stub.ListMarkets(pb.ListMarketsRequest()).markets) \
                + 5 * MIN   # the server clock as the tracker reads it
            store = LiquidationStore(path)
            store.add([Liquidation("binance:BTCUSDT", now - 4 * MIN, "long", 100.0, 40.0),       # 4.00k
                       Liquidation("binance:BTCUSDT", now - 3 * MIN, "short", 100.0, 25.0),      # 2.50k
                       Liquidation("binance:BTCUSDT", now - 30 * MIN, "long", 100.0, 80.0)])     # 8.00k, yesterday
            store.cover("binance", now - 90 * MIN, now + 5 * MIN)
            store.close()
            assert main(["liquidations", "--market", "binance:BTCUSDT", "--target", s.target]) == 0
            out = capsys.readouterr().out
            assert "last 1 h" in out and "12.00k" in out and "2.50k" in out, out   # the hour reaches into yesterday
            assert "largest today: 4.00k long" in out, "the day's largest, not yesterday's 8.00k"
            assert "binance: at most one a symbol a second" in out and "heard" in out

            stop = threading.Event()

            def feed():   # a committed batch, again and again until the tracker has shown one
                while not stop.wait(0.05):
                    s.loop.call_soon_threadsafe(s.service.on_liquidations, [
                        Liquidation("binance:BTCUSDT", now + 4 * MIN, "short", 100.0, 90.0)])
            feeder = threading.Thread(target=feed, daemon=True)
            feeder.start()
            try:
                assert main(["liquidations", "--market", "binance:BTCUSDT", "--target", s.target, "--follow",
                             "--count", "1"]) == 0
            finally:
                stop.set()
                feeder.join()
            out = capsys.readouterr().out
            assert "largest today: 9.00k short" in out and "11.50k" in out, out   # 2.50k + 9.00k shorts in the hour
        finally:
            s.close()
