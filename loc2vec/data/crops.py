"""Cut rotated crops out of the in-memory mosaic at any location and angle.

The mosaic is held channels-last with each pixel's channels packed into one fixed-size record, so a
crop is one gather of ``size²`` records (nearest-neighbour resampling): ~40x cheaper than reading
chunks from Zarr and rotating with scipy. Batches come out channels-last ``(N, S, S, C)``, which
``torch.from_numpy(a).permute(0, 3, 1, 2)`` turns into NCHW in channels_last memory format at no cost.

Edges are explicit: ``edge="zero"`` pads outside the mosaic with zeros (reported per crop by
``valid_fraction``), ``edge="raise"`` refuses crops that leave it.

``CropGeometry`` holds what every reader shares (the sampling grid, edges, CRS helpers); ``CropReader``
gathers from the mosaic in memory, ``loc2vec.data.chunked.ChunkedCropReader`` from a bounded chunk cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from loc2vec.errors import ConfigError
from loc2vec.grid import MosaicGrid, Window
from loc2vec.store.mosaic import open_mosaic

EDGE_MODES = ("zero", "raise")
STAGED_MIN_SIZE = 64  # rotated crops at least this large are gathered through a cached bounding box


class Sampling(NamedTuple):
    """Where a batch of crops samples the mosaic: ``src_c``/``src_r`` (N, S*S) source pixels, the sampling
    grid's corners (N, 4), ``whole`` (N,) crops wholly inside, ``partial`` the others' indices with
    ``inside`` (len(partial), S*S) their in-mosaic pixels, ``valid`` (N,) fractions."""

    src_c: np.ndarray
    src_r: np.ndarray
    corner_c: np.ndarray
    corner_r: np.ndarray
    whole: np.ndarray
    partial: np.ndarray
    inside: np.ndarray
    valid: np.ndarray
    rotated: bool


class CropGeometry:
    """What the crop readers share: the rotated nearest-neighbour sampling grid and the edge rule.

    A subclass sets ``grid``, ``edge``, ``channels``, ``height``, ``width``, ``channel_names``, the offsets
    of a window and ``_offsets = {}``, and implements ``crops_px`` from ``_sample``.
    """

    grid: MosaicGrid
    edge: str
    channels: int
    height: int
    width: int
    channel_names: list[str]
    row_offset: int = 0
    col_offset: int = 0
    _offsets: dict[int, tuple[np.ndarray, np.ndarray]]

    def crops_px(self, cols, rows, size: int, angles=None) -> tuple[np.ndarray, np.ndarray]:
        """Crops centred at mosaic pixel coordinates; returns ``(N, S, S, C)`` uint8 and valid fractions."""
        raise NotImplementedError

    def locality_order(self, cols, rows) -> np.ndarray | None:
        """An order of crop centres that reads the mosaic with locality; None: any order is as fast."""
        return None

    def _grid_offsets(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        if size not in self._offsets:
            if size <= 0:
                raise ConfigError(f"crop size must be positive, got {size}")
            r = np.arange(size, dtype=np.float32) - size / 2 + 0.5
            v, u = np.meshgrid(r, r, indexing="ij")
            self._offsets[size] = (u.reshape(-1), v.reshape(-1))
        return self._offsets[size]

    def _corners(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The sampling grid's four corner offsets (u, v), as in ``_grid_offsets``."""
        u, _ = self._grid_offsets(size)
        lo, hi = u[0], u[-1]
        return np.array([lo, hi, lo, hi], np.float32), np.array([lo, lo, hi, hi], np.float32)

    def _sample(self, cols, rows, size: int, angles=None) -> Sampling:
        """Source pixel of every crop pixel (nearest neighbour), which crops lie wholly inside, valid fractions.

        ``angles`` (radians, counter-clockwise on the map) rotate the sampling grid about the centre.
        """
        cols = np.atleast_1d(np.asarray(cols, dtype=np.float32)) - self.col_offset
        rows = np.atleast_1d(np.asarray(rows, dtype=np.float32)) - self.row_offset
        n = cols.shape[0]
        rotated = angles is not None
        angles = np.zeros(n, np.float32) if angles is None else np.broadcast_to(np.asarray(angles, np.float32), (n,))
        u, v = self._grid_offsets(size)
        cos, sin = np.cos(angles)[:, None], np.sin(angles)[:, None]
        c0, r0 = cols[:, None], rows[:, None]
        # Which crops lie wholly inside: the source coordinates below are monotone in u and in v (each
        # float32 step rounds monotonically), so their extremes are at the grid's corners.
        cu, cv = self._corners(size)
        corner_c = np.floor(c0 + cos * cu - sin * cv)
        corner_r = np.floor(r0 + sin * cu + cos * cv)
        whole = (
            (corner_c.min(axis=1) >= 0)
            & (corner_c.max(axis=1) < self.width)
            & (corner_r.min(axis=1) >= 0)
            & (corner_r.max(axis=1) < self.height)
        )
        partial = np.flatnonzero(~whole)
        if self.edge == "raise" and partial.size:
            bad = int(partial[0])
            raise ConfigError(
                f"crop at pixel ({cols[bad] + self.col_offset:.1f}, {rows[bad] + self.row_offset:.1f}) "
                f"size {size} "
                "leaves the mosaic (edge='raise')"
            )
        # int32 index math when every value fits (same results as int64), else int64
        small = (
            self.height * self.width < 2**31 - 1
            and size < 2**20
            and bool(np.all(np.abs(corner_c) < 2**30))
            and bool(np.all(np.abs(corner_r) < 2**30))
        )
        itype = np.int32 if small else np.int64
        # the same float32 operations as ``floor(c + cos*u - sin*v)``, ``floor(r + sin*u + cos*v)``
        a = np.multiply(cos, u)
        a += c0
        b = np.multiply(sin, v)
        a -= b
        np.floor(a, out=a)
        _outside_as_minus_one(a, partial, self.width)
        src_c = a.astype(itype)
        np.multiply(sin, u, out=b)
        b += r0
        np.multiply(cos, v, out=a)
        b += a
        np.floor(b, out=b)
        _outside_as_minus_one(b, partial, self.height)
        src_r = b.astype(itype)
        valid = np.ones(n, dtype=np.float64)
        inside = np.zeros((0, size * size), dtype=bool)
        if partial.size:
            inside = (src_c[partial] >= 0) & (src_r[partial] >= 0)  # what lies outside is -1 by now
            valid[partial] = inside.mean(axis=1)
        return Sampling(src_c, src_r, corner_c, corner_r, whole, partial, inside, valid, rotated)

    def crops(self, xs, ys, size: int, angles=None) -> tuple[np.ndarray, np.ndarray]:
        """Crops centred at CRS coordinates (metres in the mosaic's CRS)."""
        cols, rows = self.grid.xy_to_pixel(xs, ys)
        return self.crops_px(cols, rows, size, angles)

    def crop(self, x: float, y: float, size: int, angle: float = 0.0) -> np.ndarray:
        """One ``(C, size, size)`` crop centred at CRS ``(x, y)``, rotated by ``angle`` radians."""
        batch, _ = self.crops([x], [y], size, [angle])
        return np.ascontiguousarray(batch[0].transpose(2, 0, 1))


def _outside_as_minus_one(coords: np.ndarray, crops: np.ndarray, limit: int) -> None:
    """Source coordinates of the partly outside ``crops`` that lie outside ``[0, limit)`` (NaN and infinite
    ones too) become -1, so the integer cast that follows is defined on every platform."""
    if crops.size:
        part = coords[crops]
        part[~((part >= 0) & (part < limit))] = -1
        coords[crops] = part


class CropReader(CropGeometry):
    """Crops of a ``(C, H, W)`` uint8 mosaic held in memory, with georeferencing ``grid`` (window offset
    optional)."""

    def __init__(
        self,
        mosaic: np.ndarray,
        grid: MosaicGrid,
        edge: str = "zero",
        offset=(0, 0),
        channel_names: list[str] | None = None,
    ) -> None:
        if edge not in EDGE_MODES:
            raise ConfigError(f"edge must be one of {EDGE_MODES}, got {edge!r}")
        if mosaic.ndim != 3 or mosaic.dtype != np.uint8:
            raise ConfigError(f"mosaic must be uint8 (C, H, W), got {mosaic.dtype} {mosaic.shape}")
        self.grid, self.edge = grid, edge
        self.channels, self.height, self.width = mosaic.shape
        self.row_offset, self.col_offset = offset
        self.channel_names = list(channel_names or [f"c{i}" for i in range(self.channels)])
        hwc = np.empty((self.height * self.width + 1, self.channels), dtype=np.uint8)
        hwc[:-1] = mosaic.reshape(self.channels, -1).T
        hwc[-1] = 0  # the padding record
        self._records = hwc.view(np.dtype((np.void, self.channels))).reshape(-1)
        self._rows = hwc[:-1].reshape(self.height, self.width * self.channels)  # pixel rows, as bytes
        self._pad_index = self.height * self.width
        self._offsets: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def from_store(cls, path: str | Path, edge: str = "zero", window: Window | None = None) -> CropReader:
        store = open_mosaic(path)
        grid, names = store.grid, list(store.attrs["channel_names"])
        if window is None:
            return cls(store.read(), grid, edge, channel_names=names)
        data = store.mosaic[:, window.row0 : window.row1, window.col0 : window.col1]
        return cls(data, grid, edge, offset=(window.row0, window.col0), channel_names=names)

    def crops_px(self, cols, rows, size: int, angles=None) -> tuple[np.ndarray, np.ndarray]:
        """Crops centred at mosaic pixel coordinates; returns ``(N, S, S, C)`` uint8 and valid fractions.

        ``angles`` (radians, counter-clockwise on the map) rotate the sampling grid about the centre.
        """
        s = self._sample(cols, rows, size, angles)
        src_c, src_r, partial, inside = s.src_c, s.src_r, s.partial, s.inside
        n = len(s.valid)
        records = np.empty((n, size * size), dtype=self._records.dtype)
        if s.rotated and size >= STAGED_MIN_SIZE and partial.size < n:
            whole_crops = np.flatnonzero(s.whole)
            self._gather_staged(records, whole_crops, src_c, src_r, s.corner_c, s.corner_r)
            direct = partial
        else:
            direct = None  # every crop
        if direct is None or direct.size:
            index = src_r if direct is None else src_r[direct]
            index *= self.width
            index += src_c if direct is None else src_c[direct]
            if partial.size:
                mask_rows = partial if direct is None else slice(None)
                index[mask_rows] = np.where(inside, index[mask_rows], self._pad_index)
            # mode="clip" is not buffered (every index is in range), unlike the default mode
            if direct is None:
                np.take(self._records, index.reshape(-1), out=records.reshape(-1), mode="clip")
            else:
                records[direct] = np.take(self._records, index, mode="clip")
        return records.view(np.uint8).reshape(n, size, size, self.channels), s.valid

    def _gather_staged(self, records, crops, src_c, src_r, corner_c, corner_r) -> None:
        """Gather crops lying wholly inside: copy each one's bounding box (row runs, cache friendly), then
        gather from that small copy, which stays in cache (rotated crops jump across rows)."""
        lo_c = corner_c[crops].min(axis=1).astype(np.int64)
        lo_r = corner_r[crops].min(axis=1).astype(np.int64)
        hi_c = corner_c[crops].max(axis=1).astype(np.int64)
        hi_r = corner_r[crops].max(axis=1).astype(np.int64)
        stage_w = int((hi_c - lo_c).max()) + 1
        stage_h = int((hi_r - lo_r).max()) + 1
        local = src_r[crops]
        local -= lo_r[:, None].astype(local.dtype)
        local *= stage_w
        local += src_c[crops]
        local -= lo_c[:, None].astype(local.dtype)
        stage = np.empty(stage_h * stage_w, dtype=self._records.dtype)
        stage_rows = stage.view(np.uint8).reshape(stage_h, stage_w * self.channels)
        c = self.channels
        for j, k in enumerate(crops.tolist()):
            r0, c0 = int(lo_r[j]), int(lo_c[j])
            h, w = int(hi_r[j]) - r0 + 1, int(hi_c[j]) - c0 + 1
            stage_rows[:h, : w * c] = self._rows[r0 : r0 + h, c0 * c : (c0 + w) * c]
            np.take(stage, local[j], out=records[k], mode="clip")
