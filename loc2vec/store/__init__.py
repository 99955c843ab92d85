"""Zarr tensor store: the mosaic array, its attributes and per-unit completion records."""
