"""The benchmarks' real server, run in a process of its own so its CPU time, memory and task count
are the server's alone, and their client processes.

`python bench/harness.py STORE [OPTIONS_JSON]` serves the replay exchange's synthetic data over
heatsvc.v1 on 127.0.0.1: replay exchange, store, exchange clients, refresher and gRPC server, as
`heatsvc serve` wires them. It prints {"target": ...} once the data is loaded, then answers one JSON
line per command line on stdin (see `Harness.command`). EOF or {"cmd": "quit"} stops it.

The tests drive it with `spawn` (a fixture: start a function of a bench module or this harness in a
child process) and `read_json`/`read_line` (the child's next output line; a dead child fails the test
with its stderr).
"""
from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DAY = 86_400_000
STEP = 300_000
END = 1_760_572_800_000                 # where the bundled synthetic data ends (2025-10-16)
START = END - DAY + 150_000             # the replay clock starts a day before the end, mid-bar
MARKETS = ("binance:BTCUSDT", "bybit:BTCUSDT", "binance:ETHUSDT")
MARKET = MARKETS[0]
BUDGET_S = 300                          # deadline of every client call and stream: nothing waits for ever
CLIENT_OPTIONS = [("grpc.max_receive_message_length", -1)]
DEFAULTS = {"days": 3, "history_days": 2, "lookbacks": ["12h", "1d"], "refresh_interval_s": 3600,
            "speed": None, "start_ms": START, "limits": {}, "faults": {}, "periodic": False,
            "client": {}}                  # client: exchange client settings (retries, backoff_s, timeout_s)


def datasets_for(days: float) -> dict:
    """`days` of synthetic bars per market, ending where the bundled synthetic data ends."""
    from heatsvc import datasets
    return {m: datasets.synthetic_bars(m.split(":")[1], m.split(":")[0], days=days, end_ms=END) for m in MARKETS}


def percentiles(values_ms) -> dict[str, float]:
    v = np.asarray(values_ms, dtype=float)
    return {"p50_ms": float(np.percentile(v, 50)), "p99_ms": float(np.percentile(v, 99)), "max_ms": float(v.max())}


def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid or 'self'}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS in /proc/{pid}/status")


class Harness:
    """The server stack on this process's event loop, and the commands the benchmarks send it."""

    def __init__(self, store_path: str, options: dict):
        self.store_path = store_path
        self.opts = {**DEFAULTS, **options}

    async def start(self) -> str:
        from heatsvc.config import parse
        from heatsvc.exchanges import make_client
        from heatsvc.refresher import Refresher
        from heatsvc.replay import Faults, ReplayExchange
        from heatsvc.service.server import Server
        from heatsvc.store import Store

        o = self.opts
        self.replay = ReplayExchange(datasets=datasets_for(o["days"]), start_ms=o["start_ms"], speed=o["speed"],
                                     faults=Faults(**o["faults"]))
        self.replay.start()
        by_exchange: dict[str, list[str]] = {}
        for m in MARKETS:
            by_exchange.setdefault(m.split(":")[0], []).append(m.split(":")[1])
        exchanges = {ex: {"symbols": symbols, "base_url": self.replay.base_url(ex)}
                     for ex, symbols in by_exchange.items()}
        exchanges["binance"]["archive_url"] = self.replay.archive_url()
        self.config = parse({"server": {"listen": "127.0.0.1:0"},
                             "data": {"lookbacks": o["lookbacks"], "history_days": o["history_days"],
                                      "refresh_interval_s": o["refresh_interval_s"]},
                             "exchanges": exchanges, "limits": o["limits"]}, env={})
        self.store = Store(self.store_path)
        # the clients run on the replay clock too (Binance picks API or archive by the data's age)
        self.clients = {ex.name: make_client(ex.name, ex.base_url, now_ms=self.replay.now_ms, **o["client"],
                                             **({"archive_url": ex.archive_url} if ex.archive_url else {}))
                        for ex in self.config.exchanges}
        self.refresher = Refresher(self.store, self.clients, self.config.markets,
                                   interval_s=self.config.refresh_interval_s, history_days=self.config.history_days,
                                   progress=False, now_ms=self.replay.now_ms)
        self.server = Server(self.config, self.store, self.refresher)
        port = await self.server.start("127.0.0.1:0")
        await self.refresher.start()
        await self.refresher.wait_ready(timeout=120)
        if not o["periodic"]:
            await self.refresher.stop()   # the benchmark refreshes explicitly ("step")
        return f"127.0.0.1:{port}"

    async def stop(self) -> None:
        await self.server.stop(grace=1)
        await self.refresher.stop()
        for client in self.clients.values():
            await client.aclose()
        self.store.close()
        self.replay.stop()

    @property
    def service(self):
        return self.server.service

    def published(self) -> int:
        return sum(t.updates for t in self.service.topics.values())

    async def command(self, cmd: dict) -> dict:
        """One command: {"cmd": "step", "ms", "market", "wait"} moves the replay clock, refreshes the market
        and (unless wait is false: zone-event streams publish only when something happened) waits until
        the streams have published the update; "stats" reports the process; "faults"
        sets replay fault knobs; "health" gives each market's refresher health; "clock" sets the replay
        clock's speed (null stops it); "gc" collects; "trim" collects and returns free heap to the OS."""
        name = cmd["cmd"]
        if name == "step":
            before = self.published()
            t0 = time.monotonic()
            self.replay.step(cmd.get("ms", STEP))
            await self.refresher.refresh(cmd.get("market", MARKET))
            t1 = time.monotonic()
            deadline = t1 + 60
            while cmd.get("wait", True) and self.service.topics and self.published() == before \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            return {"t0": t0, "t1": t1, "published_at": time.monotonic(), "updates": self.published(),
                    "sequence": max((t.sequence for t in self.service.topics.values()), default=0)}
        if name == "stats":
            return self.stats()
        if name == "faults":
            for key, value in cmd["set"].items():
                setattr(self.replay.faults, key, value)
            self.replay.faults.check()
            return {"faults": dataclasses.asdict(self.replay.faults)}
        if name == "health":
            return {m: dataclasses.asdict(h) for m, h in self.refresher.health().items()}
        if name == "clock":  # {"speed": null} stops the replay clock where it is; a number runs it that fast
            now = self.replay.now_ms()
            self.replay.clock.speed = cmd.get("speed")
            self.replay.set_time(now)
            return {"now_ms": now}
        if name == "gc":
            gc.collect()
            return self.stats()
        if name == "trim":  # gc, then glibc's malloc_trim: tells freed-but-kept heap from live memory
            gc.collect()
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            return self.stats()
        raise ValueError(f"unknown command {name!r}")

    def stats(self) -> dict:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        subs = [s for t in self.service.topics.values() for s in t.subscribers]
        return {"rss_mb": rss_mb(), "cpu_s": usage.ru_utime + usage.ru_stime, "monotonic": time.monotonic(),
                "loop_cpu_s": time.thread_time(),   # the event loop's thread alone (cpu_s: every thread)
                "tasks": len(asyncio.all_tasks()), "streams": self.service.streams,
                "topics": len(self.service.topics), "subscribers": len(subs),
                "queued": sum(len(s.queue) for s in subs), "skipped": sum(s.skipped for s in subs),
                "updates": self.published(), "computations": self.service.computations}


async def serve(store_path: str, options_json: str = "{}") -> None:
    harness = Harness(store_path, json.loads(options_json))
    target = await harness.start()
    print(json.dumps({"target": target}), flush=True)
    try:
        while line := await asyncio.to_thread(sys.stdin.readline):
            cmd = json.loads(line)
            if cmd["cmd"] == "quit":
                break
            try:
                answer = await harness.command(cmd)
            except Exception as exc:  # report to the test, keep serving
                answer = {"error": f"{type(exc).__name__}: {exc}"}
            print(json.dumps(answer), flush=True)
    finally:
        await harness.stop()


# ---- the test side -------------------------------------------------------------------------------

class Child:
    """A child process speaking lines: `send` a JSON command, `read_json`/`read_line` its answers."""

    def __init__(self, proc: subprocess.Popen, stderr_path: Path):
        self.proc, self.stderr_path = proc, stderr_path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise AssertionError(f"child exited {self.proc.returncode}: {self.stderr_path.read_text()[-3000:]}")
        return line.strip()

    def read_json(self):
        return json.loads(self.read_line())

    def send(self, **cmd) -> dict:
        self.write(json.dumps(cmd))
        answer = self.read_json()
        assert "error" not in answer, answer
        return answer

    def write(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(15)
        except (subprocess.TimeoutExpired, OSError):
            self.proc.kill()
            self.proc.wait(10)
        self.proc.stdout.close()


class Spawner:
    """Starts `module.function(*args)` in child processes (module: a file of bench/), ends them all."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.children: list[Child] = []
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}

    def __call__(self, module: str, func: str, *args) -> Child:
        err = self.tmp_path / f"{func}-{len(self.children)}.stderr"
        code = f"import sys, {module} as m; m.{func}(*sys.argv[1:])"
        with open(err, "w") as stderr:
            proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=stderr, text=True, env=self.env)
        child = Child(proc, err)
        self.children.append(child)
        return child

    def server(self, **options) -> tuple[Child, str]:
        """The harness server in a child process, and its target once its data is loaded."""
        store = self.tmp_path / f"store-{len(self.children)}.sqlite3"
        child = self(Path(__file__).stem, "run", store, json.dumps(options))
        child.store_path = store
        return child, child.read_json()["target"]

    def close(self) -> None:
        for child in self.children:
            child.close()


def run(store_path: str, options_json: str = "{}") -> None:
    asyncio.run(serve(store_path, options_json))


if __name__ == "__main__":
    run(*sys.argv[1:])
