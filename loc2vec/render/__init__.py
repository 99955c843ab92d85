"""Rendering: the mosaic grid, Mapnik styles generated from the channel schema, window rendering."""
