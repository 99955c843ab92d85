"""Rasterization settings shared by every block of a render (so all partitions use one grid)."""

import os

import dagster as dg
from pydantic import Field

from loc2vec.geo import BBox
from loc2vec.render.grid import check_blocks_per_side
from loc2vec.render.mosaic import MosaicSpec


def blocks_per_side() -> int:
    """Spatial blocks per side of the region ($LOC2VEC_RENDER_BLOCKS, 1 to 16, default 2 -> 4 partitions)."""
    return check_blocks_per_side(os.environ.get("LOC2VEC_RENDER_BLOCKS", "2"))


class MapnikRenderer(dg.ConfigurableResource):
    """Mapnik rasterization of the channel schema into the Zarr mosaic."""

    resolution_m: float = Field(default=3.0, description="Ground resolution in metres per pixel (UTM grid).")
    chunk: int = Field(default=256, description="Zarr chunk edge in pixels (chunks hold all channels).")
    unit_chunks: int = Field(default=4, description="Render unit edge in chunks (resumability granularity).")
    bbox: str | None = Field(default=None, description="Optional sub-region to render (lon/lat bbox).")

    def spec(self) -> MosaicSpec:
        return MosaicSpec(
            resolution=self.resolution_m,
            chunk=self.chunk,
            unit_chunks=self.unit_chunks,
            blocks_per_side=blocks_per_side(),
            region=BBox.parse(self.bbox) if self.bbox else None,
        )
