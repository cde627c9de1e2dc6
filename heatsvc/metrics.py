"""Prometheus metrics for operators, served over HTTP by prometheus-client when [server]
metrics_listen is set (default registry, so its process_* metrics come along).

Labels only take values from the configuration (markets, lookbacks, exchanges) or fixed sets
(kinds, statuses, methods), never anything a client sends, so the number of series stays bounded.
The refresher, the exchange clients and the service update these; the engine knows nothing of them.
"""
from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import Counter, Enum, Gauge, Histogram, make_wsgi_app

FETCH_ERROR_KINDS = ("rate_limited", "banned", "server_error", "timeout", "connection", "malformed",
                     "truncated", "too_large", "refused", "other")
MARKET_STATUSES = ("loading", "ok", "degraded", "failing")

REFRESH_LAG = Gauge("heatsvc_refresh_lag_seconds",
                    "Seconds since the newest stored closed bar of the market closed", ["market"])
MARKET_STATUS = Enum("heatsvc_market_status", "The market's data status", ["market"], states=list(MARKET_STATUSES))
REFRESHES = Counter("heatsvc_refreshes_total", "Market loads and refreshes, by result (ok, failed)",
                    ["market", "result"])
FETCH_ERRORS = Counter("heatsvc_fetch_errors_total",
                       "Failed exchange HTTP attempts (retried ones included), by kind", ["exchange", "kind"])
HELD_UNTIL = Gauge("heatsvc_exchange_held_until_seconds",
                   "Unix time until which heatsvc sends nothing to the exchange (a ban or a demanded pause)",
                   ["exchange"])
HOLDS = Counter("heatsvc_exchange_holds_total", "Bans and demanded pauses the exchange imposed, by kind",
                ["exchange", "kind"])
REJECTED_ROWS = Counter("heatsvc_rejected_rows_total", "Exchange rows dropped as invalid", ["market"])
ACTIVE_STREAMS = Gauge("heatsvc_active_streams", "Open update streams, by RPC method", ["method"])
COALESCED_UPDATES = Counter("heatsvc_coalesced_updates_total",
                            "Stream updates slow subscribers skipped (they get one snapshot of the latest instead)")
VIEW_COMPUTE = Histogram("heatsvc_view_compute_seconds", "Time to load the bars of a view and compute it",
                         ["market", "lookback"])
WEBHOOK_DELIVERIES = Counter("heatsvc_webhook_deliveries_total",
                             "Zone-event messages a webhook was sent, by result: ok, failed (after every retry), "
                             "dropped (coalesced away while the endpoint was slow)", ["webhook", "result"])
WEBHOOK_ATTEMPT_ERRORS = Counter("heatsvc_webhook_attempt_errors_total",
                                 "Failed webhook POST attempts, retried ones included", ["webhook"])
RECORDER_STATES = ("connecting", "live", "silent", "backoff")
RECORDER_STATE = Enum("heatsvc_liquidation_recorder_state",
                      "The exchange's liquidation stream: live (heard), silent (connected, nothing heard), "
                      "backoff (waiting to reconnect) or connecting", ["exchange"], states=list(RECORDER_STATES))
RECORDER_EVENTS = Gauge("heatsvc_liquidation_events", "Liquidations received from the exchange since start",
                        ["exchange"])
RECORDER_MALFORMED = Gauge("heatsvc_liquidation_malformed_frames", "Stream frames skipped as malformed since start",
                           ["exchange"])
RECORDER_RECONNECTS = Gauge("heatsvc_liquidation_reconnects", "Stream connections after the first since start",
                            ["exchange"])
RECORDER_COVERED = Gauge("heatsvc_liquidation_covered_seconds",
                         "Seconds of the exchange's stream heard since start (the rest is missing, not zero)",
                         ["exchange"])
ASYNCIO_TASKS = Gauge("heatsvc_asyncio_tasks", "asyncio tasks on the server's event loop")


def market_health(health) -> None:
    """Publish one refresher MarketHealth: its status, and its lag once it has bars."""
    MARKET_STATUS.labels(health.market).state(health.status)
    if health.lag_s is not None:
        REFRESH_LAG.labels(health.market).set(health.lag_s)


def timed(histogram, fn, *args):
    """fn(*args), its duration observed in `histogram` when it succeeds (failures are not views)."""
    start = time.perf_counter()
    result = fn(*args)
    histogram.observe(time.perf_counter() - start)
    return result


@dataclass
class Endpoint:
    """The running /metrics HTTP server (prometheus-client's, in a daemon thread)."""
    server: WSGIServer
    thread: threading.Thread
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args) -> None:  # noqa: A002 - scrapes are not news
        pass


def guarded(app, authorize: Callable[[str], bool]):
    """The WSGI app behind a bearer token: 401 unless `Authorization: Bearer TOKEN` is accepted."""
    def app_with_token(environ, start_response):
        header = environ.get("HTTP_AUTHORIZATION", "")
        if not (header.startswith("Bearer ") and authorize(header[7:])):
            start_response("401 Unauthorized", [("Content-Type", "text/plain; charset=utf-8"),
                                                ("WWW-Authenticate", 'Bearer realm="heatsvc metrics"')])
            return [b"heatsvc metrics need a bearer token (Authorization: Bearer TOKEN)\n"]
        return app(environ, start_response)
    return app_with_token


def start(host: str, port: int, authorize: Callable[[str], bool] | None = None) -> Endpoint:
    """Serve the default registry on host:port (port 0 picks a free one), behind a bearer token when
    `authorize` is given (the service's own tokens); ValueError if it cannot bind."""
    app = make_wsgi_app() if authorize is None else guarded(make_wsgi_app(), authorize)
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        server_class = type("MetricsServer", (ThreadingMixIn, WSGIServer), {"address_family": family,
                                                                           "daemon_threads": True})
        server = make_server(host, port, app, server_class=server_class, handler_class=_Quiet)
    except OSError as exc:
        raise ValueError(f"metrics_listen: cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return Endpoint(server, thread, host, server.server_port)
