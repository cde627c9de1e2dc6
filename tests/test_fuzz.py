"""Property-based fuzzing (hypothesis) of everything hostile input reaches: the gRPC requests of a
real server on 127.0.0.1, the exchange clients' parsers fed by a real loopback HTTP server, and
the Binance metrics archive reader. Hostile input must always get a clear error: never a crash
(UNKNOWN/INTERNAL, a stray exception type), never a hang, never an unbounded allocation."""
from __future__ import annotations

import asyncio
import io
import json
import math
import re
import struct
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from functools import cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import numpy as np
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from heatsvc.model.bars import FIELDS, check
from heatsvc.datasets import synthetic_bars
from heatsvc.model.engine import MAX_COLUMNS, MAX_ROWS
from heatsvc.exchanges import ExchangeError, ExchangeUnavailable, make_client
from heatsvc.exchanges.base import MAX_BODY_BYTES
from heatsvc.exchanges.binance import ARCHIVE_MAX_BYTES, ARCHIVE_MAX_ROWS
from heatsvc.exchanges.okx import LIMITS as OKX_LIMITS
from heatsvc.exchanges.okx import OI_PATH, RATIO_PATH
from heatsvc.replay import Limits, ReplayExchange
from heatsvc.service.errors import field_violations
from heatsvc.service.views import MAX_PRICE, MIN_PRICE
from heatsvc.v1 import heatmap_service_pb2 as pb
from test_service import DAY, END, START, STEP, Stack, small_datasets, view

FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---- gRPC requests against a real server -------------------------------------------------------

MAX_CELLS = 200_000                 # small, so that views at the limit compute quickly
MAX_VIEWS = 8                       # views per StreamZones call
TIERS = 5
LOOKBACKS = ("12h", "1d")
SERVED = ("binance:BTCUSDT", "bybit:BTCUSDT", "binance:ETHUSDT", "all:BTCUSDT", "all:ETHUSDT")
MAX_REQUEST = 1 << 20               # the server's grpc.max_receive_message_length
CODES = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND, grpc.StatusCode.RESOURCE_EXHAUSTED,
         grpc.StatusCode.UNAVAILABLE}
FIELD = re.compile(r"request|views|boost|include_tiers|zone_options\.(threshold|top)"
                   r"|(view|views\[\d+\])(\.(market|lookback|rows|columns|price_range))?")
NOT_FOUND = "NOT_FOUND"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with ReplayExchange(datasets=small_datasets(), start_ms=START) as rx:
        s = Stack(rx, tmp_path_factory.mktemp("fuzz") / "bars.sqlite3", max_cells=MAX_CELLS,
                  max_stream_views=MAX_VIEWS)
        yield s
        s.close()


def sizes(limit: int) -> st.SearchStrategy[int]:
    """uint32 grid sizes: the edges (0 = default, 1, the limit and one past it, 2**31-1, 2**32-1) and anything."""
    return st.sampled_from([0, 1, 2, limit - 1, limit, limit + 1, 2**31 - 1, 2**32 - 1]) | st.integers(0, 2**32 - 1)


def hostile_text() -> st.SearchStrategy[str]:
    """Empty, unicode, control characters, and strings of 100,000 to 300,000 characters (0.1 to 1.2 MB)."""
    return (st.text(max_size=40) | st.sampled_from(["", ":", "all:", ":BTCUSDT", "binance:", "binance:btcusdt"])
            | st.builds(lambda c, n: c * n, st.sampled_from(["x", "é", "\x00", "🔥"]),
                        st.sampled_from([100_000, 300_000])))


prices = st.floats() | st.sampled_from([0.0, -0.0, -1.0, 5e-324, 1e-300, 1e-13, MIN_PRICE, 1e-3, 50_000.0, 100_000.0,
                                        120_000.0, MAX_PRICE, 1.0000000000000002e12, 1e300, 1.7976931348623157e308,
                                        math.inf, -math.inf, math.nan])
price_ranges = st.builds(lambda lo, hi: pb.PriceRange(low=lo, high=hi), prices, prices) | st.builds(
    lambda lo, ratio: pb.PriceRange(low=lo, high=lo * ratio),
    st.floats(1e-300, 1e300) | st.floats(MIN_PRICE, MAX_PRICE), st.sampled_from([1 + 1e-15, 1.001, 2.0, 1e10, 1e300]))
HOSTILE = {
    "market": st.sampled_from(["kraken:BTCUSDT", "binance:NOPEUSDT", "all:NOPE"]) | hostile_text(),
    "lookback": st.sampled_from(["", "1Y", "7d", "12H"]) | hostile_text(),
    "rows": sizes(MAX_ROWS),
    "columns": sizes(MAX_COLUMNS),
}


@st.composite
def views(draw, valid_market: bool = False) -> pb.View:
    """A view whose fields are ordinary except for up to three hostile ones."""
    fields = ["lookback", "rows", "columns", "price_range"] + ([] if valid_market else ["market"])
    hostile = draw(st.sets(st.sampled_from(fields), max_size=3))
    v = pb.View(market=draw(st.sampled_from(SERVED)), lookback=draw(st.sampled_from(LOOKBACKS)),
                rows=draw(st.integers(0, 500)), columns=draw(st.integers(0, 300)))
    for name in hostile - {"price_range"}:
        setattr(v, name, draw(HOSTILE[name]))
    if "price_range" in hostile:
        v.price_range.CopyFrom(draw(price_ranges))
    return v


@st.composite
def zone_options(draw) -> pb.ZoneOptions | None:
    if draw(st.booleans()):
        return None
    z = pb.ZoneOptions(top=draw(st.integers(0, 10) | sizes(100)))
    if draw(st.booleans()):
        z.threshold = draw(st.floats(0, 1, exclude_max=True) | st.floats()
                           | st.sampled_from([0.0, 0.999999, 1.0, -0.0, -1e-300]))
    return z


def problems(v: pb.View, field: str = "view", per_tier: bool = False):
    """What the API contract (the proto's comments) says is wrong with a view: NOT_FOUND for a
    well-formed market that is not served, else the set of fields that must be named."""
    exchange, sep, symbol = v.market.partition(":")
    if not (sep and exchange and symbol):
        return {f"{field}.market"}
    if v.market not in SERVED:
        return NOT_FOUND
    bad = set()
    if v.lookback not in LOOKBACKS:
        bad.add(f"{field}.lookback")
    rows, columns = v.rows or 400, v.columns or 288
    if rows > MAX_ROWS or rows * columns > MAX_CELLS:
        bad.add(f"{field}.rows")
    if columns > MAX_COLUMNS:
        bad.add(f"{field}.columns")
    if per_tier and rows * columns * TIERS > MAX_CELLS:
        bad.add("include_tiers")
    if v.HasField("price_range"):
        lo, hi = v.price_range.low, v.price_range.high
        if not MIN_PRICE <= lo < hi <= MAX_PRICE:
            bad.add(f"{field}.price_range")
    return bad


def option_problems(z: pb.ZoneOptions | None, boost: float | None = None) -> set[str]:
    bad = set()
    if z is not None and z.HasField("threshold") and not 0 <= z.threshold < 1:
        bad.add("zone_options.threshold")
    if z is not None and z.top > 100:
        bad.add("zone_options.top")
    if boost is not None and not 0 < boost <= 1:
        bad.add("boost")
    return bad


def expect(request, found: list, bad: set[str]):
    """The outcome the contract asks for: a status code (None = OK) and the fields it must name."""
    if request.ByteSize() > MAX_REQUEST:
        return grpc.StatusCode.RESOURCE_EXHAUSTED, set()
    for f in found:
        if f is NOT_FOUND:
            return NOT_FOUND, set()
        bad |= f
    return (grpc.StatusCode.INVALID_ARGUMENT, bad) if bad else (None, set())


def check_error(err: grpc.RpcError) -> list[str]:
    """A clear error: an allowed code, a message, and for INVALID_ARGUMENT violations naming real fields."""
    assert err.code() in CODES, (err.code(), err.details())
    assert err.details(), err.code()
    fields = [f for f, _ in field_violations(err)]
    if err.code() == grpc.StatusCode.INVALID_ARGUMENT:
        assert fields, err.details()
        assert all(FIELD.fullmatch(f) for f in fields), fields
    return fields


def check_outcome(call, request, found: list, bad: set[str], *, engine_may_refuse: bool):
    """Run `call`; its answer must be what the contract asks for. Returns the response on OK."""
    code, fields = expect(request, found, bad)
    try:
        response = call()
    except grpc.RpcError as err:
        got = check_error(err)
        event(err.code().name)
        if code is NOT_FOUND:     # a view checked before the unknown market may be refused first
            assert err.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT), err.details()
            if err.code() == grpc.StatusCode.NOT_FOUND:
                assert "is not served" in err.details()
        elif code is None:        # valid per contract: only the data can refuse a too-fine price range
            assert engine_may_refuse and err.code() == grpc.StatusCode.INVALID_ARGUMENT, err.details()
            assert all(f.endswith("price_range") for f in got), got
        else:
            assert err.code() == code, err.details()
            if fields:
                assert set(got) == fields, (got, fields, err.details())
        return None
    assert code is None, f"{code} expected, got OK"
    event("OK")
    return response


def finite(values) -> bool:
    return bool(np.all(np.isfinite(np.asarray(values, dtype=np.float64))))


def check_zones(z: pb.ZoneReport, v: pb.View, zopts: pb.ZoneOptions | None) -> None:
    assert (z.market, z.lookback) == (v.market, v.lookback)
    top = (zopts.top if zopts is not None else 0) or 5
    assert len(z.above) <= top and len(z.below) <= top
    assert math.isfinite(z.price) and z.price > 0 and math.isfinite(z.v_max) and z.v_max >= 0
    assert -1 <= z.skew <= 1 and z.skew_label != pb.SKEW_LABEL_UNSPECIFIED
    for zone in [*z.above, *z.below]:
        assert finite([zone.price_low, zone.price_high, zone.peak_price, zone.notional, zone.distance_pct])
        assert 0 < zone.price_low < zone.price_high and 0 < zone.intensity <= 1
    for curve in (z.long_curve, z.short_curve):
        assert len(curve.price) == len(curve.notional) and finite(curve.price) and finite(curve.notional)


def check_grid(g: pb.Grid, rows: int, columns: int, high: float = math.inf) -> None:
    assert (g.rows, g.columns) == (rows, columns) and len(g.data) == 4 * rows * columns
    values = np.frombuffer(g.data, dtype="<f4")
    assert finite(values) and (values >= 0).all() and (values <= high).all()


def check_heatmap(h: pb.Heatmap, v: pb.View, req) -> None:
    rows, columns = v.rows or 400, h.long_notional.columns
    assert 1 <= columns <= (v.columns or 288)
    for g in (h.long_notional, h.short_notional):
        check_grid(g, rows, columns)
    edges = np.asarray(h.price_edges)
    assert len(edges) == rows + 1 and finite(edges) and (edges > 0).all() and (np.diff(edges) > 0).all()
    if v.HasField("price_range"):
        assert edges[0] == pytest.approx(v.price_range.low) and edges[-1] == pytest.approx(v.price_range.high)
    assert len(h.column_times) == columns and finite([h.current_price, h.v_max])
    assert len(h.tiers) == (TIERS if req.include_tiers else 0)
    for t in h.tiers:
        check_grid(t.long_notional, rows, columns)
    assert h.HasField("long_intensity") == req.include_intensity
    if req.include_intensity:
        check_grid(h.long_intensity, rows, columns, high=1.0)
    assert h.HasField("candles") == req.include_candles


def still_serving(stack: Stack) -> None:
    """After whatever came before, the server answers an ordinary request."""
    z = stack.stub.GetZones(pb.GetZonesRequest(view=view()), timeout=30).zones
    assert z.market == "binance:BTCUSDT" and z.price > 0


@settings(FUZZ, max_examples=120)
@given(v=views(), zopts=zone_options())
@example(v=view(rows=MAX_ROWS, columns=MAX_CELLS // MAX_ROWS), zopts=None)
@example(v=view(lookback="x" * 100_000), zopts=None)       # echoed whole: trailers past the client's 16 kB limit
@example(v=view("binance:" + "x" * 100_000), zopts=None)   # (RESOURCE_EXHAUSTED instead of the error itself)
@example(v=view(rows=MAX_ROWS + 1, columns=2**32 - 1), zopts=pb.ZoneOptions(top=101, threshold=math.nan))
def test_get_zones(stack, v, zopts):
    req = pb.GetZonesRequest(view=v, zone_options=zopts)
    resp = check_outcome(lambda: stack.stub.GetZones(req, timeout=60), req, [problems(v)], option_problems(zopts),
                         engine_may_refuse=v.HasField("price_range"))
    if resp is not None:
        check_zones(resp.zones, v, zopts)
    still_serving(stack)


@st.composite
def heatmap_requests(draw, stream: bool = False):
    cls = pb.StreamHeatmapRequest if stream else pb.GetHeatmapRequest
    req = cls(view=draw(views(valid_market=draw(st.booleans()))), include_tiers=draw(st.booleans()),
              include_candles=draw(st.booleans()), include_intensity=draw(st.booleans()))
    if stream:
        req.zones_only = draw(st.booleans())
    zopts = draw(zone_options())
    if zopts is not None:
        req.zone_options.CopyFrom(zopts)
    if draw(st.booleans()):
        req.boost = draw(st.floats(0, 1, exclude_min=True) | st.floats()
                         | st.sampled_from([0.0, 5e-324, 1.0, 1.0000000000000002, -1.0]))
    return req


def heatmap_problems(req):
    zopts = req.zone_options if req.HasField("zone_options") else None
    return [problems(req.view, per_tier=req.include_tiers)], option_problems(
        zopts, req.boost if req.HasField("boost") else None)


@settings(FUZZ, max_examples=80)
@given(req=heatmap_requests())
@example(req=pb.GetHeatmapRequest(view=view(rows=200, columns=200), include_tiers=True, include_intensity=True,
                                  include_candles=True, boost=1e-300))
@example(req=pb.GetHeatmapRequest(view=view(rows=1, columns=1, price_range=pb.PriceRange(low=1e-300, high=1e300)),
                                  include_intensity=True))   # high / low overflows: NaN price edges, served as OK
@example(req=pb.GetHeatmapRequest(view=view(rows=50, columns=10, price_range=pb.PriceRange(low=1e150, high=1e160))))
# ^ row centres sqrt(edge * next edge) overflow: infinite zone curve prices, served as OK
def test_get_heatmap(stack, req):
    found, bad = heatmap_problems(req)
    resp = check_outcome(lambda: stack.stub.GetHeatmap(req, timeout=60), req, found, bad,
                         engine_may_refuse=req.view.HasField("price_range"))
    if resp is not None:
        check_heatmap(resp.heatmap, req.view, req)
        check_zones(resp.zones, req.view, req.zone_options if req.HasField("zone_options") else None)
    still_serving(stack)


def first_message(stream_call):
    """The stream's first message; the call is cancelled after it."""
    try:
        return next(stream_call)
    finally:
        stream_call.cancel()


@settings(FUZZ, max_examples=50)
@given(req=heatmap_requests(stream=True))
def test_stream_heatmap(stack, req):
    found, bad = heatmap_problems(req)
    msg = check_outcome(lambda: first_message(stack.stub.StreamHeatmap(req, timeout=60)), req, found, bad,
                        engine_may_refuse=req.view.HasField("price_range"))
    if msg is not None:
        assert msg.kind == pb.UPDATE_KIND_SNAPSHOT
        check_zones(msg.zones, req.view, req.zone_options if req.HasField("zone_options") else None)
        assert msg.HasField("heatmap") != req.zones_only
        if not req.zones_only:
            check_heatmap(msg.heatmap, req.view, req)
    still_serving(stack)


# Views drawn mostly from a few valid ones (so that many of them still compute quickly).
POOL = [view(m, lb, rows=r, columns=c) for m in SERVED for lb in LOOKBACKS for r, c in ((50, 20), (400, 288))]


@settings(FUZZ, max_examples=50)
@given(vs=st.lists(st.sampled_from(POOL) | views(), max_size=MAX_VIEWS + 3), zopts=zone_options())
@example(vs=[view()] * (MAX_VIEWS + 1), zopts=None)
@example(vs=[view(), view("binance:NOPEUSDT"), view("nope")], zopts=pb.ZoneOptions(top=2**32 - 1))
def test_stream_zones(stack, vs, zopts):
    req = pb.StreamZonesRequest(views=vs, zone_options=zopts)
    if not 1 <= len(vs) <= MAX_VIEWS:
        found, bad = [], {"views"}
    else:
        found, bad = [problems(v, f"views[{i}]") for i, v in enumerate(vs)], option_problems(zopts)
    msg = check_outcome(lambda: first_message(stack.stub.StreamZones(req, timeout=60)), req, found, bad,
                        engine_may_refuse=any(v.HasField("price_range") for v in vs))
    if msg is not None:
        assert msg.kind == pb.UPDATE_KIND_SNAPSHOT
        assert [r.view_index for r in msg.reports] == list(range(len(vs)))
        for r in msg.reports:
            check_zones(r.zones, vs[r.view_index], zopts)
    still_serving(stack)


def test_list_markets_ignores_what_it_does_not_know(stack):
    raw = stack.channel.unary_unary("/heatsvc.v1.HeatmapService/ListMarkets")
    # unknown fields (numbers 1..3, every wire type) are skipped, as proto3 requires
    data = raw(b"\x08\x01\x12\x03abc\x1d\x00\x00\x80\x7f", timeout=10)
    assert {m.market for m in pb.ListMarketsResponse.FromString(data).markets} == set(SERVED)


METHODS = {"GetZones": pb.GetZonesRequest, "GetHeatmap": pb.GetHeatmapRequest, "ListMarkets": pb.ListMarketsRequest,
           "StreamHeatmap": pb.StreamHeatmapRequest, "StreamZones": pb.StreamZonesRequest}


@st.composite
def damaged_requests(draw):
    """Raw request bytes: garbage, or a real serialized request truncated, with bytes flipped or spliced."""
    method = draw(st.sampled_from(sorted(METHODS)))
    if draw(st.booleans()):
        return method, draw(st.binary(max_size=200))
    if method in ("GetHeatmap", "StreamHeatmap"):
        data = draw(heatmap_requests(stream=method == "StreamHeatmap")).SerializeToString()
    elif method == "StreamZones":
        data = pb.StreamZonesRequest(views=draw(st.lists(st.sampled_from(POOL), min_size=1, max_size=3))
                                     ).SerializeToString()
    else:
        data = pb.GetZonesRequest(view=draw(st.sampled_from(POOL)), zone_options=draw(zone_options())
                                  ).SerializeToString()
    data = data[:min(len(data), 4096)]
    cut = draw(st.integers(0, len(data)))
    action = draw(st.sampled_from(["truncate", "flip", "splice"]))
    if action == "truncate":
        return method, data[:cut]
    if action == "flip" and data:
        i = min(cut, len(data) - 1)
        return method, data[:i] + bytes([data[i] ^ draw(st.integers(1, 255))]) + data[i + 1:]
    return method, data[:cut] + draw(st.binary(min_size=1, max_size=20)) + data[cut:]


@settings(FUZZ, max_examples=150)
@given(damaged=damaged_requests())
@example(damaged=("GetZones", b"\x0a\xff\xff\xff\xff\x0f"))                  # a length far past the end
@example(damaged=("GetZones", b"\x0a\x07\x0a\x05\xff\xfe\xfd\xfc\xfb"))      # market not UTF-8
@example(damaged=("GetZones", b"\x0a\x0b\x18\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01"))  # rows = -1 as a varint
@example(damaged=("StreamZones", b"\x0a\x00" * 100_000))                     # 100,000 empty views
def test_damaged_request_bytes(stack, damaged):
    method, data = damaged
    path = f"/heatsvc.v1.HeatmapService/{method}"
    streaming = method.startswith("Stream")
    try:
        if streaming:
            first_message(stack.channel.unary_stream(path)(data, timeout=60))
        else:
            stack.channel.unary_unary(path)(data, timeout=60)
    except grpc.RpcError as err:
        check_error(err)
        try:
            METHODS[method].FromString(data)
        except Exception:   # noqa: BLE001 - any parse failure must have been named as the request
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert [f for f, _ in field_violations(err)] == ["request"]
    still_serving(stack)


# ---- exchange clients against a hostile HTTP server --------------------------------------------

NOW = END - DAY + 150_000                    # replay clock: half-way through a bar
CUR = NOW // STEP * STEP
ENDPOINTS = {
    "binance": ["/fapi/v1/klines", "/futures/data/openInterestHist", "/futures/data/topLongShortPositionRatio",
                "/fapi/v1/openInterest", "/fapi/v1/premiumIndex", "/fapi/v1/exchangeInfo"],
    "bybit": ["/v5/market/kline", "/v5/market/open-interest", "/v5/market/account-ratio", "/v5/market/tickers",
              "/v5/market/instruments-info"],
    "okx": ["/api/v5/market/history-candles", OI_PATH, RATIO_PATH, "/api/v5/public/open-interest",
            "/api/v5/public/mark-price", "/api/v5/public/instruments"],
}
BODY_LIMIT = 256 << 10                       # the fuzzed clients' max_body_bytes, so huge bodies stay cheap


class Hostile(ThreadingHTTPServer):
    """Answers GETs with what the current example scripted per path (status, body, chunked or not);
    paths it has no rule for get the replay exchange's real answer (fetched once, cached). A body may
    also be an iterator of pieces (sent chunked, or under a `declared` Content-Length); `sent` counts
    the body bytes written."""

    daemon_threads = True

    def __init__(self, upstream: str):
        super().__init__(("127.0.0.1", 0), HostileHandler)
        self.upstream = upstream
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.rules: dict[str, Callable[[int, bytes], tuple[int, bytes]]] = {}
        self.chunked = False
        self.declared: int | None = None
        self.sent = 0
        self.cache: dict[str, tuple[int, bytes]] = {}
        self.lock = threading.Lock()

    def handle_error(self, request, client_address) -> None:
        if not isinstance(sys.exc_info()[1], ConnectionError):   # clients hanging up early are expected here
            super().handle_error(request, client_address)

    def real(self, path: str) -> tuple[int, bytes]:
        with self.lock:
            if path not in self.cache:
                try:
                    with urllib.request.urlopen(self.upstream + path, timeout=10) as r:
                        self.cache[path] = (r.status, r.read())
                except urllib.error.HTTPError as exc:
                    self.cache[path] = (exc.code, exc.read())
            return self.cache[path]


class HostileHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        server: Hostile = self.server  # type: ignore[assignment]
        path = urllib.parse.urlsplit(self.path).path
        rule = next((r for p, r in server.rules.items() if path.endswith(p)), None)
        status, body = server.real(self.path)
        if rule is not None:
            status, body = rule(status, body)
        pieces = [body[i:i + 65536] for i in range(0, len(body), 65536)] if isinstance(body, bytes) else body
        length = len(body) if isinstance(body, bytes) else server.declared
        chunked = server.chunked or length is None
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header(*(("Transfer-Encoding", "chunked") if chunked else ("Content-Length", str(length))))
            self.end_headers()
            for piece in pieces:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                self.wfile.flush()
                server.sent += len(piece)
            if chunked:
                self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - keep test output quiet
        pass


@pytest.fixture(scope="module")
def hostile():
    data = {f"{e}:BTCUSDT": synthetic_bars("BTCUSDT", e, days=2, end_ms=END) for e in ENDPOINTS}
    okx = {path: (10_000, 2.0) for path in Limits().okx_requests}
    with ReplayExchange(datasets=data, start_ms=NOW, limits=Limits(okx_requests=okx)) as rx:
        server = Hostile(rx.url)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        yield server
        server.shutdown()
        server.server_close()


def fuzzed_client(server: Hostile, exchange: str):
    kw = dict(timeout_s=2.0, max_retries=1, backoff_s=0.001, backoff_cap_s=0.002, max_wait_s=0.01,
              ban_probe_s=0.01, ban_cap_s=0.01, max_body_bytes=BODY_LIMIT, now_ms=lambda: NOW, seed=1)
    extra = {"binance": {"archive_url": f"{server.url}/binance-archive", "weight_limit": 10**9},
             "bybit": {"requests_per_5s": 10**6}, "okx": {"limits": {p: 10**6 for p in OKX_LIMITS}}}[exchange]
    return make_client(exchange, f"{server.url}/{exchange}", **kw, **extra)


scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | st.text(max_size=12)
           | st.sampled_from([10**400, -10**400, 2**63, -2**63 - 1, 0, -1, 1e308, 5e-324, "", "NaN", "-Infinity",
                              "1e999", "-1", "0", "1e-320", "0x10", " 7 ", "1_000", "\u0663", "null", "[]"]))
json_values = st.recursive(scalars, lambda kids: st.lists(kids, max_size=4)
                           | st.dictionaries(st.text(max_size=8), kids, max_size=4), max_leaves=8)


def nodes(tree, out=None) -> list:
    """(container, key) of every node below the root, depth first."""
    out = [] if out is None else out
    items = enumerate(tree) if isinstance(tree, list) else tree.items() if isinstance(tree, dict) else ()
    for key, child in items:
        out.append((tree, key))
        nodes(child, out)
    return out


def mutate(edits):
    """A rule replacing chosen nodes of the real JSON answer by hostile values."""
    def rule(status, body):
        tree = json.loads(body)
        for i, value in edits:
            found = nodes(tree)
            if found:
                container, key = found[i % len(found)]
                container[key] = value
        return status, json.dumps(tree, allow_nan=True).encode()
    return rule


def deep(n: int, closed: bool) -> bytes:
    return b"[" * n + (b"]" * n if closed else b"")


bodies = st.one_of(
    st.binary(max_size=64),
    json_values.map(lambda v: json.dumps(v, allow_nan=True).encode()),
    st.builds(deep, st.sampled_from([100, 5_000, 200_000]), st.booleans()),
    st.builds(lambda n: b'{"a":' * n, st.sampled_from([5_000, 200_000])),
    st.builds(lambda n: b"[" + b"[1]," * n + b"[1]]", st.sampled_from([BODY_LIMIT // 4 - 2, 1_000_000])),
    st.sampled_from([b"", b"null", b"NaN", b"-Infinity", b"{}", b"[]", b"[[]]", b'{"code":0}', b'{"retCode":0}',
                     b'{"code":"0","data":{}}', b'{"retCode":0,"result":[]}', b"\xff\xfe\x00", b"<html>",
                     "[\"\u00e9\"]".encode("latin-1"), b"[1e400]", b"[" + b"9" * 5000 + b"]"]),
)
rules = st.one_of(
    st.builds(mutate, st.lists(st.tuples(st.integers(0, 10**6), json_values), min_size=1, max_size=4)),
    st.builds(lambda body: (lambda status, _: (status, body)), bodies),
    st.builds(lambda f: (lambda status, body: (status, body[:int(len(body) * f)])), st.floats(0, 1)),
    st.builds(lambda code, body: (lambda *_: (code, body)),
              st.sampled_from([301, 400, 403, 404, 418, 429, 500, 503]), bodies),
)


def check_bars(bars, start: int, end: int) -> None:
    assert set(bars) == set(FIELDS)
    if len(bars["time_ms"]):
        check(bars, market="fuzzed")
        assert start <= bars["time_ms"][0] and bars["time_ms"][-1] < end


def check_clear(exc: BaseException, exchange: str) -> None:
    """An exchange failure the refresher understands, whose message names the exchange and the trouble
    (and stays short: it ends up in logs and in ListMarkets' last_error)."""
    assert isinstance(exc, (ExchangeError, ExchangeUnavailable)), f"{type(exc).__name__}: {exc}"
    message = str(exc)
    assert message.startswith(f"{exchange}: ") and len(exchange) + 10 < len(message) <= 1000, message[:2000]


async def call_client(server: Hostile, exchange: str, method: str):
    c = fuzzed_client(server, exchange)
    try:
        start, end = CUR - 12 * STEP, CUR
        if method == "fetch_bars":
            check_bars(await c.fetch_bars("BTCUSDT", start, end), start, end)
        elif method == "fetch_live":
            bars, oi, price = await c.fetch_live("BTCUSDT")
            check_bars(bars, 0, 2**62)
            assert len(bars["time_ms"]) <= 1 and isinstance(oi, float) and isinstance(price, float)
        else:
            assert await c.check_symbol("BTCUSDT") is None
        return "OK"
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions come out
        check_clear(exc, exchange)
        return type(exc).__name__
    finally:
        await c.aclose()


@st.composite
def scripts(draw):
    """(exchange, method, chunked, {path: rule}): which call, and how the server spoils its answers."""
    exchange = draw(st.sampled_from(sorted(ENDPOINTS)))
    method = draw(st.sampled_from(["fetch_bars", "fetch_live", "check_symbol"]))
    return exchange, method, draw(st.booleans()), draw(st.dictionaries(st.sampled_from(ENDPOINTS[exchange]), rules,
                                                                         max_size=3))


def served(body: bytes, status: int | None = None):
    """A rule answering `body`, with `status` or else the real answer's status."""
    return lambda real_status, _: (status or real_status, body)


def stats_rows(key: str, values: list) -> bytes:
    """Binance statistics rows ending at the fetched bars, with the given values."""
    return json.dumps([{"timestamp": CUR - i * STEP, key: v} for i, v in enumerate(values)]).encode()


KLINE = ["1", "2", "0.5", "1.5", "10", 0, "15", 7, "5", "7.5", "0"]   # a Binance kline row after its open time


@settings(FUZZ, max_examples=300)
@given(script=scripts())
# Each example but the last crashed before the fixes (found by this test); the last one checks the size limit.
@example(script=("binance", "fetch_bars", False, {"/fapi/v1/klines": served(b"null")}))   # Retry escaped
@example(script=("binance", "fetch_bars", False, {"/fapi/v1/klines": served(b"[{}]")}))   # KeyError: 0
@example(script=("binance", "fetch_bars", False,                                          # OverflowError (int64)
                 {"/fapi/v1/klines": served(json.dumps([[10**30, *KLINE]]).encode())}))
@example(script=("binance", "fetch_bars", False,                         # statistics times and values of unequal
                 {"/futures/data/openInterestHist": served(stats_rows("sumOpenInterest", ["1", [], "1"]))}))  # length
@example(script=("binance", "fetch_bars", False, {"/futures/data/openInterestHist": served(b"null")}))  # Retry escaped
@example(script=("binance", "check_symbol", False, {"/fapi/v1/exchangeInfo": served(b'{"symbols":[null]}')}))
@example(script=("binance", "fetch_live", False, {"/fapi/v1/openInterest": served(b'{"openInterest":[]}')}))
@example(script=("binance", "fetch_live", False, {"/fapi/v1/premiumIndex": served(b'{"markPrice":"abc"}')}))
@example(script=("binance", "fetch_bars", False, {"/fapi/v1/klines": served(b'{"a":' * 100_000)}))  # RecursionError
@example(script=("bybit", "fetch_bars", False,                                            # OverflowError (int64)
                 {"/v5/market/kline": served(b'{"retCode":0,"result":{"list":[[9.3e18,"1","1","1","1","1","1"]]}}')}))
@example(script=("bybit", "fetch_bars", False, {"/v5/market/kline": served(b'{"retCode":0,"result":{"list":null}}')}))
@example(script=("bybit", "fetch_bars", False, {"/v5/market/kline": served(b'{"retCode":[]}')}))  # unhashable list
@example(script=("bybit", "fetch_live", False, {"/v5/market/tickers": served(b'{"retCode":0,"result":{"list":[1]}}')}))
@example(script=("bybit", "check_symbol", False, {"/v5/market/instruments-info": served(  # 200 kB message
    json.dumps({"retCode": 10001, "retMsg": "x" * 200_000}).encode())}))
@example(script=("okx", "fetch_bars", False, {OI_PATH: served(b'{"code":"0","data":[{}]}')}))  # KeyError: 0
@example(script=("okx", "fetch_live", False, {"/api/v5/public/open-interest": served(b'{"code":"0","data":[1]}')}))
@example(script=("okx", "check_symbol", False, {"/api/v5/public/instruments": served(b'{"code":"0","data":[1]}')}))
@example(script=("okx", "fetch_bars", True,                                               # 1.2 MB, chunked
                 {"/api/v5/market/history-candles": served(b"[" + b"[1]," * 300_000 + b"1]")}))
def test_exchange_answers(hostile, script):
    exchange, method, chunked, scripted = script
    hostile.rules, hostile.chunked = scripted, chunked
    event(f"{exchange} {method}: {asyncio.run(call_client(hostile, exchange, method))}")


# ---- the Binance metrics archive -----------------------------------------------------------------

DAY_NAME = "2025-10-15"
ARCHIVE = f"/data/futures/um/daily/metrics/BTCUSDT/BTCUSDT-metrics-{DAY_NAME}.zip"
COLUMNS = ("create_time,symbol,sum_open_interest,sum_open_interest_value,count_toptrader_long_short_ratio,"
           "sum_toptrader_long_short_ratio,count_long_short_ratio,sum_taker_long_short_vol_ratio")
METHODS_ZIP = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]


def metrics_csv(values: list[list[str]], header: bool = True) -> bytes:
    lines = [f"{DAY_NAME} 00:{5 * (i % 12):02d}:00,BTCUSDT," + ",".join(v) for i, v in enumerate(values)]
    return "\n".join([COLUMNS] * header + lines).encode()


cells = st.sampled_from(["1", "0", "", "-1", "nan", "inf", "1e999", "abc", "1.5", " 2 ", "\u0663"]) | st.text(
    max_size=6)
contents = st.one_of(
    st.builds(metrics_csv, st.lists(st.lists(cells, min_size=0, max_size=7), max_size=20), st.booleans()),
    st.sampled_from([b"a,b,c\n1,2,3\n", b"\xff\xfe\xfd\n", COLUMNS.encode() + b"\n" + b"\x80abc,\xc3(\n",
                     b"create_time\n2025-13-45 99:99:99\n", b'"unterminated\n' * 3]),
    st.binary(max_size=200),
    st.builds(lambda unit, n: unit * n, st.sampled_from([b"\n", b"x\n", b",", b"\0", b"\r"]),
              st.sampled_from([1000, 300_000, ARCHIVE_MAX_BYTES + 1])),
)
names = st.sampled_from([f"BTCUSDT-metrics-{DAY_NAME}.csv", "../../x", "/etc/passwd", "a/../../b.csv", "dir/",
                         "\u00e9t\u00e9.csv", ""]) | st.text(max_size=12)


def build_zip(members: list, extra: int) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, method, content in members:
            info = zipfile.ZipInfo(name or "-")
            info.compress_type = method
            zf.writestr(info, content)
        for i in range(extra):                   # many (empty) members
            zf.writestr(f"m{i}.csv", b"")
    return buf.getvalue()


def lie(data: bytes, size: int) -> bytes:
    """The zip with its first member's uncompressed size replaced in both headers."""
    out = bytearray(data)
    central = out.find(b"PK\x01\x02")
    if out[:4] == b"PK\x03\x04" and central > 0:
        struct.pack_into("<I", out, 22, size)
        struct.pack_into("<I", out, central + 24, size)
    return bytes(out)


@st.composite
def archives(draw) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=300))                                     # not a zip at all
    data = build_zip(draw(st.lists(st.tuples(names, st.sampled_from(METHODS_ZIP), contents), max_size=3)),
                     draw(st.sampled_from([0, 0, 0, 1000])))
    damage = draw(st.sampled_from(["none", "truncate", "flip", "lie"]))
    at = draw(st.integers(0, max(0, len(data) - 1)))
    if damage == "truncate":
        return data[:at]
    if damage == "flip" and data:
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1:]
    if damage == "lie":
        return lie(data, draw(st.sampled_from([0, 1, 1000, (1 << 20) - 1, 1 << 20, 2**32 - 1])))
    return data


# hostile archives hypothesis found (kept as explicit examples)
NEGATIVE_OFFSET_ZIP = b'PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00!\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0b\x00\x00\x00/etc/passwdPK\x01\x02\x14\x03\x14\x00\x00\x00\x00\x00\x00\x00!\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x0b\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x01\x00\x00\x00\x00/etc/passwdPK\x05\x06\x00\x00\x00\x00\x01\x00\x01\x009\x00\x00\x00+\x00\x00\x00\x00\x00'  # a central directory pointing before the file: zipfile raises ValueError
UNSUPPORTED_VERSION_ZIP = b'PK\x03\x04.\x00\x00\x00\x0c\x00\x00\x00!\x00(\x06\x82\xee-\x00\x00\x00\xe8\x03\x00\x00\x07\x00\x00\x00../../xBZh91AY&SY#\xc1\xe1\xf4\x00\x00\x01\xc0\x01\x80\x10\x00\x80\x00\x08 \x00 \xaamA\x98\xba\x83\xc5\xdc\x91N\x14$\x08\xf0x}\x00PK\x03\x04\x14\x00\x00\x00\x00\x00\x00\x00!\x00\xff\x12\xd9A\x02\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00-\x00\x00PK\x03\x04\x14\x00\x00\x00\x08\x00\x00\x00!\x00\xff\x12\xd9A\x04\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00-c`\x00\x00PK\x01\x02.\x03.\x00\x00\x00\x0c\x00\x00\x00!\x00(\x06\x82\xee-\x00\x00\x00\xe8\x03\x00\x00\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x01\x00\x00\x00\x00../../xPK\x01\x02\x14\x03\x14\x00\x00\x00\x00\x00\x00\x00!\x00\xff\x12\xd9A\x02\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x01R\x00\x00\x00-PK\x01\x02\x14\x03T\x00\x00\x00\x08\x00\x00\x00!\x00\xff\x12\xd9A\x04\x00\x00\x00\x02\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x80\x01s\x00\x00\x00-PK\x05\x06\x00\x00\x00\x00\x03\x00\x03\x00\x93\x00\x00\x00\x96\x00\x00\x00\x00\x00'  # a member needing zip version 8.4: zipfile raises NotImplementedError


async def archive_day(server: Hostile):
    c = fuzzed_client(server, "binance")
    try:
        rows = await c.archive_day("BTCUSDT", DAY_NAME)
        assert len(rows) <= ARCHIVE_MAX_ROWS
        for t, oi, ratio in rows:
            assert isinstance(t, int) and isinstance(oi, float) and isinstance(ratio, float)
            assert not oi <= 0 and not ratio <= 0       # positive or NaN (missing)
        return "OK"
    except Exception as exc:  # noqa: BLE001 - the property is about which exceptions come out
        check_clear(exc, "binance")
        return type(exc).__name__
    finally:
        await c.aclose()


@pytest.mark.filterwarnings("ignore:Duplicate name")
@settings(FUZZ, max_examples=150)
@given(data=archives())
@example(data=lie(build_zip([("a.csv", zipfile.ZIP_BZIP2, b"\0" * (3 << 20))], 0), 1000))   # inflated whole
@example(data=build_zip([("a.csv", zipfile.ZIP_DEFLATED, b"x\n" * 300_000)], 0))            # 300,000 rows
@example(data=NEGATIVE_OFFSET_ZIP)
@example(data=UNSUPPORTED_VERSION_ZIP)
def test_archive_day(hostile, data):
    hostile.rules, hostile.chunked = {ARCHIVE: served(data, 200)}, False
    event(asyncio.run(archive_day(hostile)))


# ---- bounded downloads and archives: memory measured ------------------------------------------

def peak_of(fn):
    """fn()'s result and the peak of memory Python allocated while it ran (tracemalloc, every thread)."""
    tracemalloc.start()
    try:
        return fn(), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def endless(piece: bytes, count: int, pause_s: float = 0.0):
    """`count` times `piece` (a stream the client is expected to abandon long before its end)."""
    for _ in range(count):
        if pause_s:
            time.sleep(pause_s)
        yield piece


@pytest.mark.parametrize("declared", [None, 1 << 30])
def test_a_1_gb_answer_is_refused_without_reading_it(hostile, declared):
    """1 GB of JSON, chunked or under an honest Content-Length: refused after MAX_BODY_BYTES at most."""
    hostile.rules = {"/fapi/v1/klines": lambda status, _: (200, endless(b"[1," * 21_845 + b"1],", 16_384))}
    hostile.chunked, hostile.declared, hostile.sent = False, declared, 0

    async def fetch():
        c = make_client("binance", f"{hostile.url}/binance", max_retries=0, timeout_s=10, now_ms=lambda: NOW)
        try:
            await c.fetch_bars("BTCUSDT", CUR - 12 * STEP, CUR)
        except ExchangeError as exc:
            return exc
        finally:
            await c.aclose()

    error, peak = peak_of(lambda: asyncio.run(fetch()))
    print(f"1 GB answer (declared {declared}): peak {peak / 2**20:.1f} MiB, server sent {hostile.sent / 2**20:.1f} "
          f"MiB before the client hung up")
    assert isinstance(error, ExchangeError) and error.kind == "too_large", error
    assert "/fapi/v1/klines" in str(error) and str(MAX_BODY_BYTES) in str(error)
    assert peak < 3 * MAX_BODY_BYTES                       # the chunks kept, then joined: never the whole GB
    assert hostile.sent < 8 * MAX_BODY_BYTES              # what sat in socket buffers when the client left


def test_an_answer_dripping_forever_ends_in_a_timeout(hostile):
    """One byte every 0.1 s never trips a per-read timeout; the whole-answer limit (3 x timeout_s) ends it."""
    hostile.rules = {"/fapi/v1/premiumIndex": lambda status, _: (200, endless(b" ", 600, pause_s=0.1))}
    hostile.chunked, hostile.declared = False, None

    async def fetch():
        c = make_client("binance", f"{hostile.url}/binance", max_retries=0, timeout_s=0.5, now_ms=lambda: NOW)
        try:
            await c.fetch_live("BTCUSDT")
        except ExchangeUnavailable as exc:
            return exc
        finally:
            await c.aclose()

    error = asyncio.run(fetch())
    assert isinstance(error, ExchangeUnavailable), error
    assert "/fapi/v1/premiumIndex" in str(error) and "timeout (ReadTimeout)" in str(error)


@cache
def bomb(method: int, size: int) -> bytes:
    """A one-member metrics zip of `size` zero bytes, written in pieces."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo(f"BTCUSDT-metrics-{DAY_NAME}.csv")
        info.compress_type = method
        with zf.open(info, "w") as member:
            for _ in range(size >> 20):
                member.write(bytes(1 << 20))
    return buf.getvalue()


BOMBS = {   # name: (method, inflated size, size the headers claim)
    "deflate, honest headers": (zipfile.ZIP_DEFLATED, 256 << 20, None),
    "deflate, headers claim 1 kB": (zipfile.ZIP_DEFLATED, 256 << 20, 1000),
    "deflate, headers claim just under the cap": (zipfile.ZIP_DEFLATED, 256 << 20, ARCHIVE_MAX_BYTES - 1),
    "bzip2, headers claim 1 kB": (zipfile.ZIP_BZIP2, 64 << 20, 1000),
    "lzma, headers claim 1 kB": (zipfile.ZIP_LZMA, 32 << 20, 1000),
}


@pytest.mark.parametrize("name", BOMBS)
def test_zip_bombs_are_refused_in_bounded_memory(hostile, name):
    method, size, claimed = BOMBS[name]
    data = bomb(method, size) if claimed is None else lie(bomb(method, size), claimed)
    hostile.rules, hostile.chunked, hostile.declared = {ARCHIVE: served(data, 200)}, False, None
    outcome, peak = peak_of(lambda: asyncio.run(archive_day(hostile)))
    print(f"zip bomb, {name}: {len(data)} B inflating to {size >> 20} MiB -> {outcome}, peak {peak / 2**20:.1f} MiB")
    assert outcome == "ExchangeError"
    assert peak < 8 * ARCHIVE_MAX_BYTES <= size / 4


def test_archives_of_many_rows_or_files_are_refused_in_bounded_memory(hostile):
    for data in (build_zip([("a.csv", zipfile.ZIP_DEFLATED, b"x\n" * 400_000)], 0),       # 400,000 rows
                 build_zip([("a.csv", zipfile.ZIP_DEFLATED, b",,,,\n" * 150_000)], 0),
                 build_zip([], 5000)):                                                     # 5,000 files
        hostile.rules, hostile.chunked, hostile.declared = {ARCHIVE: served(data, 200)}, False, None
        outcome, peak = peak_of(lambda: asyncio.run(archive_day(hostile)))
        print(f"archive of {len(data)} B -> {outcome}, peak {peak / 2**20:.1f} MiB")
        assert outcome == "ExchangeError" and peak < 16 * ARCHIVE_MAX_BYTES
