"""The refresher keeps the store current: one asyncio task per market backfills what the store
lacks, then every interval fetches the forming bar with the current open interest and, before
it, the newly closed bars (the last hour's again, for rows or statistics an answer lacked), stores
them and tells subscribers (MarketUpdated) that the market moved.

Failures are contained: a market whose exchange fails is marked degraded or failing in its
health, what it could not fetch is recorded as a gap and retried later, and no other market (and
no other exchange) waits for it. A market whose data lags (two bars, or three refresh intervals)
is degraded too, even while its refreshes succeed.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from . import metrics
from .discovery import select
from .model.bars import STEP_MS, format_time
from .exchanges.base import ExchangeClient, ExchangeError, ExchangeUnavailable, align_down
from .store import Store

log = logging.getLogger("heatsvc.refresher")

DAY_MS = 86_400_000
OI_CONVENTION = "oi_convention"     # store mark: version of the client's open-interest convention stored
NO_DATA_BEFORE = "no_data_before"   # store mark: the exchange has no bars of this market before this time
RECHECK_MS = 3_600_000              # each new bar, the last hour's closed bars are fetched again: rows an
                                    # answer lacked and statistics the exchange published late fill in


@dataclass(frozen=True)
class MarketUpdated:
    """A market's stored data changed (published to every subscriber)."""
    market: str            # "binance:BTCUSDT"
    version: int           # increases on every stored change of this market
    last_bar_ms: int       # open time of newest stored bar (the forming bar counts)
    price: float           # current price (mark or last), for zone reports
    bars_changed: bool     # False when only the price / forming bar moved


@dataclass
class MarketHealth:
    """How one market's data is doing; `skipped` lists ranges not fetched yet (retried later)."""
    market: str
    status: str            # "loading" | "ok" | "degraded" | "failing"
    last_bar_ms: int | None
    lag_s: float | None
    consecutive_failures: int
    last_error: str | None
    ready: bool
    rejected_rows: int = 0
    missing_bars: int = 0
    skipped: tuple[str, ...] = ()


@dataclass
class _Market:
    name: str
    client: ExchangeClient
    symbol: str
    version: int = 0
    price: float = math.nan
    failures: int = 0
    last_error: str | None = None
    status: str = "loading"
    delisted: str | None = None    # why the market is no longer refreshed (its exchange stopped listing it)
    gaps: dict[tuple[int, int], int] = field(default_factory=dict)   # range -> attempts so far
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


def bar_ranges(times) -> list[tuple[int, int]]:
    """5-minute bar open times joined into ranges [a, b) of consecutive bars."""
    out: list[list[int]] = []
    for t in sorted(times):
        if out and out[-1][1] == t:
            out[-1][1] = t + STEP_MS
        else:
            out.append([t, t + STEP_MS])
    return [(a, b) for a, b in out]


def merge_ranges(ranges: Sequence[tuple[int, int]], join_ms: int, chunk_ms: int) -> list[tuple[int, int]]:
    """Ranges closer than join_ms merged (refetching a little beats many small requests), then cut
    into pieces of at most chunk_ms."""
    merged: list[list[int]] = []
    for a, b in sorted(ranges):
        if merged and a - merged[-1][1] < join_ms:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(s, min(s + chunk_ms, b)) for a, b in merged for s in range(a, b, chunk_ms)]


class Refresher:
    """Backfill and periodic refresh of markets ("exchange:SYMBOL") into a Store."""

    def __init__(self, store: Store, clients: Mapping[str, ExchangeClient], markets: Sequence[str], *,
                 interval_s: float = 60.0, history_days: float = 365.0, progress: bool = False,
                 now_ms: Callable[[], int] | None = None, chunk_days: float = 5.0, failing_after: int = 3,
                 gap_attempts: int = 5, queue_size: int = 64, relist_s: float | None = 86_400.0,
                 selectors: Mapping[str, tuple[Sequence[str], int | None]] | None = None):
        if not interval_s > 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        if not history_days > 0:
            raise ValueError(f"history_days must be positive, got {history_days}")
        self.store = store
        self.interval_s, self.history_ms = interval_s, int(history_days * DAY_MS)
        # behind by more than this (two bars, or three refreshes) is degraded even while refreshes succeed
        self.lag_limit_s = max(2 * STEP_MS / 1000, 3 * interval_s)
        self.progress = progress
        self.now_ms = now_ms or (lambda: int(time.time() * 1000))
        self.chunk_ms = max(STEP_MS, align_down(int(chunk_days * DAY_MS)))
        self.failing_after, self.gap_attempts, self.queue_size = failing_after, gap_attempts, queue_size
        self.relist_s = relist_s      # how often each exchange's listing is checked (None: never)
        # per exchange, the configured symbol patterns and rank limit: what they newly select is added
        self.selectors = dict(selectors or {})
        self.clients = dict(clients)
        self._markets: dict[str, _Market] = {}
        for market in markets:
            self._markets[market] = self._new_market(market)
        self._subscribers: set[asyncio.Queue] = set()
        self._tasks: list[asyncio.Task] = []
        self._progress = None
        self._bar = None          # the backfill's one progress task
        self._owed = 0            # bars it covers so far

    def _new_market(self, market: str) -> _Market:
        exchange, _, symbol = market.partition(":")
        if not symbol or not symbol.isalnum():
            raise ValueError(f"market {market!r} must be 'exchange:SYMBOL'")
        if exchange not in self.clients:
            raise ValueError(f"market {market!r}: no client for exchange {exchange!r} "
                             f"(have {', '.join(sorted(self.clients)) or 'none'})")
        return _Market(market, self.clients[exchange], symbol)

    def add_market(self, market: str) -> bool:
        """Serve one more market (a new listing the patterns select): backfilled and refreshed like the
        others from now on; False if it is already served."""
        if market in self._markets:
            return False
        m = self._markets[market] = self._new_market(market)
        if self._tasks:
            self._tasks.append(asyncio.create_task(self._run(m), name=f"refresh {m.name}"))
        return True

    @property
    def markets(self) -> list[str]:
        """The markets refreshed, in the order they were added."""
        return list(self._markets)

    # ----- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start one task per market: backfill, then refresh every interval_s."""
        if self._tasks:
            return
        if self.progress:   # one bar for the whole backfill: bars fetched of bars owed, markets ready, ETA
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("bars"), TimeRemainingColumn(), transient=False)
            self._progress.start()
            self._bar = self._progress.add_task(self._progress_text(), total=0)
        self._tasks = [asyncio.create_task(self._run(m), name=f"refresh {m.name}") for m in self._markets.values()]
        if self.relist_s:
            self._tasks.append(asyncio.create_task(self._watch_listings(), name="listings"))

    async def stop(self) -> None:
        """Cancel the market tasks and wait for them to end."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._stop_progress()

    def _stop_progress(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    async def wait_ready(self, market: str | None = None, timeout: float | None = None) -> None:
        """Return once the market (every market when None) finished its first backfill;
        TimeoutError after `timeout` seconds."""
        names = list(self._markets) if market is None else [market]
        for name in names:
            if name not in self._markets:
                raise ValueError(f"unknown market {name!r}")
        waits = [self._markets[n].ready.wait() for n in names]
        await asyncio.wait_for(asyncio.gather(*waits), timeout)

    # ----- subscribers ---------------------------------------------------------------------
    def subscribe(self) -> asyncio.Queue:
        """A bounded queue of MarketUpdated; when a reader falls behind, its oldest updates are dropped."""
        q: asyncio.Queue = asyncio.Queue(maxsize=self.queue_size)
        self._subscribers.add(q)
        return q

    def unsubscribe(self, q: asyncio.Queue) -> None:
        self._subscribers.discard(q)

    def _publish(self, update: MarketUpdated) -> None:
        for q in self._subscribers:
            if q.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(update)

    # ----- health --------------------------------------------------------------------------
    def health(self) -> dict[str, MarketHealth]:
        """Every market's health now."""
        now = self.now_ms()
        out = {}
        for m in self._markets.values():
            last = self.store.last_time(m.name)
            status = m.status
            lag_s = None if last is None else max(0.0, (now - last - STEP_MS) / 1000)
            if status == "ok" and (m.client.degraded or m.gaps or (lag_s or 0) > self.lag_limit_s):
                status = "degraded"
            if m.delisted:
                status = "failing"
            skipped = tuple(f"{format_time(a)}..{format_time(b)} ({(b - a) // STEP_MS} bars, "
                            f"{tries} attempt{'s' if tries != 1 else ''})" for (a, b), tries in sorted(m.gaps.items()))
            held = m.client.hold_state()     # a ban or a demanded pause: said first, it explains the rest
            out[m.name] = MarketHealth(
                market=m.name, status=status, last_bar_ms=last,
                lag_s=lag_s,
                consecutive_failures=m.failures, ready=m.ready.is_set(),
                last_error=m.delisted or held or m.last_error,
                rejected_rows=m.client.rejected[m.symbol],
                missing_bars=sum((b - a) // STEP_MS for a, b in m.gaps), skipped=skipped)
            metrics.market_health(out[m.name])
        return out

    # ----- the work ------------------------------------------------------------------------
    def _migrate(self, m: _Market) -> None:
        """Bring open interest stored under an older convention of this exchange's client to its
        current one (Bybit's was two-sided before heatsvc read singleOpenInterest): once per market."""
        version = self.store.mark(m.name, OI_CONVENTION) or 1
        if version >= m.client.OI_CONVENTION:
            return
        scaled = self.store.scale(m.name, "open_interest", m.client.LEGACY_OI_FACTOR)
        self.store.set_mark(m.name, OI_CONVENTION, m.client.OI_CONVENTION)
        if scaled:
            log.warning("%s: %d stored open-interest values converted to one side (x%g)", m.name, scaled,
                        m.client.LEGACY_OI_FACTOR)

    async def _run(self, m: _Market) -> None:
        await asyncio.to_thread(self._migrate, m)
        while True:
            try:
                async with m.lock:
                    await m.client.check_symbol(m.symbol)
                    live = await m.client.fetch_live(m.symbol)
                    cur = self._until(live)
                    await self._backfill(m, cur)
                    await self._live(m, live, cur, bars_changed=True)
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - any failure is reported in health and retried
                self._failed(m, exc)
                await self._pause(m)
        m.failures, m.status = 0, "ok"
        metrics.REFRESHES.labels(m.name, "ok").inc()
        m.ready.set()
        self._count_down(m)
        while True:   # a client may ask for a slower cadence (Hyperliquid: its weight budget)
            await asyncio.sleep(max(self.interval_s, m.client.min_refresh_s))
            await self.refresh(m.name)
            if m.failures:
                await self._pause(m, extra_only=True)

    async def refresh(self, market: str) -> None:
        """Fetch what closed since the newest stored bar (and the last hour's bars again), retry
        recorded gaps, update the forming bar."""
        if market not in self._markets:
            raise ValueError(f"unknown market {market!r}")
        m = self._markets[market]
        if m.delisted:
            return
        async with m.lock:
            try:
                live = await m.client.fetch_live(m.symbol)
                cur = self._until(live)
                last = self.store.last_time(m.name)
                changed = False
                if last is None:
                    changed = await self._backfill(m, cur)
                elif last < cur:
                    changed = await self._fetch_new(m, last, cur)
                changed = await self._retry_gaps(m) or changed
                await self._live(m, live, cur, bars_changed=changed)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reported in health, retried next interval
                self._failed(m, exc)
                return
            m.failures, m.last_error = 0, None
            m.status = "ok"
            metrics.REFRESHES.labels(m.name, "ok").inc()

    def _until(self, live) -> int:
        """Where closed bars end: at the exchange's forming bar, fetched before them so that no bar
        closes unseen while a refresh runs (or at our clock's bar, if the exchange lags)."""
        t = live[0]["time_ms"]
        return max(align_down(self.now_ms()), int(t[-1]) if len(t) else 0)

    async def _backfill(self, m: _Market, cur: int) -> bool:
        """Fetch every range of the history window before `cur` the store lacks, oldest first, chunk
        by chunk. A chunk that fails is recorded as a gap and the backfill goes on; a ban is waited out."""
        start = align_down(cur - self.history_ms)
        floor = self.store.mark(m.name, NO_DATA_BEFORE)
        if floor is not None:
            start = max(start, floor)
        chunks = merge_ranges(self.store.gaps(m.name, start, cur), 288 * STEP_MS, self.chunk_ms)
        if self._progress is not None:
            owed = sum((b - a) // STEP_MS for a, b in chunks)
            self._owed += owed
            self._progress.update(self._bar, total=self._owed)
        changed = False
        failed_from = cur
        for a, b in chunks:
            while m.client.degraded:
                m.status = "degraded"
                await asyncio.sleep(max(0.05, m.client.banned_until - time.monotonic()))
            try:
                stored, lacked = await self._fetch(m, a, b)
                changed |= stored
                for gap in self.store.gaps(m.name, a, b) + bar_ranges(t for t in lacked if self.store.times(
                        m.name, t, t + STEP_MS).size):       # stored bars whose statistics are still owed
                    m.gaps.setdefault(gap, 0)
            except ExchangeUnavailable as exc:
                self._note_skip(m, a, b, exc)
                failed_from = min(failed_from, a)
            if self._progress is not None:
                self._progress.advance(self._bar, (b - a) // STEP_MS)
        stored = self.store.times(m.name, start, cur)
        if len(stored) and start < stored[0] <= failed_from:
            # Every range before the first bar was asked for and came back empty: the exchange has
            # nothing older, so neither later refreshes nor restarts ask again.
            self.store.set_mark(m.name, NO_DATA_BEFORE, int(stored[0]))
            for gap in [g for g in m.gaps if g[1] <= stored[0]]:
                del m.gaps[gap]
        return changed

    async def _fetch(self, m: _Market, a: int, b: int) -> tuple[bool, set[int]]:
        """Fetch closed bars in [a, b) and store them: (any stored, open times the answer lacked)."""
        bars = await m.client.fetch_bars(m.symbol, a, b)
        stored = False
        if len(bars["time_ms"]):
            await asyncio.to_thread(self.store.upsert, m.name, bars)
            stored = True
        lacked = set(range(-(-a // STEP_MS) * STEP_MS, b, STEP_MS)) - set(bars["time_ms"].tolist())
        for lo, hi in m.client.take_incomplete(m.symbol):   # e.g. a statistics file not published yet
            lacked.update(range(lo, hi, STEP_MS))
        return stored, lacked

    async def _fetch_new(self, m: _Market, last: int, cur: int) -> bool:
        """Fetch the bars closed since `last` (the forming bar when it was stored) and the last hour's
        again (rows an answer lacked, statistics published late fill in). Bars from `last` on that
        the answer lacked become gaps; recorded gaps it had are dropped, however often tried."""
        lo = min(last, cur - RECHECK_MS)
        stored, lacked = await self._fetch(m, lo, cur)
        for a, b in [g for g in m.gaps if lo <= g[0] and g[1] <= cur]:
            if not lacked.intersection(range(a, b, STEP_MS)):
                del m.gaps[(a, b)]
        covered = {t for a, b in m.gaps for t in range(a, b, STEP_MS)}
        for gap in bar_ranges(t for t in lacked if t >= last and t not in covered):
            m.gaps[gap] = 0
        return stored

    async def _retry_gaps(self, m: _Market) -> bool:
        """Fetch recorded gaps again; a gap still empty after gap_attempts tries is left alone."""
        changed = False
        floor = self.store.mark(m.name, NO_DATA_BEFORE)
        for (a, b), tries in sorted(m.gaps.items()):
            if tries >= self.gap_attempts:
                continue
            if floor is not None and b <= floor:
                del m.gaps[(a, b)]
                continue
            try:
                stored, lacked = await self._fetch(m, a, b)
            except ExchangeUnavailable as exc:
                m.gaps[(a, b)] = tries + 1
                log.info("%s: gap %s..%s still unavailable: %s", m.name, format_time(a), format_time(b), exc)
                continue
            del m.gaps[(a, b)]   # only now: health read during the fetch still counts the gap
            changed |= stored
            for gap in bar_ranges(lacked):
                m.gaps[gap] = tries + 1
        return changed

    async def _live(self, m: _Market, live, cur: int, *, bars_changed: bool) -> None:
        """Store the forming bar (fetched before the closed bars up to `cur`) with the current open
        interest and publish the update. A live answer whose newest bar is an older, closed one
        (its forming row missing) stores nothing: that bar's own values are already stored."""
        bars, _, price = live
        if len(bars["time_ms"]):
            if bars["time_ms"][-1] >= cur:
                await asyncio.to_thread(self.store.upsert, m.name, bars)
            if not math.isfinite(price):
                price = float(bars["close"][-1])
        if math.isfinite(price):
            m.price = price
        last = self.store.last_time(m.name)
        if last is None:
            return
        m.version += 1
        self._publish(MarketUpdated(m.name, m.version, int(last), m.price, bars_changed))

    # ----- listings ------------------------------------------------------------------------
    async def _watch_listings(self) -> None:
        while True:
            await asyncio.sleep(self.relist_s)
            await self.check_listings()

    async def check_listings(self) -> None:
        """Ask each exchange which USDT perpetuals it lists now. A market no longer listed is delisted:
        no longer refreshed, its history kept, its health `failing` saying so; listed again, it resumes.
        A new listing the exchange's configured patterns select is added and served from now on.
        An exchange that cannot answer now is asked again next time."""
        by_client: dict[str, list[_Market]] = {name: [] for name in self.selectors if name in self.clients}
        for m in self._markets.values():
            if m.client.lists(m.symbol):             # the universe list_perpetuals covers
                by_client.setdefault(m.client.name, []).append(m)
        for name, markets in by_client.items():
            client = self.clients[name]
            try:
                listings = await client.list_perpetuals()
            except (ExchangeError, ExchangeUnavailable) as exc:
                log.warning("%s: listing not checked now: %s", client.name, exc)
                continue
            listed = {x.symbol for x in listings}
            if name in self.selectors:
                patterns, top = self.selectors[name]
                for symbol in select(listings, patterns, top):
                    if self.add_market(f"{name}:{symbol}"):
                        log.warning("%s:%s: newly listed and selected by %s; backfilling and serving it",
                                    name, symbol, ", ".join(patterns))
            for m in markets:
                if m.symbol not in listed and m.delisted is None:
                    m.delisted = (f"delisted: {m.symbol} is no longer listed as a trading perpetual on "
                                  f"{client.name} (noticed {format_time(self.now_ms())}); history kept, not refreshed")
                    log.warning("%s: %s", m.name, m.delisted)
                elif m.symbol in listed and m.delisted is not None:
                    m.delisted = None
                    log.warning("%s: listed again; refreshing resumes", m.name)

    # ----- failures ------------------------------------------------------------------------
    def _note_skip(self, m: _Market, a: int, b: int, exc: Exception) -> None:
        m.gaps[(a, b)] = m.gaps.get((a, b), 0) + 1
        m.last_error = str(exc)
        log.warning("%s: skipped %s..%s for now: %s", m.name, format_time(a), format_time(b), exc)

    def _failed(self, m: _Market, exc: Exception) -> None:
        m.failures += 1
        metrics.REFRESHES.labels(m.name, "failed").inc()
        m.last_error = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (ExchangeError, ExchangeUnavailable)) \
            else str(exc)
        m.status = "failing" if m.failures >= self.failing_after or isinstance(exc, ExchangeError) else "degraded"
        log.warning("%s: refresh failed (%d in a row): %s", m.name, m.failures, m.last_error)

    async def _pause(self, m: _Market, extra_only: bool = False) -> None:
        """After a failure: wait out a ban, else wait one interval (unless the loop waits anyway)."""
        ban = m.client.banned_until - time.monotonic()
        if ban > 0:
            await asyncio.sleep(ban)
        elif not extra_only:
            await asyncio.sleep(self.interval_s)

    def _progress_text(self) -> str:
        ready = sum(x.ready.is_set() for x in self._markets.values())
        return f"backfill: {ready}/{len(self._markets)} markets ready"

    def _count_down(self, m: _Market) -> None:
        if self._progress is None:
            return
        self._progress.update(self._bar, description=self._progress_text())
        if all(x.ready.is_set() for x in self._markets.values()):
            self._stop_progress()

    def request_counts(self) -> dict[str, dict[str, int]]:
        """Requests each exchange client has had answered, per path (for reports)."""
        clients = {m.client.name: m.client for m in self._markets.values()}
        return {name: dict(c.requests) for name, c in clients.items()}

