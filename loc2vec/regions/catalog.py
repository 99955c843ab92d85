"""The loaded region catalog: every region's extract checked, duplicates and overlaps marked, blocks from size.

Faults of the file (syntax, unknown keys, wrong types) fail ``load_catalog``. A fault of a region (missing
or corrupt extract, bbox not inside its extract, mosaic too large, a name declared twice, an area
overlapping another region's) is recorded on that region only: ``Catalog.check()`` lists them,
``Catalog.region(name)`` raises ``RegionError`` for that region, and the other regions stay usable.
Loading reads only the catalog and each extract's header (and its end, to refuse a truncated file).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import TYPE_CHECKING

from loc2vec.errors import CatalogError, ConfigError, InputDataError, NoFeaturesError, RegionError
from loc2vec.geo import BBox
from loc2vec.grid import MosaicGrid, block_keys, parse_block_key
from loc2vec.regions.blocks import TARGET_UNITS_PER_BLOCK, blocks_per_side_for, parse_partition_key, partition_key
from loc2vec.regions.spec import Region, parse_catalog

if TYPE_CHECKING:
    from loc2vec.osm.importer import ImportStats
    from loc2vec.osm.layers import FeaturesManifest
    from loc2vec.schema import ChannelSchema

DEFAULT_CATALOG = Path(__file__).resolve().parents[2] / "regions.toml"
INSIDE_TOLERANCE_DEG = 1e-7  # osmium's coordinate precision

# Kinds of per-region fault (RegionError.fault)
MISSING_EXTRACT = "missing_extract"
CORRUPT_EXTRACT = "corrupt_extract"
BBOX_OUTSIDE = "bbox_outside"
TOO_LARGE = "too_large"
NO_FEATURES = "no_features"
DUPLICATE_NAME = "duplicate_name"
OVERLAP = "overlap"


@dataclass(frozen=True)
class RegionFault:
    """Why a region cannot be used: ``kind`` (one of the constants above) and a message naming the fault."""

    region: str
    kind: str
    message: str

    def error(self) -> RegionError:
        return RegionError(self.region, self.kind, self.message)

    def __str__(self) -> str:
        return f"region {self.region!r}: {self.message}"


@dataclass(frozen=True)
class CheckedRegion:
    """A declared region with what its extract says: bounds, the mosaic grid and its spatial blocks."""

    region: Region
    extent: BBox | None  # the extract's bounds (None: unreadable)
    grid: MosaicGrid | None  # the region's mosaic grid (None when faulty)
    blocks_per_side: int | None
    fault: RegionFault | None = None

    @property
    def name(self) -> str:
        return self.region.name

    @property
    def area(self) -> BBox | None:
        """What the pipeline imports and renders: the bbox, else the extract's bounds."""
        return self.region.bbox or self.extent

    @property
    def ok(self) -> bool:
        return self.fault is None

    def size_km(self) -> tuple[float, float] | None:
        """(width, height) of the mosaic in km."""
        if self.grid is None:
            return None
        return self.grid.width * self.grid.resolution / 1000, self.grid.height * self.grid.resolution / 1000

    def block_keys(self) -> list[str]:
        return block_keys(self._usable().blocks_per_side or 1)

    def partition_keys(self) -> list[str]:
        """``"<region>|<block>"`` for every block of this region."""
        return [partition_key(self.name, block) for block in self.block_keys()]

    def _usable(self) -> CheckedRegion:
        if self.fault is not None:
            raise self.fault.error()
        return self


@dataclass(frozen=True)
class Catalog:
    """The regions of one catalog file, in file order, each checked against its extract."""

    path: Path
    entries: tuple[CheckedRegion, ...]

    def __iter__(self) -> Iterator[CheckedRegion]:
        return iter(self.entries)

    def names(self) -> list[str]:
        return [e.name for e in self.entries]

    def check(self) -> list[RegionFault]:
        """The faults of individual regions (empty: every region is usable)."""
        return [e.fault for e in self.entries if e.fault is not None]

    def usable(self) -> list[CheckedRegion]:
        return [e for e in self.entries if e.fault is None]

    def entry(self, name: str) -> CheckedRegion:
        """The region ``name`` with its fault, if any; CatalogError when the catalog has no such region."""
        for e in self.entries:
            if e.name == name:
                return e
        raise CatalogError(f"no region {name!r} in the catalog {self.path}; regions: {', '.join(self.names())}")

    def region(self, name: str) -> CheckedRegion:
        """The usable region ``name``; RegionError naming the fault when it has one."""
        return self.entry(name)._usable()

    def region_keys(self) -> list[str]:
        """The names of the usable regions: the region partition keys (import per region)."""
        return [e.name for e in self.usable()]

    def partition_keys(self) -> list[str]:
        """Every ``"<region>|<block>"`` key of the usable regions (render and embed per region and block)."""
        return [key for e in self.usable() for key in e.partition_keys()]

    def parse_partition_key(self, key: str) -> tuple[CheckedRegion, str]:
        """The usable region and block of a ``"<region>|<block>"`` key; an error when the region is unknown
        or faulty or the block lies outside its split."""
        name, block = parse_partition_key(key)
        entry = self.region(name)
        try:
            parse_block_key(block, entry.blocks_per_side or 1)
        except ConfigError as exc:
            raise RegionError(name, "bad_block", f"partition key {key!r}: {exc}") from None
        return entry, block


def load_catalog(path: str | Path = DEFAULT_CATALOG, target_units: int = TARGET_UNITS_PER_BLOCK) -> Catalog:
    """Parse ``path``, check every region's extract and refuse overlapping regions (CatalogError)."""
    p = Path(path)
    entries = tuple(check_region(region, target_units) for region in parse_catalog(p))
    return Catalog(p.resolve(), mark_overlaps(mark_duplicates(entries)))


def check_region(region: Region, target_units: int = TARGET_UNITS_PER_BLOCK) -> CheckedRegion:
    """``region`` with its extract's bounds, grid and blocks, or with the fault that makes it unusable."""
    from loc2vec.osm.files import check_complete, extract_bounds

    def faulty(kind: str, message: str, extent: BBox | None = None) -> CheckedRegion:
        return CheckedRegion(region, extent, None, None, RegionFault(region.name, kind, message))

    if not region.extract.exists():
        return faulty(MISSING_EXTRACT, f"extract not found: {region.extract}")
    try:
        check_complete(region.extract)
        extent = extract_bounds(region.extract)
    except InputDataError as exc:
        return faulty(CORRUPT_EXTRACT, f"extract {region.extract} is unusable: {exc}")
    if region.bbox is not None and not bbox_inside(region.bbox, extent):
        where = "outside" if not region.bbox.intersects(extent) else "partly outside"
        return faulty(
            BBOX_OUTSIDE,
            f"bbox {region.bbox} lies {where} its extract {region.extract.name} (bounds {extent})",
            extent,
        )
    area = region.bbox or extent
    settings = region.render
    try:
        grid = MosaicGrid.from_region(area, settings.resolution_m, settings.chunk, settings.unit_chunks)
    except ConfigError as exc:
        return faulty(TOO_LARGE, str(exc), extent)
    return CheckedRegion(region, extent, grid, blocks_per_side_for(grid, target_units))


def bbox_inside(inner: BBox, outer: BBox, tolerance: float = INSIDE_TOLERANCE_DEG) -> bool:
    return (
        inner.min_lon >= outer.min_lon - tolerance
        and inner.min_lat >= outer.min_lat - tolerance
        and inner.max_lon <= outer.max_lon + tolerance
        and inner.max_lat <= outer.max_lat + tolerance
    )


def mark_duplicates(entries: tuple[CheckedRegion, ...]) -> tuple[CheckedRegion, ...]:
    """Every region whose name another region also has, marked faulty (which one is meant cannot be told);
    the others unchanged."""
    positions: dict[str, list[int]] = {}
    for i, entry in enumerate(entries, 1):
        positions.setdefault(entry.name, []).append(i)
    return tuple(
        _with_fault(
            e,
            DUPLICATE_NAME,
            f"the name is declared {len(positions[e.name])} times (regions "
            f"{', '.join(f'#{i}' for i in positions[e.name])}); names must be unique",
        )
        if len(positions[e.name]) > 1
        else e
        for e in entries
    )


def mark_overlaps(entries: tuple[CheckedRegion, ...]) -> tuple[CheckedRegion, ...]:
    """Every region whose area (bbox, else extract bounds) overlaps another's, marked faulty with the regions
    it overlaps: a place belongs to one region only, so that one region's test blocks are not another's
    training ground. Regions sharing only an edge do not overlap; a region whose area is unknown is not
    compared."""
    overlapping: dict[int, list[str]] = {}
    for (i, a), (j, b) in combinations(enumerate(entries), 2):
        if a.area is not None and b.area is not None and a.area.intersects(b.area):
            overlapping.setdefault(i, []).append(f"{b.name!r} ({b.area})")
            overlapping.setdefault(j, []).append(f"{a.name!r} ({a.area})")
    return tuple(
        _with_fault(
            e,
            OVERLAP,
            f"its area {e.area} overlaps {', '.join(overlapping[i])}: narrow a bbox (a place may "
            "belong to one region only)",
        )
        if i in overlapping
        else e
        for i, e in enumerate(entries)
    )


def _with_fault(entry: CheckedRegion, kind: str, message: str) -> CheckedRegion:
    """``entry`` unusable for ``kind`` (a fault it already has is kept: it is the first to fix)."""
    if entry.fault is not None:
        return entry
    return CheckedRegion(entry.region, entry.extent, None, None, RegionFault(entry.name, kind, message))


# --- after import -------------------------------------------------------------------------------------


def check_features(region: str, manifest: FeaturesManifest) -> FeaturesManifest:
    """``manifest`` if the region's import holds any feature, else RegionError (fault ``no_features``)."""
    if manifest.n_features == 0:
        raise RegionError(region, NO_FEATURES, f"no features of schema {manifest.schema_name!r} in {manifest.bbox}")
    return manifest


def build_region_features(
    entry: CheckedRegion,
    schema: ChannelSchema,
    out_root: str | Path,
    extract: str | Path | None = None,
    node_index: str = "auto",
) -> tuple[FeaturesManifest, ImportStats]:
    """Import the region (``extract``: the file to read, default the catalog's) into versioned feature
    layers under ``out_root``. A region without features, or an extract the importer cannot read, raises
    RegionError naming the region; nothing is written then (the layers are written only after a
    successful import, each file atomically)."""
    from loc2vec.osm.layers import build_feature_layers

    entry = entry._usable()
    path = Path(extract) if extract is not None else entry.region.extract
    try:
        manifest, stats = build_feature_layers(path, schema, out_root, bbox=entry.region.bbox, node_index=node_index)
    except NoFeaturesError as exc:
        raise RegionError(entry.name, NO_FEATURES, str(exc)) from exc
    except InputDataError as exc:
        raise RegionError(entry.name, CORRUPT_EXTRACT, str(exc)) from exc
    return check_features(entry.name, manifest), stats
