"""The rasterize-once stage: render (a block of) the region into the Zarr mosaic."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import geopandas as gpd
from pyproj import Transformer

from loc2vec import __version__
from loc2vec.errors import ConfigError
from loc2vec.geo import BBox
from loc2vec.grid import MosaicGrid, check_blocks_per_side
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.render.inputs import render_inputs
from loc2vec.render.renderer import BUFFER_PX, ChannelRenderer
from loc2vec.render.styles import style_hash
from loc2vec.store.mosaic import MosaicStore, create_or_open

RENDER_CODE_VERSION = "1"
ATTRIBUTION = "© OpenStreetMap contributors, ODbL 1.0"


@dataclass(frozen=True)
class MosaicSpec:
    """How to rasterize: ground resolution, chunking, spatial blocks, optional sub-region."""

    resolution: float = 3.0
    chunk: int = 256
    unit_chunks: int = 4
    blocks_per_side: int = 2
    region: BBox | None = None

    def __post_init__(self) -> None:
        if not (self.resolution > 0):
            raise ConfigError(f"resolution must be > 0 metres per pixel, got {self.resolution}")
        check_blocks_per_side(self.blocks_per_side, "blocks_per_side")


@dataclass(frozen=True)
class MosaicManifest:
    """One render's result: where the store is, what it was made from, what this run wrote."""

    path: str
    version: str
    grid: dict
    channel_names: list[str]
    block: str | None
    rendered_units: int
    skipped_units: int
    seconds: float
    features_version: str
    osm_sha256: str
    style_hash: str
    osm_sequence: int | None = None  # the extract's replication state (lineage), when recorded
    osm_timestamp: str | None = None

    @property
    def mosaic_grid(self) -> MosaicGrid:
        return MosaicGrid(**self.grid)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class RenderStats:
    rendered: list[tuple[int, int]] = field(default_factory=list)
    skipped: list[tuple[int, int]] = field(default_factory=list)
    seconds: float = 0.0


def render_units(store: MosaicStore, renderer, units: list[tuple[int, int]], on_unit=None) -> RenderStats:
    """Render and write every unit of ``units`` not yet marked done (resumable)."""
    started = time.perf_counter()
    stats = RenderStats()
    done = store.done_mask()
    grid = store.grid
    for unit in units:
        if done[unit]:
            stats.skipped.append(unit)
            continue
        store.write_unit(unit, renderer.render(grid.unit_window(*unit)))
        stats.rendered.append(unit)
        if on_unit is not None:
            on_unit(unit)
    stats.seconds = time.perf_counter() - started
    return stats


def plan_grid(features: FeaturesManifest, spec: MosaicSpec) -> MosaicGrid:
    region = features.region
    if spec.region is not None:
        if not spec.region.intersects(region):
            raise ConfigError(f"render region {spec.region} lies outside the features' region {region}")
        region = spec.region.intersection(region)
    return MosaicGrid.from_region(region, spec.resolution, spec.chunk, spec.unit_chunks)


def mosaic_version(features: FeaturesManifest, grid: MosaicGrid, styles: str) -> str:
    text = json.dumps([features.version, grid.to_dict(), styles, RENDER_CODE_VERSION], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _features_for(features: FeaturesManifest, grid: MosaicGrid, units, margin_m: float) -> gpd.GeoDataFrame:
    """The features around ``units`` (GeoParquet bbox filter), projected to the grid's CRS."""
    windows = [grid.unit_window(*u) for u in units]
    bounds = [grid.window_bounds(w) for w in windows]
    minx = min(b[0] for b in bounds) - margin_m
    miny = min(b[1] for b in bounds) - margin_m
    maxx = max(b[2] for b in bounds) + margin_m
    maxy = max(b[3] for b in bounds) + margin_m
    to_ll = Transformer.from_crs(grid.crs, "EPSG:4326", always_xy=True)
    lonlat = to_ll.transform_bounds(minx, miny, maxx, maxy, densify_pts=21)
    frame = gpd.read_parquet(features.path, bbox=lonlat)
    return frame.to_crs(grid.crs)


def store_attrs(features: FeaturesManifest, grid: MosaicGrid, styles: str, version: str) -> dict:
    """The attributes of a mosaic version's group (georeferencing, lineage, and each unit's render input,
    which a later version compares its own with to share the units that did not change)."""
    return {
        "crs": f"EPSG:{grid.crs_epsg}",
        "transform": list(grid.transform),
        "resolution_m": grid.resolution,
        "osm_sha256": features.osm_sha256,
        "osm_sequence": features.osm_sequence,
        "osm_timestamp": features.osm_timestamp,
        "features_version": features.version,
        "schema_name": features.schema_name,
        "style_hash": styles,
        "code_version": f"loc2vec {__version__} render {RENDER_CODE_VERSION}",
        "mosaic_version": version,
        "attribution": ATTRIBUTION,
        "render_inputs": render_inputs(features, grid, styles).units,
    }


def renderer_for(features: FeaturesManifest, grid: MosaicGrid, units: list[tuple[int, int]]) -> ChannelRenderer:
    """A renderer holding the features ``units`` need (those within Mapnik's buffer plus the widest line)."""
    schema = features.schema()
    widest = max(max(c.width_m.values()) for c in schema.channels)
    margin = BUFFER_PX * grid.resolution + widest
    return ChannelRenderer(_features_for(features, grid, units, margin), schema, grid)


def render_mosaic(
    features: FeaturesManifest,
    spec: MosaicSpec,
    out_root: str | Path,
    block: str | None = None,
    on_unit=None,
    progress: Callable[[int, int], None] | None = None,
) -> MosaicManifest:
    """Render the units of ``block`` (all units when None) that are not yet done; ``progress(done, total)``
    is called as units to render are written."""
    schema = features.schema()
    grid = plan_grid(features, spec)
    srs = f"epsg:{grid.crs_epsg}"
    styles = style_hash(schema, grid.resolution, srs)
    version = mosaic_version(features, grid, styles)
    store = create_or_open(
        Path(out_root) / f"{version}.zarr", grid, schema.names, attrs=store_attrs(features, grid, styles, version)
    )
    units = grid.units() if block is None else grid.units_of_block(block, spec.blocks_per_side)
    stats_rendered = stats_skipped = 0
    seconds = 0.0
    done = store.done_mask()
    todo = [u for u in units if not done[u]]
    if todo:
        renderer = renderer_for(features, grid, todo)
        written = 0
        if progress is not None:
            progress(0, len(todo))

        def on_rendered(unit: tuple[int, int]) -> None:
            nonlocal written
            written += 1
            if on_unit is not None:
                on_unit(unit)
            if progress is not None:
                progress(written, len(todo))

        stats = render_units(store, renderer, units, on_unit=on_rendered)
        stats_rendered, stats_skipped, seconds = len(stats.rendered), len(stats.skipped), stats.seconds
    else:
        stats_skipped = len(units)
    return MosaicManifest(
        path=store.path,
        version=version,
        grid=grid.to_dict(),
        channel_names=schema.names,
        block=block,
        rendered_units=stats_rendered,
        skipped_units=stats_skipped,
        seconds=seconds,
        features_version=features.version,
        osm_sha256=features.osm_sha256,
        osm_sequence=features.osm_sequence,
        osm_timestamp=features.osm_timestamp,
        style_hash=styles,
    )
