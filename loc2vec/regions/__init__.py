"""Regions as data: the catalog file (``regions.toml``), its checks, and each region's spatial blocks.

``load_catalog(path)`` -> ``Catalog`` of ``CheckedRegion``s; see ``docs/regions.md``.
"""

from loc2vec.regions.blocks import (
    PARTITION_DELIMITER,
    TARGET_UNITS_PER_BLOCK,
    blocks_per_side_for,
    parse_partition_key,
    partition_key,
    region_partition_keys,
)
from loc2vec.regions.catalog import (
    DEFAULT_CATALOG,
    Catalog,
    CheckedRegion,
    RegionFault,
    build_region_features,
    check_features,
    check_region,
    load_catalog,
)
from loc2vec.regions.spec import Region, RenderSettings, Replication, parse_catalog, parse_catalog_text

__all__ = [
    "DEFAULT_CATALOG",
    "PARTITION_DELIMITER",
    "TARGET_UNITS_PER_BLOCK",
    "Catalog",
    "CheckedRegion",
    "Region",
    "RegionFault",
    "RenderSettings",
    "Replication",
    "blocks_per_side_for",
    "build_region_features",
    "check_features",
    "check_region",
    "load_catalog",
    "parse_catalog",
    "parse_catalog_text",
    "parse_partition_key",
    "partition_key",
    "region_partition_keys",
]
