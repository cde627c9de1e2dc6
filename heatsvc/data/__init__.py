"""Bundled recorded market data (gzip CSV); see heatsvc.datasets."""
