"""The mosaic's pixel grid in a metric CRS: georeferencing, render units and spatial blocks."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np
from pyproj import CRS

from loc2vec.errors import ConfigError
from loc2vec.geo import BBox, from_crs_transformer, to_crs_transformer, utm_crs_for


@dataclass(frozen=True)
class Window:
    """A pixel window ``[row0, row1) x [col0, col1)`` of the mosaic."""

    row0: int
    row1: int
    col0: int
    col1: int

    @property
    def height(self) -> int:
        return self.row1 - self.row0

    @property
    def width(self) -> int:
        return self.col1 - self.col0


@dataclass(frozen=True)
class MosaicGrid:
    """North-up grid: pixel (row, col) covers x from x0 + col*res and y down from y0 - row*res."""

    crs_epsg: int
    x0: float
    y0: float
    resolution: float
    width: int
    height: int
    chunk: int = 256
    unit_chunks: int = 4

    @classmethod
    def from_region(cls, bbox: BBox, resolution: float, chunk: int = 256, unit_chunks: int = 4) -> MosaicGrid:
        """The grid covering ``bbox`` (densified, in its UTM zone), snapped to ``resolution``."""
        if not (isinstance(resolution, int | float) and math.isfinite(resolution) and resolution > 0):
            raise ConfigError(f"resolution must be a positive number of metres per pixel, got {resolution!r}")
        if chunk <= 0 or unit_chunks <= 0:
            raise ConfigError("chunk and unit_chunks must be positive")
        crs = utm_crs_for(bbox)
        t = np.linspace(0.0, 1.0, 33)
        lons = np.concatenate(
            [bbox.min_lon + t * (bbox.max_lon - bbox.min_lon)] * 2
            + [np.full_like(t, bbox.min_lon), np.full_like(t, bbox.max_lon)]
        )
        lats = np.concatenate(
            [np.full_like(t, bbox.min_lat), np.full_like(t, bbox.max_lat)]
            + [bbox.min_lat + t * (bbox.max_lat - bbox.min_lat)] * 2
        )
        xs, ys = to_crs_transformer(crs).transform(lons, lats)
        x0 = math.floor(xs.min() / resolution) * resolution
        y0 = math.ceil(ys.max() / resolution) * resolution
        width = math.ceil((xs.max() - x0) / resolution)
        height = math.ceil((y0 - ys.min()) / resolution)
        if width * height > 4_000_000_000:
            raise ConfigError(
                f"region {bbox} gives a mosaic of {width} x {height} px at {resolution:g} m/px, more than the "
                "limit of 4e9 px: choose a smaller region or a coarser resolution"
            )
        return cls(int(crs.to_epsg()), float(x0), float(y0), float(resolution), width, height, chunk, unit_chunks)

    @cached_property
    def crs(self) -> CRS:
        return CRS.from_epsg(self.crs_epsg)

    @property
    def transform(self) -> tuple[float, float, float, float, float, float]:
        """GDAL-style affine: (x0, res, 0, y0, 0, -res)."""
        return (self.x0, self.resolution, 0.0, self.y0, 0.0, -self.resolution)

    @property
    def unit_px(self) -> int:
        return self.chunk * self.unit_chunks

    @property
    def n_units(self) -> tuple[int, int]:
        """(rows, cols) of render units."""
        return math.ceil(self.height / self.unit_px), math.ceil(self.width / self.unit_px)

    def to_dict(self) -> dict:
        return asdict(self)

    # --- coordinates -------------------------------------------------------------------------------

    def xy_to_pixel(self, x, y):
        """CRS coordinates -> fractional (col, row); pixel centres are at .5."""
        return (np.asarray(x) - self.x0) / self.resolution, (self.y0 - np.asarray(y)) / self.resolution

    def pixel_to_xy(self, col, row):
        return self.x0 + np.asarray(col) * self.resolution, self.y0 - np.asarray(row) * self.resolution

    def lonlat_to_pixel(self, lon, lat):
        x, y = to_crs_transformer(self.crs).transform(lon, lat)
        return self.xy_to_pixel(x, y)

    def pixel_to_lonlat(self, col, row):
        x, y = self.pixel_to_xy(col, row)
        return from_crs_transformer(self.crs).transform(x, y)

    def window_bounds(self, w: Window) -> tuple[float, float, float, float]:
        """(minx, miny, maxx, maxy) in the CRS."""
        minx, maxy = self.pixel_to_xy(w.col0, w.row0)
        maxx, miny = self.pixel_to_xy(w.col1, w.row1)
        return float(minx), float(miny), float(maxx), float(maxy)

    # --- units and blocks ----------------------------------------------------------------------------

    def unit_window(self, unit_row: int, unit_col: int) -> Window:
        u = self.unit_px
        return Window(
            unit_row * u,
            min((unit_row + 1) * u, self.height),
            unit_col * u,
            min((unit_col + 1) * u, self.width),
        )

    def units(self) -> list[tuple[int, int]]:
        rows, cols = self.n_units
        return [(r, c) for r in range(rows) for c in range(cols)]

    def units_of_block(self, block: str, blocks_per_side: int) -> list[tuple[int, int]]:
        """Units in spatial block ``block`` ('block-I-J') of a ``blocks_per_side``² split of the unit grid."""
        i, j = parse_block_key(block, blocks_per_side)
        rows, cols = self.n_units
        r_edges, c_edges = block_edges(rows, blocks_per_side), block_edges(cols, blocks_per_side)
        return [(r, c) for r in range(r_edges[i], r_edges[i + 1]) for c in range(c_edges[j], c_edges[j + 1])]

    def largest_block_units(self, blocks_per_side: int) -> int:
        """The most render units any block of a ``blocks_per_side``² split holds."""
        rows, cols = self.n_units
        height = np.diff(block_edges(rows, blocks_per_side)).max()
        width = np.diff(block_edges(cols, blocks_per_side)).max()
        return int(height * width)

    def blocks_of_units(self, units: list[tuple[int, int]], blocks_per_side: int) -> list[str]:
        """The spatial blocks ('block-I-J', sorted) holding any of ``units``: the render partitions a change
        touches."""
        rows, cols = self.n_units
        r_edges, c_edges = block_edges(rows, blocks_per_side), block_edges(cols, blocks_per_side)
        found = {
            (int(np.searchsorted(r_edges, r, side="right")) - 1, int(np.searchsorted(c_edges, c, side="right")) - 1)
            for r, c in units
        }
        return [f"block-{i}-{j}" for i, j in sorted(found)]


MAX_BLOCKS_PER_SIDE = 16  # 256 render partitions: more gives runs smaller than their start-up cost


def check_blocks_per_side(value: int | str, source: str = "LOC2VEC_RENDER_BLOCKS") -> int:
    """Spatial blocks per side of the region: an integer from 1 to MAX_BLOCKS_PER_SIDE."""
    try:
        blocks = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{source} must be an integer from 1 to {MAX_BLOCKS_PER_SIDE}, got {value!r}") from None
    if not 1 <= blocks <= MAX_BLOCKS_PER_SIDE:
        raise ConfigError(
            f"{source} must be from 1 to {MAX_BLOCKS_PER_SIDE} (at most {MAX_BLOCKS_PER_SIDE**2} render "
            f"partitions), got {blocks}"
        )
    return blocks


def block_edges(count: int, blocks_per_side: int) -> np.ndarray:
    """Where ``count`` units (rows or columns) split into ``blocks_per_side`` blocks: ``blocks_per_side + 1``
    edges, as even as whole units allow."""
    return np.linspace(0, count, blocks_per_side + 1).round().astype(int)


def block_keys(blocks_per_side: int) -> list[str]:
    return [f"block-{i}-{j}" for i in range(blocks_per_side) for j in range(blocks_per_side)]


def parse_block_key(block: str, blocks_per_side: int) -> tuple[int, int]:
    parts = block.split("-")
    if len(parts) != 3 or parts[0] != "block" or not (parts[1].isdigit() and parts[2].isdigit()):
        raise ConfigError(f"bad block key {block!r}; expected 'block-I-J'")
    bi, bj = int(parts[1]), int(parts[2])
    if not (0 <= bi < blocks_per_side and 0 <= bj < blocks_per_side):
        raise ConfigError(f"block {block!r} outside a {blocks_per_side}x{blocks_per_side} split")
    return bi, bj
