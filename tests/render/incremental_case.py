"""A real change of the Kotka extract and what every stage makes of it, before and after (shared by tests)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from loc2vec.geo import BBox
from loc2vec.grid import MosaicGrid
from loc2vec.osm.changes import ChangeFootprint, change_footprint
from loc2vec.osm.edits import Edits, edit_buildings
from loc2vec.osm.files import header_bounds
from loc2vec.osm.layers import FeaturesManifest, build_feature_layers
from loc2vec.render.mosaic import MosaicManifest, MosaicSpec, plan_grid, render_mosaic
from loc2vec.schema import load_schema
from tests.conftest import KOTKA

SPEC = MosaicSpec(resolution=3.0, chunk=64, unit_chunks=2)  # 6 x 6 units of 128 px over Kotka


@dataclass
class Case:
    root: Path
    features: FeaturesManifest  # of the extract before the change
    mosaic: MosaicManifest
    grid: MosaicGrid
    edits: Edits
    footprint: ChangeFootprint


def south_west_quarter(extract: Path = KOTKA) -> BBox:
    r = header_bounds(extract)
    assert r is not None
    return BBox(r.min_lon, r.min_lat, (r.min_lon + r.max_lon) / 2, (r.min_lat + r.max_lat) / 2)


def kotka_case(root: Path, n_edits: int = 6, seed: int = 0) -> Case:
    schema = load_schema()
    features, _ = build_feature_layers(KOTKA, schema, root / "features")
    mosaic = render_mosaic(features, SPEC, root / "mosaic")
    edits = edit_buildings(KOTKA, root / "edit", south_west_quarter(), n_edits, seed=seed)
    grid = plan_grid(features, SPEC)
    footprint = change_footprint(KOTKA, [edits.diff], grid, schema)
    return Case(root, features, mosaic, grid, edits, footprint)


def inside_block(grid: MosaicGrid, block: str, blocks_per_side: int, margin_m: float = 100.0) -> BBox:
    """Lon/lat box of ``block``'s units shrunk by ``margin_m``: edits inside it touch that block only."""
    windows = [grid.unit_window(*u) for u in grid.units_of_block(block, blocks_per_side)]
    bounds = [grid.window_bounds(w) for w in windows]
    x0, y0 = min(b[0] for b in bounds) + margin_m, min(b[1] for b in bounds) + margin_m
    x1, y1 = max(b[2] for b in bounds) - margin_m, max(b[3] for b in bounds) - margin_m
    lon0, lat0 = grid.pixel_to_lonlat(*grid.xy_to_pixel(x0, y0))
    lon1, lat1 = grid.pixel_to_lonlat(*grid.xy_to_pixel(x1, y1))
    return BBox(min(lon0, lon1), min(lat0, lat1), max(lon0, lon1), max(lat0, lat1))
