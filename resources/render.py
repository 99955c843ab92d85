"""Rasterization settings shared by every block of a render (so all partitions use one grid)."""

import dagster as dg
from pydantic import Field

from loc2vec.render.mosaic import MosaicSpec


class MapnikRenderer(dg.ConfigurableResource):
    """Mapnik rasterization of the channel schema into the Zarr mosaic (the region is the OSM source's)."""

    resolution_m: float = Field(default=3.0, description="Ground resolution in metres per pixel (UTM grid).")
    chunk: int = Field(default=256, description="Zarr chunk edge in pixels (chunks hold all channels).")
    unit_chunks: int = Field(default=4, description="Render unit edge in chunks (resumability granularity).")

    def spec(self, blocks_per_side: int = 1) -> MosaicSpec:
        """The render settings; ``blocks_per_side`` comes from the render partitions (``assets.raster``)."""
        return MosaicSpec(
            resolution=self.resolution_m,
            chunk=self.chunk,
            unit_chunks=self.unit_chunks,
            blocks_per_side=blocks_per_side,
        )
