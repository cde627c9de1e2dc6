"""The replay exchange: Binance USD-M futures, the Binance public data archive, Bybit v5 linear and
OKX v5 swap REST dialects served on loopback from recorded or synthetic bars, on a replay clock, so
the exchange clients run against it unchanged and no test needs the network.

One module per dialect (binance, archive, bybit, okx, mirroring heatsvc/exchanges/), the server core
(server, wire) and the scenario (markets, clock, faults, limits) apart; `heatsvc replay` in command.
"""
from .command import add_arguments, run
from .scenario import DATA_END_MS, DEFAULT_START_MS, EXCHANGES, Bar, Faults, Limits, Series, default_datasets
from .server import ReplayExchange

__all__ = ["DATA_END_MS", "DEFAULT_START_MS", "EXCHANGES", "Bar", "Faults", "Limits", "ReplayExchange", "Series",
           "add_arguments", "default_datasets", "run"]
