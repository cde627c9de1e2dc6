"""GetLiquidations and StreamLiquidations: realised liquidations from the LiquidationStore, per time bucket and side, with the
coverage that says which buckets are missing rather than calm (MODEL.md section 12), and the largest events.

A market reads its exchange's coverage spans; an aggregate ("all:SYMBOL") sums its markets' notional over
the exchanges heard in each bucket and reports the mean of their coverages; a bucket none of them heard
has NaN notional. Validation names every bad field in one INVALID_ARGUMENT, as the rest of the service does.
"""
from __future__ import annotations

import numpy as np

from collections import deque

from ..exchanges.streams import DIALECTS
from ..model.realised import realised_columns
from ..v1 import heatmap_service_pb2 as pb
from .errors import invalid
from .fanout import Topic
from .messages import timestamp
from .views import check_all

DEFAULT_BUCKET_S = 60
MAX_BUCKETS = 10_000
DEFAULT_LARGEST = 10
MAX_LARGEST = 1000
SIDE = {True: pb.LIQUIDATION_SIDE_LONG, False: pb.LIQUIDATION_SIDE_SHORT}
DEFAULT_SNAPSHOT = 50
MAX_SNAPSHOT = 1000
MAX_STREAM_MARKETS = 64
SNAPSHOT_DAYS = 7          # the snapshot's events are read from this far back at most


def stream_markets(request, catalogue) -> tuple[frozenset[str], int]:
    """(single-exchange markets, snapshot size) of a StreamLiquidationsRequest; errors name the fields."""
    def markets():
        if len(request.markets) > MAX_STREAM_MARKETS:
            raise invalid([("markets", f"at most {MAX_STREAM_MARKETS} markets, got {len(request.markets)}")])
        if not request.markets:
            return frozenset(catalogue.markets)
        return frozenset(c for i, m in enumerate(request.markets) for c in catalogue.components(m, f"markets[{i}]"))

    def snapshot():
        n = request.snapshot if request.HasField("snapshot") else DEFAULT_SNAPSHOT
        if n > MAX_SNAPSHOT:
            raise invalid([("snapshot", f"at most {MAX_SNAPSHOT}, got {n}")])
        return n

    chosen, n = check_all(markets, snapshot)
    return chosen, n


def event(e) -> pb.Liquidation:
    """A model Liquidation as its message."""
    return pb.Liquidation(market=e.market, time=timestamp(e.time_ms), side=SIDE[e.side == "long"], price=e.price,
                          quantity=e.quantity, notional=e.notional)


class LiquidationsTopic(Topic):
    """StreamLiquidations for one set of markets: the latest `n` events first, then each committed batch's
    events of those markets in one message, serialized once for every subscriber (fanout.Topic)."""

    def __init__(self, service, markets: frozenset[str], n: int, depth: int):
        super().__init__(markets, depth)
        self.service, self.n = service, n
        self.latest: deque[pb.Liquidation] = deque(maxlen=max(n, 1))
        self.pending: list = []

    def add(self, batch) -> None:
        """Called with every committed batch (heatsvc.recording listeners)."""
        mine = [e for e in batch if e.market in self.markets]
        if mine:
            self.pending.extend(mine)
            self.wake()

    async def initial(self) -> None:
        store, now = self.service.liquidation_store(), self.service.refresher.now_ms()
        rows = []
        for m in sorted(self.markets):
            got = store.load(m, now - SNAPSHOT_DAYS * 86_400_000, 2**62)
            k = max(len(got["time_ms"]) - self.n, 0)
            rows += [(int(t), m, bool(lg), float(p), float(q)) for t, lg, p, q in
                     zip(got["time_ms"][k:], got["long"][k:], got["price"][k:], got["quantity"][k:])]
        for t, m, lg, p, q in sorted(rows)[-self.n:] if self.n else []:
            self.latest.append(pb.Liquidation(market=m, time=timestamp(t), side=SIDE[lg], price=p, quantity=q,
                                              notional=p * q))

    async def refresh(self):
        batch, self.pending = self.pending, []
        if not batch:
            return None
        events = [event(e) for e in sorted(batch, key=lambda e: e.time_ms)]
        if self.n:
            self.latest.extend(events)
        self.sequence += 1
        return pb.StreamLiquidationsResponse(sequence=self.sequence, kind=pb.UPDATE_KIND_LIQUIDATIONS, events=events)

    def snapshot_message(self):
        return pb.StreamLiquidationsResponse(sequence=self.sequence, kind=pb.UPDATE_KIND_SNAPSHOT,
                                             events=list(self.latest) if self.n else [])

    def skip_suffix(self, skipped: int) -> bytes:
        return pb.StreamLiquidationsResponse(gap_skipped=True, skipped_updates=skipped).SerializeToString()


def check(request, catalogue, now_ms: int) -> tuple[tuple[str, ...], int, int, int, int]:
    """(components, start_ms, end_ms, bucket_ms, largest) of a GetLiquidationsRequest; INVALID_ARGUMENT
    naming every bad field, NOT_FOUND for a market not served."""
    def range_():
        bad = []
        if not request.HasField("start_time"):
            bad.append(("start_time", "is required"))
        start = request.start_time.ToMilliseconds()
        end = request.end_time.ToMilliseconds() if request.HasField("end_time") else now_ms
        bucket_s = request.bucket.seconds if request.HasField("bucket") else DEFAULT_BUCKET_S
        if request.HasField("bucket") and (request.bucket.nanos or bucket_s < 1):
            bad.append(("bucket", f"must be a whole number of seconds >= 1, got {request.bucket.seconds}s "
                                  f"{request.bucket.nanos}ns"))
            bucket_s = DEFAULT_BUCKET_S
        if not bad and end <= start:
            bad.append(("end_time", f"must be after start_time ({end} <= {start} ms)"))
        elif not bad and -(-(end - start) // (bucket_s * 1000)) > MAX_BUCKETS:
            bad.append(("bucket", f"{bucket_s}s gives more than {MAX_BUCKETS} buckets over the range; "
                                  f"use a bucket of at least {-(-(end - start) // (MAX_BUCKETS * 1000))}s"))
        largest = request.largest if request.HasField("largest") else DEFAULT_LARGEST
        if largest > MAX_LARGEST:
            bad.append(("largest", f"at most {MAX_LARGEST}, got {largest}"))
        if bad:
            raise invalid(bad)
        return start, end, bucket_s * 1000, largest

    components, (start, end, bucket_ms, largest) = check_all(lambda: catalogue.components(request.market, "market"),
                                                              range_)
    return components, start, end, bucket_ms, largest


def realised(store, components, times: np.ndarray, bucket_ms: int):
    """Per bucket [t, t + bucket_ms) of `times`: long and short notional (NaN where no exchange was heard),
    long and short counts, the mean coverage over the components' exchanges, and the events by market."""
    n = len(times)
    start_ms, end_ms = (int(times[0]), int(times[-1]) + bucket_ms) if n else (0, 0)
    long_sum, short_sum, coverage = np.zeros(n), np.zeros(n), np.zeros(n)
    heard = np.zeros(n, dtype=int)
    long_count, short_count = np.zeros(n, dtype=np.int64), np.zeros(n, dtype=np.int64)
    loaded = {}
    for m in components:
        got = loaded[m] = store.load(m, start_ms, end_ms)
        r = realised_columns(times, bucket_ms, got["time_ms"], got["long"], got["price"] * got["quantity"],
                             store.spans(m.partition(":")[0], start_ms, end_ms))
        covered = r.coverage > 0
        long_sum[covered] += r.long[covered]
        short_sum[covered] += r.short[covered]
        heard += covered
        coverage += r.coverage
        col = np.searchsorted(times, got["time_ms"], side="right") - 1
        long_count += np.bincount(col[got["long"]], minlength=n)[:n]
        short_count += np.bincount(col[~got["long"]], minlength=n)[:n]
    long_sum[heard == 0] = np.nan
    short_sum[heard == 0] = np.nan
    return long_sum, short_sum, long_count, short_count, coverage / max(len(components), 1), loaded


def query(store, market: str, components, start_ms: int, end_ms: int, bucket_ms: int, largest: int) -> bytes:
    """The serialized GetLiquidationsResponse (reads the store: run it on a thread)."""
    times = np.arange(start_ms, end_ms, bucket_ms, dtype=np.int64)
    long_sum, short_sum, long_count, short_count, coverage, loaded = realised(store, components, times, bucket_ms)
    events = []
    for m, got in loaded.items():
        keep = got["time_ms"] < end_ms   # the last bucket may reach past the range
        notional = (got["price"] * got["quantity"])[keep]
        top = np.argsort(-notional, kind="stable")[:largest]
        events += [(float(notional[i]), m, int(got["time_ms"][keep][i]), bool(got["long"][keep][i]),
                    float(got["price"][keep][i]), float(got["quantity"][keep][i])) for i in top]
    out = pb.GetLiquidationsResponse(market=market, markets=components,
                                     lower_bound_exchanges=sorted({m.partition(":")[0] for m in components
                                                                   if DIALECTS[m.partition(":")[0]].LOWER_BOUND}))
    out.bucket.FromMilliseconds(bucket_ms)
    for i in range(len(times)):
        out.buckets.add(start_time=timestamp(times[i]), long_notional=long_sum[i], short_notional=short_sum[i],
                        long_count=int(long_count[i]), short_count=int(short_count[i]), coverage=coverage[i])
    for notional, m, t, long, price, qty in sorted(events, key=lambda e: -e[0])[:largest]:
        out.largest.add(market=m, time=timestamp(t), side=SIDE[long], price=price, quantity=qty, notional=notional)
    return out.SerializeToString()


def fill_heatmap(store, msg, components, column_times: np.ndarray, column_ms: int) -> None:
    """Set a pb.Heatmap's realised_long, realised_short and coverage beside its swept_long/swept_short."""
    long_sum, short_sum, _, _, coverage, _ = realised(store, components, np.asarray(column_times, np.int64),
                                                      column_ms)
    msg.realised_long[:] = long_sum.tolist()
    msg.realised_short[:] = short_sum.tolist()
    msg.coverage[:] = coverage.tolist()
