"""heatsvc: estimated liquidation heatmaps (market-risk context, not a forecast) from exchange derivatives data."""
__version__ = "0.1.0"
