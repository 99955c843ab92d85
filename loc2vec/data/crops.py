"""Cut rotated crops out of the in-memory mosaic at any location and angle.

The mosaic is held channels-last with each pixel's channels packed into one fixed-size record, so a
crop is one gather of ``size²`` records (nearest-neighbour resampling): ~100x cheaper than reading
chunks from Zarr and rotating with scipy. Batches come out channels-last ``(N, S, S, C)``, which
``torch.from_numpy(a).permute(0, 3, 1, 2)`` turns into NCHW in channels_last memory format at no cost.

Edges are explicit: ``edge="zero"`` pads outside the mosaic with zeros (reported per crop by
``valid_fraction``), ``edge="raise"`` refuses crops that leave it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from loc2vec.errors import ConfigError
from loc2vec.render.grid import MosaicGrid, Window
from loc2vec.store.mosaic import open_mosaic

EDGE_MODES = ("zero", "raise")


class CropReader:
    """Crops of a ``(C, H, W)`` uint8 mosaic with georeferencing ``grid`` (window offset optional)."""

    def __init__(self, mosaic: np.ndarray, grid: MosaicGrid, edge: str = "zero", offset=(0, 0)) -> None:
        if edge not in EDGE_MODES:
            raise ConfigError(f"edge must be one of {EDGE_MODES}, got {edge!r}")
        if mosaic.ndim != 3 or mosaic.dtype != np.uint8:
            raise ConfigError(f"mosaic must be uint8 (C, H, W), got {mosaic.dtype} {mosaic.shape}")
        self.grid, self.edge = grid, edge
        self.channels, self.height, self.width = mosaic.shape
        self.row_offset, self.col_offset = offset
        hwc = np.empty((self.height * self.width + 1, self.channels), dtype=np.uint8)
        hwc[:-1] = mosaic.reshape(self.channels, -1).T
        hwc[-1] = 0  # the padding record
        self._records = hwc.view(np.dtype((np.void, self.channels))).reshape(-1)
        self._pad_index = self.height * self.width
        self._offsets: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_store(cls, path: str | Path, edge: str = "zero", window: Window | None = None) -> CropReader:
        store = open_mosaic(path)
        grid = store.grid
        if window is None:
            return cls(store.read(), grid, edge)
        data = store.mosaic[:, window.row0 : window.row1, window.col0 : window.col1]
        return cls(data, grid, edge, offset=(window.row0, window.col0))

    def _grid_offsets(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if size not in self._offsets:
            if size <= 0:
                raise ConfigError(f"crop size must be positive, got {size}")
            r = np.arange(size, dtype=np.float32) - size / 2 + 0.5
            v, u = np.meshgrid(r, r, indexing="ij")
            self._offsets[size] = (u.reshape(-1), v.reshape(-1))
        return self._offsets[size]

    def crops_px(self, cols, rows, size: int, angles=None) -> tuple[np.ndarray, np.ndarray]:
        """Crops centred at mosaic pixel coordinates; returns ``(N, S, S, C)`` uint8 and valid fractions.

        ``angles`` (radians, counter-clockwise on the map) rotate the sampling grid about the centre.
        """
        cols = np.atleast_1d(np.asarray(cols, dtype=np.float32)) - self.col_offset
        rows = np.atleast_1d(np.asarray(rows, dtype=np.float32)) - self.row_offset
        n = cols.shape[0]
        angles = (
            np.zeros(n, np.float32)
            if angles is None
            else np.broadcast_to(np.asarray(angles, np.float32), (n,))
        )
        u, v = self._grid_offsets(size)
        cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
        src_c = np.floor(cols[:, None] + cos * u - sin * v).astype(np.int64)
        src_r = np.floor(rows[:, None] + sin * u + cos * v).astype(np.int64)
        inside = (src_c >= 0) & (src_c < self.width) & (src_r >= 0) & (src_r < self.height)
        valid = inside.mean(axis=1)
        if self.edge == "raise" and not inside.all():
            bad = int(np.flatnonzero(valid < 1)[0])
            raise ConfigError(
                f"crop at pixel ({cols[bad] + self.col_offset:.1f}, {rows[bad] + self.row_offset:.1f}) "
                f"size {size} "
                "leaves the mosaic (edge='raise')"
            )
        index = np.where(inside, src_r * self.width + src_c, self._pad_index)
        out = self._records[index].view(np.uint8).reshape(n, size, size, self.channels)
        return out, valid

    def crops(self, xs, ys, size: int, angles=None) -> tuple[np.ndarray, np.ndarray]:
        """Crops centred at CRS coordinates (metres in the mosaic's CRS)."""
        cols, rows = self.grid.xy_to_pixel(xs, ys)
        return self.crops_px(cols, rows, size, angles)

    def crop(self, x: float, y: float, size: int, angle: float = 0.0) -> np.ndarray:
        """One ``(C, size, size)`` crop centred at CRS ``(x, y)``, rotated by ``angle`` radians."""
        batch, _ = self.crops([x], [y], size, [angle])
        return np.ascontiguousarray(batch[0].transpose(2, 0, 1))
