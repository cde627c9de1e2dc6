"""Hyperliquid's live side: the trades stream parser on recorded frames (tests/fixtures/hyperliquid/,
sources in SOURCES.md), the positions poller's rotation, bounds and weight share, and both against
the replay's Hyperliquid dialects (REST and WebSocket) with its synthetic accounts."""
from __future__ import annotations

import asyncio
import json
import math
import time

import httpx
import numpy as np
import pytest

from fixture_server import fixture
from heatsvc.exchanges import ExchangeUnavailable, make_client
from heatsvc.exchanges.hyperliquid.flow import TakerFlow
from heatsvc.exchanges.hyperliquid.positions import PositionPoller, load_addresses
from heatsvc.exchanges.streams import hyperliquid as stream
from heatsvc.exchanges.streams.hyperliquid import TradeFeed
from heatsvc.exchanges.hyperliquid.weights import WeightWindow
from heatsvc.model.bars import STEP_MS
from heatsvc.model.positions import Position
from heatsvc.replay import DATA_END_MS, Limits, ReplayExchange, default_datasets
from heatsvc.replay.accounts import MAINTENANCE
from heatsvc.replay.streams import StreamServer

CRASH_MS = 1_760_131_200_000          # 2025-10-10T21:20Z, the recorded HYPE crash
FAST = dict(timeout_s=5.0, backoff_s=0.01, backoff_cap_s=0.05, max_retries=3, seed=1)


def run(coro):
    return asyncio.run(coro)


def hl_replay(**kw) -> ReplayExchange:
    return ReplayExchange(datasets={"hyperliquid:HYPE": default_datasets(hyperliquid=True)["hyperliquid:HYPE"]}, **kw)


# ---- the stream parser on recorded frames ---------------------------------------------------

def test_trades_frame_parses_to_the_recorded_values():
    trades, live = stream.parse(json.loads(fixture("hyperliquid/ws-trades.json")), {"BTC"})
    assert live and len(trades) == 2
    a, b = trades
    assert (a.coin, a.time_ms, a.price, a.size, a.side) == ("BTC", 1788490042052, 80639.0, 0.00022, "sell")
    assert (a.buyer, a.seller) == ("0xa62b923a112d50d03e1e096bbd53422490dac104", "0x8a544ab75107efd541c9072a0efebb87cc4292f3")
    assert (b.side, b.size, b.price) == ("buy", 0.00404, 80640.0)
    assert stream.parse(json.loads(fixture("hyperliquid/ws-trades.json")), {"ETH"}) == ([], True), "other coins"


def test_ack_and_pong_are_signs_of_life_and_errors_are_refusals():
    assert stream.parse(json.loads(fixture("hyperliquid/ws-subscription-response.json")), {"SOL"}) == ([], True)
    assert stream.parse(json.loads(fixture("hyperliquid/ws-pong.json")), set()) == ([], True)
    with pytest.raises(ValueError, match="refused"):
        stream.parse({"channel": "error", "data": "Already unsubscribed"}, set())
    assert json.loads(stream.subscriptions({"HYPE"})[0]) == {"method": "subscribe",
                                                            "subscription": {"type": "trades", "coin": "HYPE"}}
    assert json.loads(stream.PING_TEXT) == {"method": "ping"} and stream.PING_INTERVAL_S < 60


# ---- the poller's schedule, bounds and share (a stub exchange) ------------------------------

class StubClient:
    """clearinghouseState answers from a table: address -> positions."""

    def __init__(self, table):
        from heatsvc.exchanges.hyperliquid.oi import OiSamples
        self.table, self.calls, self.samples, self.banned_until = table, [], OiSamples(), 0.0

    async def clearinghouse_state(self, user):
        self.calls.append(user)
        return list(self.table.get(user, [])), 1000 + len(self.calls)


def addr(i: int) -> str:
    return f"0x{i:040x}"


def pos(user: str, value: float, coin: str = "HYPE") -> Position:
    return Position(user=user, coin=coin, size=value / 10, entry_px=10.0, position_value=value, leverage=10.0,
                    leverage_type="isolated", liquidation_px=9.0)


def test_largest_accounts_every_cycle_the_rest_in_rotation():
    table = {addr(i): [pos(addr(i), 100.0 * (i + 1))] for i in range(12)}
    client = StubClient(table)
    poller = PositionPoller(client, {"HYPE"}, share=4 * 2 / 1200, top_fraction=0.5, cycle_s=0,
                            period_s=0.01)     # 4 reads a cycle
    assert poller.per_cycle == 4
    poller.add_accounts(table)
    cycles = []
    for _ in range(10):
        before = len(client.calls)
        run(poller.cycle())
        cycles.append(client.calls[before:])
    assert all(len(c) == 4 for c in cycles)
    largest = {addr(11), addr(10)}
    known = next(k for k in range(len(cycles)) if largest <= {a for c in cycles[:k + 1] for a in c})
    assert known < len(cycles) - 3
    assert all(largest <= set(c) for c in cycles[known + 1:]), "once read, the two largest are read every cycle"
    rotated = {a for c in cycles for a in c} - largest
    assert rotated == set(table) - largest, "everyone else gets their turn"
    snap = poller.snapshot("HYPE")
    assert snap.accounts_known == 12 and snap.accounts_read == 12
    assert sorted(p.position_value for p in snap.positions) == [100.0 * (i + 1) for i in range(12)]
    assert snap.open_interest is None and snap.oldest_read_ms == min(a.read_ms for a in poller.accounts.values())


def test_every_cycle_reads_its_whole_budget_when_the_rotation_wraps_inside_it():
    table = {addr(i): [pos(addr(i), 100.0)] for i in range(10)}
    client = StubClient(table)
    poller = PositionPoller(client, {"HYPE"}, share=4 * 2 / 1200, top_fraction=0.0, cycle_s=0, period_s=0.01)
    poller.add_accounts(table)
    sizes = []
    for _ in range(5):
        before = len(client.calls)
        run(poller.cycle())
        sizes.append(len(client.calls) - before)
    assert sizes == [4] * 5, "10 accounts, 4 a cycle: the third cycle wraps the rotation and still reads 4"
    assert {a for a in client.calls} == set(table)


def test_accounts_without_positions_are_dropped_and_the_number_kept_is_capped(tmp_path):
    client = StubClient({addr(1): [pos(addr(1), 5.0)], addr(2): [pos(addr(2), 5.0, coin="BTC")]})
    listed = tmp_path / "accounts"
    listed.write_text(f"# pinned\n{addr(3)}\n\n")
    poller = PositionPoller(client, {"HYPE"}, share=0.5, addresses=load_addresses(listed), max_accounts=4,
                            drop_after=2, cycle_s=0, period_s=0.01)
    poller.add_accounts([addr(1), addr(2), addr(4), addr(5), "not-an-address"])
    assert len(poller.accounts) == 4 and poller.overflow == 1
    for _ in range(2):
        run(poller.cycle())
    assert set(poller.accounts) == {addr(1), addr(3)}, "no HYPE position twice: dropped, unless listed"
    assert poller.dropped == 2
    listed.write_text("0x123\n")
    with pytest.raises(ValueError, match="accounts:1"):
        load_addresses(listed)


# ---- against the replay ---------------------------------------------------------------------

def test_replay_positions_follow_the_market():
    with hl_replay(start_ms=CRASH_MS + 3600_000) as rx:
        accounts = rx.dialects["hyperliquid"].accounts
        s = rx.series("hyperliquid:HYPE")
        now = rx.now_ms()
        seen = nulls = 0
        for a in accounts.addresses:
            p = accounts.position(a, "HYPE", s, now)
            if p is None:
                continue
            seen += 1
            size, entry, lev = float(p["szi"]), float(p["entryPx"]), p["leverage"]["value"]
            same = np.flatnonzero(np.isclose(s.c[:s.visible(now)], entry, rtol=1e-5))
            k = int(same[-1])     # the newest bar closing at the entry price (the opening one, or one after it)
            if p["liquidationPx"] is None:
                nulls += 1
                assert p["leverage"]["type"] == "cross" and size > 0
                continue
            liq = float(p["liquidationPx"])
            if p["leverage"]["type"] == "isolated":   # MODEL.md section 4 with Hyperliquid's maintenance margin
                want = entry * (1 - 1 / lev) / (1 - MAINTENANCE) if size > 0 else entry * (1 + 1 / lev) / (1 + MAINTENANCE)
                assert math.isclose(liq, want, rel_tol=1e-6)
            n = s.visible(now)
            if size > 0:
                assert s.l[k + 1:n - 1].min(initial=np.inf) > liq, "still open: never traded through its liquidation"
            else:
                assert s.h[k + 1:n - 1].max(initial=-np.inf) < liq
        assert 100 < seen < len(accounts.addresses) and nulls > 0


def test_replay_candles_limits_and_the_429_null():
    limits = Limits(hyperliquid_weight=100, hyperliquid_window_s=3600)
    with hl_replay(start_ms=DATA_END_MS - 2 * STEP_MS, limits=limits) as rx:   # 18 days of recorded bars before
        url = rx.base_url("hyperliquid") + "/info"
        now = rx.now_ms()
        req = {"coin": "HYPE", "interval": "5m", "startTime": now - 6000 * STEP_MS, "endTime": now}
        got = httpx.post(url, json={"type": "candleSnapshot", "req": req}).json()
        assert len(got) == 500 and got[0]["t"] == now - 4999 * STEP_MS, "the latest 5,000 only, 500 an answer"
        assert got[1]["t"] - got[0]["t"] == STEP_MS and got[0]["T"] == got[0]["t"] + STEP_MS - 1
        bad = httpx.post(url, json={"type": "candleSnapshot", "req": {**req, "interval": "1h"}})
        assert bad.status_code == 422 and "5m" in bad.text
        codes = [httpx.post(url, json={"type": "metaAndAssetCtxs"}).status_code for _ in range(5)]
        # weight so far: 20 + 9 (500 candles) + 20 (the refused 1h) = 49; two more metas fit, the third not
        assert codes == [200, 200, 429, 429, 429]
        limited = httpx.post(url, json={"type": "clearinghouseState", "user": addr(1)})
        assert limited.status_code == 429 and limited.content == b"null"


def test_client_and_poller_stay_within_their_weight_against_the_replay(monkeypatch):
    import heatsvc.exchanges.hyperliquid.client as hl
    monkeypatch.setattr(hl, "THROTTLE_S", 0.05)      # the 429 holds of the over-budget run, shortened
    monkeypatch.setattr(hl, "THROTTLE_CAP_S", 0.2)
    limits = Limits(hyperliquid_weight=40, hyperliquid_window_s=1.0)     # 40 weight a second, fixed windows

    async def scenario(budget: float):
        with hl_replay(start_ms=CRASH_MS, limits=limits) as rx:
            client = make_client("hyperliquid", rx.base_url("hyperliquid"), now_ms=rx.now_ms, **FAST)
            client.budget = WeightWindow(budget, 1.0)
            poller = PositionPoller(client, {"HYPE"}, share=0.5, cycle_s=0, period_s=1.0)
            poller.window = WeightWindow(budget * 0.6, 1.0)
            poller.per_cycle = 1000
            poller.add_accounts(rx.dialects["hyperliquid"].accounts.addresses)
            sent = []
            original = client.fetch

            async def logged(path, target, params, limit, json_body=None):
                sent.append((time.monotonic(), json_body["type"]))
                return await original(path, target, params, limit, json_body)
            client.fetch = logged
            try:
                task = asyncio.create_task(poller.run())
                for _ in range(4):                 # the sampler's calls compete for the same budget
                    try:
                        await client.sample()
                    except ExchangeUnavailable:    # the over-budget run: refused
                        pass
                    await asyncio.sleep(0.5)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
            finally:
                await client.aclose()
            return rx.limited_counts("hyperliquid"), poller, sent

    limited, poller, sent = run(scenario(36))
    assert sum(limited.values()) == 0, limited
    reads = [t for t, kind in sent if kind == "clearinghouseState"]
    weights = [(t, 2 if kind == "clearinghouseState" else 20) for t, kind in sent]
    assert poller.reads > 20 and len(reads) == poller.reads + poller.failures
    for t0, _ in weights:       # any second: within the client's 36, the poller's 2 x reads within its 21.6
        assert sum(w for t, w in weights if t0 <= t < t0 + 1.0) <= 36
        assert 2 * sum(t0 <= t < t0 + 1.0 for t in reads) <= 36 * 0.6
    snap = poller.snapshot("HYPE")
    assert snap.positions and snap.open_interest > 0 and snap.mark_px > 0
    limited, _, _ = run(scenario(400))        # the same against a budget larger than the exchange's
    assert sum(limited.values()) > 0, "without the window the replay would have refused requests"


def test_trades_stream_feeds_taker_share_and_accounts_from_the_replay():
    async def scenario():
        with hl_replay(start_ms=CRASH_MS - 3 * STEP_MS + STEP_MS // 2) as rx, StreamServer(rx) as streams:
            flow, heard = TakerFlow(), set()
            feed = TradeFeed({"HYPE"}, flow, url=streams.url("hyperliquid"), on_accounts=heard.update,
                             now_ms=rx.now_ms, ping_interval_s=0.2, silence_s=2.0, backoff_s=0.05)
            task = asyncio.create_task(feed.run())
            while feed.recorder.state != "live":
                await asyncio.sleep(0.02)
            for _ in range(8):
                rx.step(STEP_MS // 2)
                await asyncio.sleep(0.15)
            await asyncio.sleep(0.5)    # a pong after the last step: the coverage reaches the clock
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return rx, flow, heard, feed
    rx, flow, heard, feed = run(scenario())
    s = rx.series("hyperliquid:HYPE")
    assert feed.trades > 0 and heard <= set(rx.dialects["hyperliquid"].accounts.addresses) and len(heard) > 20
    t = s.t[(s.t >= CRASH_MS - 3 * STEP_MS) & (s.t < CRASH_MS + STEP_MS)]
    share, _ = flow.columns("HYPE", t)
    first = share[0]
    assert math.isnan(first), "the first bar was joined midway: not covered"
    covered = ~np.isnan(share)
    assert covered.sum() >= 2
    want = (s.tb / s.v)[np.searchsorted(s.t, t)]
    assert np.all(np.abs(share[covered] - want[covered]) < 0.35), (share, want)


def test_trades_stream_reconnects_after_drops_and_silence_covers_nothing():
    from heatsvc.replay.streams import StreamFaults

    async def scenario(faults):
        with hl_replay(start_ms=CRASH_MS) as rx, StreamServer(rx, faults=faults) as streams:
            flow = TakerFlow()
            feed = TradeFeed({"HYPE"}, flow, url=streams.url("hyperliquid"), now_ms=rx.now_ms,
                             ping_interval_s=0.1, silence_s=0.5, backoff_s=0.05, max_backoff_s=0.1)
            task = asyncio.create_task(feed.run())
            for _ in range(12):
                rx.step(STEP_MS // 4)
                await asyncio.sleep(0.1)
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            return feed, flow

    dropped, flow = run(scenario(StreamFaults(drop_after_s=0.3)))
    assert dropped.recorder.connections >= 3 and dropped.trades > 0 and flow.spans, "reconnected, heard, covered"
    silent, flow = run(scenario(StreamFaults(silent=True)))
    assert silent.trades == 0 and flow.spans == [], "an open but silent connection is no coverage"
    assert silent.recorder.connections >= 2 and "no sign of life" in silent.recorder.last_error
