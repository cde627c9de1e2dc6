"""Prometheus metrics against real parts: exchange clients and the refresher on the replay exchange
(with injected faults), the gRPC server with real clients, a real HTTP scrape of the endpoint, and
`heatsvc serve` processes. prometheus-client's registry is process-wide, so every check compares a
value after an action with the value before it."""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import grpc
import httpx
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from heatsvc import cli, metrics
from heatsvc.config import parse
from heatsvc.datasets import synthetic_bars
from heatsvc.exchanges import make_client
from heatsvc.exchanges.base import ExchangeError, ExchangeUnavailable
from heatsvc.refresher import Refresher
from heatsvc.replay import Faults, ReplayExchange
from heatsvc.store import Store
from heatsvc.v1 import heatmap_service_pb2 as pb
from test_service import END, START, Stack, small_datasets, stall_one_of_two, view

DAY = 86_400_000
HEATSVC_FAMILIES = {"heatsvc_refresh_lag_seconds", "heatsvc_fetch_errors", "heatsvc_rejected_rows",
                    "heatsvc_active_streams", "heatsvc_coalesced_updates", "heatsvc_view_compute_seconds",
                    "heatsvc_asyncio_tasks", "heatsvc_refreshes", "heatsvc_market_status"}


def sample(name: str, **labels) -> float | None:
    """A sample's current value in the process-wide registry (None if the series does not exist)."""
    return REGISTRY.get_sample_value(name, labels)


def value(name: str, **labels) -> float:
    return sample(name, **labels) or 0.0


def wait_for(predicate, what: str, timeout: float = 20.0) -> None:
    """Poll until predicate() holds (a bound on waiting for the server, not a speed check)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        time.sleep(0.02)


# ---- exchange clients: failed attempts by kind ---------------------------------------------------

FAULTS = [  # exchange, fault knobs, the kind it must count, attempts counted (3 = every retry)
    ("binance", {"rate_429": 1.0}, "rate_limited", 3),
    ("bybit", {"rate_429": 1.0}, "rate_limited", 3),
    ("okx", {"rate_429": 1.0}, "rate_limited", 3),
    ("binance", {"rate_5xx": 1.0}, "server_error", 3),
    ("okx", {"rate_5xx": 1.0}, "server_error", 3),
    ("binance", {"malformed_rate": 1.0}, "malformed", 3),
    ("bybit", {"malformed_rate": 1.0}, "malformed", 3),
    ("bybit", {"truncated_rate": 1.0}, "truncated", 3),
    ("binance", {"timeout_rate": 1.0, "timeout_s": 1.0}, "timeout", 3),
    ("binance", {"rate_418": 1.0}, "banned", 1),
    ("bybit", {"rate_418": 1.0}, "banned", 1),
]


@pytest.fixture(scope="module")
def exchange_replay():
    data = {f"{ex}:BTCUSDT": synthetic_bars("BTCUSDT", ex, days=1, end_ms=END) for ex in ("binance", "bybit", "okx")}
    with ReplayExchange(datasets=data, start_ms=END - DAY // 2) as rx:
        yield rx


def fast_client(exchange: str, base_url: str):
    return make_client(exchange, base_url, timeout_s=0.3, max_retries=2, backoff_s=0.001, backoff_cap_s=0.01,
                       max_wait_s=0.01, seed=1)


def fetch_errors(exchange: str) -> dict[str, float]:
    return {kind: value("heatsvc_fetch_errors_total", exchange=exchange, kind=kind)
            for kind in metrics.FETCH_ERROR_KINDS}


@pytest.mark.parametrize("exchange, knobs, kind, attempts", FAULTS)
def test_failed_attempts_are_counted_by_kind(exchange_replay, exchange, knobs, kind, attempts):
    async def attempt():
        client = fast_client(exchange, exchange_replay.base_url(exchange))
        try:
            with pytest.raises(ExchangeUnavailable):
                await client.fetch_live("BTCUSDT")
        finally:
            await client.aclose()

    before = fetch_errors(exchange)
    exchange_replay.faults = Faults(**knobs, retry_after_s=0, ban_s=0.2, exchanges=(exchange,))
    try:
        asyncio.run(attempt())
    finally:
        exchange_replay.faults = Faults()
        exchange_replay.reset_counters()      # also lifts the injected ban
    after = fetch_errors(exchange)
    assert after[kind] - before[kind] == attempts
    assert {k: after[k] - before[k] for k in after if k != kind} == {k: 0 for k in after if k != kind}


def test_refusals_and_dead_hosts_are_counted(exchange_replay):
    async def attempts():
        client = fast_client("binance", exchange_replay.base_url("binance"))
        with pytest.raises(ExchangeError):
            await client.fetch_live("NOPEUSDT")     # the exchange refuses an unknown symbol: not retried
        await client.aclose()
        with socket.socket() as s:                  # a port nobody listens on
            s.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{s.getsockname()[1]}"
        client = fast_client("okx", dead)
        with pytest.raises(ExchangeUnavailable):
            await client.fetch_live("BTCUSDT")
        await client.aclose()

    before = {ex: fetch_errors(ex) for ex in ("binance", "okx")}
    asyncio.run(attempts())
    after = {ex: fetch_errors(ex) for ex in ("binance", "okx")}
    assert after["binance"]["refused"] - before["binance"]["refused"] == 1
    assert after["okx"]["connection"] - before["okx"]["connection"] == 3
    assert sum(after["okx"].values()) - sum(before["okx"].values()) == 3


# ---- the refresher: rejected rows, lag, status, refreshes ---------------------------------------

def test_refresher_publishes_rejected_rows_lag_status_and_refreshes(tmp_path):
    eth = "binance:ETHUSDT"
    nope = "binance:NOPEUSDT"
    bad = synthetic_bars("ETHUSDT", "binance", days=2, end_ms=END)
    bad["low"][300] = bad["high"][300] * 2                         # an invalid row the client must drop
    now = END - DAY // 2 + 150_000

    async def main():
        with ReplayExchange(datasets={eth: bad}, start_ms=now) as rx:
            client = make_client("binance", rx.base_url("binance"), archive_url=rx.archive_url(), now_ms=rx.now_ms)
            store = Store(tmp_path / "s.sqlite3")
            r = Refresher(store, {"binance": client}, [eth, nope], interval_s=3600, history_days=1, now_ms=rx.now_ms)
            await r.start()
            await r.wait_ready(eth, timeout=60)
            while r.health()[nope].consecutive_failures == 0:
                await asyncio.sleep(0.02)
            first = r.health()
            lag_first = sample("heatsvc_refresh_lag_seconds", market=eth)
            rejected_first = value("heatsvc_rejected_rows_total", market=eth)
            rx.step(10 * 60_000)                                    # two bars close; nothing fetched yet
            lag_later = r.health()[eth].lag_s, sample("heatsvc_refresh_lag_seconds", market=eth)
            ok_before = value("heatsvc_refreshes_total", market=eth, result="ok")
            await r.refresh(eth)
            ok_after = value("heatsvc_refreshes_total", market=eth, result="ok")
            rejected_last = r.health()[eth].rejected_rows   # the refresh fetched the gap (and its bad row) again
            await r.stop()
            store.close()
            await client.aclose()
            return first, lag_first, lag_later, ok_after - ok_before, (rejected_first, rejected_last)

    rejected = value("heatsvc_rejected_rows_total", market=eth)
    loads = value("heatsvc_refreshes_total", market=eth, result="ok")
    failures = value("heatsvc_refreshes_total", market=nope, result="failed")
    health, lag_first, (lag_s, lag_gauge), refreshed, (rejected_first, rejected_last) = asyncio.run(main())
    h, n = health[eth], health[nope]
    assert h.rejected_rows > 0
    assert rejected_first - rejected == h.rejected_rows
    # the refresh fetched the gap (and its bad row) again: a row already rejected is not counted again
    assert value("heatsvc_rejected_rows_total", market=eth) - rejected == rejected_last == h.rejected_rows
    assert lag_first == pytest.approx(h.lag_s)
    assert lag_gauge == pytest.approx(lag_s) and lag_gauge > lag_first    # the clock moved, the data did not
    assert sample("heatsvc_refresh_lag_seconds", market=nope) is None       # no bars, no lag
    for market, status in ((eth, h.status), (nope, n.status)):
        states = {s: sample("heatsvc_market_status", market=market, heatsvc_market_status=s)
                  for s in metrics.MARKET_STATUSES}
        assert states == {s: float(s == status) for s in metrics.MARKET_STATUSES}
    assert n.status == "failing"
    assert value("heatsvc_refreshes_total", market=eth, result="ok") - loads == 2   # the first load, one refresh
    assert refreshed == 1
    assert value("heatsvc_refreshes_total", market=nope, result="failed") - failures == n.consecutive_failures >= 1


# ---- the gRPC server ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as rx:
        s = Stack(rx, tmp_path_factory.mktemp("metrics") / "bars.sqlite3", queue_depth=2)
        yield s
        s.close()


def compute_count(market: str, lookback: str) -> float:
    return value("heatsvc_view_compute_seconds_count", market=market, lookback=lookback)


def test_view_compute_time_is_observed_once_per_computed_view(stack):
    req = pb.GetHeatmapRequest(view=view("binance:ETHUSDT", "12h", rows=61, columns=17))
    before, computations = compute_count("binance:ETHUSDT", "12h"), stack.service.computations
    total = value("heatsvc_view_compute_seconds_sum", market="binance:ETHUSDT", lookback="12h")
    stack.stub.GetHeatmap(req, timeout=30)
    stack.stub.GetHeatmap(req, timeout=30)               # cached: not computed again
    assert compute_count("binance:ETHUSDT", "12h") - before == stack.service.computations - computations == 1
    assert value("heatsvc_view_compute_seconds_sum", market="binance:ETHUSDT", lookback="12h") > total
    stack.step()                                         # a new bar: the view is computed again
    stack.stub.GetHeatmap(req, timeout=30)
    assert compute_count("binance:ETHUSDT", "12h") - before == 2
    agg = compute_count("all:BTCUSDT", "1d")
    stack.stub.GetZones(pb.GetZonesRequest(view=view("all:BTCUSDT", "1d", rows=40, columns=11)), timeout=30)
    assert compute_count("all:BTCUSDT", "1d") - agg == 1


def test_active_streams_go_up_then_back_down(stack):
    heatmaps, zones = (value("heatsvc_active_streams", method=m) for m in ("StreamHeatmap", "StreamZones"))
    a = stack.stub.StreamHeatmap(pb.StreamHeatmapRequest(view=view(lookback="12h"), zones_only=True), timeout=60)
    b = stack.stub.StreamHeatmap(pb.StreamHeatmapRequest(view=view(lookback="12h"), zones_only=True), timeout=60)
    c = stack.stub.StreamZones(pb.StreamZonesRequest(views=[view()]), timeout=60)
    for call in (a, b, c):
        next(call)
    assert value("heatsvc_active_streams", method="StreamHeatmap") - heatmaps == 2
    assert value("heatsvc_active_streams", method="StreamZones") - zones == 1
    a.cancel()
    wait_for(lambda: value("heatsvc_active_streams", method="StreamHeatmap") - heatmaps == 1, "a stream to end")
    b.cancel()
    c.cancel()
    wait_for(lambda: (value("heatsvc_active_streams", method="StreamHeatmap"),
                      value("heatsvc_active_streams", method="StreamZones")) == (heatmaps, zones), "streams to end")
    # a refused stream never counts
    err = pytest.raises(grpc.RpcError, lambda: next(stack.stub.StreamHeatmap(
        pb.StreamHeatmapRequest(view=view(lookback="2d")), timeout=10)))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert value("heatsvc_active_streams", method="StreamHeatmap") == heatmaps


def test_updates_a_stalled_reader_skips_are_counted(stack):
    before = value("heatsvc_coalesced_updates_total")
    _, _, got = stall_one_of_two(stack, rows=1500, updates=6)
    skipped = sum(m.skipped_updates for m in got)
    assert skipped > 0
    assert value("heatsvc_coalesced_updates_total") - before == skipped


def test_asyncio_task_gauge_follows_the_server_loop(stack):
    async def tasks():
        return len(asyncio.all_tasks()) - 1     # not counting this probe's own task
    wait_for(lambda: sample("heatsvc_asyncio_tasks") is not None, "the first health poll")
    base = stack.call(tasks())
    calls = [stack.stub.StreamHeatmap(pb.StreamHeatmapRequest(view=view(lookback="12h"), zones_only=True),
                                      timeout=60) for _ in range(5)]
    for call in calls:
        next(call)
    now = stack.call(tasks())
    assert now >= base + 5                                  # each open stream is a task on the loop
    wait_for(lambda: value("heatsvc_asyncio_tasks") >= base + 5, "the gauge to see the stream tasks")
    for call in calls:
        call.cancel()
    wait_for(lambda: value("heatsvc_asyncio_tasks") <= base, "the gauge to see them end")


def test_labels_come_from_the_configuration_not_from_requests(stack):
    for v in (view("binance:ASKEDUSDT"), view("kraken:BTCUSDT"), view(lookback="2d"), view(lookback="1Y")):
        with pytest.raises(grpc.RpcError):
            stack.stub.GetZones(pb.GetZonesRequest(view=v), timeout=10)
        with pytest.raises(grpc.RpcError):
            next(stack.stub.StreamHeatmap(pb.StreamHeatmapRequest(view=v), timeout=10))
    stack.stub.GetZones(pb.GetZonesRequest(view=view("all:ETHUSDT", "12h")), timeout=30)
    served = set(stack.config.markets) | {"all:BTCUSDT", "all:ETHUSDT"}
    families = {f.name: f for f in REGISTRY.collect() if f.name.startswith("heatsvc_")}
    views = {(s.labels["market"], s.labels["lookback"]) for s in families["heatsvc_view_compute_seconds"].samples}
    assert ("all:ETHUSDT", "12h") in views
    assert not {lb for _, lb in views} & {"2d", "1Y"}
    for family in families.values():
        for s in family.samples:
            for label, text in s.labels.items():
                assert "ASKED" not in text and "kraken" not in text, (s.name, label, text)
    lags = {s.labels["market"] for s in families["heatsvc_refresh_lag_seconds"].samples}
    assert served - {"all:BTCUSDT", "all:ETHUSDT"} <= lags


def test_scrape_over_http(stack):
    stack.stub.GetHeatmap(pb.GetHeatmapRequest(view=view("bybit:BTCUSDT", "1d", rows=33, columns=9)), timeout=30)
    endpoint = metrics.start("127.0.0.1", 0)
    try:
        assert endpoint.port > 0 and endpoint.url == f"http://127.0.0.1:{endpoint.port}/metrics"
        resp = httpx.get(endpoint.url, timeout=10)
    finally:
        endpoint.stop()
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(resp.text)}
    assert HEATSVC_FAMILIES <= set(families)
    assert {"process_resident_memory_bytes", "process_cpu_seconds"} <= set(families)   # (the parser drops _total)
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    lags = {s.labels["market"]: s.value for s in families["heatsvc_refresh_lag_seconds"].samples}
    assert all(lags[m] >= 0 for m in stack.config.markets)
    counts = {(s.labels["market"], s.labels["lookback"]): s.value
              for s in families["heatsvc_view_compute_seconds"].samples if s.name.endswith("_count")}
    assert counts[("bybit:BTCUSDT", "1d")] >= 1
    kinds = {s.labels["kind"] for s in families["heatsvc_fetch_errors"].samples
             if s.labels.get("exchange") == "bybit" and s.name.endswith("_total")}
    assert kinds == set(metrics.FETCH_ERROR_KINDS)       # every kind exists from the start, at 0 if nothing failed
    with pytest.raises(httpx.ConnectError):               # stopped: the port is closed
        httpx.get(endpoint.url, timeout=5)


# ---- configuration -------------------------------------------------------------------------------

def test_metrics_listen_from_file_env_and_cli(capsys):
    assert parse({}, env={}).metrics_listen is None                                  # off by default
    cfg = parse({"server": {"metrics_listen": "127.0.0.1:9464"}}, env={})
    assert cfg.metrics_listen == "127.0.0.1:9464"
    assert parse({"server": {"metrics_listen": "127.0.0.1:9464"}},
                 env={"HEATSVC_METRICS_LISTEN": "[::1]:0"}).metrics_listen == "[::1]:0"
    assert parse({"server": {"metrics_listen": "127.0.0.1:9464"}}, env={"HEATSVC_METRICS_LISTEN": ""}).metrics_listen \
        is None
    for data, env, words in (({"server": {"metrics_listen": "9464"}}, {}, "server.metrics_listen"),
                             ({"server": {"metrics_listen": 9464}}, {}, "server.metrics_listen"),
                             ({"server": {"metrics_listen": "localhost:http"}}, {}, "server.metrics_listen"),
                             ({}, {"HEATSVC_METRICS_LISTEN": "127.0.0.1:70000"}, "HEATSVC_METRICS_LISTEN")):
        with pytest.raises(ValueError, match=words):
            parse(data, env=env)
    assert cli.main(["serve", "--metrics-listen", "nowhere"]) == 2
    assert "--metrics-listen = 'nowhere' is invalid" in capsys.readouterr().err


def test_a_taken_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ValueError, match=f"metrics_listen: cannot listen on 127.0.0.1:{port}"):
            metrics.start("127.0.0.1", port)


# ---- `heatsvc serve` processes -------------------------------------------------------------------

def serve(tmp_path, *extra):
    return subprocess.Popen(
        [sys.executable, "-m", "heatsvc.cli", "serve", "--demo", "--listen", "127.0.0.1:0", "--quiet",
         "--demo-history-days", "0.5", "--store", str(tmp_path / "demo.sqlite3"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def line_with(proc, words: str) -> str:
    while True:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        if words in line:
            return line.strip()


def stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.stderr.read()


def test_serve_prints_and_serves_its_metrics_endpoint(tmp_path):
    proc = serve(tmp_path, "--metrics-listen", "127.0.0.1:0")
    try:
        url = line_with(proc, "Prometheus metrics at").rsplit(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:") and url.endswith("/metrics")
        names = set()
        deadline = time.monotonic() + 60
        while "heatsvc_refresh_lag_seconds" not in names:     # the markets' lag appears once data is loaded
            assert time.monotonic() < deadline, names
            time.sleep(0.1)
            names = {f.name for f in text_string_to_metric_families(httpx.get(url, timeout=10).text)
                     if f.samples}
        assert {"heatsvc_asyncio_tasks", "heatsvc_market_status", "process_resident_memory_bytes"} <= names
        stop(proc)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url, timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_goes_on_without_metrics_when_its_port_is_taken(tmp_path):
    from heatsvc.service import DEMO_METRICS

    host, port = DEMO_METRICS.rsplit(":", 1)
    with contextlib.ExitStack() as holding:
        s = holding.enter_context(socket.socket())
        with contextlib.suppress(OSError):      # already taken by someone else: the same situation
            s.bind((host, int(port)))
            s.listen()
        proc = serve(tmp_path)
        try:
            assert "heatsvc.v1 on 127.0.0.1:" in line_with(proc, "serving heatsvc.v1")
            note = line_with(proc, "metrics")
            assert "no metrics for the demo" in note and DEMO_METRICS in note and "--metrics-listen" in note
            assert proc.poll() is None                  # still serving
            stop(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_with_tokens_a_scrape_needs_one_of_them():
    from heatsvc.config import with_overrides
    from heatsvc.service import start_metrics
    config = with_overrides(parse({}, env={}), metrics_listen="127.0.0.1:0", auth_token="scrape-token-1")
    endpoint = start_metrics(config, demo=False)
    try:
        assert httpx.get(endpoint.url, timeout=10).status_code == 401
        wrong = httpx.get(endpoint.url, headers={"Authorization": "Bearer scrape-token-2"}, timeout=10)
        assert wrong.status_code == 401 and "bearer token" in wrong.text and "scrape-token" not in wrong.text
        ok = httpx.get(endpoint.url, headers={"Authorization": "Bearer scrape-token-1"}, timeout=10)
        assert ok.status_code == 200 and "heatsvc_asyncio_tasks" in ok.text
    finally:
        endpoint.stop()
    open_endpoint = start_metrics(with_overrides(config, auth_token=None), demo=False)
    try:
        assert httpx.get(open_endpoint.url, timeout=10).status_code == 200   # no tokens: no token asked
    finally:
        open_endpoint.stop()
