"""The exchanges' liquidation streams (MODEL.md section 12): each dialect on its recorded messages (named
in tests/fixtures/SOURCES.md), and the recorder against real WebSocket servers on 127.0.0.1 that
answer, drop the connection, send garbage and go silent."""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
import websockets

from heatsvc.exchanges.streams import Recorder, binance, bybit, okx
from heatsvc.model.realised import Liquidation

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(path: str) -> dict:
    return json.loads((FIXTURES / path).read_text())


def test_binance_force_order_sells_a_long_at_its_average_price():
    (doc,), live = binance.parse(fixture("binance/force-order.json"), {"BTCUSDT"})
    assert live and doc == Liquidation("binance:BTCUSDT", 1568014460893, "long", 9910.0, 0.014)
    assert doc.notional == pytest.approx(138.74)
    (captured,), _ = binance.parse({"stream": "!forceOrder@arr", "data": fixture("binance/force-order-2022.json")},
                                   {"BTCUSDT"})
    assert (captured.price, captured.quantity, captured.time_ms) == (18990.0, 0.009, 1665523974217)   # ap, not p
    assert binance.parse(fixture("binance/force-order.json"), {"ETHUSDT"}) == ([], True)   # not served
    assert binance.parse({"stream": "btcusdt@markPrice@1s", "data": {"e": "markPriceUpdate"}}, set()) == ([], True)
    buy = fixture("binance/force-order.json")
    buy["o"]["S"] = "BUY"   # constructed: the same order on the other side
    assert binance.parse(buy, {"BTCUSDT"})[0][0].side == "short"


def test_bybit_position_side_is_the_liquidated_position():
    (row,), live = bybit.parse(fixture("bybit/all-liquidation.json"), {"ROSEUSDT"})
    assert live and row == Liquidation("bybit:ROSEUSDT", 1739502302929, "short", 0.04499, 20000.0)
    assert bybit.parse({"op": "pong", "success": True}, set()) == ([], True)
    assert [json.loads(m)["args"] for m in bybit.subscriptions([f"S{i}USDT" for i in range(12)])][1] == \
        ["allLiquidation.S8USDT", "allLiquidation.S9USDT"]


def test_okx_contracts_become_base_units_and_net_mode_uses_the_order_side():
    message = fixture("okx/liquidation-orders.json")
    (row,), live = okx.parse(message, {"IOSTUSDT"}, {"IOSTUSDT": 10.0})   # contract size given here
    assert live and row == Liquidation("okx:IOSTUSDT", 1692266434010, "short", 0.007831, 130.0)
    assert okx.parse(message, {"IOSTUSDT"}, {}) == ([], True), "an unknown contract size is never guessed"
    detail = message["data"][0]["details"][0]
    detail.update(posSide="net", side="sell")   # constructed: net mode, a sell closes a long
    assert okx.parse(message, {"IOSTUSDT"}, {"IOSTUSDT": 10.0})[0][0].side == "long"
    assert okx.symbol_of("BTC-USDT-SWAP") == "BTCUSDT" and okx.symbol_of("BTC-USD-SWAP") is None


@pytest.mark.parametrize("bad", [dict(side="flat"), dict(price=0.0), dict(quantity=float("inf"))])
def test_a_liquidation_is_checked(bad):
    fields = dict(market="x:Y", time_ms=1, side="long", price=1.0, quantity=1.0) | bad
    with pytest.raises(ValueError, match="x:Y"):
        Liquidation(**fields)


class FakeBybit:
    """A WebSocket server speaking Bybit's public stream: acks subscriptions, answers pings, sends the
    recorded liquidation, and closes each connection after `frames` frames; `silent` accepts and says nothing."""

    def __init__(self, frames: int = 3, silent: bool = False, garbage: bool = False):
        self.frames, self.silent, self.garbage = frames, silent, garbage
        self.connections, self.subscribed = 0, []

    async def handler(self, ws):
        self.connections += 1
        if self.silent:
            await ws.wait_closed()   # reads nothing, says nothing, until the client gives up
            return
        sent = 0
        async for text in ws:
            msg = json.loads(text)
            if msg["op"] == "subscribe":
                self.subscribed.append(msg["args"])
                await ws.send(json.dumps({"success": True, "op": "subscribe", "ret_msg": ""}))
                if self.garbage:
                    await ws.send("{not json")
                await ws.send(json.dumps(fixture("bybit/all-liquidation.json")))
                sent += 2
            elif msg["op"] == "ping":
                await ws.send(json.dumps({"success": True, "ret_msg": "pong", "op": "ping"}))
                sent += 1
            if sent >= self.frames:
                return   # the server ends the connection


async def record(server: FakeBybit, seconds: float, **kw):
    events, spans = [], []

    async def on_events(batch):
        events.extend(batch)

    async def on_span(start, end):
        spans.append((start, end))

    async with websockets.serve(server.handler, "127.0.0.1", 0) as ws_server:
        port = ws_server.sockets[0].getsockname()[1]
        rec = Recorder("bybit", ["ROSEUSDT"], on_events, on_span, url=f"ws://127.0.0.1:{port}",
                       backoff_s=0.05, max_backoff_s=0.1, **kw)
        task = asyncio.create_task(rec.run())
        await asyncio.sleep(seconds)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return rec, events, spans


def test_the_recorder_reconnects_resubscribes_and_reports_each_connected_span():
    server = FakeBybit(frames=3)
    rec, events, spans = asyncio.run(record(server, 1.5, ping_interval_s=0.05, silence_s=5))
    assert server.connections >= 3 and len(server.subscribed) == server.connections
    assert all(args == ["allLiquidation.ROSEUSDT"] for args in server.subscribed)
    assert len(events) >= 3 and set(events) == {Liquidation("bybit:ROSEUSDT", 1739502302929, "short", 0.04499, 20000.0)}
    starts = sorted({s for s, _ in spans})
    assert len(starts) == rec.connections and all(e >= s for s, e in spans)


def test_a_silent_connection_is_not_coverage():
    server = FakeBybit(silent=True)
    rec, events, spans = asyncio.run(record(server, 1.0, silence_s=0.3))
    assert events == [] and spans == [], "connected but hearing nothing covers nothing"
    assert server.connections >= 2 and "no sign of life" in rec.last_error


def test_malformed_frames_are_counted_and_skipped():
    server = FakeBybit(frames=5, garbage=True)
    rec, events, _ = asyncio.run(record(server, 0.5, silence_s=5))
    assert rec.malformed >= 1 and events, "the good frames after the bad one still count"
