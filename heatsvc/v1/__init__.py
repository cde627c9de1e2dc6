"""Generated gRPC code of the heatsvc.v1 API (proto/heatsvc/v1/heatmap_service.proto); committed so
installs need no code generation. Regenerate with `python -m heatsvc.v1.regenerate`."""
