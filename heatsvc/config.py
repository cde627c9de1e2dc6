"""The service's configuration: one TOML file (tomllib), environment overrides for secrets and
addresses, defaults that serve the live exchanges.

Example (every key optional):

    [server]
    listen = "127.0.0.1:50051"
    backend = "cython"          # engine backend: cython | numpy | python
    metrics_listen = "127.0.0.1:9464"        # Prometheus /metrics over HTTP (default: off)
    tls_cert = "/etc/heatsvc/server.pem"     # TLS on the gRPC port: certificate chain and key (PEM)
    tls_key = "/etc/heatsvc/server.key"
    tls_client_ca = "/etc/heatsvc/clients-ca.pem"   # mutual TLS: clients need a certificate this CA signed
    token_file = "/etc/heatsvc/tokens"       # bearer tokens, one a line: TOKEN or NAME:TOKEN; # comments

    [data]
    store = "/var/lib/heatsvc/heatsvc.sqlite3"   # default: the user's data directory
    refresh_interval_s = 60
    history_days = 365
    lookbacks = ["12h", "1d", "3d", "7d", "14d", "1M", "3M", "6M", "1Y"]

    [limits]
    max_cells = 2000000         # rows x columns of one view
    max_streams = 1000
    max_streams_per_token = 100 # open streams of one bearer token
    max_stream_views = 64       # views of one StreamZones call
    max_concurrent_computations = 2
    cache_views = 64
    queue_depth = 8             # per-subscriber queue before it is coalesced

    [exchanges.binance]
    symbols = ["BTCUSDT", "ETHUSDT"]          # or patterns, e.g. ["*USDT"]: every listed USDT perpetual
    top = 50                                  # with patterns: the 50 largest by 24 h quote volume
    base_url = "https://fapi.binance.com"
    archive_url = "https://data.binance.vision"
    ws_url = "wss://fstream.binance.com/market/stream?streams=!forceOrder@arr/btcusdt@markPrice@1s"

    [exchanges.hyperliquid]     # not served unless listed; markets are coins: hyperliquid:HYPE
    symbols = ["HYPE", "BTC"]                 # coin names (or patterns, ranked by 24 h notional volume)
    base_url = "https://api.hyperliquid.xyz"
    ws_url = "wss://api.hyperliquid.xyz/ws"   # public trades: taker share and accounts to poll
    weight_share = 0.8          # share of the 1,200 weight a minute per IP heatsvc may spend in all
    poller_share = 0.4          # of it, the positions poller's (clearinghouseState, weight 2: 240 reads a minute)
    addresses_file = "/etc/heatsvc/hl-accounts"   # accounts to poll besides those the trades reveal
    asset_ctxs_files = ["/data/hl/asset_ctxs/*.csv.lz4"]   # S3 archive files: open interest before our sampling
    [nats]                      # the cluster (heatsvc serve --role owner|edge; unused by the single process)
    url = "nats://127.0.0.1:4222"             # or tls://...; --nats URL overrides; HEATSVC_NATS_URL too
    token_file = "/etc/heatsvc/nats-token"    # or HEATSVC_NATS_TOKEN; never the token itself in this file
    credentials = "/etc/heatsvc/heatsvc.creds"   # or a NATS credentials (JWT + NKey) file
    tls_ca = "/etc/heatsvc/nats-ca.pem"       # verify the server; with tls_cert/tls_key: client certificate
    tls_cert = "/etc/heatsvc/nats-client.pem"
    tls_key = "/etc/heatsvc/nats-client.key"
    heartbeat_s = 1.0           # owners' catalogue heartbeat; an owner silent for 3 of them is stale

    [liquidations]              # record realised liquidations from the exchanges' WebSocket streams
    enabled = false             # default off: it opens one connection per exchange (the demo turns it on)
    retention_days = 30         # events and coverage older than this are pruned
    flush_interval_s = 1.0      # a batch is committed at least this often (a SIGKILL loses at most it)
    flush_events = 500          # ... or as soon as it holds this many events

    [[webhooks]]                # zone events (MODEL.md section 13) POSTed as JSON, signed with HMAC-SHA256
    url = "https://hooks.example.com/heatsvc"
    secret_file = "/etc/heatsvc/webhook.secret"   # the signing key (or secret_env = "VARIABLE")
    markets = ["binance:BTCUSDT", "all:ETHUSDT"]
    lookbacks = ["1d"]
    kinds = ["ZONE_SWEPT", "PRICE_NEAR"]          # default: every kind
    near_pct = 1.0
    retries = 5                 # attempts after the first, backing off from backoff_s, doubling
    backoff_s = 1.0

    [model]
    range_margin = 0.05
    [[model.tiers]]
    leverage = 5
    weight = 0.15
    maintenance_margin = 0.004
    half_life_days = 30        # or "inf"

Environment: HEATSVC_LISTEN, HEATSVC_STORE, HEATSVC_TLS_CERT, HEATSVC_TLS_KEY, HEATSVC_TLS_CLIENT_CA,
HEATSVC_TOKEN_FILE, HEATSVC_<EXCHANGE>_BASE_URL, HEATSVC_<EXCHANGE>_WS_URL, HEATSVC_BINANCE_ARCHIVE_URL
override the file;
so does HEATSVC_METRICS_LISTEN (empty: metrics off).

Security: secrets never go in this file (it tends to be shared and committed): [server] auth_token is
refused; tokens come from token_file (chmod 600) and/or HEATSVC_AUTH_TOKEN (one token, named
"HEATSVC_AUTH_TOKEN"). With tokens, every RPC but the health checks needs metadata
`authorization: Bearer TOKEN`. The default listen address is loopback; serving another address
without TLS or without tokens logs a warning saying which is missing.
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path

from .model.engine import BACKENDS, DEFAULT_TIERS, LOOKBACKS, MAX_COLUMNS, MAX_ROWS, ModelParams, Tier
from .model.events import KINDS, NEAR_PCT

EXCHANGES = ("binance", "bybit", "okx", "hyperliquid")
DEFAULT_EXCHANGES = ("binance", "bybit", "okx")     # served when the file names none
DEFAULT_SYMBOLS = ("BTCUSDT", "ETHUSDT")
DEFAULT_COINS = ("BTC", "ETH")                      # Hyperliquid names markets by coin
HYPERLIQUID_KEYS = ("weight_share", "poller_share", "addresses_file", "asset_ctxs_files")
LIVE_URLS = {
    "binance": {"base_url": "https://fapi.binance.com", "archive_url": "https://data.binance.vision",
                "ws_url": "wss://fstream.binance.com/market/stream?streams=!forceOrder@arr/btcusdt@markPrice@1s"},
    "bybit": {"base_url": "https://api.bybit.com", "ws_url": "wss://stream.bybit.com/v5/public/linear"},
    "okx": {"base_url": "https://www.okx.com", "ws_url": "wss://ws.okx.com:8443/ws/v5/public"},
    "hyperliquid": {"base_url": "https://api.hyperliquid.xyz", "ws_url": "wss://api.hyperliquid.xyz/ws"},
}
MAX_CELLS = 2_000_000


@dataclass(frozen=True)
class ExchangeConfig:
    """One exchange: the symbols served and where its REST API lives."""
    name: str
    symbols: tuple[str, ...]       # names, or fnmatch patterns resolved by heatsvc.discovery at start
    base_url: str | None = None
    archive_url: str | None = None
    top: int | None = None         # with patterns: keep the N largest by 24 h quote volume
    ws_url: str | None = None      # its liquidation stream (heatsvc.exchanges.streams); Hyperliquid: trades
    weight_share: float = 0.8      # Hyperliquid only: share of the per-IP weight budget (1,200 a minute)
    poller_share: float = 0.4      # Hyperliquid only: the positions poller's share of that budget
    addresses_file: str | None = None   # Hyperliquid only: accounts to poll, one address a line
    asset_ctxs_files: tuple[str, ...] = ()   # Hyperliquid only: glob patterns of S3 archive asset_ctxs files


@dataclass(frozen=True)
class LiquidationsConfig:
    """[liquidations]: whether `heatsvc serve` records the exchanges' liquidation streams, how long
    it keeps them and how often it commits (a SIGKILL loses at most the batch not yet flushed)."""
    enabled: bool = False
    retention_days: float = 30.0
    flush_interval_s: float = 1.0
    flush_events: int = 500


@dataclass(frozen=True)
class NatsConfig:
    """[nats]: where the cluster's owners and edges meet (heatsvc.cluster) and how they authenticate."""
    url: str = "nats://127.0.0.1:4222"
    token: str | None = field(default=None, repr=False)   # read from token_file or HEATSVC_NATS_TOKEN
    credentials: str | None = None
    tls_ca: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    heartbeat_s: float = 1.0


@dataclass(frozen=True)
class Limits:
    """Bounds that keep any request from computing or buffering without bound."""
    max_cells: int = MAX_CELLS
    max_streams: int = 1000
    max_streams_per_token: int = 100
    max_stream_views: int = 64
    max_concurrent_computations: int = 2
    cache_views: int = 64
    queue_depth: int = 8


@dataclass(frozen=True)
class WebhookConfig:
    """Where one webhook delivers which views' zone events; the signing secret is read at start."""
    name: str                      # "webhooks[i]": how logs and metrics name it
    url: str
    secret: bytes = field(repr=False)
    markets: tuple[str, ...] = ()
    lookbacks: tuple[str, ...] = ()
    kinds: tuple[str, ...] = KINDS
    near_pct: float = NEAR_PCT
    retries: int = 5
    backoff_s: float = 1.0


@dataclass(frozen=True)
class Config:
    listen: str = "127.0.0.1:50051"
    backend: str = "cython"
    metrics_listen: str | None = None   # "HOST:PORT" of the Prometheus endpoint; None: off
    auth_token: str | None = field(default=None, repr=False)   # HEATSVC_AUTH_TOKEN only, never the file
    token_file: str | None = None
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_client_ca: str | None = None
    store: str | None = None
    refresh_interval_s: float = 60.0
    history_days: float = 365.0
    lookbacks: tuple[str, ...] = tuple(LOOKBACKS)
    exchanges: tuple[ExchangeConfig, ...] = field(default_factory=lambda: tuple(
        ExchangeConfig(name, DEFAULT_SYMBOLS, **LIVE_URLS[name]) for name in DEFAULT_EXCHANGES))
    limits: Limits = field(default_factory=Limits)
    params: ModelParams = field(default_factory=ModelParams)
    webhooks: tuple[WebhookConfig, ...] = ()
    liquidations: LiquidationsConfig = field(default_factory=LiquidationsConfig)
    nats: NatsConfig = field(default_factory=NatsConfig)

    @property
    def markets(self) -> list[str]:
        """Every served single-exchange market, "exchange:SYMBOL"."""
        return [f"{ex.name}:{s}" for ex in self.exchanges for s in ex.symbols]

    def max_message_bytes(self) -> int:
        """The largest response a view can produce: four grids (notional and intensity) plus the
        per-tier grids (capped at max_cells in total), float32, plus room for axes and zones."""
        cells = self.limits.max_cells
        return 4 * cells * 6 + 24 * (MAX_ROWS + 8 * MAX_COLUMNS) + (1 << 20)


def _section(data: dict, name: str) -> dict:
    value = data.get(name, {})
    if not isinstance(value, dict):
        raise ValueError(f"config: [{name}] must be a table")
    return value


def _take(table: dict, where: str, key: str, kind, default, check=None, why: str = ""):
    if key not in table:
        return default
    value = table[key]
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool or (check and not check(value)):
        raise ValueError(f"config: {where}.{key} = {value!r} is invalid{': ' + why if why else ''}")
    return value


def _unknown(table: dict, where: str, known) -> None:
    extra = sorted(set(table) - set(known))
    if extra:
        raise ValueError(f"config: unknown key(s) in [{where}]: {', '.join(extra)}")


def address(value: str, where: str) -> tuple[str, int]:
    """(host, port) of "HOST:PORT" ("[::1]:PORT" for IPv6, port 0: any free one); ValueError naming `where`."""
    host, sep, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not (port.isascii() and port.isdigit()) or int(port) > 65535:
        raise ValueError(f"{where} = {value!r} is invalid: use HOST:PORT, e.g. 127.0.0.1:9464 "
                         f"(port 0 picks a free one)")
    return host, int(port)


def _metrics_listen(server: dict, env) -> str | None:
    """HEATSVC_METRICS_LISTEN (empty: off) or else [server] metrics_listen, checked; None: off."""
    if "HEATSVC_METRICS_LISTEN" in env:
        value, where = env["HEATSVC_METRICS_LISTEN"] or None, "HEATSVC_METRICS_LISTEN"
    else:
        value, where = _take(server, "server", "metrics_listen", str, None), "config: server.metrics_listen"
    if value is not None:
        address(value, where)
    return value


def _liquidations(data: dict) -> LiquidationsConfig:
    table = _section(data, "liquidations")
    _unknown(table, "liquidations", LiquidationsConfig.__dataclass_fields__)
    d = LiquidationsConfig()
    return LiquidationsConfig(
        enabled=_take(table, "liquidations", "enabled", bool, d.enabled),
        retention_days=_take(table, "liquidations", "retention_days", float, d.retention_days,
                             lambda v: 0 < v <= 36500, "must be in (0, 36500] days"),
        flush_interval_s=_take(table, "liquidations", "flush_interval_s", float, d.flush_interval_s,
                               lambda v: 0 < v <= 60, "must be in (0, 60] seconds"),
        flush_events=_take(table, "liquidations", "flush_events", int, d.flush_events,
                           lambda v: 1 <= v <= 100_000, "must be in [1, 100000]"))


def _hyperliquid(table: dict, where: str) -> dict:
    """[exchanges.hyperliquid]'s own keys: weight shares (the poller's within the whole) and the address file."""
    share = lambda v: 0 < v <= 1  # noqa: E731
    d = ExchangeConfig("hyperliquid", ())
    out = {"weight_share": _take(table, where, "weight_share", float, d.weight_share, share, "must be in (0, 1]"),
           "poller_share": _take(table, where, "poller_share", float, d.poller_share, share, "must be in (0, 1]"),
           "addresses_file": _take(table, where, "addresses_file", str, None),
           "asset_ctxs_files": tuple(_take(table, where, "asset_ctxs_files", list, [],
                                           lambda v: all(isinstance(x, str) and x for x in v),
                                           "list file paths or glob patterns"))}
    if out["poller_share"] > out["weight_share"]:
        raise ValueError(f"config: {where}.poller_share = {out['poller_share']} is invalid: it is a part of "
                         f"weight_share = {out['weight_share']} and cannot exceed it")
    return out


def nats_url(value: str, where: str) -> str:
    """A NATS server URL (nats:// or tls://, with a host); ValueError naming `where`."""
    scheme, sep, rest = value.partition("://")
    if scheme not in ("nats", "tls") or not sep or not rest.split("@")[-1].split(":")[0]:
        raise ValueError(f"{where} = {value!r} is invalid: use nats://HOST:PORT or tls://HOST:PORT")
    return value


def _readable(path: str, where: str) -> str:
    if not Path(path).is_file():
        raise ValueError(f"config: {where} = {path!r}: no such file")
    return path


def _nats(data: dict, env) -> NatsConfig:
    table = _section(data, "nats")
    if "token" in table:   # a secret: never echo it
        raise ValueError("config: nats.token does not belong in the config file: use token_file or HEATSVC_NATS_TOKEN")
    _unknown(table, "nats", ("url", "token_file", "credentials", "tls_ca", "tls_cert", "tls_key", "heartbeat_s"))
    url = env.get("HEATSVC_NATS_URL") or _take(table, "nats", "url", str, NatsConfig.url)
    nats_url(url, "HEATSVC_NATS_URL" if env.get("HEATSVC_NATS_URL") else "config: nats.url")
    files = {key: _take(table, "nats", key, str, None) for key in ("token_file", "credentials", "tls_ca",
                                                                    "tls_cert", "tls_key")}
    for key, path in files.items():
        if path is not None:
            _readable(path, f"nats.{key}")
    if (files["tls_cert"] is None) != (files["tls_key"] is None):
        raise ValueError("config: nats.tls_cert and nats.tls_key go together (the client certificate and its key)")
    token = env.get("HEATSVC_NATS_TOKEN") or None
    if token is None and files["token_file"] is not None:
        token = Path(files["token_file"]).read_text(encoding="utf-8").strip()
        if not token:
            raise ValueError(f"config: nats.token_file = {files['token_file']!r} is empty")
    if token is not None and files["credentials"] is not None:
        raise ValueError("config: [nats] takes a token or a credentials file, not both")
    return NatsConfig(url=url, token=token, credentials=files["credentials"], tls_ca=files["tls_ca"],
                      tls_cert=files["tls_cert"], tls_key=files["tls_key"],
                      heartbeat_s=_take(table, "nats", "heartbeat_s", float, NatsConfig.heartbeat_s,
                                        lambda v: 0.05 <= v <= 60, "must be in [0.05, 60] seconds"))


def _tiers(model: dict) -> tuple[Tier, ...]:
    if "tiers" not in model:
        return DEFAULT_TIERS
    if not isinstance(model["tiers"], list) or not model["tiers"]:
        raise ValueError("config: model.tiers must be a non-empty array of tables")
    tiers = []
    for i, t in enumerate(model["tiers"]):
        where = f"model.tiers[{i}]"
        if not isinstance(t, dict):
            raise ValueError(f"config: {where} must be a table")
        _unknown(t, where, ("leverage", "weight", "maintenance_margin", "half_life_days"))
        half = t.get("half_life_days", math.inf)
        if half == "inf":
            half = math.inf
        try:
            tiers.append(Tier(float(t["leverage"]), float(t["weight"]), float(t.get("maintenance_margin", 0.004)),
                              float(half)))
        except KeyError as exc:
            raise ValueError(f"config: {where} needs {exc.args[0]}") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"config: {where}: {exc}") from None
    return tuple(tiers)


def _webhooks(data: dict, env) -> tuple[WebhookConfig, ...]:
    tables = data.get("webhooks", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ValueError("config: webhooks must be an array of tables ([[webhooks]])")
    hooks = []
    for i, t in enumerate(tables):
        where = f"webhooks[{i}]"
        if "secret" in t:   # never echo it
            raise ValueError(f"config: {where}.secret does not belong in the config file: use secret_file or secret_env")
        _unknown(t, where, ("url", "secret_file", "secret_env", "markets", "lookbacks", "kinds", "near_pct",
                            "retries", "backoff_s"))
        url = _take(t, where, "url", str, None, lambda v: v.startswith(("http://", "https://")), "use an http(s) URL")
        if url is None:
            raise ValueError(f"config: {where} needs url")
        strings = lambda v: v and all(isinstance(x, str) and x for x in v)  # noqa: E731
        hooks.append(WebhookConfig(
            name=where, url=url, secret=_secret(t, where, env),
            markets=tuple(_take(t, where, "markets", list, [], strings, "list one or more markets")),
            lookbacks=tuple(_take(t, where, "lookbacks", list, [], strings, "list one or more lookbacks")),
            kinds=tuple(_take(t, where, "kinds", list, list(KINDS), lambda v: v and set(v) <= set(KINDS),
                              f"use kinds from {', '.join(KINDS)}")),
            near_pct=_take(t, where, "near_pct", float, NEAR_PCT, lambda v: 0 < v <= 50, "must be in (0, 50]"),
            retries=_take(t, where, "retries", int, 5, lambda v: 0 <= v <= 20, "must be in [0, 20]"),
            backoff_s=_take(t, where, "backoff_s", float, 1.0, lambda v: 0 < v <= 600, "must be in (0, 600]")))
        if not hooks[-1].markets or not hooks[-1].lookbacks:
            raise ValueError(f"config: {where} needs markets and lookbacks")
    return tuple(hooks)


def _secret(table: dict, where: str, env) -> bytes:
    """The webhook's signing key: the contents of secret_file, or the variable named by secret_env."""
    if "secret_file" in table:
        path = _take(table, where, "secret_file", str, None)
        try:
            secret = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ValueError(f"config: {where}.secret_file: cannot read {path}: {exc.strerror}") from None
    elif "secret_env" in table:
        name = _take(table, where, "secret_env", str, None)
        secret = env.get(name, "").encode()
        if not secret:
            raise ValueError(f"config: {where}.secret_env: the environment variable {name} is not set")
    else:
        raise ValueError(f"config: {where} needs secret_file or secret_env (the HMAC-SHA256 signing key)")
    if len(secret) < 16:
        raise ValueError(f"config: {where}: the signing secret must be at least 16 bytes")
    return secret


def parse(data: dict, env: dict[str, str] | None = None) -> Config:
    """A Config from parsed TOML and the environment; ValueError names any bad key."""
    env = os.environ if env is None else env
    _unknown(data, "top level", ("server", "data", "limits", "exchanges", "model", "webhooks", "liquidations",
                                 "nats"))
    server, store, limits, model = (_section(data, n) for n in ("server", "data", "limits", "model"))
    if "auth_token" in server:   # the value is a secret: never echo it
        raise ValueError("config: [server] auth_token is no longer accepted (a secret does not belong in the "
                         "config file): list tokens in a file named by [server] token_file, or set "
                         "HEATSVC_AUTH_TOKEN")
    _unknown(server, "server", ("listen", "backend", "metrics_listen", "token_file", "tls_cert", "tls_key",
                                "tls_client_ca"))
    _unknown(store, "data", ("store", "refresh_interval_s", "history_days", "lookbacks"))
    _unknown(limits, "limits", Limits.__dataclass_fields__)
    _unknown(model, "model", ("tiers", "range_margin"))
    positive = lambda v: v > 0  # noqa: E731
    lim = Limits(**{k: _take(limits, "limits", k, int, getattr(Limits(), k), positive, "must be a positive integer")
                    for k in Limits.__dataclass_fields__})
    lookbacks = _take(store, "data", "lookbacks", list, list(LOOKBACKS),
                      lambda v: v and all(x in LOOKBACKS for x in v), f"use names from {', '.join(LOOKBACKS)}")
    try:
        params = ModelParams(tiers=_tiers(model), mu=_take(model, "model", "range_margin", float, 0.05))
    except ValueError as exc:
        raise ValueError(f"config: model: {exc}") from None
    exchanges = []
    tables = _section(data, "exchanges") if "exchanges" in data else {n: {} for n in DEFAULT_EXCHANGES}
    for name, table in tables.items():
        if name not in EXCHANGES:
            raise ValueError(f"config: unknown exchange [exchanges.{name}]; use {', '.join(EXCHANGES)}")
        if not isinstance(table, dict):
            raise ValueError(f"config: [exchanges.{name}] must be a table")
        where = f"exchanges.{name}"
        _unknown(table, where, ("symbols", "base_url", "archive_url", "ws_url", "top",
                                *(HYPERLIQUID_KEYS if name == "hyperliquid" else ())))
        symbols = _take(table, where, "symbols", list, list(DEFAULT_COINS if name == "hyperliquid" else DEFAULT_SYMBOLS),
                        lambda v: all(isinstance(s, str) and s and all(c.isalnum() or c in "*?[]" for c in s)
                                      for s in v),
                        "symbols are alphanumeric names or patterns with * ? [ ]")
        top = _take(table, where, "top", int, None, lambda v: v > 0, "must be a positive integer")
        urls = dict(LIVE_URLS[name])
        for key in ("base_url", "archive_url", "ws_url"):
            urls[key] = _take(table, where, key, str, urls.get(key))
            urls[key] = env.get(f"HEATSVC_{name.upper()}_{key.upper()}", urls[key])
        extra = _hyperliquid(table, where) if name == "hyperliquid" else {}
        # Hyperliquid coin names keep their case (kPEPE); the others' symbols are upper case
        names = tuple(symbols) if name == "hyperliquid" else tuple(s.upper() for s in symbols)
        exchanges.append(ExchangeConfig(name, names, top=top, **urls, **extra))
    if not any(ex.symbols for ex in exchanges):
        raise ValueError("config: no market configured; list symbols under [exchanges.NAME]")
    backend = _take(server, "server", "backend", str, "cython", lambda v: v in BACKENDS,
                    f"use one of {', '.join(BACKENDS)}")
    return Config(
        listen=env.get("HEATSVC_LISTEN", _take(server, "server", "listen", str, Config.listen)),
        backend=backend,
        metrics_listen=_metrics_listen(server, env),
        auth_token=env.get("HEATSVC_AUTH_TOKEN") or None,
        **{key: env.get(f"HEATSVC_{key.upper()}") or _take(server, "server", key, str, None)
           for key in ("token_file", "tls_cert", "tls_key", "tls_client_ca")},
        store=env.get("HEATSVC_STORE", _take(store, "data", "store", str, None)),
        refresh_interval_s=_take(store, "data", "refresh_interval_s", float, 60.0, positive, "must be > 0"),
        history_days=_take(store, "data", "history_days", float, 365.0, positive, "must be > 0"),
        lookbacks=tuple(sorted(lookbacks, key=LOOKBACKS.get)),
        exchanges=tuple(exchanges), limits=lim, params=params, webhooks=_webhooks(data, env),
        liquidations=_liquidations(data), nats=_nats(data, env))


def load(path: str | os.PathLike | None, env: dict[str, str] | None = None) -> Config:
    """Read a TOML config file (None: defaults for the live exchanges), with env overrides."""
    if path is None:
        return parse({}, env)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"config: cannot read {path}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"config: {path}: {exc}") from None
    return parse(data, env)


def with_overrides(config: Config, **changes) -> Config:
    """A copy of config with some fields changed (the CLI's --listen, --backend, demo settings)."""
    return replace(config, **changes)
