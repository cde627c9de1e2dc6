"""heatsvc's web page: a gateway (Starlette on uvicorn) that is a gRPC client of the service and
pushes live views to browsers over WebSockets, and the page itself (static/, plain ES modules).

The heatmap it shows is an estimate of liquidation levels: market-risk context, never a forecast.
"""
