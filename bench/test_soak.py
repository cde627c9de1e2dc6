"""Soak: the harness server (periodic refresher, replay clock running SPEED x real time) goes through
phases of exchange faults, each followed by a clean phase, while a separate client process keeps three
streams open (StreamHeatmap zones_only, StreamHeatmap full grid, StreamZones). Afterwards it checks:

* the store holds every closed bar the exchange served in the history window, up to the replay clock,
  with the dataset's values: nothing lost, nothing duplicated (read from the SQLite file after the
  server stopped, against heatsvc's own dataset of the same seed, bench/harness.datasets_for);
* no stream ended during the faults, every stream's sequence numbers increased, and every stream had
  updates in every clean phase (so also after the faults cleared);
* the server's RSS after the last clean phase is within RSS_MARGIN of its plateau after warm-up;
* ListMarkets said degraded or failing for the faulted exchange's markets during each fault phase that
  withholds data, ok for the other exchange's markets, and ok again for all after each clean phase;
  grpc health kept every loaded market SERVING throughout (data faults never take it out of service).

Per phase (benchmark.extra_info, and printed): faults, ListMarkets statuses seen, RSS, CPU seconds,
asyncio tasks, stream messages delivered, bars stored, seconds until every market was ok again.

The exchange clients' timeouts, retries and backoff are scaled down like the clock (CLIENT): with the
defaults one failing refresh takes ~30 s of retries, more than a whole short soak.

Short form (one cycle of phases, ~1.5 min; CI runs it): pytest bench/test_soak.py --benchmark-disable -q
Long form (the cycle of phases repeated for about HEATSVC_SOAK_SECONDS, figures saved):
    HEATSVC_SOAK_SECONDS=300 pytest bench/test_soak.py -s -q --benchmark-json=soak.json
    python bench/report.py soak soak.json
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import sqlite3
import sys
import time
from collections import Counter

import grpc
import numpy as np
from grpc_health.v1 import health_pb2, health_pb2_grpc
from harness import CLIENT_OPTIONS, DAY, MARKETS, START, STEP, datasets_for

from heatsvc.replay import Faults
from heatsvc.store import RECORD
from heatsvc.v1 import heatmap_service_pb2 as pb
from heatsvc.v1 import heatmap_service_pb2_grpc as pb_grpc

SPEED = 120                   # replay clock: a 5-minute bar closes every 2.5 s
HISTORY_DAYS = 2
CLIENT = {"timeout_s": 1.0, "max_retries": 2, "backoff_s": 0.05, "backoff_cap_s": 0.5, "max_wait_s": 2.0,
          "ban_probe_s": 2.0, "ban_cap_s": 8.0}
WARMUP_S, FAULT_S, CLEAN_S = 8.0, 5.0, 4.0
RECOVER_S = 30.0              # a clean phase may run this much longer until every market is ok again
SETTLE_S = 30.0               # after the clock stops: until every market has stored the newest bars
POLL_S = 0.25                 # ListMarkets / health poll; the server's stats every STATS_EVERY polls
STATS_EVERY = 4
RSS_MARGIN = (24.0, 0.15)     # MB, fraction of the plateau: whichever is larger
ALL = "all:BTCUSDT"
BAD = {"degraded", "failing"}
# (name, faults, exchange faulted (None: every exchange), whether its markets must show degraded or
# failing (True), stay ok (False), or either (None); the other exchange's markets must stay ok)
PHASES = [
    ("429 burst", {"rate_429": 1.0, "retry_after_s": 1}, "binance", True),
    ("418 ban", {"rate_418": 1.0, "ban_s": 3.0}, "bybit", True),
    ("5xx storm", {"rate_5xx": 1.0}, "binance", True),
    ("timeouts", {"timeout_rate": 1.0, "timeout_s": 2.0}, "bybit", True),
    ("truncated JSON", {"truncated_rate": 1.0}, "binance", True),
    ("malformed JSON", {"malformed_rate": 1.0}, "bybit", True),
    # rows dropped at random are mostly refetched within the same refresh: health not asserted
    ("duplicated + missing rows", {"duplicate_rate": 0.5, "missing_rate": 0.3}, None, None),
    ("empty history", {"missing_rate": 1.0}, "binance", True),   # gaps: degraded until refilled
]
NOT_SERVED = {"bybit": ("taker_buy_volume",)}   # fields a dialect does not publish (stored as missing)
RTOL = {"long_short_ratio": 2e-3}               # served with 4 decimals (Bybit: as buy and sell shares)
CLEAN = {f.name: f.default for f in dataclasses.fields(Faults) if f.name != "seed"}
STREAMS = ("zones_only binance:BTCUSDT", "full grid bybit:BTCUSDT", "zones binance:ETHUSDT+all:BTCUSDT")


def soak_seconds() -> float:
    return float(os.environ.get("HEATSVC_SOAK_SECONDS", "0"))


# ---- the client process ------------------------------------------------------------------------

def soak_subscribers(target: str, budget_s: str) -> None:
    """The three streams of STREAMS on one connection. Prints "ready" once every snapshot is in; for
    each "mark" line on stdin prints each stream's counts so far; at "stop" (or EOF) cancels them and
    prints the final counts. A stream the server ends or breaks is recorded in its "ended"."""
    budget = float(budget_s)

    async def main():
        channel = grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS)
        stub = pb_grpc.HeatmapServiceStub(channel)
        day = {"lookback": "1d"}
        calls = dict(zip(STREAMS, (
            stub.StreamHeatmap(pb.StreamHeatmapRequest(view=pb.View(market="binance:BTCUSDT", **day),
                                                       zones_only=True), timeout=budget),
            stub.StreamHeatmap(pb.StreamHeatmapRequest(view=pb.View(market="bybit:BTCUSDT", **day)),
                               timeout=budget),
            stub.StreamZones(pb.StreamZonesRequest(views=[pb.View(market="binance:ETHUSDT", **day),
                                                          pb.View(market=ALL, **day)]), timeout=budget))))
        state = {name: {"messages": 0, "sequence": None, "not_increasing": 0, "resyncs": 0, "skipped": 0,
                        "kinds": Counter(), "bytes": 0, "ended": None} for name in STREAMS}
        first = asyncio.Event()
        stopping = False

        async def read(name, call):
            s = state[name]
            try:
                async for msg in call:
                    if s["sequence"] is not None and msg.sequence <= s["sequence"]:
                        s["not_increasing"] += 1
                    s["sequence"] = msg.sequence
                    s["messages"] += 1
                    s["kinds"][pb.UpdateKind.Name(msg.kind)] += 1
                    s["resyncs"] += msg.gap_skipped
                    s["skipped"] += msg.skipped_updates
                    s["bytes"] += msg.ByteSize()
                    if all(state[n]["messages"] for n in STREAMS):
                        first.set()
                if not stopping:
                    s["ended"] = f"ended by the server: {await call.code()}"
            except grpc.aio.AioRpcError as exc:
                if not stopping:
                    s["ended"] = f"{exc.code().name}: {exc.details()}"
            first.set()

        readers = [asyncio.create_task(read(n, c)) for n, c in calls.items()]
        await asyncio.wait_for(first.wait(), 60)
        print("ready", flush=True)
        while (await asyncio.to_thread(sys.stdin.readline)).strip() == "mark":
            print(json.dumps(state), flush=True)
        stopping = True
        for call in calls.values():
            call.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        await channel.close()
        print(json.dumps(state), flush=True)

    asyncio.run(main())


# ---- the test side -----------------------------------------------------------------------------

class Watch:
    """Polls ListMarkets and grpc health from the test process, and the server's stats."""

    def __init__(self, server, target: str):
        self.server = server
        self.channel = grpc.insecure_channel(target, options=CLIENT_OPTIONS)
        self.stub = pb_grpc.HeatmapServiceStub(self.channel)
        self.health = health_pb2_grpc.HealthStub(self.channel)
        self.rss: list[tuple[float, float]] = []   # (monotonic, MB)

    def statuses(self) -> dict[str, str]:
        resp = self.stub.ListMarkets(pb.ListMarketsRequest(), timeout=10)
        return {m.market: pb.MarketStatus.Name(m.status).removeprefix("MARKET_STATUS_").lower()
                for m in resp.markets}

    def serving(self) -> dict[str, bool]:
        return {m: self.health.Check(health_pb2.HealthCheckRequest(service=m), timeout=10).status
                == health_pb2.HealthCheckResponse.SERVING for m in (*MARKETS, ALL)}

    def stats(self) -> dict:
        st = self.server.send(cmd="stats")
        self.rss.append((time.monotonic(), st["rss_mb"]))
        return st

    def poll(self, seconds: float, until_ok: bool = False) -> dict:
        """Statuses seen (in order, repeats folded) per market for `seconds`; with until_ok, then
        on until every market is ok (at most RECOVER_S more). Also whether any market stopped SERVING."""
        seen: dict[str, list[str]] = {}
        not_serving = set()
        t0 = time.monotonic()
        recovered_after = None
        for i in range(int((seconds + (RECOVER_S if until_ok else 0)) / POLL_S) + 1):
            now = self.statuses()
            for m, s in now.items():
                if seen.setdefault(m, [s])[-1] != s:
                    seen[m].append(s)
            not_serving |= {m for m, ok in self.serving().items() if not ok}
            if i % STATS_EVERY == 0:
                self.stats()
            elapsed = time.monotonic() - t0
            if elapsed >= seconds and (not until_ok or set(now.values()) == {"ok"}):
                recovered_after = elapsed if until_ok else None
                break
            time.sleep(POLL_S)
        return {"seen": seen, "final": now, "not_serving": sorted(not_serving), "recovered_s": recovered_after}


def bar_counts(store_path) -> dict[str, int]:
    """Bars stored per market, read-only while the server writes (WAL)."""
    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True, timeout=10)
    try:
        return dict(db.execute("SELECT m.name, COUNT(*) FROM bars b JOIN markets m ON m.id = b.market "
                               "GROUP BY m.name").fetchall())
    finally:
        db.close()


def stored_bars(store_path) -> dict[str, np.ndarray]:
    """Every market's stored records (heatsvc.store.RECORD), in key order, from the closed store."""
    db = sqlite3.connect(f"file:{store_path}?mode=ro", uri=True)
    try:
        out = {}
        for mid, name in db.execute("SELECT id, name FROM markets"):
            rows = db.execute("SELECT record FROM bars WHERE market = ? ORDER BY time_ms", (mid,)).fetchall()
            out[name] = np.frombuffer(b"".join(r[0] for r in rows), RECORD)
        return out
    finally:
        db.close()


def compare_store(records: dict[str, np.ndarray], now_ms: int) -> dict[str, dict]:
    """Per market: bars expected (every closed bar from the first backfill's window start up to the
    clock), lost, extra, duplicated, and values that differ from the dataset."""
    expected = datasets_for(3)
    start = (START - int(HISTORY_DAYS * DAY)) // STEP * STEP
    cur = now_ms // STEP * STEP
    out = {}
    for m in MARKETS:
        d = expected[m]
        sel = (d["time_ms"] >= start) & (d["time_ms"] < cur)
        want = d["time_ms"][sel]
        rec = records.get(m, np.empty(0, RECORD))
        got = rec[(rec["time_ms"] >= start) & (rec["time_ms"] < cur)]
        lost = np.setdiff1d(want, got["time_ms"])
        extra = np.setdiff1d(got["time_ms"], want)
        dup = len(got) - len(np.unique(got["time_ms"]))
        wrong = {}
        common, gi, di = np.intersect1d(got["time_ms"], want, return_indices=True)
        for f in RECORD.names[1:]:
            if f in NOT_SERVED.get(m.split(":")[0], ()):
                continue
            x, y = got[f][gi], d[f][sel][di]
            bad = ~np.isclose(x, y, rtol=RTOL.get(f, 1e-9), atol=0, equal_nan=True)
            if bad.any():
                wrong[f] = [(int(t), float(a), float(b)) for t, a, b in zip(common[bad], x[bad], y[bad])][:5] \
                    + [f"{int(bad.sum())} bars"]
        out[m] = {"expected": len(want), "stored": len(got), "lost": lost.tolist()[:10],
                  "lost_n": len(lost), "extra_n": len(extra), "duplicated": int(dup), "wrong": wrong}
    return out


def print_table(rows: list[dict], store: dict | None = None) -> None:
    """The per-phase figures as a markdown table (also `python bench/report.py soak FILE.json`)."""
    print("\nsoak phases; health: ListMarkets statuses seen in order")
    print("| phase | faults | health binance:BTCUSDT | bybit:BTCUSDT | binance:ETHUSDT | RSS MB | CPU s "
          "| asyncio tasks | updates | bars stored | ok again after s |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        knobs = " ".join(f"{k}={v}" for k, v in r["faults"].items()) or "-"
        where = f" ({r['faulted']})" if r["faults"] else ""
        ok = "" if r["recovered_s"] is None else f"{r['recovered_s']:.1f}"
        print(f"| {r['phase']} | {knobs}{where} | " + " | ".join(" > ".join(r["seen"][m]) for m in MARKETS)
              + f" | {r['rss_mb']:.1f} | {r['cpu_s']:.2f} | {r['tasks']} | {sum(r['updates'].values())} "
              f"| {r['bars_stored']} | {ok} |")
    for m, r in (store or {}).items():
        print(f"store {m}: {r['stored']} of {r['expected']} closed bars, lost {r['lost_n']}, extra {r['extra_n']}, "
              f"duplicated {r['duplicated']}, fields differing {sorted(r['wrong']) or 'none'}")


def test_soak(benchmark, spawn):
    cycles = max(1, round(soak_seconds() / (len(PHASES) * (FAULT_S + CLEAN_S))))
    benchmark.group = "soak"
    total_s = WARMUP_S + cycles * len(PHASES) * (FAULT_S + CLEAN_S + RECOVER_S) + SETTLE_S
    server, target = spawn.server(periodic=True, speed=SPEED, refresh_interval_s=1.0, days=3,
                                  history_days=HISTORY_DAYS, client=CLIENT)
    subs = spawn("test_soak", "soak_subscribers", target, total_s + 120)
    assert subs.read_line() == "ready"
    watch = Watch(server, target)
    rows: list[dict] = []
    trimmed: list[float] = []   # RSS after gc + malloc_trim: after warm-up, then after each cycle

    def mark() -> dict:
        subs.write("mark")
        return subs.read_json()

    def phase(name: str, faults: dict, faulted: str | None, seconds: float, until_ok: bool, seed: int) -> dict:
        before_stats, before_msgs, before_bars = watch.stats(), mark(), bar_counts(server.store_path)
        knobs = {**CLEAN, **faults, "seed": seed, "exchanges": None if faulted is None else [faulted]}
        server.send(cmd="faults", set=knobs)
        polled = watch.poll(seconds, until_ok=until_ok)
        after_stats, after_msgs, after_bars = watch.stats(), mark(), bar_counts(server.store_path)
        row = {"phase": name, "faulted": faulted or ("all" if faults else None), "faults": faults, **polled,
               "rss_mb": after_stats["rss_mb"], "cpu_s": round(after_stats["cpu_s"] - before_stats["cpu_s"], 2),
               "tasks": after_stats["tasks"], "subscribers": after_stats["subscribers"],
               "updates": {s: after_msgs[s]["messages"] - before_msgs[s]["messages"] for s in STREAMS},
               "ended": {s: after_msgs[s]["ended"] for s in STREAMS if after_msgs[s]["ended"]},
               "bars_stored": sum(after_bars.values()) - sum(before_bars.values())}
        rows.append(row)
        return row

    def soak():
        phase("warm-up (clean)", {}, None, WARMUP_S, True, 0)
        plateau = max(mb for _, mb in watch.rss[-3:])
        trimmed.append(server.send(cmd="trim")["rss_mb"])
        for cycle in range(cycles):
            for i, (name, faults, faulted, degrades) in enumerate(PHASES):
                phase(name, faults, faulted, FAULT_S, False, cycle * 100 + i)
                phase(f"clean after {name}", {}, None, CLEAN_S, True, 0)
            if cycle < cycles - 1:   # the last cycle's comes after its raw RSS is taken
                trimmed.append(server.send(cmd="trim")["rss_mb"])
        end = server.send(cmd="clock", speed=None)["now_ms"]
        cur = end // STEP * STEP
        for _ in range(int(SETTLE_S / POLL_S)):
            health = server.send(cmd="health")
            if all(h["last_bar_ms"] == cur and not h["missing_bars"] and h["status"] == "ok"
                   for h in health.values()):
                break
            time.sleep(POLL_S)
        rss_end = watch.stats()["rss_mb"]
        trimmed.append(server.send(cmd="trim")["rss_mb"])
        subs.write("stop")
        streams = subs.read_json()
        for _ in range(int(SETTLE_S / POLL_S)):   # the server notices the cancelled streams
            final = watch.stats()
            if final["streams"] == 0:
                break
            time.sleep(POLL_S)
        return plateau, end, health, {**final, "rss_mb": rss_end}, streams

    plateau, end_ms, health, final, streams = benchmark.pedantic(soak, rounds=1, iterations=1)
    watch.channel.close()
    server.close()
    assert server.proc.returncode == 0, server.stderr_path.read_text()[-3000:]
    store = compare_store(stored_bars(server.store_path), end_ms)
    print_table(rows, store)
    print(f"RSS plateau after warm-up {plateau:.1f} MB, after the last clean phase {final['rss_mb']:.1f} MB "
          f"(margin {max(RSS_MARGIN[0], RSS_MARGIN[1] * plateau):.1f} MB); after gc + malloc_trim, after warm-up "
          f"then after each cycle: {', '.join(f'{mb:.1f}' for mb in trimmed)} MB")

    rss_end = final["rss_mb"]
    margin = max(RSS_MARGIN[0], RSS_MARGIN[1] * plateau)
    benchmark.extra_info.update(
        cycles=cycles, speed=SPEED, client=CLIENT, phase_s={"warmup": WARMUP_S, "fault": FAULT_S, "clean": CLEAN_S},
        phases=rows, streams=streams, store=store,
        rss_plateau_mb=round(plateau, 1), rss_end_mb=round(rss_end, 1), rss_margin_mb=round(margin, 1),
        rss_trimmed_mb=[round(mb, 1) for mb in trimmed],
        rss_series_mb=[round(mb, 1) for _, mb in watch.rss], final_health=health,
        machine=f"{os.cpu_count()} cores")

    # the store: every closed bar the exchange served, once, with its values
    assert all(h["status"] == "ok" and not h["missing_bars"] and h["last_bar_ms"] == end_ms // STEP * STEP
               for h in health.values()), health
    for m, r in store.items():
        assert r["lost_n"] == 0 and r["extra_n"] == 0 and r["duplicated"] == 0 and not r["wrong"], (m, r)
        assert r["expected"] > HISTORY_DAYS * 288, (m, r)
    # the streams: never broken, sequences increasing, updates in every clean phase
    for name, s in streams.items():
        assert s["ended"] is None and s["not_increasing"] == 0, (name, s)
    for r in rows:
        assert not r["ended"], r
        if r["faulted"] is None:
            assert all(n > 0 for n in r["updates"].values()), r
    # the health: degraded or failing where data was withheld, the rest ok; ok again after each clean phase
    for r, (name, _, faulted, degrades) in zip(rows[1::2], PHASES * cycles):
        affected = [m for m in MARKETS if faulted is None or m.startswith(faulted + ":")]
        for m in MARKETS:
            if m not in affected or degrades is False:
                assert set(r["seen"][m]) == {"ok"}, (name, m, r["seen"])
            elif degrades:
                assert BAD & set(r["seen"][m]), (name, m, r["seen"])
        assert not r["not_serving"], r   # grpc health: data faults never take a loaded market out of service
    for r in rows[0::2]:
        assert r["recovered_s"] is not None and set(r["final"].values()) == {"ok"}, r
    # the memory: back within the margin of the plateau after warm-up
    assert rss_end <= plateau + margin, (plateau, margin, watch.rss)
    assert final["streams"] == 0 and final["subscribers"] == 0, final
