"""What each render unit draws: a digest of the feature rows within its reach, per unit and per block.

A unit's pixels depend only on the features whose drawing reaches into it: those within its window plus
the styles' reach (half the widest stroke, the widest point disc, antialiasing; the styles draw no text). So two
feature layers whose rows within a unit's reach are equal render that unit byte for byte alike: the digest
of those rows, with the styles and the grid, is the unit's *render input*. Comparing the digests of two
versions names the units a change touched, whatever the change was (one diff, many, a re-import), and a
block's digest (its units' digests) is the data version of a render partition: a block whose features did
not change keeps its version, so only the touched partitions become stale.

The digests are computed once per feature version and grid and cached beside the feature layers.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from loc2vec.grid import MosaicGrid, block_keys
from loc2vec.io import write_json
from loc2vec.osm.changes import style_margin_m
from loc2vec.osm.layers import FeaturesManifest

DIGEST_BYTES = 8
INPUTS_FORMAT = 1


def unit_key(unit: tuple[int, int]) -> str:
    return f"{unit[0]},{unit[1]}"


def render_reach_m(features: FeaturesManifest, grid: MosaicGrid) -> float:
    """How far beyond a unit's window a feature's drawing can reach into it (half the widest stroke or the
    widest point disc, plus antialiasing: :func:`loc2vec.osm.changes.style_margin_m`)."""
    return style_margin_m(features.schema(), grid.resolution)


def _row_digests(frame: gpd.GeoDataFrame) -> np.ndarray:
    """One 64-bit digest per row from every column: the geometry's WKB and the attributes."""
    attrs = pd.util.hash_pandas_object(pd.DataFrame(frame.drop(columns="geometry")), index=False).to_numpy()
    wkb = shapely.to_wkb(frame.geometry.to_numpy(), hex=False)
    geom = np.array(
        [int.from_bytes(hashlib.blake2b(b, digest_size=DIGEST_BYTES).digest(), "little") for b in wkb],
        dtype=np.uint64,
    )
    return attrs ^ (geom * np.uint64(0x9E3779B97F4A7C15))


@dataclass(frozen=True)
class RenderInputs:
    """The render-input digest of every unit of ``grid`` (``"row,col"`` -> hex) under one style hash."""

    units: dict[str, str]
    styles: str
    grid: dict

    def block_digest(self, block: str, blocks_per_side: int) -> str:
        """A render partition's data version: its units' digests, the styles and the grid."""
        units = MosaicGrid(**self.grid).units_of_block(block, blocks_per_side)
        text = json.dumps([self.styles, self.grid, [self.units[unit_key(u)] for u in units]], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def block_digests(self, blocks_per_side: int) -> dict[str, str]:
        return {b: self.block_digest(b, blocks_per_side) for b in block_keys(blocks_per_side)}

    def changed_units(self, previous: dict[str, str] | None) -> list[tuple[int, int]]:
        """Units whose input differs from ``previous`` (a unit digest map; None: every unit)."""
        keys = self.units if previous is None else [k for k, v in self.units.items() if previous.get(k) != v]
        return sorted(tuple(int(v) for v in k.split(",")) for k in keys)  # type: ignore[misc]


def compute_render_inputs(features: FeaturesManifest, grid: MosaicGrid, styles: str) -> RenderInputs:
    """Digest, for each unit of ``grid``, the feature rows whose bounds reach it (in the layers' order)."""
    frame = features.read().to_crs(grid.crs)
    reach = render_reach_m(features, grid)
    rows = _row_digests(frame)
    tree = shapely.STRtree(frame.geometry.to_numpy())
    units: dict[str, str] = {}
    for unit in grid.units():
        x0, y0, x1, y1 = grid.window_bounds(grid.unit_window(*unit))
        area = shapely.box(x0 - reach, y0 - reach, x1 + reach, y1 + reach)
        hits = np.sort(tree.query(area, predicate="intersects"))
        digest = hashlib.blake2b(rows[hits].tobytes(), digest_size=DIGEST_BYTES)
        digest.update(len(hits).to_bytes(8, "little"))
        units[unit_key(unit)] = digest.hexdigest()
    return RenderInputs(units, styles, grid.to_dict())


def render_inputs(features: FeaturesManifest, grid: MosaicGrid, styles: str) -> RenderInputs:
    """:func:`compute_render_inputs`, cached beside the feature layers (one file per grid and style)."""
    key = hashlib.sha256(json.dumps([grid.to_dict(), styles, INPUTS_FORMAT], sort_keys=True).encode()).hexdigest()
    cache = Path(features.path).parent / f"render_inputs-{key[:12]}.json"
    if cache.is_file():
        values = json.loads(cache.read_text(encoding="utf-8"))
        return RenderInputs(values["units"], values["styles"], values["grid"])
    inputs = compute_render_inputs(features, grid, styles)
    write_json({"units": inputs.units, "styles": inputs.styles, "grid": inputs.grid}, cache)
    return inputs
