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

import fcntl
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loc2vec.grid import MosaicGrid, Window
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.render.inputs import render_inputs
from loc2vec.render.mosaic import (
    MosaicManifest,
    MosaicSpec,
    mosaic_version,
    plan_grid,
    render_mosaic,
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


def _chunk_file(store: MosaicStore, row: int, col: int) -> Path | None:
    """The file of mosaic chunk (row, col) in a local store with Zarr's default chunk keys, else None."""
    encoding = store.mosaic.metadata.chunk_key_encoding
    if getattr(encoding, "name", "") != "default" or getattr(encoding, "separator", "/") != "/":
        return None
    root = Path(store.path)
    return root / "mosaic" / "c" / "0" / str(row) / str(col) if root.is_dir() else None


def _same_chunk(old: MosaicStore, new: MosaicStore, row: int, col: int) -> bool:
    """Whether two versions hold the same bytes for a chunk (both absent: both all zero), without decoding."""
    a, b = _chunk_file(old, row, col), _chunk_file(new, row, col)
    if a is None or b is None:
        return False
    if a.exists() != b.exists():
        return False
    return not a.exists() or a.stat().st_ino == b.stat().st_ino or a.read_bytes() == b.read_bytes()


def changed_windows(old: MosaicStore, new: MosaicStore, units: list[tuple[int, int]]) -> list[Window]:
    """Per chunk of ``units``, the bounding box of the pixels (any channel) that differ between two versions.
    Chunks whose files hold the same bytes are skipped without decoding."""
    grid = new.grid
    out = []
    for unit in units:
        w = grid.unit_window(*unit)
        for r0 in range(w.row0, w.row1, grid.chunk):
            for c0 in range(w.col0, w.col1, grid.chunk):
                if _same_chunk(old, new, r0 // grid.chunk, c0 // grid.chunk):
                    continue
                r1, c1 = min(r0 + grid.chunk, w.row1), min(c0 + grid.chunk, w.col1)
                diff = np.any(old.mosaic[:, r0:r1, c0:c1] != new.mosaic[:, r0:r1, c0:c1], axis=0)
                if not diff.any():
                    continue
                rows, cols = np.flatnonzero(diff.any(axis=1)), np.flatnonzero(diff.any(axis=0))
                out.append(Window(r0 + int(rows[0]), r0 + int(rows[-1]) + 1, c0 + int(cols[0]), c0 + int(cols[-1]) + 1))
    return out


def _whole(grid: MosaicGrid) -> list[Window]:
    return [Window(0, grid.height, 0, grid.width)]


def _layout_matches(old: MosaicStore, grid: MosaicGrid, names: list[str], styles: str) -> bool:
    return old.grid == grid and list(old.attrs["channel_names"]) == names and old.attrs.get("style_hash") == styles


def share_unchanged_units(
    previous: MosaicManifest | str | Path,
    features: FeaturesManifest,
    spec: MosaicSpec,
    units: list[tuple[int, int]],
    out_root: str | Path,
) -> Path | None:
    """Create the version of ``features`` under ``out_root`` from ``previous``: every file hard-linked, the new
    version's attributes, and ``units`` marked not done, so that ``render_mosaic`` (whole, or per block as the
    render partitions run it) renders exactly those units and skips the rest. Returns its path, or None when
    the grid, channels or styles changed (render the new version in full instead).

    Published atomically (staged in ``.<version>.zarr.staging``, then renamed); a version already in place is
    left as it is, and a staging directory left by a killed run is removed."""
    previous_path = Path(previous.path if isinstance(previous, MosaicManifest) else previous)
    schema = features.schema()
    grid = plan_grid(features, spec)
    styles = style_hash(schema, grid.resolution, f"epsg:{grid.crs_epsg}")
    if not _layout_matches(open_mosaic(previous_path), grid, schema.names, styles):
        return None
    version = mosaic_version(features, grid, styles)
    root = Path(out_root)
    target = root / f"{version}.zarr"
    staging = root / f".{version}.zarr{STAGING}"
    if staging.exists():
        shutil.rmtree(staging)
    if target.exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    _link_tree(previous_path, staging)
    store = create_or_open(staging, grid, schema.names, attrs={})
    store.group.attrs.update(store_attrs(features, grid, styles, version))
    for unit in units:
        store.units_done[unit[0], unit[1]] = 0  # a new file: the previous version's mark stays
    try:
        os.rename(staging, target)
    except OSError:  # another run published the same version first: same content
        shutil.rmtree(staging, ignore_errors=True)
    return target


def refresh_mosaic(
    previous: MosaicManifest,
    features: FeaturesManifest,
    spec: MosaicSpec,
    units: list[tuple[int, int]],
    out_root: str | Path,
) -> MosaicRefresh:
    """The mosaic of ``features`` (the feature layers after a diff) as a new version under ``out_root``, made
    from ``previous`` by re-rendering ``units`` (the diff's footprint) and sharing every other unit
    (``share_unchanged_units``, then ``render_mosaic``).

    Degrades to a full render when ``units`` covers the whole grid or the grid or styles changed. Resumable:
    a run killed midway leaves the previous version as it was and the new one with its unrendered units
    marked not done, which the next call renders. The previous version is never written to."""
    started = time.perf_counter()
    grid = plan_grid(features, spec)
    old = open_mosaic(previous.path)
    todo = sorted({(int(r), int(c)) for r, c in units})
    full = len(todo) == len(grid.units())
    target = None if full else share_unchanged_units(previous, features, spec, todo, out_root)
    manifest = render_mosaic(features, spec, out_root)  # every unit not marked done
    new = open_mosaic(manifest.path)
    if target is None:
        changed = changed_windows(old, new, grid.units()) if old.grid == grid else _whole(grid)
        return MosaicRefresh(manifest, previous.path, grid.units(), 0, True, changed, time.perf_counter() - started)
    return MosaicRefresh(
        manifest,
        previous.path,
        todo,
        len(grid.units()) - len(todo),
        False,
        changed_windows(old, new, todo),
        time.perf_counter() - started,
    )


@dataclass(frozen=True)
class VersionStart:
    """How ``start_version`` began the version of a feature layer: shared from an earlier one or new."""

    path: Path
    shared_from: str | None  # the earlier version whose unchanged units it shares
    changed_units: list[tuple[int, int]]  # units whose render input differs from that version's (to render)
    created: bool  # False: the version was already there


def start_version(
    features: FeaturesManifest, spec: MosaicSpec, out_root: str | Path, previous: str | Path | None
) -> VersionStart:
    """Begin the mosaic version of ``features`` under ``out_root`` from ``previous`` (the current mosaic):
    every unit whose render input (``loc2vec.render.inputs``) is unchanged is shared, the others are left to
    render (whole, or by the render partitions of the touched blocks). Without a usable ``previous`` (none,
    another grid or style, no recorded inputs, or every unit changed) the version starts empty.

    Serialised by a lock file in ``out_root``: render partitions running at once start it once."""
    grid = plan_grid(features, spec)
    schema = features.schema()
    styles = style_hash(schema, grid.resolution, f"epsg:{grid.crs_epsg}")
    version = mosaic_version(features, grid, styles)
    root = Path(out_root)
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"{version}.zarr"
    inputs = render_inputs(features, grid, styles)
    with open(root / ".start.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return VersionStart(target, None, [], False)
        old = open_mosaic(previous) if previous is not None and Path(previous).is_dir() else None
        recorded = old.attrs.get("render_inputs") if old is not None else None
        changed = inputs.changed_units(recorded if old is not None and old.grid == grid else None)
        if old is None or recorded is None or len(changed) == len(grid.units()):
            return VersionStart(target, None, grid.units(), False)
        shared = share_unchanged_units(Path(old.path), features, spec, changed, root)
        if shared is None:  # channels or styles changed
            return VersionStart(target, None, grid.units(), False)
        return VersionStart(shared, str(old.path), changed, True)
