"""`heatsvc serve --demo` as a child process for the tests that need the real thing."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager


def launch(store, *extra: str) -> subprocess.Popen:
    """Start the demo on free ports with its store at `store`, quiet, plus `extra` options."""
    return subprocess.Popen(
        [sys.executable, "-m", "heatsvc.cli", "serve", "--demo", "--listen", "127.0.0.1:0", "--quiet",
         "--store", str(store), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def read_until(proc: subprocess.Popen, text: str) -> list[str]:
    """The demo's output lines up to the first containing `text` (its stderr on an early exit)."""
    lines: list[str] = []
    while not any(text in line for line in lines):
        lines.append(proc.stdout.readline())
        assert lines[-1], proc.stderr.read()
    return lines


@contextmanager
def running(store, *extra: str) -> Iterator[subprocess.Popen]:
    """The demo (see launch) for the block; it must then stop cleanly on SIGTERM, else it is killed."""
    proc = launch(store, *extra)
    try:
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
