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

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import shapely

from loc2vec.geo import to_crs_transformer
from loc2vec.grid import MosaicGrid, block_keys
from loc2vec.io import write_json
from loc2vec.osm.changes import style_margin_m
from loc2vec.osm.layers import FeaturesManifest

DIGEST_BYTES = 8
BATCH_ROWS = 100_000  # feature rows read at a time
INPUTS_FORMAT = 2


def unit_key(unit: tuple[int, int]) -> str:
    return f"{unit[0]},{unit[1]}"


def render_reach_m(features: FeaturesManifest, grid: MosaicGrid) -> float:
    """How far beyond a unit's window a feature's drawing can reach into it (half the widest stroke or the
    widest point disc, plus antialiasing: :func:`loc2vec.osm.changes.style_margin_m`)."""
    return style_margin_m(features.schema(), grid.resolution)


def _row_digests(attrs: pd.DataFrame, wkb: np.ndarray) -> np.ndarray:
    """One 64-bit digest per row from every column: the attributes and the geometry's stored WKB."""
    values = pd.util.hash_pandas_object(attrs, index=False).to_numpy()
    geom = np.array(
        [int.from_bytes(hashlib.blake2b(b, digest_size=DIGEST_BYTES).digest(), "little") for b in wkb],
        dtype=np.uint64,
    )
    return values ^ (geom * np.uint64(0x9E3779B97F4A7C15))


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


def compute_render_inputs(
    features: FeaturesManifest, grid: MosaicGrid, styles: str, batch_rows: int = BATCH_ROWS
) -> RenderInputs:
    """Digest, for each unit of ``grid``, the feature rows whose geometry reaches it, in the layers' order.
    The GeoParquet is read ``batch_rows`` rows at a time: memory does not grow with the region."""
    reach = render_reach_m(features, grid)
    units = grid.units()
    boxes = []
    for unit in units:
        x0, y0, x1, y1 = grid.window_bounds(grid.unit_window(*unit))
        boxes.append(shapely.box(x0 - reach, y0 - reach, x1 + reach, y1 + reach))
    tree = shapely.STRtree(boxes)
    to_grid = to_crs_transformer(grid.crs)
    hashers = [hashlib.blake2b(digest_size=DIGEST_BYTES) for _ in units]
    counts = np.zeros(len(units), dtype=np.int64)
    for batch in pq.ParquetFile(features.path).iter_batches(batch_size=batch_rows):
        frame = batch.to_pandas()
        wkb = frame.pop("geometry").to_numpy()
        frame = frame.drop(columns=[c for c in ("bbox",) if c in frame.columns])
        rows = _row_digests(frame, wkb)
        geoms = shapely.transform(
            shapely.from_wkb(wkb), lambda xy: np.column_stack(to_grid.transform(xy[:, 0], xy[:, 1]))
        )
        hit_rows, hit_units = tree.query(geoms, predicate="intersects")
        order = np.lexsort((hit_rows, hit_units))
        hit_rows, hit_units = hit_rows[order], hit_units[order]
        starts = np.flatnonzero(np.r_[True, hit_units[1:] != hit_units[:-1]]) if len(hit_units) else []
        for k, start in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(hit_units)
            unit = int(hit_units[start])
            hashers[unit].update(rows[hit_rows[start:end]].tobytes())
            counts[unit] += end - start
    digests = {}
    for unit, hasher, n in zip(units, hashers, counts, strict=True):
        hasher.update(int(n).to_bytes(8, "little"))
        digests[unit_key(unit)] = hasher.hexdigest()
    return RenderInputs(digests, styles, grid.to_dict())


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
