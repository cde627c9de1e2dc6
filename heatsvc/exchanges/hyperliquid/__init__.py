"""Hyperliquid: the REST client (client), its open-interest samples (oi) and taker flow (flow), the
positions poller (positions), the S3 asset_ctxs importer (archive), the weight budget (weights), and the
feeds `heatsvc serve` runs (feeds); the trades stream is heatsvc.exchanges.streams.hyperliquid."""
from .client import HyperliquidClient

__all__ = ["HyperliquidClient"]
