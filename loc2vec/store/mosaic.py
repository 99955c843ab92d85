"""The mosaic store (Zarr v3): ``mosaic`` uint8 (C, H, W) chunked (C, 256, 256), ``units_done`` uint8.

Each render unit (a square of chunks) is written whole, then marked in ``units_done``, whose chunks
are one unit each, so parallel writers never touch the same chunk. Zarr's local store writes chunk
files atomically (temp file + rename), so an interrupted run leaves whole chunks or none; units not
marked done are rendered again. Chunks that stay all-zero are never written (``write_empty_chunks``
off) and still count as complete through ``units_done``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec, BloscShuffle
from zarr.errors import ContainsArrayError, ContainsGroupError

from loc2vec.errors import InputDataError
from loc2vec.grid import MosaicGrid


@dataclass
class MosaicStore:
    """Handle on a mosaic group."""

    path: str
    group: zarr.Group

    @property
    def mosaic(self) -> zarr.Array:
        return self.group["mosaic"]

    @property
    def units_done(self) -> zarr.Array:
        return self.group["units_done"]

    @property
    def grid(self) -> MosaicGrid:
        return MosaicGrid(**self.group.attrs["grid"])

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def done_mask(self) -> np.ndarray:
        return np.asarray(self.units_done[:], dtype=bool)

    def is_complete(self) -> bool:
        return bool(self.done_mask().all())

    def write_unit(self, unit: tuple[int, int], data: np.ndarray) -> None:
        w = self.grid.unit_window(*unit)
        self.mosaic[:, w.row0 : w.row1, w.col0 : w.col1] = data
        self.units_done[unit[0], unit[1]] = 1

    def read(self) -> np.ndarray:
        return self.mosaic[:]


def create_or_open(path: str | Path, grid: MosaicGrid, channel_names: list[str], attrs: dict) -> MosaicStore:
    """Open the mosaic at ``path``, creating it (idempotently, race-tolerant) when missing."""
    store_path = str(path)
    group = zarr.open_group(store_path, mode="a", zarr_format=3)
    if "grid" not in group.attrs:
        group.attrs.update({**attrs, "grid": grid.to_dict(), "channel_names": channel_names})
    elif group.attrs["grid"] != grid.to_dict() or group.attrs.get("channel_names") != channel_names:
        raise InputDataError(f"mosaic store {store_path} exists with another grid or channel list")
    c = len(channel_names)
    rows, cols = grid.n_units
    for name, kwargs in (
        (
            "mosaic",
            dict(
                shape=(c, grid.height, grid.width),
                chunks=(c, grid.chunk, grid.chunk),
                dtype="uint8",
                fill_value=0,
                compressors=[BloscCodec(cname="zstd", clevel=3, shuffle=BloscShuffle.bitshuffle)],
                dimension_names=("channel", "y", "x"),
            ),
        ),
        ("units_done", dict(shape=(rows, cols), chunks=(1, 1), dtype="uint8", fill_value=0)),
    ):
        if name not in group:
            # another writer may create it first, with the same definition
            with contextlib.suppress(ContainsArrayError, ContainsGroupError):
                group.create_array(name, **kwargs)
    return MosaicStore(store_path, group)


def open_mosaic(path: str | Path) -> MosaicStore:
    try:
        group = zarr.open_group(str(path), mode="r")
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise InputDataError(f"no mosaic store at {path}") from exc
    return MosaicStore(str(path), group)


@dataclass
class MosaicReport:
    """Validation of a mosaic: completeness, value range, per-channel coverage."""

    missing_units: list[tuple[int, int]]
    chunks_written: int
    chunks_total: int
    coverage: dict[str, float]
    max_value: int
    min_value: int
    dtype: str = "uint8"

    @property
    def complete(self) -> bool:
        return not self.missing_units

    @property
    def empty_channels(self) -> list[str]:
        return [name for name, share in self.coverage.items() if share == 0.0]


def inspect_mosaic(store: MosaicStore) -> MosaicReport:
    """Read the mosaic once (chunk by chunk) and report completeness, range and coverage."""
    grid = store.grid
    names = list(store.attrs["channel_names"])
    done = store.done_mask()
    nonzero = np.zeros(len(names), dtype=np.int64)
    lo, hi = 255, 0
    for unit in grid.units():
        w = grid.unit_window(*unit)
        block = store.mosaic[:, w.row0 : w.row1, w.col0 : w.col1]
        nonzero += np.count_nonzero(block.reshape(len(names), -1), axis=1)
        lo, hi = min(lo, int(block.min())), max(hi, int(block.max()))
    pixels = grid.width * grid.height
    n_chunks = int(np.prod(store.mosaic.cdata_shape))
    return MosaicReport(
        missing_units=[tuple(map(int, u)) for u in np.argwhere(~done)],
        chunks_written=int(store.mosaic.nchunks_initialized),
        chunks_total=n_chunks,
        coverage={name: float(nonzero[i]) / pixels for i, name in enumerate(names)},
        max_value=hi,
        min_value=lo,
        dtype=str(store.mosaic.dtype),
    )
