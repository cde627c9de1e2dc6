"""Exchange clients: Binance USD-M, Bybit v5 linear, OKX v5 swaps and Hyperliquid perpetuals, each answering in validated
5-minute engine bars. `make_client` builds one from configuration (base URLs are never hard-wired
into callers; the defaults are the live exchanges)."""
from __future__ import annotations

from .base import ExchangeClient, ExchangeError, ExchangeUnavailable, Listing
from .binance import BinanceClient
from .bybit import BybitClient
from .hyperliquid import HyperliquidClient
from .okx import OkxClient

CLIENTS: dict[str, type[ExchangeClient]] = {"binance": BinanceClient, "bybit": BybitClient, "okx": OkxClient,
                                            "hyperliquid": HyperliquidClient}

__all__ = ["CLIENTS", "BinanceClient", "BybitClient", "ExchangeClient", "ExchangeError", "ExchangeUnavailable",
           "HyperliquidClient", "Listing", "OkxClient", "make_client"]


def make_client(exchange: str, base_url: str | None = None, **kw) -> ExchangeClient:
    """A client for one exchange ("binance", "bybit", "okx" or "hyperliquid"); kw go to its constructor
    (archive_url for Binance, timeouts, retry settings, now_ms)."""
    try:
        cls = CLIENTS[exchange]
    except KeyError:
        raise ValueError(f"unknown exchange {exchange!r}; use {', '.join(CLIENTS)}") from None
    if exchange != "binance" and kw.get("archive_url") is None:
        kw.pop("archive_url", None)
    return cls(base_url, **kw)
