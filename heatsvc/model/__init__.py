"""The model of MODEL.md, pure and without I/O: bars, the engine and its three backends, zones.

Everything here is an estimate of where leveraged positions would be force-closed: market-risk
context, never a price forecast.
"""
