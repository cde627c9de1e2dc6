"""`heatsvc cluster --demo`: a whole cluster on this host: nats-server (JetStream, a temporary store, a
free loopback port), the replay exchange, N owner and M edge processes (`heatsvc serve --role ...`,
the edges on one port with SO_REUSEPORT); all stopped on exit, SIGTERM or Ctrl-C. The tests and the
benchmarks start clusters with the same Cluster class."""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from .nats_server import NatsServer, free_port, wait_for_port

START_TIMEOUT_S = 60


def toml_config(replay, listen: str, nats_url: str, lookbacks, history_days: float, refresh_interval_s: float,
                heartbeat_s: float) -> str:
    """The configuration every process of the cluster reads: the replay's markets and URLs."""
    by_exchange: dict[str, list[str]] = {}
    for market in replay.markets():
        exchange, _, symbol = market.partition(":")
        by_exchange.setdefault(exchange, []).append(symbol)
    q = json.dumps   # a JSON string or list of strings is a TOML one
    lines = ["[server]", f"listen = {q(listen)}", "[data]", f"lookbacks = {q(list(lookbacks))}",
             f"history_days = {history_days}", f"refresh_interval_s = {refresh_interval_s}",
             "[nats]", f"url = {q(nats_url)}", f"heartbeat_s = {heartbeat_s}"]
    for exchange, symbols in by_exchange.items():
        lines += [f"[exchanges.{exchange}]", f"symbols = {q(symbols)}", f"base_url = {q(replay.base_url(exchange))}"]
        if exchange == "binance":
            lines.append(f"archive_url = {q(replay.archive_url())}")
    return "\n".join(lines) + "\n"


class Cluster:
    """nats-server, owners and edges around a running ReplayExchange (which the caller owns)."""

    def __init__(self, replay, directory: Path, *, owners: int = 2, edges: int = 2, lookbacks=("12h", "1d"),
                 history_days: float = 2, refresh_interval_s: float = 1.0, heartbeat_s: float = 0.5,
                 listen: str = "127.0.0.1:0", quiet: bool = True):
        if owners < 1 or edges < 1:
            raise ValueError(f"a cluster needs at least one owner and one edge, got {owners} and {edges}")
        self.replay, self.directory = replay, Path(directory)
        self.n_owners, self.n_edges = owners, edges
        host, _, port = listen.rpartition(":")
        self.host, self.port = host, int(port) or free_port()
        self.nats = NatsServer(self.directory / "nats")
        self.config_path = self.directory / "cluster.toml"
        self.settings = dict(lookbacks=lookbacks, history_days=history_days, refresh_interval_s=refresh_interval_s,
                             heartbeat_s=heartbeat_s)
        self.quiet = quiet
        self.owners: dict[int, subprocess.Popen] = {}
        self.edges: dict[int, subprocess.Popen] = {}
        self._generation = 0

    @property
    def target(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        self.nats.start()
        self.config_path.write_text(toml_config(self.replay, f"{self.host}:{self.port}", self.nats.url,
                                                **self.settings))
        for i in range(self.n_owners):
            self.start_owner(i)
        for j in range(self.n_edges):
            self.start_edge(j)

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        self._generation += 1
        log = open(self.directory / f"{name}-{self._generation}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", "heatsvc", "serve", "--config", str(self.config_path),
                                 *args], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        proc.log_path = log.name
        log.close()
        return proc

    def start_owner(self, i: int) -> subprocess.Popen:
        """Owner of shard i (a replacement for a dead one too: a fresh store, backfilled anew)."""
        store = self.directory / f"owner-{i}-{self._generation + 1}.sqlite3"
        self.owners[i] = self._spawn(f"owner-{i}", ["--role", "owner", "--shard", f"{i}/{self.n_owners}",
                                                    "--store", str(store), "--replay-clock", self.replay.url,
                                                    *(["--quiet"] if self.quiet else [])])
        return self.owners[i]

    def start_edge(self, j: int, timeout: float = START_TIMEOUT_S) -> subprocess.Popen:
        """Edge j on the shared port; returns once it is listening."""
        proc = self.edges[j] = self._spawn(f"edge-{j}", ["--role", "edge"])
        deadline = time.monotonic() + timeout
        while b"edge serving" not in Path(proc.log_path).read_bytes():
            if proc.poll() is not None:
                raise RuntimeError(f"edge {j} exited with {proc.returncode}: "
                                   f"{Path(proc.log_path).read_text()[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"edge {j} not serving after {timeout:g} s")
            time.sleep(0.05)
        wait_for_port(self.port, timeout, proc, f"edge {j}")
        return proc

    def kill_owner(self, i: int) -> None:
        """SIGKILL: no goodbye, as a crash."""
        _kill(self.owners.pop(i))

    def kill_edge(self, j: int) -> None:
        _kill(self.edges.pop(j))

    def processes(self) -> list[subprocess.Popen]:
        return [*self.edges.values(), *self.owners.values()]

    def stop(self) -> None:
        """SIGTERM to edges and owners (they shut down gracefully), then nats-server."""
        procs = self.processes()
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                _kill(proc)
        self.edges.clear()
        self.owners.clear()
        self.nats.stop()


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


# ---- the command --------------------------------------------------------------------------------

def add_arguments(command: str, parser: argparse.ArgumentParser) -> None:
    """Options of `heatsvc cluster`."""
    parser.add_argument("--demo", action="store_true", required=True,
                        help="the demo's replay data (as heatsvc serve --demo), served by a local cluster")
    parser.add_argument("--owners", type=int, default=2, help="owner processes (shards), default %(default)s")
    parser.add_argument("--edges", type=int, default=2, help="edge processes, default %(default)s")
    parser.add_argument("--listen", metavar="HOST:PORT", default="127.0.0.1:50051",
                        help="the edges' shared address (default %(default)s; port 0 picks a free one)")


def run(command: str, args: argparse.Namespace) -> int:
    from ..config import address
    from ..model.bars import parse_time
    from ..replay import ReplayExchange
    from ..service import DEMO_HISTORY_DAYS, DEMO_LOOKBACKS, DEMO_REFRESH_S, DEMO_SPEED, DEMO_START

    address(args.listen, "--listen")
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    with ReplayExchange(start_ms=parse_time(DEMO_START, "demo start"), speed=DEMO_SPEED) as replay, \
            tempfile.TemporaryDirectory(prefix="heatsvc-cluster-") as tmp:
        cluster = Cluster(replay, Path(tmp), owners=args.owners, edges=args.edges, lookbacks=DEMO_LOOKBACKS,
                          history_days=DEMO_HISTORY_DAYS, refresh_interval_s=DEMO_REFRESH_S, heartbeat_s=1.0,
                          listen=args.listen)
        try:
            cluster.start()
            print(f"heatsvc cluster: nats-server at {cluster.nats.url}, replay exchange at {replay.url} "
                  f"(clock {DEMO_START} x{DEMO_SPEED:g})", flush=True)
            for i, proc in cluster.owners.items():
                print(f"  owner {i}/{args.owners}: pid {proc.pid}, log {proc.log_path}", flush=True)
            for j, proc in cluster.edges.items():
                print(f"  edge {j}: pid {proc.pid} on {cluster.target}, log {proc.log_path}", flush=True)
            print(f"heatsvc cluster: serving heatsvc.v1 on {cluster.target} (all edges, SO_REUSEPORT); "
                  "health NOT_SERVING until the owners have loaded. Ctrl-C stops.", flush=True)
            while not stopping.wait(0.5):
                for proc in cluster.processes():
                    if proc.poll() is not None and not getattr(proc, "reported", False):
                        proc.reported = True
                        print(f"heatsvc cluster: pid {proc.pid} exited with {proc.returncode}; see {proc.log_path}",
                              flush=True)
            return 0
        finally:
            print("heatsvc cluster: stopping", flush=True)
            cluster.stop()
