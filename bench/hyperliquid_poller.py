"""Benchmark: the Hyperliquid positions poller against the replay exchange, in real time.

The replay serves hyperliquid:HYPE (recorded HYPE bars) and its synthetic accounts at real Hyperliquid
limits (1,200 weight a minute per IP, 429 `null` past it). The poller knows every synthetic account
and reads within `--share` of the budget while the client's own window (`--weight-share`) also carries
a metaAndAssetCtxs sample every `--sample-s`. Each `--window-s` the accounts read and the weight the
replay was sent are counted; reported: their medians scaled to a minute (a window's burst shows
there), the reads a minute after the first minute, the most weight sent in any 60 s (the budget's
real bound), the replay's 429s (should be 0), and the poller's ceiling (share x 1,200 / 2 reads a minute).

    python bench/hyperliquid_poller.py [--seconds 180] [--share 0.4] [--accounts 600]
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from heatsvc.exchanges import make_client
from heatsvc.exchanges.hyperliquid.client import WEIGHT_PER_MINUTE, WEIGHTS, candle_weight
from heatsvc.exchanges.hyperliquid.positions import READ_WEIGHT, PositionPoller
from heatsvc.replay import ReplayExchange, default_datasets
from heatsvc.replay.accounts import SyntheticAccounts
from heatsvc.model.bars import parse_time


async def main(args) -> None:
    rx = ReplayExchange(datasets={"hyperliquid:HYPE": default_datasets(hyperliquid=True)["hyperliquid:HYPE"]},
                        start_ms=parse_time("2025-10-10T21:00Z", "start"), speed=1.0)
    rx.start()
    rx.dialects["hyperliquid"].accounts = SyntheticAccounts(n=args.accounts)
    client = make_client("hyperliquid", rx.base_url("hyperliquid"), now_ms=rx.now_ms, weight_share=args.weight_share)
    poller = PositionPoller(client, {"HYPE"}, share=args.share, cycle_s=60.0)
    poller.add_accounts(rx.dialects["hyperliquid"].accounts.addresses)
    sent: list[tuple[float, float]] = []
    original = client.fetch

    async def counted(path, target, params, limit, json_body=None):
        response, body = await original(path, target, params, limit, json_body)
        kind = json_body["type"]
        weight = candle_weight(body.count(b'"t":')) if kind == "candleSnapshot" else WEIGHTS[kind]
        sent.append((time.monotonic(), weight))
        return response, body
    client.fetch = counted

    async def sampler():
        while True:
            await client.sample()
            await asyncio.sleep(args.sample_s)

    started = time.monotonic()
    tasks = [asyncio.create_task(poller.run()), asyncio.create_task(sampler())]
    reads_at: list[int] = []
    try:
        while time.monotonic() - started < args.seconds:
            await asyncio.sleep(args.window_s)
            reads_at.append(poller.reads)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await client.aclose()
        rx.stop()
    scale = 60.0 / args.window_s
    reads = [b - a for a, b in zip([0, *reads_at], reads_at)]
    weights = []
    for k in range(len(reads_at)):
        lo, hi = started + k * args.window_s, started + (k + 1) * args.window_s
        weights.append(sum(w for t, w in sent if lo <= t < hi))
    print(f"{args.seconds:g} s against the replay, {args.accounts} accounts, poller share {args.share:g}, "
          f"client share {args.weight_share:g}")
    print(f"accounts read per minute: median {statistics.median(reads) * scale:.0f} "
          f"(ceiling {args.share * WEIGHT_PER_MINUTE / READ_WEIGHT:.0f})")
    print(f"weight sent per minute:   median {statistics.median(weights) * scale:.0f} "
          f"(client ceiling {args.weight_share * WEIGHT_PER_MINUTE:.0f}, exchange {WEIGHT_PER_MINUTE})")
    times = [t for t, _ in sent]
    peak = max(sum(w for t, w in sent if t0 <= t < t0 + 60.0) for t0 in times) if sent else 0.0
    steady = [b - a for a, b in zip([0, *reads_at], reads_at)][int(60 / args.window_s):]
    if steady:
        print(f"after the first minute: {sum(steady) * 60.0 / (len(steady) * args.window_s):.0f} accounts read a minute; "
              f"the most weight sent in any 60 s: {peak:.0f}")
    print(f"429s from the replay: {sum(rx.limited_counts('hyperliquid').values())}; "
          f"accounts known {len(poller.accounts)}, read failures {poller.failures}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--window-s", type=float, default=20.0, help="counting window (default 20 s)")
    parser.add_argument("--share", type=float, default=0.4, help="the poller's share of 1,200 weight a minute")
    parser.add_argument("--weight-share", type=float, default=0.8, help="the client's share")
    parser.add_argument("--accounts", type=int, default=600)
    parser.add_argument("--sample-s", type=float, default=60.0, help="metaAndAssetCtxs every this many seconds")
    asyncio.run(main(parser.parse_args()))
