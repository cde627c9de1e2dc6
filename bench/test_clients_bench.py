"""Slow and dead clients against the harness server (bench/harness.py, its own process, stepped
refresher): a subscriber that stops reading, a client process SIGKILLed with open streams, and
thousands of streams opened and dropped in a loop. For each, the server's RSS, asyncio task count and
stream/subscriber counts are taken before and after the abuse, and well-behaved subscribers (WATCHERS
zones_only streams in another process) measure refresh -> arrival before and during it.

Every update must reach every watcher (asserted); the latencies are reported, not asserted.
Arrival times are compared across processes with time.monotonic() (CLOCK_MONOTONIC, system-wide on
Linux), from the moment the harness's refresh() returned. With --benchmark-disable it is a quick
smoke test (fewer steps and streams):

    pytest bench/test_clients_bench.py --benchmark-disable -q          # smoke (CI)
    pytest bench/test_clients_bench.py -s -q --benchmark-json=clients.json
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
from collections import Counter

import grpc
from harness import BUDGET_S, CLIENT_OPTIONS, MARKET, percentiles

from heatsvc.v1 import heatmap_service_pb2 as pb
from heatsvc.v1 import heatmap_service_pb2_grpc as pb_grpc

WATCHERS = 5
BIG = (2000, 288)            # the stalled subscriber's view: ~4.6 MB a message, so a leak would show
SETTLE_S = 30.0              # after the abuse: until the server's counts are back at their baseline
RSS_MARGIN_MB = 16.0         # RSS after the abuse may exceed the baseline by this, both taken after gc and
                             # malloc_trim: without the trim glibc keeps freed heap (measured and reported)
WATCH_VIEW = pb.View(market=MARKET, lookback="1d")


def channel(target: str, **extra) -> grpc.aio.Channel:
    """A channel of its own (no shared subchannel), as a separate client would have."""
    return grpc.aio.insecure_channel(target, options=CLIENT_OPTIONS + [("grpc.use_local_subchannel_pool", 1),
                                                                       *extra.items()])


def requests(i: int):
    """The i-th of three kinds of stream request: full-grid heatmap, zones-only heatmap, zones."""
    kind = i % 3
    if kind == 0:
        return "StreamHeatmap", pb.StreamHeatmapRequest(view=pb.View(market=MARKET, lookback="12h"))
    if kind == 1:
        return "StreamHeatmap", pb.StreamHeatmapRequest(view=pb.View(market="bybit:BTCUSDT", lookback="1d"),
                                                        zones_only=True)
    return "StreamZones", pb.StreamZonesRequest(views=[pb.View(market=MARKET, lookback="12h"),
                                                       pb.View(market="all:BTCUSDT", lookback="1d")])


# ---- the client processes ------------------------------------------------------------------------

def watchers_client(target: str, n: str) -> None:
    """n zones_only subscribers of WATCH_VIEW, each on its own connection: prints "ready" once every
    snapshot is in, then per update, once all n have it, its sequence, whether any reader was told it
    skipped updates, and the monotonic arrival times, as JSON. Ends at EOF on stdin."""
    n = int(n)

    async def main():
        arrivals: dict[int, list[float]] = {}
        flagged: set[int] = set()
        joined = asyncio.Event()
        count = 0
        channels = [channel(target) for _ in range(n)]

        async def watch(ch):
            nonlocal count
            call = pb_grpc.HeatmapServiceStub(ch).StreamHeatmap(
                pb.StreamHeatmapRequest(view=WATCH_VIEW, zones_only=True), timeout=BUDGET_S)
            await call.read()
            count += 1
            if count == n:
                joined.set()
            while (msg := await call.read()) is not grpc.aio.EOF:
                got = arrivals.setdefault(msg.sequence, [])
                got.append(time.monotonic())
                if msg.gap_skipped:
                    flagged.add(msg.sequence)
                if len(got) == n:
                    print(json.dumps({"sequence": msg.sequence, "skipped": msg.sequence in flagged,
                                      "arrivals": got}), flush=True)

        tasks = [asyncio.create_task(watch(c)) for c in channels]
        await asyncio.wait_for(joined.wait(), 60)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)      # until EOF
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(c.close() for c in channels))

    asyncio.run(main())


def stalled_client(target: str) -> None:
    """One subscriber to a BIG view: reads its snapshot, prints "stalled BYTES", reads nothing more
    until a line arrives on stdin, then reads until nothing arrives for 3 s and prints what it got
    ([sequence, gap_skipped, skipped_updates, has heatmap] each) as JSON; then, at the next line,
    reads one more message and prints [sequence, gap_skipped]."""
    async def main():
        ch = channel(target, **{"grpc.http2.bdp_probe": 0})
        view = pb.View(market=MARKET, lookback="1d", rows=BIG[0], columns=BIG[1])
        call = pb_grpc.HeatmapServiceStub(ch).StreamHeatmap(pb.StreamHeatmapRequest(view=view), timeout=BUDGET_S)
        first = await call.read()
        print("stalled", first.ByteSize(), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        inbox: asyncio.Queue = asyncio.Queue()   # a timed-out read() would cancel the call: read in a task

        async def read():
            while (msg := await call.read()) is not grpc.aio.EOF:
                inbox.put_nowait(msg)

        reader = asyncio.create_task(read())
        got = []
        while True:
            try:
                msg = await asyncio.wait_for(inbox.get(), 3)
            except TimeoutError:
                break
            got.append([msg.sequence, msg.gap_skipped, msg.skipped_updates, msg.HasField("heatmap")])
        print(json.dumps(got), flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        msg = await asyncio.wait_for(inbox.get(), 60)
        print(json.dumps([msg.sequence, msg.gap_skipped]), flush=True)
        call.cancel()
        await asyncio.gather(reader, return_exceptions=True)
        await ch.close()

    asyncio.run(main())


def holder_client(target: str, n: str) -> None:
    """n streams of the three kinds over four connections; reads each snapshot, prints "open" and then
    reads nothing more. It is meant to be SIGKILLed."""
    n = int(n)

    async def main():
        channels = [channel(target) for _ in range(4)]
        calls = []
        for i in range(n):
            method, request = requests(i)
            calls.append(getattr(pb_grpc.HeatmapServiceStub(channels[i % 4]), method)(request, timeout=BUDGET_S))
        await asyncio.gather(*(c.read() for c in calls))
        print("open", flush=True)
        await asyncio.sleep(BUDGET_S)

    asyncio.run(main())


def churn_client(target: str, count: str, workers: str, drop_every: str, budget_s: str) -> None:
    """`count` streams opened, read to their snapshot and dropped, by `workers` loops at once: most are
    cancelled on a shared connection; every drop_every-th is opened on a connection of its own which
    is then closed under it. Bounded by count and budget_s. Prints the tally as JSON."""
    count, workers, drop_every, budget = int(count), int(workers), int(drop_every), float(budget_s)

    async def main():
        shared = channel(target)
        tally: Counter[str] = Counter()
        deadline = time.monotonic() + budget
        next_i = 0

        async def loop():
            nonlocal next_i
            while next_i < count and time.monotonic() < deadline:
                i, next_i = next_i, next_i + 1
                method, request = requests(i)
                own = channel(target) if i % drop_every == 0 else None
                call = getattr(pb_grpc.HeatmapServiceStub(own or shared), method)(request, timeout=60)
                try:
                    msg = await call.read()
                    tally["snapshots" if msg.kind == pb.UPDATE_KIND_SNAPSHOT else "other first message"] += 1
                except grpc.aio.AioRpcError as exc:
                    tally[exc.code().name] += 1
                if own is None:
                    call.cancel()
                    tally["cancelled"] += 1
                else:
                    await own.close(grace=None)
                    tally["connection dropped"] += 1

        t0 = time.monotonic()
        await asyncio.gather(*(loop() for _ in range(workers)))
        tally["opened"] = next_i
        await shared.close()
        print(json.dumps({**tally, "seconds": round(time.monotonic() - t0, 2)}), flush=True)

    asyncio.run(main())


# ---- the test side -------------------------------------------------------------------------------

class Watched:
    """The server and its well-behaved watchers: step the replay and measure arrivals."""

    def __init__(self, spawn):
        self.server, self.target = spawn.server()
        self.watchers = spawn("test_clients_bench", "watchers_client", self.target, WATCHERS)
        assert self.watchers.read_line() == "ready"
        self.sequence = None
        self.missed = []

    def step(self) -> float:
        """Move the replay a bar, refresh, and return the slowest watcher's arrival (ms after refresh()
        returned); every watcher must get the update, in sequence, not flagged as skipping any."""
        ans = self.server.send(cmd="step")
        got = self.watchers.read_json()
        if self.sequence is not None and (got["sequence"] != self.sequence + 1 or got["skipped"]):
            self.missed.append((self.sequence, got["sequence"], got["skipped"]))
        self.sequence = got["sequence"]
        assert len(got["arrivals"]) == WATCHERS
        return (max(got["arrivals"]) - ans["t1"]) * 1e3

    def baseline(self) -> dict:
        """The server's stats after gc, then after malloc_trim (the baseline the abuse is compared with)."""
        return {**self.server.send(cmd="trim"), "rss_gc_mb": self.server.send(cmd="gc")["rss_mb"]}

    def settle(self, base: dict) -> tuple[dict, float]:
        """Poll until streams, subscribers and tasks are back at the baseline (at most SETTLE_S); then
        gc, then malloc_trim. Returns the stats after both (RSS after gc alone as rss_gc_mb) and how
        long it took to get back."""
        t0 = time.monotonic()
        for _ in range(int(SETTLE_S / 0.1)):
            st = self.server.send(cmd="stats")
            if all(st[k] <= base[k] for k in ("streams", "subscribers", "tasks", "topics")):
                break
            time.sleep(0.1)
        settle_s = time.monotonic() - t0
        rss_gc = self.server.send(cmd="gc")["rss_mb"]
        return {**self.server.send(cmd="trim"), "rss_gc_mb": rss_gc}, settle_s


def figures(base: dict, during: dict, after: dict, settle_s: float, before_ms, during_ms) -> dict:
    keys = ("rss_mb", "tasks", "streams", "subscribers", "topics", "queued")
    out = {f"{k}_{when}": round(st[k], 1) for when, st in (("before", base), ("during", during), ("after", after))
           for k in keys}
    out.update(settle_s=round(settle_s, 2), rss_growth_after_mb=round(after["rss_mb"] - base["rss_mb"], 1),
               rss_gc_before_mb=round(base["rss_gc_mb"], 1), rss_gc_after_mb=round(after["rss_gc_mb"], 1),
               rss_growth_after_gc_only_mb=round(after["rss_gc_mb"] - base["rss_gc_mb"], 1),
               rss_margin_mb=RSS_MARGIN_MB, machine=f"{os.cpu_count()} cores",
               **{f"watchers_before_{k}": round(v, 2) for k, v in percentiles(before_ms).items()},
               **{f"watchers_during_{k}": round(v, 2) for k, v in percentiles(during_ms).items()},
               updates_before=len(before_ms), updates_during=len(during_ms))
    return out


def print_figures(name: str, f: dict) -> None:
    print(f"\n{name}")
    print(f"  {'':<10} {'rss MB':>8} {'tasks':>6} {'streams':>8} {'subs':>5} {'topics':>6} {'queued':>6}")
    for when in ("before", "during", "after"):
        print(f"  {when:<10} " + " ".join(f"{f[f'{k}_{when}']:>{w}}" for k, w in
                                          (("rss_mb", 8), ("tasks", 6), ("streams", 8), ("subscribers", 5),
                                           ("topics", 6), ("queued", 6))))
    for when in ("before", "during"):
        print(f"  watchers {when}: {f[f'updates_{when}']} updates, refresh -> last watcher p50 "
              f"{f[f'watchers_{when}_p50_ms']} ms, p99 {f[f'watchers_{when}_p99_ms']} ms, "
              f"max {f[f'watchers_{when}_max_ms']} ms")
    print(f"  counts back at baseline after {f['settle_s']} s; RSS after - before: {f['rss_growth_after_mb']} MB "
          f"(after gc + malloc_trim), {f['rss_growth_after_gc_only_mb']} MB (after gc only: "
          f"{f['rss_gc_before_mb']} -> {f['rss_gc_after_mb']} MB)")


def check_baseline(w: Watched, base: dict, after: dict) -> None:
    assert not w.missed, w.missed                                    # every update reached every watcher
    for k in ("streams", "subscribers", "tasks", "topics"):
        assert after[k] == base[k], (k, base, after)
    assert after["queued"] == 0, after
    assert after["rss_mb"] - base["rss_mb"] < RSS_MARGIN_MB, (base, after)


# ---- 1. a subscriber that stops reading ------------------------------------------------------------

def stall_once(w: Watched, spawn, steps: int) -> dict:
    """A stalled subscriber while `steps` updates are published, then released: it must catch up by a
    coalesced snapshot (skipping, not holding every update) and follow live again; then it leaves."""
    stalled = spawn("test_clients_bench", "stalled_client", w.target)
    word, size = stalled.read_line().split()
    assert word == "stalled"
    states, during_ms = [], []
    for _ in range(steps):
        during_ms.append(w.step())
        states.append(w.server.send(cmd="stats"))
    stalled.write("go")
    owed = json.loads(stalled.read_line())
    assert owed and owed[-1][3], owed                               # caught up to the latest state...
    assert any(gap for _, gap, _, _ in owed) and len(owed) < steps, owed  # ...by skipping, not holding all
    w.step()
    stalled.write("one")
    latest = json.loads(stalled.read_line())
    assert latest == [owed[-1][0] + 1, False], (latest, owed[-1])   # and then follows live again
    stalled.close()
    return {"message_mb": int(size) / 2**20, "states": states, "during_ms": during_ms, "owed": len(owed)}


def test_stalled_subscriber(benchmark, spawn):
    steps = 20 if benchmark.disabled else 60
    depth = 8  # the harness's default limits.queue_depth
    benchmark.group = "slow and dead clients"
    w = Watched(spawn)
    before_ms = [w.step() for _ in range(10)]
    base = w.baseline()
    rounds = []

    def two_rounds():
        for _ in range(2):  # the second round shows whether what the first left behind grows
            rounds.append(stall_once(w, spawn, steps))
            rounds[-1]["after"], rounds[-1]["settle_s"] = w.settle(base)

    benchmark.pedantic(two_rounds, rounds=1, iterations=1)
    first, second = rounds
    rss = [s["rss_mb"] for s in first["states"]]
    half = len(rss) // 2
    f = figures(base, max(first["states"], key=lambda s: s["rss_mb"]), first["after"], first["settle_s"],
                before_ms, first["during_ms"])
    f.update(message_mb=round(first["message_mb"], 2), updates=steps, queue_depth=depth,
             rss_peak_mb=round(max(rss), 1), rss_peak_first_half_mb=round(max(rss[:half]), 1),
             rss_peak_second_half_mb=round(max(rss[half:]), 1), messages_after_release=first["owed"],
             rss_series_mb=[round(r, 1) for r in rss],
             second_round_rss_after_trim_mb=round(second["after"]["rss_mb"], 1),
             second_round_rss_after_gc_mb=round(second["after"]["rss_gc_mb"], 1),
             second_round_peak_mb=round(max(s["rss_mb"] for s in second["states"]), 1))
    benchmark.extra_info.update(f)
    print_figures("stalled subscriber", f)
    print(f"  second round: peak {f['second_round_peak_mb']} MB, after gc {f['second_round_rss_after_gc_mb']} MB, "
          f"after gc + malloc_trim {f['second_round_rss_after_trim_mb']} MB")
    assert not w.missed, w.missed                                    # every update reached every watcher
    assert all(s["queued"] <= depth * s["subscribers"] for r in rounds for s in r["states"])
    assert max(rss[half:]) < max(rss[:half]) + RSS_MARGIN_MB, rss    # a plateau while it stays stalled
    for r in rounds:
        for k in ("streams", "subscribers", "tasks", "topics"):
            assert r["after"][k] == base[k], (k, base, r["after"])
    # What the first round left (the view's cache entry, and heap glibc keeps; see the report) does
    # not grow with a second round by more than one full queue of messages (fragments of freed message
    # buffers glibc may keep: 30 MB was seen once); holding the round's updates would be `steps` messages.
    bound = max(RSS_MARGIN_MB, depth * first["message_mb"])
    assert bound < steps * first["message_mb"]
    assert second["after"]["rss_mb"] < first["after"]["rss_mb"] + bound, (first["after"], second["after"])


# ---- 2. a client SIGKILLed with open streams ---------------------------------------------------------

def test_client_killed_with_open_streams(benchmark, spawn):
    streams, steps = (60, 10) if benchmark.disabled else (300, 30)
    benchmark.group = "slow and dead clients"
    w = Watched(spawn)
    before_ms = [w.step() for _ in range(steps)]
    base = w.baseline()
    holder = spawn("test_clients_bench", "holder_client", w.target, streams)
    assert holder.read_line() == "open"
    during_ms = []

    def abuse():
        for _ in range(steps):
            during_ms.append(w.step())
        during = w.server.send(cmd="stats")
        holder.proc.send_signal(signal.SIGKILL)
        holder.proc.wait(10)
        return during

    during = benchmark.pedantic(abuse, rounds=1, iterations=1)
    assert during["streams"] == base["streams"] + streams, during
    after, settle_s = w.settle(base)
    after_ms = [w.step() for _ in range(steps)]
    f = figures(base, during, after, settle_s, before_ms, during_ms)
    f.update(killed_streams=streams, **{f"watchers_after_{k}": round(v, 2) for k, v in percentiles(after_ms).items()})
    benchmark.extra_info.update(f)
    print_figures(f"client SIGKILLed with {streams} open streams", f)
    check_baseline(w, base, after)


# ---- 3. thousands of streams opened and dropped ------------------------------------------------------

def test_streams_opened_and_dropped(benchmark, spawn):
    total = 5000
    processes, workers, drop_every, budget_s = 2, 8, 5, 240
    benchmark.group = "slow and dead clients"
    w = Watched(spawn)
    before_ms = [w.step() for _ in range(10)]
    base = w.baseline()
    during_ms, samples = [], []

    def churn():
        clients = [spawn("test_clients_bench", "churn_client", w.target, total // processes, workers, drop_every,
                         budget_s) for _ in range(processes)]
        deadline = time.monotonic() + budget_s + 30
        while any(c.proc.poll() is None for c in clients) and time.monotonic() < deadline:
            during_ms.append(w.step())
            samples.append(w.server.send(cmd="stats"))
            time.sleep(0.2)
        return [c.read_json() for c in clients]

    tallies = benchmark.pedantic(churn, rounds=1, iterations=1)
    tally = sum((Counter(t) for t in tallies), Counter())
    after, settle_s = w.settle(base)
    during = max(samples, key=lambda s: s["rss_mb"])
    f = figures(base, during, after, settle_s, before_ms, during_ms)
    f.update(streams_opened=tally["opened"], tally=dict(tally), churn_s=max(t["seconds"] for t in tallies),
             streams_per_s=round(tally["opened"] / max(t["seconds"] for t in tallies), 1),
             max_streams_during=max(s["streams"] for s in samples))
    benchmark.extra_info.update(f)
    print_figures(f"{tally['opened']} streams opened and dropped", f)
    assert tally["opened"] == total and tally["snapshots"] == total, tally  # every stream got its snapshot
    assert during_ms, "no update was measured during the churn"
    check_baseline(w, base, after)
