"""A new mosaic version from the previous one: re-render only the units a diff touched, share the rest.

Copy-on-write on a local store: the new version is staged in ``.<version>.zarr.staging`` beside the others
as a tree of hard links to the previous version's files, the touched units are rendered into it, and it is
renamed into place (``<version>.zarr``) only when complete. Sharing by hard links is safe with Zarr's local
store: it never writes into an existing file, it writes a temporary file and renames it over the name
(``zarr.storage.LocalStore`` via ``_atomic_write``), and deletes by unlinking the name; so a rendered unit
gets new inodes in the new version while the previous version keeps its own, byte for byte. Where links
are impossible (another file system) files are copied. Pruning an old version (``store.retention``)
removes its names only; the data shared with newer versions stays.

The new version's name is ``mosaic_version`` of the updated feature layers, as a full render gives, and
its chunk files are byte-identical to a full render's (tested): a unit's pixels depend only on the
features within Mapnik's buffer around it, which the footprint's margin covers.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loc2vec.grid import MosaicGrid, Window
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.render.mosaic import (
    MosaicManifest,
    MosaicSpec,
    mosaic_version,
    plan_grid,
    render_mosaic,
    renderer_for,
    store_attrs,
)
from loc2vec.render.styles import style_hash
from loc2vec.store.mosaic import MosaicStore, create_or_open, open_mosaic

STAGING = ".staging"


@dataclass(frozen=True)
class MosaicRefresh:
    """What ``refresh_mosaic`` did: the new version, which units it rendered and which pixels changed."""

    manifest: MosaicManifest
    previous_path: str
    rendered_units: list[tuple[int, int]]
    shared_units: int  # units taken over from the previous version without rendering
    full_render: bool  # the diff touched every unit (or the grid changed): rendered as a new mosaic
    changed: list[Window]  # bounding boxes (one per chunk at most) of the pixels that differ from the previous
    seconds: float


def _link_tree(src: Path, dst: Path) -> None:
    def link(a: str, b: str) -> None:
        try:
            os.link(a, b)
        except OSError:
            shutil.copy2(a, b)

    shutil.copytree(src, dst, copy_function=link)


def changed_windows(old: MosaicStore, new: MosaicStore, units: list[tuple[int, int]]) -> list[Window]:
    """Per chunk of ``units``, the bounding box of the pixels (any channel) that differ between two versions."""
    grid = new.grid
    out = []
    for unit in units:
        w = grid.unit_window(*unit)
        a = old.mosaic[:, w.row0 : w.row1, w.col0 : w.col1]
        b = new.mosaic[:, w.row0 : w.row1, w.col0 : w.col1]
        diff = np.any(a != b, axis=0)
        for r0 in range(0, diff.shape[0], grid.chunk):
            for c0 in range(0, diff.shape[1], grid.chunk):
                part = diff[r0 : r0 + grid.chunk, c0 : c0 + grid.chunk]
                if not part.any():
                    continue
                rows, cols = np.flatnonzero(part.any(axis=1)), np.flatnonzero(part.any(axis=0))
                out.append(
                    Window(
                        w.row0 + r0 + int(rows[0]),
                        w.row0 + r0 + int(rows[-1]) + 1,
                        w.col0 + c0 + int(cols[0]),
                        w.col0 + c0 + int(cols[-1]) + 1,
                    )
                )
    return out


def _whole(grid: MosaicGrid) -> list[Window]:
    return [Window(0, grid.height, 0, grid.width)]


def refresh_mosaic(
    previous: MosaicManifest,
    features: FeaturesManifest,
    spec: MosaicSpec,
    units: list[tuple[int, int]],
    out_root: str | Path,
) -> MosaicRefresh:
    """The mosaic of ``features`` (the feature layers after a diff) as a new version under ``out_root``, made
    from ``previous`` by re-rendering ``units`` (the diff's footprint) and sharing every other unit.

    Degrades to a full render when ``units`` covers the whole grid or the grid or styles changed. Idempotent:
    a version already in place is returned as it is; a staging directory left by a killed run is removed.
    The previous version is never written to."""
    started = time.perf_counter()
    schema = features.schema()
    grid = plan_grid(features, spec)
    styles = style_hash(schema, grid.resolution, f"epsg:{grid.crs_epsg}")
    version = mosaic_version(features, grid, styles)
    root = Path(out_root)
    target = root / f"{version}.zarr"
    old = open_mosaic(previous.path)
    same_layout = old.grid == grid and list(old.attrs["channel_names"]) == schema.names
    same_layout = same_layout and old.attrs.get("style_hash") == styles
    todo = sorted(set(map(tuple, units)))
    staging = root / f".{version}.zarr{STAGING}"
    if staging.exists():
        shutil.rmtree(staging)

    if not same_layout or len(todo) == len(grid.units()):
        manifest = render_mosaic(features, spec, root)
        changed = changed_windows(old, open_mosaic(manifest.path), grid.units()) if same_layout else _whole(grid)
        return MosaicRefresh(manifest, previous.path, grid.units(), 0, True, changed, time.perf_counter() - started)

    if not target.exists():
        root.mkdir(parents=True, exist_ok=True)
        _link_tree(Path(previous.path), staging)
        store = create_or_open(staging, grid, schema.names, attrs={})
        store.group.attrs.update(store_attrs(features, grid, styles, version))
        if todo:
            renderer = renderer_for(features, grid, todo)
            for unit in todo:
                store.write_unit(unit, renderer.render(grid.unit_window(*unit)))
        try:
            os.rename(staging, target)
        except OSError:  # another run published the same version first: same content
            shutil.rmtree(staging, ignore_errors=True)
    new = open_mosaic(target)
    if not new.is_complete():  # left by a full render that was killed: finish it
        render_mosaic(features, spec, root)
    manifest = MosaicManifest(
        path=str(target),
        version=version,
        grid=grid.to_dict(),
        channel_names=schema.names,
        block=None,
        rendered_units=len(todo),
        skipped_units=len(grid.units()) - len(todo),
        seconds=time.perf_counter() - started,
        features_version=features.version,
        osm_sha256=features.osm_sha256,
        osm_sequence=features.osm_sequence,
        osm_timestamp=features.osm_timestamp,
        style_hash=styles,
    )
    changed = changed_windows(old, new, todo)
    return MosaicRefresh(
        manifest,
        previous.path,
        todo,
        len(grid.units()) - len(todo),
        False,
        changed,
        time.perf_counter() - started,
    )
