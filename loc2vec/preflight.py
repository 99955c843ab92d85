"""Checks before any heavy work: the extract is whole, the region is sane, the disk has room.

Everything here reads only file headers and configuration, so a run that cannot succeed fails in
seconds, before it imports, renders or trains anything (and before it creates anything).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from loc2vec.errors import ConfigError, Loc2VecError
from loc2vec.geo import BBox
from loc2vec.grid import MosaicGrid
from loc2vec.osm.files import check_complete, check_region, header_bounds
from loc2vec.render.mosaic import MosaicSpec

# Sizes of a run's outputs, measured at the defaults on the embedded extract (Monaco, 11.6 x 6.9 km: 57 MB in
# all; mosaic 3.6 MB = 0.034 bytes per pixel and channel (much of it sea), features 4.4 MB, per model:
# model directory 12 MB, MLflow artifacts 6 MB, maps 18 MB, embeddings and index 13 MB) and on central
# Monaco (3.3 x 3.4 km: 42 MB in all, per model 36 MB). Rounded up:
MOSAIC_BYTES_PER_PIXEL_CHANNEL = 0.1  # zstd+bitshuffle Zarr chunks of rendered OSM (dense land: up to ~0.09)
FEATURES_BYTES_PER_PBF_BYTE = 1.5  # GeoParquet layers of a region vs the PBF share they came from
BYTES_PER_MODEL = 40 * 2**20  # checkpoints, weights, MLflow artifacts, maps
BYTES_PER_MODEL_KM2 = 2**19  # embeddings and index grow with the region's area (a point per 100 m)
FIXED_BYTES = 8 * 2**20  # MLflow and Dagster databases, logs
DISK_MARGIN = 1.25


class NotEnoughDisk(Loc2VecError):
    """The data directory's volume has less free space than the run needs."""


@dataclass(frozen=True)
class RunPlan:
    """What a run will produce, known before it starts."""

    region: BBox | None  # None: neither the bbox nor the extract's header says (the importer finds out)
    grid: MosaicGrid | None
    estimated_bytes: int


def check_region_size(grid: MosaicGrid, crop_px: int) -> None:
    """A region must hold at least two crops side by side in each direction."""
    need = 2 * crop_px
    if grid.width < need or grid.height < need:
        metres = need * grid.resolution
        raise ConfigError(
            f"region of {grid.width * grid.resolution:.0f} x {grid.height * grid.resolution:.0f} m is too small: "
            f"it must be at least {metres:.0f} m on each side (two {crop_px}-px crops at {grid.resolution:g} m/px)"
        )


def estimate_output_bytes(
    grid: MosaicGrid | None, n_channels: int, pbf_bytes: float, n_models: int, region_share: float = 1.0
) -> int:
    """A generous estimate of what a run writes into the data directory (``region_share``: the part of
    the extract's area the region covers)."""
    pixels = 0 if grid is None else grid.width * grid.height
    km2 = pixels * (grid.resolution**2 if grid else 0.0) / 1e6
    mosaic = pixels * n_channels * MOSAIC_BYTES_PER_PIXEL_CHANNEL
    features = FEATURES_BYTES_PER_PBF_BYTE * pbf_bytes * min(1.0, region_share)
    models = n_models * (BYTES_PER_MODEL + km2 * BYTES_PER_MODEL_KM2)
    return int(DISK_MARGIN * (mosaic + features + models) + FIXED_BYTES)


def _area(box: BBox) -> float:
    return (box.max_lon - box.min_lon) * (box.max_lat - box.min_lat)


def free_bytes(directory: str | Path) -> int:
    """Free space on the volume that holds ``directory`` (or would hold it, once created)."""
    path = Path(directory).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def check_free_disk(directory: str | Path, needed: int) -> None:
    free = free_bytes(directory)
    if free < needed:
        raise NotEnoughDisk(
            f"not enough free disk for {directory}: the run needs about {needed / 2**20:.0f} MiB, "
            f"the volume has {free / 2**20:.0f} MiB free (free some space or point LOC2VEC_DATA_DIR elsewhere)"
        )


def plan_run(
    pbf_path: str | Path,
    bbox: str | None,
    spec: MosaicSpec,
    n_channels: int,
    crop_px: int,
    data_dir: str | Path,
    n_models: int = 1,
) -> RunPlan:
    """Check the extract, the region and the disk; return what the run will make. Raises on any fault."""
    check_complete(pbf_path)
    region = check_region(pbf_path, bbox)
    extent = header_bounds(pbf_path)
    area = region or extent  # the importer's region: the bbox as given, else the extract's bounds
    if area is not None and spec.region is not None:
        area = spec.region.intersection(area)
    grid = None
    if area is not None:
        grid = MosaicGrid.from_region(area, spec.resolution, spec.chunk, spec.unit_chunks)
        check_region_size(grid, crop_px)
    share = 1.0
    if area is not None and extent is not None and area.intersects(extent):
        share = _area(area.intersection(extent)) / _area(extent)
    needed = estimate_output_bytes(grid, n_channels, Path(pbf_path).stat().st_size, n_models, share)
    check_free_disk(data_dir, needed)
    return RunPlan(area, grid, needed)
