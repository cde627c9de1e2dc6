"""Hyperliquid in the service: its configuration, the S3 archive importer (on a constructed file:
no real archive file is available here, see SOURCES.md), the refresher stamping open interest from
samples, and `heatsvc serve --demo` serving hyperliquid:HYPE with open interest and taker share."""
from __future__ import annotations

import asyncio
import math
import shutil
import time

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from demo_process import read_until, running
from fixture_server import FIXTURES
from heatsvc.config import load, parse
from heatsvc.exchanges import make_client
from heatsvc.exchanges.hyperliquid.archive import import_asset_ctxs
from heatsvc.exchanges.hyperliquid.oi import OiSamples
from heatsvc.model.bars import STEP_MS, parse_time
from heatsvc.refresher import Refresher
from heatsvc.replay import ReplayExchange, default_datasets
from heatsvc.store import Store

ARCHIVE = FIXTURES / "hyperliquid" / "asset-ctxs-constructed.csv"


def test_config_hyperliquid_table(tmp_path):
    cfg = parse({"exchanges": {"hyperliquid": {"symbols": ["HYPE", "kPEPE"], "weight_share": 0.5,
                                               "poller_share": 0.25, "asset_ctxs_files": ["/x/*.csv.lz4"]}}}, env={})
    ex = cfg.exchanges[0]
    assert cfg.markets == ["hyperliquid:HYPE", "hyperliquid:kPEPE"], "coin names keep their case"
    assert (ex.weight_share, ex.poller_share, ex.base_url, ex.ws_url) == (
        0.5, 0.25, "https://api.hyperliquid.xyz", "wss://api.hyperliquid.xyz/ws")
    assert ex.asset_ctxs_files == ("/x/*.csv.lz4",)
    assert all(e.name != "hyperliquid" for e in load(None, env={}).exchanges), "not served unless configured"
    for table, words in (({"poller_share": 0.9}, "cannot exceed"), ({"weight_share": 1.5}, "weight_share"),
                         ({"poller_share": 0}, "poller_share")):
        with pytest.raises(ValueError, match=words):
            parse({"exchanges": {"hyperliquid": table}}, env={})
    with pytest.raises(ValueError, match="unknown key"):
        parse({"exchanges": {"okx": {"poller_share": 0.1}}}, env={})


def test_archive_rows_become_samples_that_stamp_bars():
    samples = OiSamples()
    assert import_asset_ctxs(samples, [ARCHIVE], {"HYPE"}) == 3
    t = parse_time("2025-10-10T21:00Z", "t")
    assert samples.latest("HYPE") == (t + 240_000, 5195500.25, 40.96) and samples.latest("BTC") is None
    got = samples.stamp("HYPE", [t - STEP_MS, t, t + STEP_MS])
    assert got[0] == 5193106.01, "the 21:00 row closes the bar opening at 20:55"
    assert got[1] == 5195500.25 and math.isnan(got[2])


@pytest.mark.skipif(shutil.which("lz4") is None, reason="no lz4 command to decompress with")
def test_archive_lz4_file_reads_like_its_csv(tmp_path):
    a, b = OiSamples(), OiSamples()
    import_asset_ctxs(a, [ARCHIVE])
    import_asset_ctxs(b, [ARCHIVE.with_name(ARCHIVE.name + ".lz4")])
    assert a.latest("HYPE") == b.latest("HYPE") and a.latest("BTC") == b.latest("BTC")
    bad = tmp_path / "x.csv"
    bad.write_text("time,coin\n1,HYPE\n")
    with pytest.raises(ValueError, match="open_interest, mark_px"):
        import_asset_ctxs(OiSamples(), [bad])


def test_refresher_stores_hyperliquid_bars_with_sampled_open_interest(tmp_path):
    start = parse_time("2025-10-10T20:00Z", "t")

    async def scenario():
        with ReplayExchange(datasets={"hyperliquid:HYPE": default_datasets(hyperliquid=True)["hyperliquid:HYPE"]},
                            start_ms=start) as rx:
            client = make_client("hyperliquid", rx.base_url("hyperliquid"), now_ms=rx.now_ms, timeout_s=5.0)
            store = Store(str(tmp_path / "s.sqlite3"))
            refresher = Refresher(store, {"hyperliquid": client}, ["hyperliquid:HYPE"], interval_s=3600,
                                  history_days=1, now_ms=rx.now_ms)
            try:
                await refresher.start()
                await refresher.wait_ready(timeout=60)
                for _ in range(6):             # sample every 2 minutes while the clock moves on
                    for _ in range(5):
                        rx.step(60_000)
                        if rx.now_ms() % 120_000 == 0:
                            await client.sample()
                    await refresher.refresh("hyperliquid:HYPE")
                return store.load("hyperliquid:HYPE", 0, 2**62), rx.series("hyperliquid:HYPE")
            finally:
                await refresher.stop()
                await client.aclose()
                store.close()
    bars, s = asyncio.run(scenario())
    assert len(bars["time_ms"]) >= 288
    live = bars["time_ms"] >= start - STEP_MS       # the first sample (check_symbol's, at 20:00) closes 19:55
    oi = bars["open_interest"]
    assert np.isnan(oi[~live]).all(), "bars before the first sample: missing, not zero"
    assert np.isfinite(oi[np.searchsorted(bars["time_ms"], start - STEP_MS)])
    stamped = np.flatnonzero(np.isfinite(oi))
    assert len(stamped) >= 4
    rows = np.searchsorted(s.t, bars["time_ms"][stamped])
    # a sample at minute m of bar b holds the replay's open interest at that moment: between the bar's
    # opening and closing values
    lo = np.minimum(s.oi[rows - 1], s.oi[rows]) - 1e-6
    hi = np.maximum(s.oi[rows - 1], s.oi[rows]) + 1e-6
    assert ((oi[stamped] >= lo) & (oi[stamped] <= hi)).all()


def test_demo_serves_hyperliquid_hype_with_open_interest_and_taker_share(tmp_path):
    store_path = tmp_path / "demo.sqlite3"
    with running(store_path, "--demo-history-days", "0.5", "--metrics-listen", "127.0.0.1:0") as proc:
        lines = read_until(proc, "hyperliquid positions poller on HYPE")
        assert any("(8 markets" in line for line in lines), lines
        port = next(line for line in lines if "serving heatsvc.v1" in line).split(" on ")[1].split()[0]
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            time.sleep(3)
            with Store(str(store_path)) as store:
                bars = store.load("hyperliquid:HYPE", 0, 2**62) if "hyperliquid:HYPE" in store.markets() else None
            if bars is not None and np.isfinite(bars["open_interest"]).sum() >= 5 \
                    and np.isfinite(bars["taker_buy_volume"]).sum() >= 2:
                break
        with grpc.insecure_channel(port) as channel:      # the feeds' state in health
            check = health_pb2_grpc.HealthStub(channel).Check
            states = {name: check(health_pb2.HealthCheckRequest(service=name)).status
                      for name in ("trades:hyperliquid", "positions:hyperliquid", "hyperliquid:HYPE")}
        assert set(states.values()) == {health_pb2.HealthCheckResponse.SERVING}, states
    assert bars is not None and np.isfinite(bars["open_interest"]).sum() >= 5, "open interest from the sampler"
    assert np.isfinite(bars["taker_buy_volume"]).sum() >= 2, "taker share from the trades stream"
    share = bars["taker_buy_volume"] / bars["volume"]
    assert np.nanmin(share) >= 0 and np.nanmax(share) <= 1


def test_discovery_and_delisting_of_hyperliquid_coins(tmp_path):
    from heatsvc.discovery import discover

    hype = default_datasets(hyperliquid=True)["hyperliquid:HYPE"]
    start = parse_time("2025-10-10T20:00Z", "t")

    async def scenario(rx):
        client = make_client("hyperliquid", rx.base_url("hyperliquid"), now_ms=rx.now_ms, timeout_s=5.0)
        try:
            cfg = parse({"exchanges": {"hyperliquid": {"symbols": ["*"], "top": 1,
                                                       "base_url": rx.base_url("hyperliquid")}}}, env={})
            found = await discover(cfg, {"hyperliquid": client})
            store = Store(str(tmp_path / "s.sqlite3"))
            r = Refresher(store, {"hyperliquid": client}, found.markets, interval_s=3600, history_days=0.2,
                          now_ms=rx.now_ms, relist_s=None)
            await r.start()
            await r.wait_ready(timeout=60)
            rx.delist("hyperliquid:HYPE")
            await r.check_listings()
            health = r.health()
            await r.stop()
            store.close()
            return found.markets, health
        finally:
            await client.aclose()

    with ReplayExchange(datasets={"hyperliquid:HYPE": hype, "hyperliquid:PURR": hype}, start_ms=start) as rx:
        markets, health = asyncio.run(scenario(rx))
    # top 1 of the two listed (equal volume: by name), never the delisted MATIC
    assert markets == ["hyperliquid:HYPE"]
    assert health["hyperliquid:HYPE"].status == "failing" and "delisted" in health["hyperliquid:HYPE"].last_error
