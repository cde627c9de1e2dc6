"""Web gateway benchmarks: 200 WebSocket clients on one view (bytes per update, latency from the
gateway's receipt of the gRPC update to the last client, gateway memory per client), and the page's
redraw time of a 400 x 288 grid in headless Chromium.

The service is bench/harness.py in a process of its own; the gateway is `heatsvc web` in another; the
clients are 4 processes of `websockets` clients (browsers simulated: they parse every frame). Each
view message carries the gateway's time.time() when the upstream message arrived; clients compare
it with their own time.time() when the update's last part (the grid frame) arrived: one machine.

    pytest bench/test_web_bench.py -s --benchmark-json=web.json

With --benchmark-disable it is a quick smoke test (20 clients, 2 updates, 5 redraws).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from harness import MARKET, percentiles, rss_mb

CLIENT_PROCESSES = 4
CHROMIUM = "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---- the client processes ---------------------------------------------------------------------------

def clients(url: str, n: str, updates: str) -> None:
    """n WebSocket clients subscribed to MARKET 1d. Prints {"ready"} once each has its first frame,
    then per update (a view with a higher sequence, then its frame) once all n have it: the delays
    from the gateway's receipt, and the bytes each client got for it. Ends at EOF on stdin."""
    import websockets

    from heatsvc.web import frames

    n, updates = int(n), int(updates)

    async def one(i: int, ready: asyncio.Queue, results: list):
        async with websockets.connect(url, max_size=None, proxy=None) as ws:
            await ws.send(json.dumps({"type": "subscribe", "market": MARKET, "lookback": "1d", "boost": 0.5}))
            seq, got_first, pending, nbytes = -1, False, None, 0
            while True:
                raw = await ws.recv()
                nbytes += len(raw)
                if isinstance(raw, bytes):
                    f = frames.parse_frame(raw)           # a browser would read it all: so do we
                    assert f["rows"] * f["columns"] == 400 * 288
                    if not got_first:
                        got_first = True
                        await ready.put(i)
                    elif pending is not None:
                        results.append((pending["seq"], time.time() - pending["gateway_time"], nbytes))
                        pending = None
                        if len(results) == updates:
                            return
                    nbytes = 0
                    continue
                msg = json.loads(raw)
                if msg["type"] == "view" and got_first and msg["seq"] > seq:
                    seq, pending = msg["seq"], msg
                elif msg["type"] == "view":
                    seq = msg["seq"]

    async def main():
        ready: asyncio.Queue = asyncio.Queue()
        results = [[] for _ in range(n)]
        tasks = [asyncio.create_task(one(i, ready, results[i])) for i in range(n)]
        for _ in range(n):
            await ready.get()
        print(json.dumps({"ready": n}), flush=True)
        await asyncio.gather(*tasks)
        for u in range(updates):
            print(json.dumps({"delays_s": [r[u][1] for r in results], "bytes": [r[u][2] for r in results],
                              "seqs": sorted({r[u][0] for r in results})}), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    asyncio.run(main())


# ---- the test side ----------------------------------------------------------------------------------

@pytest.fixture()
def stack(spawn):
    server, target = spawn.server()
    port = free_port()
    gateway = subprocess.Popen([sys.executable, "-m", "heatsvc", "web", "--target", target, "--listen",
                                f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            time.sleep(0.1)
    yield server, gateway, url
    gateway.terminate()
    gateway.wait(10)


def test_web_fanout_200_clients(benchmark, spawn, stack):
    server, gateway, url = stack
    n, updates = (20, 2) if benchmark.disabled else (200, 10)
    ws_url = url.replace("http", "ws") + "/ws"
    seed = spawn("test_web_bench", "clients", ws_url, 1, updates)   # the view's state exists before we measure
    assert seed.read_json()["ready"] == 1
    time.sleep(1.0)
    rss_before = rss_mb(gateway.pid)
    per = [n // CLIENT_PROCESSES + (i < n % CLIENT_PROCESSES) for i in range(CLIENT_PROCESSES)]
    procs = [spawn("test_web_bench", "clients", ws_url, k, updates) for k in per if k]
    for p in procs:
        assert p.read_json()["ready"] > 0
    time.sleep(1.0)
    rss_connected = rss_mb(gateway.pid)
    health = httpx.get(url + "/health").json()
    assert health["browsers"] == n + 1 and health["views"] == 1       # one upstream stream for all of them
    cpu0 = cpu_of(gateway.pid)

    def step():
        server.send(cmd="step")
        time.sleep(0.5)          # an update every half second at most: well under the page's pace
    benchmark.pedantic(step, rounds=updates, iterations=1)
    if benchmark.disabled:       # a disabled benchmark runs the function once
        for _ in range(updates - 1):
            step()
    reports = [[p.read_json() for _ in range(updates)] for p in procs]
    [seed.read_json() for _ in range(updates)]
    seed.write("")
    cpu1 = cpu_of(gateway.pid)
    delays = [d * 1000 for rep in reports for r in rep for d in r["delays_s"]]
    last = [max(d for rep in reports for d in rep[u]["delays_s"]) * 1000 for u in range(updates)]
    sizes = [b for rep in reports for r in rep for b in r["bytes"]]
    assert len(delays) == n * updates
    for p in procs:
        p.write("")
    info = {"clients": n, "updates": updates, "bytes_per_update_per_client": int(np.median(sizes)),
            "bytes_per_update_all_clients": int(np.median(sizes)) * n,
            "delay_all_clients": percentiles(delays), "delay_last_client": percentiles(last),
            "gateway_rss_mb": {"before": round(rss_before, 1), "connected": round(rss_connected, 1)},
            "gateway_kb_per_client": round((rss_connected - rss_before) * 1024 / n, 1),
            "gateway_cpu_ms_per_update": round((cpu1 - cpu0) * 1000 / updates, 1)}
    benchmark.extra_info.update(info)
    print("\n" + json.dumps(info, indent=1))


def test_page_redraw_400x288(benchmark, spawn, stack):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent")
    sync_api = pytest.importorskip("playwright.sync_api")
    _, _, url = stack
    rounds = 5 if benchmark.disabled else 50
    with sync_api.sync_playwright() as p:
        from web_screenshot import open_page
        browser, page = open_page(p, url)
        shape = page.evaluate("[heatsvc.state.frame.rows, heatsvc.state.frame.columns]")
        assert shape == [400, 288]
        full = page.evaluate(f"Array.from({{length: {rounds}}}, () => heatsvc.redraw(true))")
        draw = page.evaluate(f"Array.from({{length: {rounds}}}, () => heatsvc.redraw(false))")
        benchmark.pedantic(lambda: page.evaluate("heatsvc.redraw(true)"), rounds=1, iterations=1)
        browser.close()
    info = {"grid": "400x288", "rounds": rounds, "rebuild_and_draw_ms": percentiles(full),
            "draw_only_ms": percentiles(draw)}
    benchmark.extra_info.update(info)
    print("\n" + json.dumps(info, indent=1))
