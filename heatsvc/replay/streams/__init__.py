"""The replay exchange's liquidation streams: Binance !forceOrder@arr, Bybit allLiquidation and OKX
liquidation-orders spoken over WebSocket on loopback (one module per dialect, mirroring
heatsvc/exchanges/streams/), so the recorders, the demo and the tests run without the network.

`events` draws liquidations from the replayed bars (where the bar traded, more and bigger in fast
moves); `server` is the core: one websockets server in its own thread that pushes each event when the
replay clock passes it, and injects faults (dropped connections, malformed frames, silence).
"""
from .events import market_events
from .server import StreamFaults, StreamServer

__all__ = ["StreamFaults", "StreamServer", "market_events"]
