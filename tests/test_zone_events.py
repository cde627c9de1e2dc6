"""StreamZoneEvents, GetConfluence and GetZones' confluence on a real server fed by the replay exchange
with the recorded HYPEUSDT crash of 2025-10-10: the stream is followed across the crash, bar by bar."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import threading
import time
from datetime import datetime, timezone

import grpc
import pytest
from google.protobuf import json_format

from heatsvc import datasets
from heatsvc.config import parse
from heatsvc.model import confluence as conflib
from heatsvc.replay import ReplayExchange
from heatsvc.service import messages
from heatsvc.service.errors import field_violations
from heatsvc.service.views import ZoneOpts
from heatsvc.v1 import heatmap_service_pb2 as pb
from test_service import STEP, Stack

MARKET = "binance:HYPEUSDT"


def ms(*args) -> int:
    return int(datetime(*args, tzinfo=timezone.utc).timestamp() * 1000)


START = ms(2025, 10, 10, 20, 30) + 150_000   # mid-bar, fifty minutes before the crash's low at 21:20


def crash_config(replay):
    """The recorded HYPEUSDT market only, lookbacks 12h and 1d."""
    return parse({"server": {"backend": "cython"},
                  "data": {"lookbacks": ["12h", "1d"], "history_days": 2, "refresh_interval_s": 3600},
                  "exchanges": {"binance": {"symbols": ["HYPEUSDT"], "base_url": replay.base_url("binance"),
                                            "archive_url": replay.archive_url()}}}, env={})


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    bars = datasets.recorded_bars()
    keep = bars["time_ms"] < ms(2025, 10, 11)
    with ReplayExchange(datasets={MARKET: {k: v[keep] for k, v in bars.items()}}, start_ms=START) as replay:
        s = Stack(replay, tmp_path_factory.mktemp("store") / "bars.sqlite3", config=crash_config(replay))
        yield s
        s.close()


def views():
    return [pb.View(market=MARKET, lookback="12h", rows=200, columns=96),
            pb.View(market=MARKET, lookback="1d", rows=200, columns=96)]


def follow(stack, request, steps: int) -> list[pb.StreamZoneEventsResponse]:
    """Open the stream, then move the replay clock `steps` bars, refreshing after each; the messages."""
    call = stack.stub.StreamZoneEvents(request, timeout=120)
    got = [next(call)]
    def read():
        try:
            got.extend(call)
        except grpc.RpcError as exc:   # the cancel below ends the stream
            assert exc.code() == grpc.StatusCode.CANCELLED

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    for _ in range(steps):
        stack.step(STEP)
        stack.call(asyncio.sleep(0.3))   # past the topic's debounce: each bar is a data version of its own
    call.cancel()
    reader.join(10)
    return got


def test_events_across_the_crash(stack):
    request = pb.StreamZoneEventsRequest(views=views(), near_pct=1.0)
    msgs = follow(stack, request, steps=12)   # 20:35 ... 21:30: the crash's low at 21:20 included
    snapshot, updates = msgs[0], msgs[1:]
    assert snapshot.kind == pb.UPDATE_KIND_SNAPSHOT and not snapshot.events
    assert [r.view_index for r in snapshot.reports] == [0, 1]
    assert all(r.zones.below for r in snapshot.reports), "long zones stand below the price before the crash"
    assert len(updates) >= 6 and all(m.kind == pb.UPDATE_KIND_ZONES and m.events for m in updates)
    assert [m.sequence for m in updates] == list(range(1, len(updates) + 1))
    events = [e for m in updates for e in m.events]
    swept = [e for e in events if e.kind == pb.ZONE_EVENT_KIND_ZONE_SWEPT]
    assert {e.view_index for e in swept} == {0, 1}, "the crash sweeps long zones of both lookbacks"
    stored = stack.store.load(MARKET)
    for e in swept:   # each swept zone's peak was traded between the previous data version and this one
        assert e.zone.side in (pb.ZONE_SIDE_LONG, pb.ZONE_SIDE_SHORT)
        t = e.data_time.ToMilliseconds()
        window = (stored["time_ms"] <= t) & (stored["time_ms"] >= t - STEP)   # the previous newest bar was forming
        if e.zone.side == pb.ZONE_SIDE_LONG:
            assert stored["low"][window].min() <= e.zone.peak_price
        else:
            assert stored["high"][window].max() >= e.zone.peak_price
    first_long_sweep = min(e.data_time.ToMilliseconds() for e in swept if e.zone.side == pb.ZONE_SIDE_LONG)
    assert ms(2025, 10, 10, 20, 35) <= first_long_sweep <= ms(2025, 10, 10, 21, 20)
    for m in updates:   # grouped by view, each view's in the order of the kinds
        order = [(e.view_index, e.kind) for e in m.events]
        assert order == sorted(order)
        assert all(e.market == MARKET and e.lookback in ("12h", "1d") and e.price > 0 for e in m.events)
    near = [e for e in events if e.kind == pb.ZONE_EVENT_KIND_PRICE_NEAR]
    assert all(0 <= e.distance_pct <= 1.0 for e in near)


def test_kinds_filter_and_bad_requests(stack):
    request = pb.StreamZoneEventsRequest(views=views()[:1], kinds=[pb.ZONE_EVENT_KIND_SKEW_FLIPPED,
                                                                   pb.ZONE_EVENT_KIND_MAGNET_CHANGED])
    msgs = follow(stack, request, steps=3)
    assert all(e.kind in request.kinds for m in msgs[1:] for e in m.events)
    for bad, field in ((pb.StreamZoneEventsRequest(views=views(), near_pct=0), "near_pct"),
                       (pb.StreamZoneEventsRequest(views=views(), kinds=[99]), "kinds"),
                       (pb.StreamZoneEventsRequest(), "views")):
        with pytest.raises(grpc.RpcError) as info:
            next(stack.stub.StreamZoneEvents(bad, timeout=10))
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert field in dict(field_violations(info.value))


def test_confluence_matches_the_model_on_the_served_views(stack):
    resp = stack.stub.GetConfluence(pb.GetConfluenceRequest(market=MARKET, rows=200, columns=96,
                                                            zone_options=pb.ZoneOptions(threshold=0.05, top=10)),
                                    timeout=30)
    reports = {}
    for lb in ("12h", "1d"):
        hm = stack.call(stack.service.heatmap(stack.service.catalogue.view(
            pb.View(market=MARKET, lookback=lb, rows=200, columns=96))))
        reports[lb] = messages.read_zones(hm, resp.price, ZoneOpts(0.05, 10))
    want = conflib.confluence(reports)
    assert [(v.price_low, v.price_high, tuple(v.lookbacks), v.score) for v in resp.levels] == \
        [(v.price_low, v.price_high, v.lookbacks, v.score) for v in want]
    assert all(v.score >= 2 for v in resp.levels)
    zones = stack.stub.GetZones(pb.GetZonesRequest(view=views()[0], zone_options=pb.ZoneOptions(threshold=0.05, top=10),
                                                   confluence_lookbacks=["all"]), timeout=30)
    assert [(v.price_low, v.score) for v in zones.confluence] == [(v.price_low, v.score) for v in resp.levels]
    with pytest.raises(grpc.RpcError) as info:
        stack.stub.GetConfluence(pb.GetConfluenceRequest(market=MARKET, lookbacks=["1d"]), timeout=10)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "lookbacks" in dict(field_violations(info.value))


class HookReceiver:
    """A real HTTP endpoint on 127.0.0.1 that checks each body's signature, answering 503 to the first
    `failures` POSTs (an endpoint that fails, then recovers)."""

    def __init__(self, secret: bytes, failures: int):
        import http.server
        receiver = self
        self.secret, self.failures, self.bodies, self.bad_signatures, self.attempts = secret, failures, [], 0, 0

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts += 1
                if receiver.attempts <= receiver.failures:
                    self.send_response(503)
                else:
                    want = "sha256=" + hmac.new(receiver.secret, body, hashlib.sha256).hexdigest()
                    if hmac.compare_digest(want, self.headers.get("X-Heatsvc-Signature", "")):
                        receiver.bodies.append(json.loads(body))
                        self.send_response(204)
                    else:
                        receiver.bad_signatures += 1
                        self.send_response(401)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def delivered(result: str) -> float:
    from prometheus_client import REGISTRY
    return REGISTRY.get_sample_value("heatsvc_webhook_deliveries_total",
                                     {"webhook": "webhooks[0]", "result": result}) or 0.0


def test_webhook_delivers_signed_events_and_recovers_from_a_failing_endpoint(tmp_path):
    secret = b"0123456789abcdef-test-secret"
    receiver = HookReceiver(secret, failures=2)
    bars = datasets.recorded_bars()
    keep = bars["time_ms"] < ms(2025, 10, 11)
    ok_before = delivered("ok")
    with ReplayExchange(datasets={MARKET: {k: v[keep] for k, v in bars.items()}}, start_ms=START) as replay:
        data = {"server": {"backend": "cython"},
                "data": {"lookbacks": ["12h", "1d"], "history_days": 2, "refresh_interval_s": 3600},
                "exchanges": {"binance": {"symbols": ["HYPEUSDT"], "base_url": replay.base_url("binance"),
                                          "archive_url": replay.archive_url()}},
                "webhooks": [{"url": receiver.url, "secret_env": "HOOK_SECRET", "markets": [MARKET],
                              "lookbacks": ["12h"], "retries": 4, "backoff_s": 0.05}]}
        stack = Stack(replay, tmp_path / "bars.sqlite3", config=parse(data, env={"HOOK_SECRET": secret.decode()}))
        try:
            deadline = time.monotonic() + 20   # the sink's topic starts once the data is loaded
            while ("webhook", "webhooks[0]") not in stack.service.topics and time.monotonic() < deadline:
                time.sleep(0.05)
            msgs = follow(stack, pb.StreamZoneEventsRequest(views=[pb.View(market=MARKET, lookback="12h")]), steps=8)
            want = [[(e["kind"], e["zone"]["peak_price"] if "zone" in e else None) for e in m["events"]]
                    for m in (json_format.MessageToDict(m, preserving_proto_field_name=True) for m in msgs[1:])]
            deadline = time.monotonic() + 10
            while len(receiver.bodies) < len(want) and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            stack.close()
            receiver.close()
    got = [[(e["kind"], e["zone"]["peak_price"] if "zone" in e else None) for e in b["events"]]
           for b in receiver.bodies]
    assert len(want) >= 4 and got == want, "the webhook tells what the stream tells, in order"
    assert receiver.attempts == len(want) + 2 and receiver.bad_signatures == 0
    assert all(b["events"][0]["market"] == MARKET and "sequence" in b for b in receiver.bodies)
    assert delivered("ok") - ok_before == len(want)


def test_webhook_configuration_is_checked(tmp_path):
    base = {"exchanges": {"binance": {"symbols": ["HYPEUSDT"]}}}
    hook = {"url": "http://127.0.0.1:9/x", "secret_env": "S", "markets": [MARKET], "lookbacks": ["1d"]}
    env = {"S": "x" * 20}
    assert parse({**base, "webhooks": [hook]}, env=env).webhooks[0].secret == b"x" * 20
    for change, message in (({"secret": "inline"}, "does not belong"), ({"url": "ftp://x"}, "http"),
                            ({"kinds": ["ZONE_GONE"]}, "kinds"), ({"secret_env": "MISSING"}, "not set"),
                            ({"markets": []}, "markets"), ({"near_pct": 0}, "near_pct")):
        with pytest.raises(ValueError, match=message):
            parse({**base, "webhooks": [{**hook, **change}]}, env=env)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        parse({**base, "webhooks": [hook]}, env={"S": "short"})


def test_alerts_and_confluence_commands(stack, capsys):
    from heatsvc import cli
    lines = []
    done = threading.Event()

    def run_alerts():
        lines.append(cli.main(["alerts", "--target", stack.target, "--market", MARKET, "--lookback", "12h",
                               "--rows", "200", "--columns", "96", "--count", "2"]))
        done.set()

    threading.Thread(target=run_alerts, daemon=True).start()
    time.sleep(1.0)   # the stream is open (its first message is the snapshot)
    for _ in range(24):   # until one message of events has come after the snapshot
        if done.is_set():
            break
        stack.step(STEP)
        stack.call(asyncio.sleep(0.3))
    assert done.wait(30) and lines == [0], capsys.readouterr()
    out = capsys.readouterr().out
    assert f"watching {MARKET} 12h" in out
    kinds = {k for k in ("ZONE_NEW", "ZONE_SWEPT", "PRICE_NEAR", "MAGNET_CHANGED", "SKEW_FLIPPED") if k in out}
    assert kinds and f"{MARKET} 12h" in out
    assert cli.main(["alerts", "--target", stack.target, "--market", MARKET, "--kinds", "zone_gone"]) == 2
    assert "not a zone event kind" in capsys.readouterr().err
    assert cli.main(["zones", "--target", stack.target, "--market", MARKET, "--lookback", "12h", "--threshold",
                     "0.05", "--top", "10", "--confluence"]) == 0
    out = capsys.readouterr().out
    assert f"{MARKET} confluence" in out and ("12h, 1d" in out or "no level where" in out)
