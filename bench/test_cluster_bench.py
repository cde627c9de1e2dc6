"""Smoke tests of bench/cluster_bench.py: each mode at tiny sizes, its JSON figures checked. The
measured runs are the commands in its docstring, on a quiet machine."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run(*args: str) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, str(HERE / "cluster_bench.py"), *args], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def needs_nats():
    from heatsvc.cluster.nats_server import binary
    try:
        binary()
    except ValueError as exc:
        pytest.skip(str(exc))


def test_compute_smoke():
    ready, *refreshes = run("compute", "--symbols", "2", "--lookbacks", "12h,1d", "--history-days", "2",
                            "--refreshes", "2")
    assert ready["views"] == (6 + 2) * 2
    assert len(refreshes) == 2
    for r in refreshes:
        assert r["step_to_all_published_s"] > 0 and r["messages"]["zones"] >= ready["views"]
        assert r["mean_bytes"]["grid"] > r["mean_bytes"]["zones"] > 0


def test_requests_smoke():
    needs_nats()
    (figures,) = run("requests", "--edges", "2", "--concurrency", "2", "--seconds", "0.5")
    assert figures["calls"] > 0 and not figures["errors"] and figures["p99_ms"] > 0


def test_delivery_smoke():
    needs_nats()
    (figures,) = run("delivery", "--edges", "2", "--subscribers", "20", "--updates", "2", "--interval", "0.7",
                     "--channels", "2")
    assert figures["updates_every_subscriber_got"] == figures["updates_seen"] >= 1
    assert figures["nats_to_subscriber"]["p99_ms"] > 0
