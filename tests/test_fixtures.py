"""The exchange clients on bodies the exchanges really sent (tests/fixtures/, sources in
tests/fixtures/SOURCES.md), served from a loopback HTTP server: Bybit's one-sided open interest,
bans and throttles of all three exchanges, the Binance metrics archive across its label change of
2026-06-25, OKX contract sizes and Binance contract types. Every number asserted is the one the
body states."""
from __future__ import annotations

import asyncio
import json
import time

import numpy as np
import pytest

from fixture_server import FAST, Answer, fixture, server, with_client  # noqa: F401 (server: a fixture)
from heatsvc.exchanges import ExchangeError, ExchangeUnavailable, make_client
from heatsvc.exchanges.binance import ARCHIVE_PATH, BAN_UNTIL
from heatsvc.exchanges.bybit import one_side, page
from heatsvc.model.bars import STEP_MS, parse_time
from heatsvc.refresher import OI_CONVENTION, Refresher
from heatsvc.store import Store
from prometheus_client import REGISTRY

KLINES = "/fapi/v1/klines"


def run(coro):
    return asyncio.run(coro)


def ms(text: str) -> int:
    return parse_time(text, "test")


def counted(exchange: str, kind: str) -> float:
    return REGISTRY.get_sample_value("heatsvc_fetch_errors_total", {"exchange": exchange, "kind": kind}) or 0.0


# ---- Bybit: one side of the open interest ----------------------------------------------------

EMPTY_PAGE = json.dumps({"retCode": 0, "retMsg": "OK", "result": {"symbol": "BTCUSD", "category": "inverse",
                         "list": [], "nextPageCursor": ""}, "retExtInfo": {}, "time": 1780994051392}).encode()


def test_bybit_single_open_interest_is_the_one_side_served(server):
    server.route("/v5/market/open-interest", Answer(200, fixture("bybit/open-interest.json")),
                 Answer(200, EMPTY_PAGE))
    first, last = 1780617600000, 1780963200000        # the body's oldest and newest timestamps
    ts, vs = run(with_client("bybit", server.url, lambda c: c.paged(
        "BTCUSD", "/v5/market/open-interest", {"intervalTime": "5min"}, last - STEP_MS, last, 200, one_side)))
    # singleOpenInterest, not openInterest (63910691, "the sum of both sides"), each at the end of its bar
    assert vs == [31955346.0, 31955346.0, 31955346.0, 31971156.0, 31971156.0]
    assert ts == [t - STEP_MS for t in (1780963200000, 1780876800000, 1780790400000, 1780704000000, first)]
    assert server.count("/v5/market/open-interest") == 2          # followed nextPageCursor to the empty page
    assert server.seen[1].params["cursor"] == "lastid%3D19408935%26lasttime%3D1780617600"


def test_bybit_answer_without_single_open_interest_gives_half_the_documented_sum(server):
    server.route("/v5/market/open-interest", Answer(200, fixture("bybit/open-interest-before-2026-06.json")))
    ts, vs = run(with_client("bybit", server.url, lambda c: c.paged(
        "BTCUSD", "/v5/market/open-interest", {"intervalTime": "5min"}, 1669571100000 - STEP_MS,
        1669571100000, 200, one_side)))
    assert vs == [461134384.0 / 2, 461134292.0 / 2]
    assert ts == [1669571400000 - STEP_MS, 1669571100000 - STEP_MS]


def test_bybit_ticker_open_interest_is_one_side(server):
    body = json.loads(fixture("bybit/open-interest.json"))["result"]["list"][0]
    assert page({"list": [body], "nextPageCursor": ""}) == ([body], "")
    assert one_side(body) == 31955346.0 and one_side({"openInterest": body["openInterest"]}) == 63910691.0 / 2


def test_stored_two_sided_bybit_open_interest_is_halved_once(tmp_path):
    store = Store(tmp_path / "s.sqlite3")
    t = np.arange(3, dtype=np.int64) * STEP_MS + 1_700_000_100_000 // STEP_MS * STEP_MS
    bars = {"time_ms": t, "open": np.ones(3), "high": np.ones(3), "low": np.ones(3), "close": np.ones(3),
            "volume": np.ones(3), "open_interest": np.array([100.0, np.nan, 300.0])}
    store.upsert("bybit:BTCUSDT", bars)
    store.upsert("binance:BTCUSDT", bars)
    clients = {e: make_client(e, "http://127.0.0.1:9") for e in ("bybit", "binance")}
    r = Refresher(store, clients, ["bybit:BTCUSDT", "binance:BTCUSDT"])
    for _ in range(2):                                   # the second start changes nothing
        for m in r._markets.values():
            r._migrate(m)
    np.testing.assert_array_equal(store.load("bybit:BTCUSDT")["open_interest"], [50.0, np.nan, 150.0])
    np.testing.assert_array_equal(store.load("binance:BTCUSDT")["open_interest"], [100.0, np.nan, 300.0])
    assert store.mark("bybit:BTCUSDT", OI_CONVENTION) == 2
    for c in clients.values():
        run(c.aclose())
    store.close()


# ---- bans and throttles ----------------------------------------------------------------------

def test_bybit_403_is_a_ban_of_ten_minutes_at_least_and_nothing_is_sent(server):
    server.route("/v5/market/time", Answer(403, fixture("bybit/403-access-too-frequent.txt"),
                                           content_type="text/plain"))

    async def work(c):
        with pytest.raises(ExchangeUnavailable, match="HTTP 403"):
            await c.request("/v5/market/time")
        left = c.banned_until - time.monotonic()
        assert 599 <= left <= 600 and c.degraded and "banned" in c.hold_state()
        assert REGISTRY.get_sample_value("heatsvc_exchange_held_until_seconds", {"exchange": "bybit"}) \
            >= time.time() + 598
        with pytest.raises(ExchangeUnavailable, match="banned"):
            await c.request("/v5/market/time")
        assert server.count("/v5/market/time") == 1          # nothing sent during the ban
    run(with_client("bybit", server.url, work))


def test_a_ban_ends_by_itself_and_other_exchanges_keep_running(server):
    server.route("/v5/market/open-interest", Answer(403, fixture("bybit/403-access-too-frequent.txt")),
                 Answer(200, fixture("bybit/open-interest-before-2026-06.json")))
    server.route("/api/v5/public/instruments", Answer(200, fixture("okx/instruments-btc-usdt-swap.json")))

    async def work():
        bybit = make_client("bybit", server.url, ban_floor_s=0.3, ban_probe_s=0.3, **FAST)
        okx = make_client("okx", server.url, **FAST)
        try:
            with pytest.raises(ExchangeUnavailable):
                await bybit.request("/v5/market/open-interest")
            await okx.check_symbol("BTCUSDT")                  # OKX is not held by Bybit's ban
            assert not okx.degraded and bybit.degraded
            await asyncio.sleep(0.35)
            rows, cursor = await bybit.request("/v5/market/open-interest", parse=page)
            assert [r["openInterest"] for r in rows] == ["461134384.00000000", "461134292.00000000"]
            assert not bybit.degraded and bybit.hold_state() is None
        finally:
            await bybit.aclose()
            await okx.aclose()
    run(work())


def test_binance_429_retry_after_holds_the_host_then_klines_parse(server):
    server.route(KLINES, Answer(429, fixture("binance/429-too-many-requests.json"), {"Retry-After": "1"}),
                 Answer(200, fixture("binance/klines.json")))
    before = counted("binance", "rate_limited")
    cols = {f: [] for f in ("time_ms", "open", "high", "low", "close", "volume", "quote_volume", "taker_buy_volume")}
    run(with_client("binance", server.url, lambda c: c.request(
        KLINES, {"symbol": "BTCUSDT"}, parse=lambda rows: c.parse_klines("BTCUSDT", rows, cols)), max_wait_s=5))
    first, second = server.times(KLINES)
    assert second - first >= 1.0                               # never less than Retry-After
    assert counted("binance", "rate_limited") - before == 1
    assert cols == {"time_ms": [1499040000000], "open": [0.0163479], "high": [0.8], "low": [0.015758],
                    "close": [0.015771], "volume": [148976.11427815], "quote_volume": [2434.19055334],
                    "taker_buy_volume": [1756.87402397]}


def test_binance_retry_after_longer_than_we_wait_holds_the_host_without_sending(server):
    server.route(KLINES, Answer(429, fixture("binance/429-too-many-requests.json"), {"Retry-After": "120"}))

    async def work(c):
        with pytest.raises(ExchangeUnavailable, match="held"):
            await c.request(KLINES)
        assert 119 <= c.banned_until - time.monotonic() <= 120 and "rate limited" in c.hold_state()
        with pytest.raises(ExchangeUnavailable, match="held"):
            await c.request(KLINES)
        assert server.count(KLINES) == 1
    run(with_client("binance", server.url, work, max_wait_s=1.0))


def test_binance_418_states_its_ban(server):
    body = fixture("binance/418-banned.json")
    assert BAN_UNTIL.search(body.decode()).group(1) == "1659761931230"   # the ban's end, in ms
    server.route(KLINES, Answer(418, body, {"Retry-After": "3"}))

    async def work(c):
        with pytest.raises(ExchangeUnavailable, match="HTTP 418"):
            await c.request(KLINES)
        assert 2.9 <= c.banned_until - time.monotonic() <= 3.0    # its stated end passed long ago: Retry-After
        with pytest.raises(ExchangeUnavailable, match="banned"):
            await c.request(KLINES)
        assert server.count(KLINES) == 1
    run(with_client("binance", server.url, work))


def test_binance_418_message_time_wins_over_a_shorter_retry_after(server):
    until = int((time.time() + 5) * 1000)
    body = fixture("binance/418-banned.json").replace(b"1659761931230", str(until).encode())   # constructed
    server.route(KLINES, Answer(418, body, {"Retry-After": "1"}))

    async def work(c):
        with pytest.raises(ExchangeUnavailable):
            await c.request(KLINES)
        assert c.banned_until - time.monotonic() >= 4.5
    run(with_client("binance", server.url, work))


def test_binance_1008_is_a_throttle_retried_whether_400_or_503(server):
    server.route(KLINES, Answer(503, fixture("binance/1008-overloaded.json")),
                 Answer(400, fixture("binance/1008-overloaded.json")), Answer(200, fixture("binance/klines.json")))
    before = counted("binance", "rate_limited")

    async def work(c):
        rows = await c.request(KLINES)
        assert rows[0][0] == 1499040000000
        assert c.retries["rate limited"] == 2
    run(with_client("binance", server.url, work))
    assert counted("binance", "rate_limited") - before == 2
    assert server.count(KLINES) == 3


def test_okx_50011_is_retried_and_candles_parse(server):
    path = "/api/v5/market/history-candles"
    server.route(path, Answer(429, fixture("okx/50011-too-many-requests.json")),
                 Answer(200, fixture("okx/candles.json")))
    cols = {f: [] for f in ("time_ms", "open", "high", "low", "close", "volume", "quote_volume")}

    async def work(c):
        data = await c.request(path, {"instId": "BTC-USDT-SWAP"})
        c.parse_candles("BTCUSDT", data, cols, closed_only=True)
        assert c.retries["rate limited"] == 1
    run(with_client("okx", server.url, work))
    assert cols == {"time_ms": [1597026383085], "open": [3.721], "high": [3.743], "low": [3.677], "close": [3.708],
                    "volume": [22698348.04828491], "quote_volume": [12698348.04828491]}


# ---- instruments -----------------------------------------------------------------------------

def test_okx_contract_size_comes_from_the_instrument(server):
    server.route("/api/v5/public/instruments", Answer(200, fixture("okx/instruments-btc-usdt-swap.json")))

    async def work(c):
        await c.check_symbol("BTCUSDT")
        assert c.contract_size["BTCUSDT"] == 0.01                 # ctVal 0.01 x ctMult 1
        assert c.base_units("BTCUSDT", "", "250") == pytest.approx(2.5)   # contracts -> BTC
        assert c.base_units("BTCUSDT", "1.5", "250") == 1.5              # the answer's own base figure wins
        assert server.seen[0].params == {"instType": "SWAP", "instId": "BTC-USDT-SWAP"}
    run(with_client("okx", server.url, work))


def test_binance_serves_perpetual_contracts_only(server):
    server.route("/fapi/v1/exchangeInfo", Answer(200, fixture("binance/exchange-info-contract-types.json")))

    async def work(c):
        await c.check_symbol("BTCUSDT")
        for symbol, why in (("XAUUSDT", "TRADIFI_PERPETUAL"), ("BTCUSDT_260925", "CURRENT_QUARTER"),
                            ("OMGUSDT", "SETTLING"), ("NOPEUSDT", "not listed")):
            with pytest.raises(ExchangeError, match=why):
                await c.check_symbol(symbol)
        assert server.count("/fapi/v1/exchangeInfo") == 1           # read once
    run(with_client("binance", server.url, work))


# ---- the Binance metrics archive across 2026-06-25 -------------------------------------------

def archive_server(server):
    for day in ("2026-06-24", "2026-06-25", "2026-06-26"):
        path = ARCHIVE_PATH.format(s="HYPEUSDT", d=day)
        server.route(path, Answer(200, fixture(f"binance/metrics/HYPEUSDT-metrics-{day}.zip"),
                                  content_type="application/zip"))


def test_archive_rows_map_to_the_bar_they_end_on_both_sides_of_the_label_change(server):
    archive_server(server)

    async def work(c):
        rows = await c.fetch_archive("HYPEUSDT", ms("2026-06-24T00:00Z"), ms("2026-06-28T00:00Z"))
        return rows, c.take_incomplete("HYPEUSDT")
    rows, incomplete = run(with_client("binance", server.url, work, archive_url=server.url))
    oi = {t: v for t, v, _ in rows}
    assert len(oi) == len(rows) == 288 + 288 + 163                  # one row per bar, none twice
    # Old labels: file 06-24 runs 00:05 .. 06-25 00:00, row T = the snapshot at T = the end of bar T - 5 min.
    assert oi[ms("2026-06-24T00:00Z")] == 5096201.75                # row stamped 2026-06-24 00:05
    assert oi[ms("2026-06-24T23:55Z")] == 4983816.6                 # row stamped 2026-06-25 00:00 (file 06-24)
    # New labels: file 06-25 runs 00:00 .. 23:55, row T = the snapshot at T + 5 min = the end of bar T.
    assert oi[ms("2026-06-25T00:00Z")] == 4985995.76                # row stamped 2026-06-25 00:00 (file 06-25)
    assert oi[ms("2026-06-25T23:55Z")] == 5101110.15
    assert oi[ms("2026-06-26T13:30Z")] == 5254516.32
    # Continuous across the change, no bar twice, no hole; the day cut short at 13:30 and the missing
    # day are gaps to refetch, not zeros.
    assert sorted(oi) == list(range(ms("2026-06-24T00:00Z"), ms("2026-06-26T13:35Z"), STEP_MS))
    assert all(v > 0 for v in oi.values())
    assert incomplete == [(ms("2026-06-26T13:35Z"), ms("2026-06-27T00:00Z")),
                          (ms("2026-06-27T00:00Z"), ms("2026-06-28T00:00Z"))]


def test_archive_days_cut_short_or_missing_are_asked_for_again(server):
    archive_server(server)

    async def work(c):
        for _ in range(2):
            await c.fetch_archive("HYPEUSDT", ms("2026-06-25T00:00Z"), ms("2026-06-28T00:00Z"))
    run(with_client("binance", server.url, work, archive_url=server.url))
    assert server.count(ARCHIVE_PATH.format(s="HYPEUSDT", d="2026-06-25")) == 1   # whole: cached
    assert server.count(ARCHIVE_PATH.format(s="HYPEUSDT", d="2026-06-26")) == 2   # truncated: asked again
    assert server.count(ARCHIVE_PATH.format(s="HYPEUSDT", d="2026-06-27")) == 2   # missing: asked again


def test_a_ban_shows_in_the_market_health(server, tmp_path):
    server.route("/v5/market/instruments-info", Answer(403, fixture("bybit/403-access-too-frequent.txt"),
                                                       content_type="text/plain"))

    async def work():
        store = Store(tmp_path / "s.sqlite3")
        clients = {"bybit": make_client("bybit", server.url, **FAST)}
        r = Refresher(store, clients, ["bybit:BTCUSDT"], interval_s=3600, history_days=1)
        await r.start()
        for _ in range(100):
            await asyncio.sleep(0.02)
            if r.health()["bybit:BTCUSDT"].consecutive_failures:
                break
        health = r.health()["bybit:BTCUSDT"]
        await r.stop()
        await clients["bybit"].aclose()
        store.close()
        return health
    health = run(work())
    assert health.status == "degraded" and not health.ready
    assert health.last_error.startswith("bybit: banned (HTTP 403") and "sending nothing for" in health.last_error
    assert REGISTRY.get_sample_value("heatsvc_market_status",
                                     {"market": "bybit:BTCUSDT", "heatsvc_market_status": "degraded"}) == 1
    assert server.count("/v5/market/instruments-info") == 1      # the refresher waits the ban out, silent


def test_repeated_bybit_bans_grow_longer(server):
    server.route("/v5/market/time", Answer(403, fixture("bybit/403-access-too-frequent.txt")))

    async def work(c):
        holds = []
        for _ in range(3):
            with pytest.raises(ExchangeUnavailable):
                await c.request("/v5/market/time")
            holds.append(c.banned_until - time.monotonic())
            await asyncio.sleep(max(0.0, c.banned_until - time.monotonic()) + 0.01)
        return holds
    holds = run(with_client("bybit", server.url, work, ban_floor_s=0.1, ban_probe_s=0.1))
    assert 0.09 <= holds[0] <= 0.1 and 0.19 <= holds[1] <= 0.2 and 0.39 <= holds[2] <= 0.4   # doubling
