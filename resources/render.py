"""Rasterization settings shared by every block of a render (so all partitions use one grid)."""

from __future__ import annotations

import os

import dagster as dg
from pydantic import Field

from loc2vec.errors import ConfigError
from loc2vec.render.mosaic import MosaicSpec

ENV = {"resolution_m": ("LOC2VEC_RESOLUTION_M", float), "unit_chunks": ("LOC2VEC_UNIT_CHUNKS", int)}
KIND_NAMES = {float: "a number", int: "an integer"}


class MapnikRenderer(dg.ConfigurableResource):
    """Mapnik rasterization of the channel schema into the Zarr mosaic (the region is the OSM source's)."""

    resolution_m: float = Field(
        default=3.0, description="Ground resolution in metres per pixel, UTM grid ($LOC2VEC_RESOLUTION_M)."
    )
    chunk: int = Field(default=256, description="Zarr chunk edge in pixels (chunks hold all channels).")
    unit_chunks: int = Field(
        default=4, description="Render unit edge in chunks, the resumability granularity ($LOC2VEC_UNIT_CHUNKS)."
    )

    @classmethod
    def from_env(cls) -> MapnikRenderer:
        """The settings the environment sets (the others default); a malformed value fails naming its variable."""
        values: dict[str, float | int] = {}
        for field, (var, kind) in ENV.items():
            text = os.environ.get(var)
            if not text:
                continue
            try:
                values[field] = kind(text)
            except ValueError:
                raise ConfigError(f"{var} must be {KIND_NAMES[kind]}, got {text!r}") from None
            if values[field] <= 0:
                raise ConfigError(f"{var} must be > 0, got {text!r}")
        return cls(**values)

    def spec(self, blocks_per_side: int = 1) -> MosaicSpec:
        """The render settings; ``blocks_per_side`` comes from the render partitions (``assets.raster``)."""
        return MosaicSpec(
            resolution=self.resolution_m,
            chunk=self.chunk,
            unit_chunks=self.unit_chunks,
            blocks_per_side=blocks_per_side,
        )
