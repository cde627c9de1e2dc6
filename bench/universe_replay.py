"""300 replayed markets (100 symbols x 3 exchanges), discovered by pattern ("*"), backfilled and
refreshed every 60 s against the replay exchange: backfill time, requests per minute per exchange,
rate-limited answers, Binance's peak used weight, market statuses (README, "The whole universe").

    python bench/universe_replay.py [HISTORY_DAYS=2] [WATCH_SECONDS=180]     # about 10 minutes
"""
import asyncio
import logging
import sys
import tempfile
import time

from heatsvc.config import parse
from heatsvc.datasets import synthetic_bars
from heatsvc.replay import ReplayExchange
from heatsvc.discovery import discover
from heatsvc.exchanges import make_client
from heatsvc.refresher import Refresher
from heatsvc.store import Store

END = 1_760_572_800_000
SYMBOLS = [f"U{k:03d}USDT" for k in range(100)]
HISTORY_DAYS = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
WATCH_S = float(sys.argv[2]) if len(sys.argv) > 2 else 180.0
logging.basicConfig(level=logging.ERROR)

def main():
    data = {f"{e}:{s}": (lambda s=s, e=e: synthetic_bars(s, e, days=HISTORY_DAYS + 1, end_ms=END))
            for e in ("binance", "bybit", "okx") for s in SYMBOLS}
    with ReplayExchange(datasets=data, start_ms=END - 6 * 3_600_000, speed=1.0) as rx, \
            tempfile.TemporaryDirectory() as d:
        cfg = parse({"data": {"history_days": HISTORY_DAYS, "refresh_interval_s": 60},
                     "exchanges": {e: {"symbols": ["*"], "base_url": rx.base_url(e),
                                       **({"archive_url": rx.archive_url()} if e == "binance" else {})}
                                   for e in ("binance", "bybit", "okx")}}, env={})
        async def run():
            clients = {e.name: make_client(e.name, e.base_url, now_ms=rx.now_ms,
                                           **({"archive_url": e.archive_url} if e.archive_url else {}))
                       for e in cfg.exchanges}
            config = await discover(cfg, clients)
            print("markets", len(config.markets), flush=True)
            store = Store(d + "/s.sqlite3")
            r = Refresher(store, clients, config.markets, interval_s=60, history_days=HISTORY_DAYS,
                          now_ms=rx.now_ms)
            t0 = time.monotonic()
            await r.start()
            await r.wait_ready(timeout=3600)
            t_ready = time.monotonic() - t0
            before = {k: sum(v.values()) for k, v in r.request_counts().items()}
            rx_before = {e: sum(rx.request_counts(e).values()) for e in ("binance", "bybit", "okx")}
            lim_before = {e: sum(rx.limited_counts(e).values()) for e in ("binance", "bybit", "okx")}
            print(f"backfill of {len(config.markets)} markets x {HISTORY_DAYS} days: {t_ready:.1f} s; "
                  f"requests {before}", flush=True)
            t1 = time.monotonic()
            await asyncio.sleep(WATCH_S)
            span = (time.monotonic() - t1) / 60
            after = {k: sum(v.values()) for k, v in r.request_counts().items()}
            rx_after = {e: sum(rx.request_counts(e).values()) for e in ("binance", "bybit", "okx")}
            lim_after = {e: sum(rx.limited_counts(e).values()) for e in ("binance", "bybit", "okx")}
            health = r.health()
            statuses = {}
            for h in health.values():
                statuses[h.status] = statuses.get(h.status, 0) + 1
            print(f"refresh phase {span:.2f} min: requests/min client-side "
                  f"{ {k: round((after[k] - before[k]) / span) for k in after} }; "
                  f"server-side { {e: round((rx_after[e] - rx_before[e]) / span) for e in rx_after} }; "
                  f"rate-limited answers {lim_after} (during backfill {lim_before}); "
                  f"binance max used weight {clients['binance'].max_used_weight}; statuses {statuses}", flush=True)
            await r.stop(); store.close()
            for c in clients.values():
                await c.aclose()
        asyncio.run(run())

main()
