"""The region catalog as a resource: which regions the ``regions`` partitions stand for (docs/regions.md)."""

from __future__ import annotations

import dagster as dg
from pydantic import Field

from loc2vec.regions import Catalog, CheckedRegion, load_catalog
from loc2vec.render.mosaic import MosaicSpec
from resources.paths import default_catalog


class RegionCatalog(dg.ConfigurableResource):
    """The catalog file: each region's extract, bbox and render settings; its blocks follow from its size."""

    path: str = Field(
        default_factory=default_catalog,
        description="Region catalog TOML ($LOC2VEC_CATALOG; default <project>/regions.toml).",
    )

    def load(self) -> Catalog:
        """The catalog, every extract checked (a catalog-wide fault raises; a region's fault is kept on it)."""
        return load_catalog(self.path)

    def region(self, name: str) -> CheckedRegion:
        """The usable region ``name``; an error naming the region and its fault otherwise."""
        return self.load().region(name)


def region_spec(entry: CheckedRegion) -> MosaicSpec:
    """The region's render settings and spatial blocks, as one mosaic spec."""
    settings = entry.region.render
    return MosaicSpec(
        resolution=settings.resolution_m,
        chunk=settings.chunk,
        unit_chunks=settings.unit_chunks,
        blocks_per_side=entry.blocks_per_side or 1,
    )
