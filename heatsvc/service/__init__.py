"""`heatsvc serve`: the heatsvc.v1 gRPC API over the bar store, kept fresh by the refresher.

The heatmaps served are estimates of liquidation levels: market-risk context, not a forecast.
`--demo` runs the replay exchange on loopback (bundled recorded and synthetic data, replayed fast
from 2025-10-10T18:00Z so the crash of 21:20 unfolds live) and serves it on 127.0.0.1:50051.
The server itself lives in heatsvc.service.server; this module only wires it up.
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path

from ..model.engine import BACKENDS

DEMO_START = "2025-10-10T18:00:00Z"
DEMO_SPEED = 100.0           # a 5-minute bar every 3 s
DEMO_LOOKBACKS = ("12h", "1d", "3d", "7d")
DEMO_HISTORY_DAYS = 7.5      # enough for the 7d lookback (and the open interest before it)
DEMO_REFRESH_S = 1.0
DEMO_METRICS = "127.0.0.1:9464"   # the demo's Prometheus endpoint, skipped if the port is taken
DEMO_HL_POLLER_SHARE = 0.1   # at x100 the demo's Hyperliquid candles and samples need most of the budget


def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Options of `heatsvc serve`."""
    parser.add_argument("--config", metavar="FILE", help="TOML configuration (default: live exchanges, "
                                                         "see heatsvc/config.py for every key)")
    parser.add_argument("--demo", action="store_true",
                        help="serve the replay exchange's bundled data on loopback, replayed from "
                             f"{DEMO_START} at x{DEMO_SPEED:g} (lookbacks {', '.join(DEMO_LOOKBACKS)})")
    parser.add_argument("--listen", metavar="HOST:PORT", help="address to serve on (default 127.0.0.1:50051; "
                                                              "port 0 picks a free one)")
    parser.add_argument("--metrics-listen", metavar="HOST:PORT",
                        help="serve Prometheus metrics over HTTP at http://HOST:PORT/metrics (default off; "
                             f"--demo: {DEMO_METRICS} if free)")
    parser.add_argument("--backend", choices=BACKENDS, help="engine backend (default cython)")
    parser.add_argument("--store", metavar="PATH", help="SQLite bar store (demo default: a temporary file)")
    demo = parser.add_argument_group("demo")
    demo.add_argument("--demo-speed", type=float, default=DEMO_SPEED, help="replay speed (default %(default)g)")
    demo.add_argument("--demo-start", default=DEMO_START, help="replay start, ISO (default %(default)s)")
    demo.add_argument("--demo-history-days", type=float, default=DEMO_HISTORY_DAYS,
                      help="days to backfill (default %(default)g)")
    parser.add_argument("--quiet", action="store_true", help="no backfill progress")
    cluster = parser.add_argument_group("cluster (heatsvc.cluster, docs/SCALING.md; needs NATS JetStream)")
    cluster.add_argument("--role", choices=("single", "owner", "edge"), default="single",
                         help="single: everything in this process (default); owner: refresh and compute one "
                              "shard's views and publish them to NATS; edge: serve heatsvc.v1 from NATS")
    cluster.add_argument("--shard", metavar="I/N", help="with --role owner: serve shard I of N (0 <= I < N)")
    cluster.add_argument("--nats", metavar="URL", help="NATS server, e.g. nats://127.0.0.1:4222 (default: [nats] url)")
    cluster.add_argument("--replay-clock", metavar="URL", help=argparse.SUPPRESS)   # heatsvc cluster --demo
    parser.add_argument("--web", nargs="?", const="127.0.0.1:8080", metavar="HOST:PORT",
                        help="also serve the live web page (heatsvc web) there (default 127.0.0.1:8080)")


def run(command: str, args: argparse.Namespace) -> int:
    from .. import config as cfg

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = cfg.load(args.config)
    changes = {k: v for k, v in (("listen", args.listen), ("backend", args.backend), ("store", args.store)) if v}
    config = cfg.with_overrides(config, **changes)
    if args.metrics_listen:
        cfg.address(args.metrics_listen, "--metrics-listen")
        config = cfg.with_overrides(config, metrics_listen=args.metrics_listen)
    if args.role != "single":
        return run_cluster_role(config, args)
    if args.shard or args.nats:
        raise ValueError("--shard and --nats need --role owner or --role edge")
    try:
        return asyncio.run(serve(config, demo=args if args.demo else None, progress=not args.quiet, web=args.web))
    except KeyboardInterrupt:
        return 130


def run_cluster_role(config, args) -> int:
    """`heatsvc serve --role owner|edge`: checked here, run by heatsvc.cluster (which imports nats)."""
    from dataclasses import replace

    from ..config import nats_url

    if args.demo or args.web:
        raise ValueError(f"--role {args.role} takes no --demo or --web (heatsvc cluster --demo runs a demo cluster)")
    if args.nats:
        config = replace(config, nats=replace(config.nats, url=nats_url(args.nats, "--nats")))
    try:
        if args.role == "owner":
            from ..cluster import owner
            from ..cluster.subjects import Shard
            if not args.shard:
                raise ValueError("--role owner needs --shard I/N")
            return asyncio.run(owner.serve(config, Shard.parse(args.shard), clock_url=args.replay_clock,
                                           progress=not args.quiet))
        if args.shard or args.replay_clock:
            raise ValueError("--shard is for --role owner")
        from ..cluster import edge
        return asyncio.run(edge.serve(config))
    except KeyboardInterrupt:
        return 130


def demo_config(config, replay, args, streams=None):
    """The configuration of the demo: the replay's markets and URLs, a fast refresh, short lookbacks;
    with the replay's liquidation `streams`, the recorders point at them."""
    from dataclasses import replace

    from ..config import ExchangeConfig, with_overrides

    by_exchange: dict[str, list[str]] = {}
    for market in replay.markets():
        exchange, _, symbol = market.partition(":")
        by_exchange.setdefault(exchange, []).append(symbol)
    exchanges = tuple(ExchangeConfig(ex, tuple(symbols), replay.base_url(ex),
                                     replay.archive_url() if ex == "binance" else None,
                                     poller_share=DEMO_HL_POLLER_SHARE)
                      for ex, symbols in by_exchange.items())
    if streams is not None:
        exchanges = tuple(replace(ex, ws_url=streams.url(ex.name)) for ex in exchanges)
        config = with_overrides(config, liquidations=replace(config.liquidations, enabled=True))
    return with_overrides(config, exchanges=exchanges, refresh_interval_s=DEMO_REFRESH_S,
                          history_days=args.demo_history_days, lookbacks=DEMO_LOOKBACKS)


def start_metrics(config, *, demo: bool):
    """The Prometheus endpoint at config.metrics_listen, or None when off. The demo uses
    DEMO_METRICS unless told otherwise, and goes on without metrics if that port is taken."""
    from .. import metrics
    from ..config import address
    from .auth import is_loopback

    listen = config.metrics_listen or (DEMO_METRICS if demo else None)
    if listen is None:
        return None
    from .auth import Tokens, load_tokens
    tokens = Tokens(load_tokens(config))   # with tokens, scrapes need one too
    authorize = (lambda token: tokens.name_of(token) is not None) if len(tokens) else None
    try:
        endpoint = metrics.start(*address(listen, "metrics_listen"), authorize)
    except ValueError as exc:
        if config.metrics_listen:
            raise
        print(f"heatsvc: no metrics for the demo ({exc}); choose a port with --metrics-listen", flush=True)
        return None
    print(f"heatsvc: Prometheus metrics at {endpoint.url}", flush=True)
    if not is_loopback(listen):
        logging.getLogger("heatsvc.service").warning(
            "UNSAFE: Prometheus metrics at %s are plain HTTP reachable from other machines, %s", listen,
            "without a token" if authorize is None else "the bearer token travelling unencrypted")
    return endpoint


def start_recording(config, clients, service, now_ms=None):
    """Record the configured exchanges' liquidation streams into the store's file (heatsvc.recording);
    each recorder's state shows in health as `liquidations:EXCHANGE` (SERVING only while live)."""
    from ..liquidation_store import LiquidationStore
    from ..recording import Recording
    from .server import NOT_SERVING, SERVING

    async def health(status):
        for name, s in status.items():
            await service.health.set(f"liquidations:{name}", SERVING if s.state == "live" else NOT_SERVING)

    okx = clients.get("okx")
    lc = config.liquidations
    recording = Recording(LiquidationStore(config.store), config.exchanges, flush_interval_s=lc.flush_interval_s,
                          flush_events=lc.flush_events, retention_days=lc.retention_days,
                          contract_sizes=getattr(okx, "contract_size", None), on_status=health,
                          **({"now_ms": now_ms} if now_ms is not None else {}))
    service.recording = recording
    recording.listeners.append(service.on_liquidations)   # StreamLiquidations
    recording.start()
    print(f"heatsvc: recording liquidations from {', '.join(recording.recorders) or 'no exchange'}", flush=True)
    return recording


def start_hyperliquid(config, client, service, *, now_ms=None, speed: float | None = None):
    """Hyperliquid's sampler, trades stream and positions poller (heatsvc.exchanges.hyperliquid.feeds).
    The poller is `service.pollers["hyperliquid"]`: `.snapshot("HYPE")` is the measured positions; health
    shows `trades:hyperliquid` and `positions:hyperliquid`."""
    from ..exchanges.hyperliquid.feeds import HyperliquidFeeds
    from ..exchanges.hyperliquid.positions import load_addresses
    from ..model.bars import STEP_MS

    ex = next(e for e in config.exchanges if e.name == "hyperliquid")
    addresses = load_addresses(ex.addresses_file) if ex.addresses_file else ()
    if ex.asset_ctxs_files:      # the S3 archive's open interest, for bars before our own sampling
        import glob

        from ..exchanges.hyperliquid.archive import import_asset_ctxs
        files = sorted(f for pattern in ex.asset_ctxs_files for f in glob.glob(pattern))
        rows = import_asset_ctxs(client.samples, files, set(ex.symbols))
        print(f"heatsvc: hyperliquid open interest: {rows} archive rows from {len(files)} file(s)", flush=True)
    from .server import NOT_SERVING, SERVING

    async def health(status):   # trades:hyperliquid SERVING while the stream is live, positions:... once read
        await service.health.set("trades:hyperliquid", SERVING if status["trades_state"] == "live" else NOT_SERVING)
        await service.health.set("positions:hyperliquid", SERVING if status["reads"] > 0 else NOT_SERVING)

    interval = 60.0 if speed is None else min(60.0, STEP_MS / 1000 / speed)   # the demo: one sample a bar
    feeds = HyperliquidFeeds(client, ex.symbols, ws_url=ex.ws_url, poller_share=ex.poller_share,
                             addresses=addresses, sample_interval_s=interval, on_status=health,
                             **({"now_ms": now_ms} if now_ms is not None else {}))
    feeds.start()
    service.pollers = {"hyperliquid": feeds.poller}
    print(f"heatsvc: hyperliquid positions poller on {', '.join(ex.symbols)} ({ex.poller_share:g} of 1,200 weight "
          f"a minute, {len(addresses)} listed accounts); trades from {ex.ws_url}", flush=True)
    return feeds


def open_clients(config, now_ms=None, demo_speed: float | None = None) -> dict:
    """The exchange clients of the configured exchanges that have symbols; with now_ms (a replay's
    clock), they run on it, at the demo's speed when given."""
    from ..exchanges import make_client

    clients = {}
    for ex in config.exchanges:
        if ex.symbols:
            extra = {"archive_url": ex.archive_url} if ex.archive_url else {}
            if now_ms is not None:
                extra["now_ms"] = now_ms
            if ex.name == "hyperliquid":
                extra["weight_share"] = ex.weight_share
                if demo_speed is not None:   # two bars a refresh: x100 would spend the weight budget 3 times over
                    extra["min_refresh_s"] = 2 * 300.0 / demo_speed
            clients[ex.name] = make_client(ex.name, ex.base_url, **extra)
    return clients


async def refresh_until(refresher, stopping: asyncio.Event) -> None:
    """Start the refresher (its backfill runs meanwhile) and return once `stopping` is set; a start that
    fails is raised at once."""
    starting = asyncio.create_task(refresher.start())
    stopper = asyncio.create_task(stopping.wait())
    await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if starting.done() and starting.exception() is not None:
        raise starting.exception()
    await stopping.wait()
    if not starting.done():
        starting.cancel()


async def serve(config, *, demo: argparse.Namespace | None = None, progress: bool = True,
                web: str | None = None) -> int:
    """Run until SIGTERM/SIGINT: store, exchange clients, refresher, gRPC server; then shut down
    gracefully (health NOT_SERVING, streams end with OK, refresher stopped, store closed)."""
    from ..model.bars import parse_time
    from ..config import with_overrides
    from ..discovery import discover, is_pattern
    from ..refresher import Refresher
    from ..replay import ReplayExchange, default_datasets
    from ..store import Store
    from .server import Server

    replay = None
    streams = None   # the replay's liquidation streams (heatsvc.replay.streams), in the demo
    tmp = None
    now_ms = None
    if demo is not None:
        if not demo.demo_speed > 0:
            raise ValueError(f"--demo-speed must be > 0, got {demo.demo_speed}")
        replay = ReplayExchange(datasets=default_datasets(hyperliquid=True),
                                start_ms=parse_time(demo.demo_start, "--demo-start"), speed=demo.demo_speed)
        replay.start()
        from ..replay.streams import StreamServer
        streams = StreamServer(replay)
        streams.start()
        now_ms = replay.now_ms
        config = demo_config(config, replay, demo, streams)
        if config.store is None:
            tmp = tempfile.TemporaryDirectory(prefix="heatsvc-demo-")
            config = with_overrides(config, store=str(Path(tmp.name) / "demo.sqlite3"))
        print(f"heatsvc: demo replay exchange at {replay.url}, clock {demo.demo_start} x{demo.demo_speed:g}",
              flush=True)
    store = Store(config.store)
    clients = {}
    refresher = None
    server = None
    recording = None   # realised liquidations (heatsvc.recording), when [liquidations] enabled
    endpoint = None
    page = None   # the web gateway (heatsvc.web), when --web
    hyperliquid = None   # its sampler, trades stream and positions poller, when hyperliquid markets are served
    measuring = None     # the measured-map recorder: the poller's snapshots into the store (MODEL.md section 16)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        clients.update(open_clients(config, now_ms, demo.demo_speed if demo is not None else None))
        selectors = {ex.name: (ex.symbols, ex.top) for ex in config.exchanges
                     if ex.name in clients and any(is_pattern(s) for s in ex.symbols)}
        config = await discover(config, clients)   # symbol patterns and `top` become symbols
        refresher = Refresher(store, clients, config.markets, interval_s=config.refresh_interval_s,
                              history_days=config.history_days, progress=progress, now_ms=now_ms,
                              selectors=selectors)   # what they select later is served from then on
        server = Server(config, store, refresher)
        port = await server.start()
        host = config.listen.rpartition(":")[0]
        tls = "mutual TLS" if config.tls_client_ca else "TLS" if config.tls_cert else "no TLS"
        tokens = f"{len(server.service.tokens)} bearer token(s)" if server.service.tokens else "no tokens"
        print(f"heatsvc: serving heatsvc.v1 on {host}:{port} ({len(config.markets)} markets, backend "
              f"{config.backend}, {tls}, {tokens}); health NOT_SERVING until data is loaded", flush=True)
        endpoint = start_metrics(config, demo=demo is not None)
        if config.liquidations.enabled:
            recording = start_recording(config, clients, server.service, now_ms)
        if "hyperliquid" in clients:
            hyperliquid = start_hyperliquid(config, clients["hyperliquid"], server.service, now_ms=now_ms,
                                            speed=demo.demo_speed if demo is not None else None)
            from .measured import MeasuredRecorder
            measuring = MeasuredRecorder(server.service.measured, hyperliquid.poller,
                                         [m for m in config.markets if m.startswith("hyperliquid:")],
                                         interval_s=hyperliquid.sample_interval_s)
            measuring.start()
        if web:
            from ..web.cli import start_embedded
            page = await start_embedded(config, port, web)
        await refresh_until(refresher, stopping)
        print("heatsvc: shutting down", flush=True)
        return 0
    finally:
        if page is not None:
            await page.stop()
        if server is not None:   # first: clients are told NOT_SERVING and their streams end with OK
            await server.stop()
        if recording is not None:
            await recording.stop()
            recording.store.close()
        if endpoint is not None:
            endpoint.stop()
        if measuring is not None:
            await measuring.stop()
        if hyperliquid is not None:
            await hyperliquid.stop()
        if refresher is not None:
            await refresher.stop()
        for client in clients.values():
            await client.aclose()
        store.close()
        if streams is not None:
            streams.stop()
        if replay is not None:
            replay.stop()
        if tmp is not None:
            tmp.cleanup()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        print("heatsvc: stopped", file=sys.stderr, flush=True)
