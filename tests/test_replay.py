"""The replay exchange over real HTTP on 127.0.0.1: each dialect's shapes, paging, limits, the clock,
the archive and every fault knob."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import httpx
import numpy as np
import pytest

from heatsvc import datasets
from heatsvc.model.bars import STEP_MS
from heatsvc.replay import DEFAULT_START_MS, Faults, Limits, ReplayExchange

DAY = 86_400_000
MID_BAR = DEFAULT_START_MS + 150_000  # half-way through the bar opening at DEFAULT_START_MS


@pytest.fixture(scope="module")
def rx():
    """The default datasets on a stepped clock, half-way through a bar."""
    with ReplayExchange(start_ms=MID_BAR) as replay:
        yield replay


@pytest.fixture(scope="module")
def http():
    with httpx.Client(timeout=10) as client:
        yield client


def small_bars(days: float = 3) -> dict[str, np.ndarray]:
    return datasets.synthetic_bars("BTCUSDT", "binance", days=days, end_ms=DEFAULT_START_MS + DAY)


def small_replay(**kw) -> ReplayExchange:
    """A fast server with a few days of BTCUSDT on every exchange."""
    bars = small_bars()
    return ReplayExchange(datasets={f"{e}:BTCUSDT": bars for e in ("binance", "bybit", "okx")},
                          start_ms=MID_BAR, **kw)


def get(client: httpx.Client, url: str, **params) -> httpx.Response:
    return client.get(url, params=params)


def index_of(rx: ReplayExchange, market: str, t: int) -> int:
    times = rx.bars(market)["time_ms"]
    i = int(np.searchsorted(times, t))
    assert times[i] == t
    return i


# ---------------------------------------------------------------------------------------------
# Binance
# ---------------------------------------------------------------------------------------------

def test_binance_klines_shape_types_and_values(rx, http):
    r = get(http, rx.base_url("binance") + "/fapi/v1/klines", symbol="BTCUSDT", interval="5m")
    assert r.status_code == 200
    rows = r.json()
    assert len(rows) == 500  # default limit
    full = rx.bars("binance:BTCUSDT")
    for row in rows[-3:-1]:
        assert len(row) == 12
        assert isinstance(row[0], int) and isinstance(row[6], int) and isinstance(row[8], int)
        assert all(isinstance(row[k], str) for k in (1, 2, 3, 4, 5, 7, 9, 10, 11))
        assert row[6] == row[0] + STEP_MS - 1 and row[11] == "0"
        i = index_of(rx, "binance:BTCUSDT", row[0])
        assert float(row[4]) == pytest.approx(full["close"][i], rel=1e-12)
        assert float(row[5]) == pytest.approx(full["volume"][i], rel=1e-9)
        assert float(row[9]) == pytest.approx(full["taker_buy_volume"][i], rel=1e-9)
        assert float(row[7]) == pytest.approx(full["quote_volume"][i], rel=1e-9)
    times = [row[0] for row in rows]
    assert times == sorted(times) and np.all(np.diff(times) == STEP_MS)
    assert times[-1] == DEFAULT_START_MS  # the forming bar is the newest


def test_binance_klines_paging_and_bounds(rx, http):
    url = rx.base_url("binance") + "/fapi/v1/klines"
    start = DEFAULT_START_MS - 2 * DAY
    page1 = get(http, url, symbol="BTCUSDT", interval="5m", startTime=start, limit=100).json()
    page2 = get(http, url, symbol="BTCUSDT", interval="5m", startTime=page1[-1][0] + 1, limit=100).json()
    assert page1[0][0] == start and len(page1) == len(page2) == 100
    assert page2[0][0] == page1[-1][0] + STEP_MS
    tail = get(http, url, symbol="BTCUSDT", interval="5m", endTime=start, limit=3).json()
    assert [row[0] for row in tail] == [start - 2 * STEP_MS, start - STEP_MS, start]
    future = get(http, url, symbol="BTCUSDT", interval="5m", startTime=DEFAULT_START_MS + DAY).json()
    assert future == []  # nothing after now


@pytest.mark.parametrize("params, status, code, msg", [
    ({"symbol": "BTCUSDT", "interval": "5m", "limit": 1501}, 400, -1130,
     "Data sent for parameter 'limit' is not valid."),
    ({"symbol": "NOPEUSDT", "interval": "5m"}, 400, -1121, "Invalid symbol."),
    ({"interval": "5m"}, 400, -1102, None),
    ({"symbol": "BTCUSDT", "interval": "1s"}, 400, -1120, "Invalid interval."),
    ({"symbol": "BTCUSDT", "interval": "5m", "startTime": "abc"}, 400, -1100, None),
])
def test_binance_klines_errors(rx, http, params, status, code, msg):
    r = http.get(rx.base_url("binance") + "/fapi/v1/klines", params=params)
    assert r.status_code == status
    body = r.json()
    assert body["code"] == code and isinstance(body["msg"], str)
    if msg:
        assert body["msg"] == msg


def test_binance_open_interest_history(rx, http):
    url = rx.base_url("binance") + "/futures/data/openInterestHist"
    rows = get(http, url, symbol="BTCUSDT", period="5m").json()
    assert len(rows) == 30  # default limit
    assert set(rows[0]) >= {"symbol", "sumOpenInterest", "sumOpenInterestValue", "timestamp"}
    assert isinstance(rows[0]["timestamp"], int) and isinstance(rows[0]["sumOpenInterest"], str)
    assert rows[-1]["timestamp"] == DEFAULT_START_MS  # snapshot at the end of the last closed bar <= now
    full = rx.bars("binance:BTCUSDT")
    for row in rows[-2:]:
        i = index_of(rx, "binance:BTCUSDT", row["timestamp"] - STEP_MS)
        assert float(row["sumOpenInterest"]) == pytest.approx(full["open_interest"][i], rel=1e-9)
        assert float(row["sumOpenInterestValue"]) == pytest.approx(full["open_interest"][i] * full["close"][i],
                                                                   rel=1e-9)
    # A range wider than limit answers its latest `limit` snapshots, ascending.
    start = DEFAULT_START_MS - DAY
    page = get(http, url, symbol="BTCUSDT", period="5m", startTime=start, endTime=start + 100 * STEP_MS,
               limit=10).json()
    assert [row["timestamp"] for row in page] == [start + k * STEP_MS for k in range(91, 101)]


def test_binance_open_interest_history_only_last_30_days(rx, http):
    url = rx.base_url("binance") + "/futures/data/openInterestHist"
    r = get(http, url, symbol="BTCUSDT", period="5m", startTime=DEFAULT_START_MS - 31 * DAY)
    assert r.status_code == 400
    assert r.json() == {"code": -1130, "msg": "parameter 'startTime' is invalid."}
    ok = get(http, url, symbol="BTCUSDT", period="5m", startTime=DEFAULT_START_MS - 29 * DAY, limit=500)
    assert ok.status_code == 200 and len(ok.json()) == 500
    old = get(http, url, symbol="BTCUSDT", period="5m", endTime=DEFAULT_START_MS - 40 * DAY).json()
    assert old == []
    assert get(http, url, symbol="BTCUSDT", period="5m", limit=501).json()["code"] == -1130


def test_binance_ratio_current_and_reference_endpoints(rx, http):
    base = rx.base_url("binance")
    rows = get(http, base + "/futures/data/topLongShortPositionRatio", symbol="HYPEUSDT", period="5m",
               limit=5).json()
    assert len(rows) == 5
    full = rx.bars("binance:HYPEUSDT")
    for row in rows:
        assert float(row["longAccount"]) + float(row["shortAccount"]) == pytest.approx(1, abs=2e-4)
        i = index_of(rx, "binance:HYPEUSDT", row["timestamp"] - STEP_MS)
        assert float(row["longShortRatio"]) == pytest.approx(full["long_short_ratio"][i], abs=6e-5)
    oi = get(http, base + "/fapi/v1/openInterest", symbol="BTCUSDT").json()
    assert set(oi) == {"symbol", "openInterest", "time"} and oi["time"] == MID_BAR
    i = index_of(rx, "binance:BTCUSDT", DEFAULT_START_MS)
    lo, hi = sorted(rx.bars("binance:BTCUSDT")["open_interest"][i - 1:i + 1])
    assert lo - 1e-3 <= float(oi["openInterest"]) <= hi + 1e-3  # between the last snapshot and the bar's end
    mark = get(http, base + "/fapi/v1/premiumIndex", symbol="BTCUSDT").json()
    assert float(mark["markPrice"]) > 0 and isinstance(mark["nextFundingTime"], int)
    assert len(get(http, base + "/fapi/v1/premiumIndex").json()) == 3
    info = get(http, base + "/fapi/v1/exchangeInfo").json()
    kinds = {s["symbol"]: s["contractType"] for s in info["symbols"]}
    assert kinds == {"BTCUSDT": "PERPETUAL", "ETHUSDT": "PERPETUAL", "HYPEUSDT": "PERPETUAL",
                     "XAUUSDT": "TRADIFI_PERPETUAL", "BTCUSDT_261225": "CURRENT_QUARTER"}
    assert info["rateLimits"][0]["limit"] == 2400


def test_binance_weight_header_429_and_ban(http):
    with small_replay(limits=Limits(binance_weight=12, binance_ban_after=2, binance_ban_s=30)) as rx:
        url = rx.base_url("binance") + "/fapi/v1/klines"
        weights = []
        for limit in (50, 200, 700):  # weights 1, 2, 5
            r = get(http, url, symbol="BTCUSDT", interval="5m", limit=limit)
            weights.append(int(r.headers["X-MBX-USED-WEIGHT-1M"]))
        assert weights == [1, 3, 8]
        r = get(http, url, symbol="BTCUSDT", interval="5m", limit=1200)  # weight 10 -> over 12
        assert r.status_code == 429 and int(r.headers["Retry-After"]) >= 1
        assert r.json()["code"] == -1003
        statuses = [get(http, url, symbol="BTCUSDT", interval="5m", limit=1200).status_code for _ in range(3)]
        assert statuses[-1] == 418 and 429 in statuses
        assert get(http, rx.base_url("binance") + "/fapi/v1/time").status_code == 418  # banned everywhere
        limited = rx.limited_counts("binance")[("binance", "/fapi/v1/klines")]
        assert limited == 4 and rx.request_counts()[("binance", "/fapi/v1/klines")] == 7


# ---------------------------------------------------------------------------------------------
# Binance archive
# ---------------------------------------------------------------------------------------------

def archive_csv(response: httpx.Response) -> list[list[str]]:
    z = zipfile.ZipFile(io.BytesIO(response.content))
    (name,) = z.namelist()
    return [line.split(",") for line in z.read(name).decode().splitlines()], name


def test_archive_metrics_zip(rx, http):
    path = "/data/futures/um/daily/metrics/HYPEUSDT/HYPEUSDT-metrics-2025-10-05.zip"
    r = http.get(rx.archive_url() + path)
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    lines, name = archive_csv(r)
    assert name == "HYPEUSDT-metrics-2025-10-05.csv"
    assert lines[0] == ["create_time", "symbol", "sum_open_interest", "sum_open_interest_value",
                        "count_toptrader_long_short_ratio", "sum_toptrader_long_short_ratio",
                        "count_long_short_ratio", "sum_taker_long_short_vol_ratio"]
    rows = lines[1:]
    # Before 2026-06-25 a file runs 00:05 .. 00:00 of the next day (binance/binance-public-data#491).
    assert len(rows) == 288 and rows[0][0] == "2025-10-05 00:05:00" and rows[-1][0] == "2025-10-06 00:00:00"
    # Read back exactly as the bundled recorded data was read: snapshot X = OI at the end of bar X - 5 min.
    recorded = datasets.recorded_bars()
    for row in rows[:3]:
        i = index_of(rx, "binance:HYPEUSDT", datasets.metrics_time_ms(row[0]) - STEP_MS)
        assert float(row[2]) == pytest.approx(recorded["open_interest"][i], rel=1e-12)
        assert float(row[5]) == pytest.approx(recorded["long_short_ratio"][i], rel=1e-12)
    for missing in ("/data/futures/um/daily/metrics/HYPEUSDT/HYPEUSDT-metrics-2025-10-10.zip",  # today
                    "/data/futures/um/daily/metrics/HYPEUSDT/HYPEUSDT-metrics-2024-01-01.zip",  # before data
                    "/data/futures/um/daily/metrics/NOPEUSDT/NOPEUSDT-metrics-2025-10-05.zip"):
        r = http.get(rx.archive_url() + missing)
        assert r.status_code == 404 and b"NoSuchKey" in r.content


def test_archive_quirks_repeat_skip_and_zero_rows(http):
    recorded = datasets.recorded_bars()
    with ReplayExchange(datasets={"binance:HYPEUSDT": recorded}, start_ms=DEFAULT_START_MS,
                        archive_quirks=True) as rx:
        seen = {"repeat": 0, "skip": 0, "zero": 0}
        for day in range(1, 8):
            r = http.get(rx.archive_url() + f"/data/futures/um/daily/metrics/HYPEUSDT/"
                                            f"HYPEUSDT-metrics-2025-10-0{day}.zip")
            rows = archive_csv(r)[0][1:]
            times = [row[0] for row in rows]
            seen["repeat"] += len(times) - len(set(times))
            seen["skip"] += 288 - len(set(times))
            seen["zero"] += sum(row[2] == "0" for row in rows)
        assert all(v > 0 for v in seen.values()), seen


# ---------------------------------------------------------------------------------------------
# Bybit
# ---------------------------------------------------------------------------------------------

def test_bybit_kline_envelope_order_and_headers(rx, http):
    r = get(http, rx.base_url("bybit") + "/v5/market/kline", category="linear", symbol="BTCUSDT", interval="5",
            limit=5)
    body = r.json()
    assert set(body) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
    assert body["retCode"] == 0 and body["retMsg"] == "OK" and body["time"] == MID_BAR
    rows = body["result"]["list"]
    assert len(rows) == 5 and all(len(row) == 7 and all(isinstance(x, str) for x in row) for row in rows)
    times = [int(row[0]) for row in rows]
    assert times == sorted(times, reverse=True) and times[0] == DEFAULT_START_MS  # newest (forming) first
    i = index_of(rx, "bybit:BTCUSDT", times[1])
    assert float(rows[1][4]) == pytest.approx(rx.bars("bybit:BTCUSDT")["close"][i], rel=1e-12)
    assert float(rows[0][5]) < rx.bars("bybit:BTCUSDT")["volume"][i + 1]  # the forming bar is partial
    assert r.headers["X-Bapi-Limit"] == "600" and int(r.headers["X-Bapi-Limit-Status"]) < 600
    assert int(r.headers["X-Bapi-Limit-Reset-Timestamp"]) > 0
    start = DEFAULT_START_MS - DAY
    ranged = get(http, rx.base_url("bybit") + "/v5/market/kline", category="linear", symbol="BTCUSDT",
                 interval="5", start=start, end=start + 9 * STEP_MS).json()["result"]["list"]
    assert [int(row[0]) for row in ranged] == [start + k * STEP_MS for k in range(9, -1, -1)]


@pytest.mark.parametrize("path, params, msg", [
    ("/v5/market/kline", {"category": "linear", "symbol": "NOPEUSDT", "interval": "5"}, "Not supported symbols"),
    ("/v5/market/kline", {"category": "linear", "symbol": "BTCUSDT", "interval": "5", "limit": 1001}, None),
    ("/v5/market/open-interest", {"category": "linear", "symbol": "BTCUSDT", "intervalTime": "5min",
                                  "limit": 201}, None),
    ("/v5/market/open-interest", {"symbol": "BTCUSDT", "intervalTime": "5min"}, None),
])
def test_bybit_bad_params_are_10001_with_http_200(rx, http, path, params, msg):
    r = http.get(rx.base_url("bybit") + path, params=params)
    assert r.status_code == 200
    body = r.json()
    assert body["retCode"] == 10001 and body["retMsg"]
    if msg:
        assert body["retMsg"] == msg


def test_bybit_open_interest_cursor_paging(rx, http):
    url = rx.base_url("bybit") + "/v5/market/open-interest"
    start = DEFAULT_START_MS - 2 * DAY
    end = start + 449 * STEP_MS  # 450 snapshots
    got, cursor, pages = [], None, 0
    while pages < 10:
        params = dict(category="linear", symbol="BTCUSDT", intervalTime="5min", startTime=start, endTime=end,
                      limit=200)
        if cursor:
            params["cursor"] = cursor
        result = http.get(url, params=params).json()["result"]
        got += result["list"]
        pages += 1
        cursor = result["nextPageCursor"]
        if not cursor:
            break
    assert pages == 3
    times = [int(row["timestamp"]) for row in got]
    assert times == [end - k * STEP_MS for k in range(450)]
    full = rx.bars("bybit:BTCUSDT")
    i = index_of(rx, "bybit:BTCUSDT", times[7] - STEP_MS)
    assert float(got[7]["singleOpenInterest"]) == pytest.approx(full["open_interest"][i], rel=1e-9)
    assert float(got[7]["openInterest"]) == pytest.approx(2 * full["open_interest"][i], rel=1e-9)  # both sides
    # A lone startTime is ignored: the answer still walks back from now.
    lone = http.get(url, params=dict(category="linear", symbol="BTCUSDT", intervalTime="5min",
                                     startTime=start)).json()["result"]["list"]
    assert int(lone[0]["timestamp"]) == DEFAULT_START_MS and len(lone) == 50


def test_bybit_account_ratio_and_tickers(rx, http):
    base = rx.base_url("bybit")
    rows = get(http, base + "/v5/market/account-ratio", category="linear", symbol="BTCUSDT", period="5min",
               limit=3).json()["result"]["list"]
    full = rx.bars("bybit:BTCUSDT")
    for row in rows:
        i = index_of(rx, "bybit:BTCUSDT", int(row["timestamp"]) - STEP_MS)
        buy, sell = float(row["buyRatio"]), float(row["sellRatio"])
        assert buy + sell == pytest.approx(1, abs=2e-4)
        assert buy / sell == pytest.approx(full["long_short_ratio"][i], rel=2e-3)
    (ticker,) = get(http, base + "/v5/market/tickers", category="linear", symbol="BTCUSDT").json()["result"]["list"]
    assert all(isinstance(ticker[k], str) for k in ("lastPrice", "markPrice", "openInterest"))
    i = index_of(rx, "bybit:BTCUSDT", DEFAULT_START_MS)
    bar = {k: full[k][i] for k in ("open", "high", "low", "close")}
    assert bar["low"] <= float(ticker["lastPrice"]) <= bar["high"]
    assert float(ticker["openInterest"]) > 0


def test_bybit_ip_limit_is_a_403_ban(http):
    # Past the IP limit Bybit answers "403, access too frequent" for at least 10 minutes (docs/v5/rate-limit).
    with small_replay(limits=Limits(bybit_requests=3, bybit_window_s=60, bybit_ban_s=0.5)) as rx:
        url = rx.base_url("bybit") + "/v5/market/tickers"
        answers = [http.get(url, params={"category": "linear"}) for _ in range(5)]
        assert [a.status_code for a in answers] == [200, 200, 200, 403, 403]
        assert [a.json()["retCode"] for a in answers[:3]] == [0, 0, 0]
        assert answers[2].headers["X-Bapi-Limit-Status"] == "0"
        assert b"access too frequent" in answers[3].content
        time.sleep(0.6)
        rx.reset_counters()
        assert http.get(url, params={"category": "linear"}).status_code == 200   # the ban ran out


def test_bybit_instruments_cursor_paging(http):
    with ReplayExchange(datasets={"bybit:BTCUSDT": small_bars(), "bybit:ETHUSDT": small_bars()},
                        start_ms=MID_BAR) as rx:
        url = rx.base_url("bybit") + "/v5/market/instruments-info"
        first = http.get(url, params={"category": "linear", "limit": 1}).json()["result"]
        assert len(first["list"]) == 1 and first["nextPageCursor"]
        second = http.get(url, params={"category": "linear", "limit": 1, "cursor": first["nextPageCursor"]})
        rest = second.json()["result"]
        assert {rest["list"][0]["symbol"], first["list"][0]["symbol"]} == {"BTCUSDT", "ETHUSDT"}
        assert rest["nextPageCursor"] == ""


# ---------------------------------------------------------------------------------------------
# OKX
# ---------------------------------------------------------------------------------------------

def test_okx_candles_confirm_units_and_paging(rx, http):
    base = rx.base_url("okx")
    body = get(http, base + "/api/v5/market/candles", instId="BTC-USDT-SWAP", bar="5m", limit=3).json()
    assert body["code"] == "0" and body["msg"] == ""
    rows = body["data"]
    assert all(len(row) == 9 and all(isinstance(x, str) for x in row) for row in rows)
    assert int(rows[0][0]) == DEFAULT_START_MS and rows[0][8] == "0"  # forming bar, newest first
    assert [row[8] for row in rows[1:]] == ["1", "1"]
    assert float(rows[1][5]) * 0.01 == pytest.approx(float(rows[1][6]), rel=1e-6)  # contracts x ctVal = coin
    i = index_of(rx, "okx:BTCUSDT", int(rows[1][0]))
    assert float(rows[1][6]) == pytest.approx(rx.bars("okx:BTCUSDT")["volume"][i], rel=1e-9)
    older = get(http, base + "/api/v5/market/history-candles", instId="BTC-USDT-SWAP", bar="5m",
                after=rows[-1][0], limit=300).json()["data"]
    assert len(older) == 300 and int(older[0][0]) == int(rows[-1][0]) - STEP_MS  # `after` is exclusive
    newer = get(http, base + "/api/v5/market/history-candles", instId="BTC-USDT-SWAP", bar="5m",
                before=older[1][0]).json()["data"]
    assert [row[0] for row in newer][-1] == older[0][0]
    # /market/candles only reaches the latest 1440 entries; history-candles goes back years.
    old = DEFAULT_START_MS - 30 * DAY
    assert get(http, base + "/api/v5/market/candles", instId="BTC-USDT-SWAP", bar="5m",
               after=old).json()["data"] == []
    assert len(get(http, base + "/api/v5/market/history-candles", instId="BTC-USDT-SWAP", bar="5m",
                   after=old).json()["data"]) == 100


def test_okx_open_interest_ratio_and_current(rx, http):
    base = rx.base_url("okx")
    rows = get(http, base + "/api/v5/rubik/stat/contracts/open-interest-history", instId="BTC-USDT-SWAP",
               period="5m").json()["data"]
    assert len(rows) == 100 and int(rows[0][0]) == DEFAULT_START_MS
    assert all(len(row) == 4 for row in rows)
    ts, oi, oi_ccy, oi_usd = rows[0]
    assert float(oi) * 0.01 == pytest.approx(float(oi_ccy), rel=1e-6) and float(oi_usd) > float(oi_ccy)
    i = index_of(rx, "okx:BTCUSDT", int(ts) - STEP_MS)
    assert float(oi_ccy) == pytest.approx(rx.bars("okx:BTCUSDT")["open_interest"][i], rel=1e-9)
    deep = get(http, base + "/api/v5/rubik/stat/contracts/open-interest-history", instId="BTC-USDT-SWAP",
               period="5m", end=DEFAULT_START_MS - 6 * DAY).json()["data"]
    assert deep == []  # only the latest 1440 entries (5 days of 5m)
    ratio = get(http, base + "/api/v5/rubik/stat/contracts/long-short-position-ratio-contract-top-trader",
                instId="BTC-USDT-SWAP", period="5m", limit=2).json()["data"]
    assert len(ratio) == 2 and int(ratio[0][0]) > int(ratio[1][0]) and float(ratio[0][1]) > 0
    (now_oi,) = get(http, base + "/api/v5/public/open-interest", instType="SWAP",
                    instId="BTC-USDT-SWAP").json()["data"]
    assert set(now_oi) == {"instType", "instId", "oi", "oiCcy", "oiUsd", "ts"} and now_oi["ts"] == str(MID_BAR)
    (inst,) = [d for d in get(http, base + "/api/v5/public/instruments", instType="SWAP").json()["data"]
               if d["instId"] == "ETH-USDT-SWAP"]
    assert inst["ctVal"] == "0.1" and inst["ctValCcy"] == "ETH"


def test_okx_errors(rx, http):
    base = rx.base_url("okx")
    r = get(http, base + "/api/v5/market/candles", instId="NOPE-USDT-SWAP", bar="5m")
    assert r.status_code == 200 and r.json()["code"] == "51001" and r.json()["data"] == []
    r = get(http, base + "/api/v5/market/candles", bar="5m")
    assert r.status_code == 400 and r.json()["code"] == "50014"
    r = get(http, base + "/api/v5/market/history-candles", instId="BTC-USDT-SWAP", bar="5m", limit=301)
    assert r.json()["code"] == "51000"


def test_okx_rate_limit_50011(http):
    limits = Limits()
    limits.okx_requests["/api/v5/market/candles"] = (2, 60.0)
    with small_replay(limits=limits) as rx:
        url = rx.base_url("okx") + "/api/v5/market/candles"
        answers = [get(http, url, instId="BTC-USDT-SWAP", bar="5m") for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[2].json()["code"] == "50011"
        assert rx.limited_counts("okx") == {("okx", "/api/v5/market/candles"): 1}


# ---------------------------------------------------------------------------------------------
# Clock and forming bar
# ---------------------------------------------------------------------------------------------

def test_stepped_clock_and_forming_bar(http):
    with small_replay() as rx:
        url = rx.base_url("binance") + "/fapi/v1/klines"
        full = rx.bars("binance:BTCUSDT")
        i = index_of(rx, "binance:BTCUSDT", DEFAULT_START_MS)
        assert rx.now_ms() == MID_BAR
        seen = []
        for step in (0, 60_000, 60_000):  # half-way, then 70 % and 90 % of the bar
            rx.step(step)
            row = get(http, url, symbol="BTCUSDT", interval="5m", limit=1).json()[0]
            o, h, lo, c, v = (float(x) for x in row[1:6])
            assert row[0] == DEFAULT_START_MS and o == pytest.approx(full["open"][i], rel=1e-12)
            assert h >= max(o, c) and lo <= min(o, c) and h <= full["high"][i] * (1 + 1e-12)
            assert lo >= full["low"][i] * (1 - 1e-12)
            seen.append(v)
        assert seen[0] < seen[1] < seen[2] < full["volume"][i]
        assert seen[0] == pytest.approx(full["volume"][i] * 0.5, rel=1e-6)
        rx.set_time(DEFAULT_START_MS + STEP_MS)  # the bar has closed: full values, next bar opens
        rows = get(http, url, symbol="BTCUSDT", interval="5m", limit=2).json()
        assert rows[0][0] == DEFAULT_START_MS and float(rows[0][5]) == pytest.approx(full["volume"][i], rel=1e-9)
        assert rows[1][0] == DEFAULT_START_MS + STEP_MS and float(rows[1][5]) == 0.0
        oi = get(http, rx.base_url("binance") + "/futures/data/openInterestHist", symbol="BTCUSDT",
                 period="5m", limit=1).json()
        assert oi[0]["timestamp"] == DEFAULT_START_MS + STEP_MS


def test_running_clock_moves_with_speed():
    rx = ReplayExchange(datasets={"binance:BTCUSDT": small_bars(1)}, start_ms=MID_BAR, speed=1000.0)
    first = rx.now_ms()
    time.sleep(0.05)
    second = rx.now_ms()
    assert second > first >= MID_BAR
    rx.step(-10 * DAY)
    assert rx.now_ms() < MID_BAR - 9 * DAY


# ---------------------------------------------------------------------------------------------
# Faults
# ---------------------------------------------------------------------------------------------

def test_injected_rate_limits_in_each_dialect(http):
    with small_replay(faults=Faults(rate_429=1.0, retry_after_s=7)) as rx:
        r = get(http, rx.base_url("binance") + "/fapi/v1/klines", symbol="BTCUSDT", interval="5m")
        assert r.status_code == 429 and r.headers["Retry-After"] == "7" and r.json()["code"] == -1003
        r = get(http, rx.base_url("bybit") + "/v5/market/kline", category="linear", symbol="BTCUSDT", interval="5")
        assert r.json()["retCode"] == 10006
        assert int(r.headers["X-Bapi-Limit-Reset-Timestamp"]) >= int(time.time() * 1000) + 5000
        r = get(http, rx.base_url("okx") + "/api/v5/market/candles", instId="BTC-USDT-SWAP", bar="5m")
        assert r.status_code == 429 and r.json()["code"] == "50011"
        assert sum(rx.limited_counts().values()) == 3
        rx.faults.rate_429 = 0.0  # knobs change while running
        assert get(http, rx.base_url("okx") + "/api/v5/market/candles", instId="BTC-USDT-SWAP",
                   bar="5m").status_code == 200


def test_injected_ban_lasts_ban_s(http):
    with small_replay(faults=Faults(rate_418=1.0, ban_s=0.4)) as rx:
        url = rx.base_url("binance") + "/fapi/v1/time"
        r = http.get(url)
        assert r.status_code == 418 and int(r.headers["Retry-After"]) >= 1
        rx.faults.rate_418 = 0.0
        assert http.get(url).status_code == 418  # still banned
        assert http.get(rx.base_url("bybit") + "/v5/market/time").status_code == 200  # per exchange
        time.sleep(0.5)
        assert http.get(url).status_code == 200


def test_injected_5xx_latency_malformed(http):
    with small_replay(faults=Faults(rate_5xx=1.0)) as rx:
        statuses = {http.get(rx.base_url("binance") + "/fapi/v1/time").status_code for _ in range(12)}
        assert statuses <= {500, 502, 503, 504} and len(statuses) > 1
        rx.faults.rate_5xx = 0.0
        rx.faults.latency_s = 0.2
        t0 = time.monotonic()
        assert http.get(rx.base_url("binance") + "/fapi/v1/time").status_code == 200
        assert time.monotonic() - t0 >= 0.2
        rx.faults.latency_s = 0.0
        rx.faults.malformed_rate = 1.0
        r = get(http, rx.base_url("okx") + "/api/v5/market/candles", instId="BTC-USDT-SWAP", bar="5m")
        assert r.status_code == 200
        with pytest.raises(json.JSONDecodeError):
            json.loads(r.content)
        r = http.get(rx.archive_url() + "/data/futures/um/daily/metrics/BTCUSDT/BTCUSDT-metrics-2025-10-09.zip")
        with pytest.raises(zipfile.BadZipFile):
            zipfile.ZipFile(io.BytesIO(r.content))


def test_injected_timeout_and_truncation(http):
    with small_replay(faults=Faults(timeout_rate=1.0, timeout_s=5.0)) as rx:
        with pytest.raises(httpx.ReadTimeout):
            httpx.get(rx.base_url("binance") + "/fapi/v1/time", timeout=0.3)
        rx.faults.timeout_rate = 0.0
        rx.faults.truncated_rate = 1.0
        with pytest.raises(httpx.RemoteProtocolError):
            httpx.get(rx.base_url("bybit") + "/v5/market/kline",
                      params=dict(category="linear", symbol="BTCUSDT", interval="5"), timeout=5)


def test_injected_duplicate_and_missing_rows_are_seeded(http):
    def fetch(rx):
        return get(http, rx.base_url("binance") + "/fapi/v1/klines", symbol="BTCUSDT", interval="5m",
                   limit=100).json()

    with small_replay(faults=Faults(duplicate_rate=1.0)) as rx:
        rows = fetch(rx)
        assert len(rows) == 200 and rows[0] == rows[1]
        rx.faults.duplicate_rate, rx.faults.missing_rate, rx.faults.seed = 0.0, 1.0, 1
        assert fetch(rx) == []
        rx.faults.missing_rate, rx.faults.duplicate_rate, rx.faults.seed = 0.3, 0.3, 42
        first = fetch(rx)
        rx.faults.seed = 43
        other = fetch(rx)
        rx.faults.seed = 42  # a changed seed restarts the draws: the same seed repeats them
        assert fetch(rx) == first != other
        times = [row[0] for row in first]
        assert len(set(times)) < 100 and len(times) != len(set(times))


def test_faults_can_target_one_exchange(http):
    with small_replay(faults=Faults(rate_5xx=1.0, exchanges=("okx",))) as rx:
        assert http.get(rx.base_url("binance") + "/fapi/v1/time").status_code == 200
        assert get(http, rx.base_url("okx") + "/api/v5/public/time").status_code >= 500


# ---------------------------------------------------------------------------------------------
# Construction, counters, defaults, CLI
# ---------------------------------------------------------------------------------------------

def test_default_datasets_and_counters(rx, http):
    assert rx.markets() == ["binance:BTCUSDT", "binance:ETHUSDT", "binance:HYPEUSDT", "bybit:BTCUSDT",
                            "bybit:ETHUSDT", "okx:BTCUSDT", "okx:ETHUSDT"]
    recorded = datasets.recorded_bars()
    served = rx.bars("binance:HYPEUSDT")
    np.testing.assert_array_equal(served["time_ms"], recorded["time_ms"])
    np.testing.assert_array_equal(served["close"], recorded["close"])
    before = rx.request_counts("okx").get(("okx", "/api/v5/public/time"), 0)
    assert http.get(rx.base_url("okx") + "/api/v5/public/time").json()["data"][0]["ts"] == str(rx.now_ms())
    assert rx.request_counts("okx")[("okx", "/api/v5/public/time")] == before + 1
    assert http.get(rx.url + "/kraken/x").status_code == 404


@pytest.mark.parametrize("kwargs, words", [
    ({"datasets": {"BTCUSDT": {}}}, "exchange:SYMBOL"),
    ({"datasets": {"kraken:BTCUSDT": {}}}, "exchange:SYMBOL"),
    ({"speed": 0.0}, "speed"),
    ({"faults": Faults(rate_429=1.5)}, "rate_429"),
    ({"faults": Faults(exchanges=("kraken",))}, "kraken"),
])
def test_bad_construction_names_the_problem(kwargs, words):
    with pytest.raises(ValueError, match=words):
        ReplayExchange(**kwargs)


def test_cli_serves_until_interrupted():
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "heatsvc.cli", "replay", "--port", "0", "--speed", "60",
                             "--start", "2025-10-09T00:00:00Z", "--rate-5xx", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        lines = []
        while not lines or not lines[-1].startswith("Ctrl-C"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            lines.append(line.strip())
        okx = next(line.split()[1] for line in lines if line.startswith("okx"))
        assert any(line.startswith("archive") for line in lines)
        body = httpx.get(okx + "/api/v5/public/time", timeout=10).json()
        assert int(body["data"][0]["ts"]) >= 1_759_968_000_000
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_rejects_bad_start():
    r = subprocess.run([sys.executable, "-m", "heatsvc.cli", "replay", "--start", "yesterday"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--start" in r.stderr and "yesterday" in r.stderr


def test_injected_binance_1008_throttles_are_400_or_503(http):
    with small_replay(faults=Faults(rate_1008=1.0, seed=4)) as rx:
        answers = [get(http, rx.base_url("binance") + "/fapi/v1/klines", symbol="BTCUSDT", interval="5m")
                   for _ in range(12)]
        assert {a.status_code for a in answers} == {400, 503}
        assert all(a.json() == {"code": -1008, "msg": "Server is currently overloaded with other requests. "
                                                      "Please try again in a few minutes."} for a in answers)
        rx.faults.rate_1008 = 0.0
        assert get(http, rx.base_url("binance") + "/fapi/v1/klines", symbol="BTCUSDT",
                   interval="5m").status_code == 200


def test_injected_faults_answer_as_the_recorded_exchanges_do(http):
    """The replay's ban and throttle answers have the shapes of the bodies recorded in tests/fixtures."""
    fixtures = Path(__file__).parent / "fixtures"
    with small_replay(faults=Faults(rate_418=1.0, ban_s=30)) as rx:
        binance = get(http, rx.base_url("binance") + "/fapi/v1/time")
        bybit = get(http, rx.base_url("bybit") + "/v5/market/time")
        okx = get(http, rx.base_url("okx") + "/api/v5/public/time")
    recorded = json.loads((fixtures / "binance/418-banned.json").read_text())
    assert binance.status_code == 418 and binance.json()["code"] == recorded["code"]
    shape = re.compile(r"Way too much request weight used; IP banned until \d{13}\. Please use the websocket")
    assert shape.match(recorded["msg"]) and shape.match(binance.json()["msg"])
    assert bybit.status_code == 403 and bybit.content == (fixtures / "bybit/403-access-too-frequent.txt").read_bytes()
    assert okx.status_code == 429 and okx.json() == json.loads((fixtures / "okx/50011-too-many-requests.json").read_text())
