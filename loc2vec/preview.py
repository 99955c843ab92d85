"""Pictures of the mosaic: labelled per-channel panels of crops and a false-colour composite of the region.

The composite is drawn on a light land background; water is blue, and so is open sea, which OSM maps as
a coastline line rather than an area (see :func:`sea_mask`), so the sea does not look like empty land.
"""

from __future__ import annotations

import base64
import functools
import io
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

LAND = np.array([242, 239, 233], dtype=np.float32)  # empty land: the light background of every composite
WATER = np.array([110, 165, 225], dtype=np.float32)

# One colour per channel (RGB), by position in the schema (the default schema's order), readable on LAND.
PALETTE = np.array(
    [
        [230, 110, 40],  # roads_major
        [135, 135, 145],  # roads_minor
        [170, 90, 200],  # paths
        [55, 55, 55],  # railways
        [190, 160, 145],  # buildings
        WATER,  # water
        [140, 200, 120],  # green
        [226, 203, 168],  # landuse
        [215, 45, 45],  # amenities
        [240, 140, 200],  # leisure
        [0, 160, 180],  # transport
        [150, 95, 55],  # power_boundaries
    ],
    dtype=np.float32,
)
# Areas first, then buildings, lines and points, so small features are not hidden under land-use fills.
DRAW_ORDER = [
    "landuse",
    "green",
    "leisure",
    "water",
    "buildings",
    "power_boundaries",
    "railways",
    "paths",
    "roads_minor",
    "roads_major",
    "transport",
    "amenities",
]
LABEL_FONT_PX = 11


def png_bytes(image: np.ndarray, optimize: bool = True) -> bytes:
    """PNG of an ``(H, W[, 3])`` uint8 image; ``optimize=False`` for the many small pictures of a page
    (4-5x faster to write, a few percent larger)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=optimize)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str = "image") -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def channel_color(index: int) -> tuple[int, int, int]:
    r, g, b = PALETTE[index % len(PALETTE)].astype(int).tolist()
    return r, g, b


def _draw_order(names: Sequence[str] | None, n: int) -> list[int]:
    """Channel indices in drawing order: known names by :data:`DRAW_ORDER`, others after, in schema order."""
    if names is None:
        return list(range(n))
    rank = {name: i for i, name in enumerate(DRAW_ORDER)}
    return sorted(range(n), key=lambda i: (rank.get(names[i], len(DRAW_ORDER)), i))


def sea_mask(channels: np.ndarray, water: int, inside: np.ndarray | None = None, min_water_share: float = 0.3):
    """``(H, W)`` bool: empty pixels that are open sea.

    OSM draws the sea only as its coastline (in the water channel). A connected empty region that reaches
    the edge of the region (``inside``: pixels within the rendered region; default all) and whose rim is at
    least ``min_water_share`` water is taken for sea; empty land is rimmed by roads, land use, boundaries.
    """
    from scipy import ndimage

    inside = np.ones(channels.shape[1:], bool) if inside is None else inside
    empty = (channels.max(axis=0) == 0) & inside
    labels, n = ndimage.label(empty)
    is_water = channels[water] > 0
    rim, wet, edge = np.zeros(n + 1), np.zeros(n + 1), np.zeros(n + 1)
    lo, hi, every = slice(None, -1), slice(1, None), slice(None)
    pairs = [((lo, every), (hi, every)), ((hi, every), (lo, every)), ((every, lo), (every, hi))]
    for here, there in [*pairs, ((every, hi), (every, lo))]:
        a = labels[here]
        drawn = (a > 0) & ~empty[there] & inside[there]  # an empty pixel beside a drawn one: its region's rim
        rim += np.bincount(a[drawn], minlength=n + 1)
        wet += np.bincount(a[drawn], weights=is_water[there][drawn], minlength=n + 1)
        edge += np.bincount(a[(a > 0) & ~inside[there]], minlength=n + 1)
    edge[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] += 1
    sea = (edge > 0) & (wet >= min_water_share * np.maximum(rim, 1))
    sea[0] = False
    return sea[labels]


def region_inside(grid, step: int = 1) -> np.ndarray:
    """``(h, w)`` bool over an overview of ``grid`` (``step`` px per pixel): True within the region.

    The region is a lon/lat box whose features are clipped to it; the grid is its envelope in a metric
    CRS, so the box is taken as the largest lon/lat rectangle inside the grid's corners.
    """
    h, w = -(-grid.height // step), -(-grid.width // step)
    lon_c, lat_c = grid.pixel_to_lonlat(
        np.array([0, grid.width, 0, grid.width]), np.array([0, 0, grid.height, grid.height])
    )
    west, east = max(lon_c[0], lon_c[2]), min(lon_c[1], lon_c[3])
    south, north = max(lat_c[2], lat_c[3]), min(lat_c[0], lat_c[1])
    cols, rows = np.meshgrid((np.arange(w) + 0.5) * step, (np.arange(h) + 0.5) * step)
    lon, lat = grid.pixel_to_lonlat(cols, rows)
    pad = step * grid.resolution / 111_000 * 2  # degrees: two overview pixels of tolerance
    return (lon >= west - pad) & (lon <= east + pad) & (lat >= south - pad) & (lat <= north + pad)


def composite(
    channels: np.ndarray, names: Sequence[str] | None = None, sea: bool = True, inside: np.ndarray | None = None
) -> np.ndarray:
    """``(C, H, W)`` uint8 -> ``(H, W, 3)`` false-colour picture on a light land background.

    Channels are alpha-blended in :data:`DRAW_ORDER` when ``names`` are given (else in schema order); with
    a channel named ``water`` and ``sea``, open sea (:func:`sea_mask` within ``inside``) is filled blue.
    """
    open_sea = None
    if names is not None and sea and "water" in names:
        open_sea = sea_mask(channels, list(names).index("water"), inside)
    return _blend(channels, names, open_sea)


def _blend(channels: np.ndarray, names: Sequence[str] | None, open_sea: np.ndarray | None) -> np.ndarray:
    """The composite's pixels: LAND, ``open_sea`` (``(H, W)`` bool or None) blue, channels blended over."""
    out = np.broadcast_to(LAND, (*channels.shape[1:], 3)).copy()
    if open_sea is not None:
        out[open_sea] = WATER
    for index in _draw_order(names, channels.shape[0]):
        alpha = channels[index].astype(np.float32)[..., None] / 255.0
        out = out * (1 - alpha) + PALETTE[index % len(PALETTE)] * alpha
    return out.clip(0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def nearest_indices(size: int, cell: int) -> np.ndarray:
    """The source pixels PIL's NEAREST resize from ``size`` to ``cell`` px samples (its own rounding, read
    off a resized row of pixel indices); read-only, as it is shared."""
    index = Image.fromarray(np.arange(size, dtype=np.int32)[None, :])
    sampled = np.asarray(index.resize((cell, 1), Image.NEAREST))[0].astype(np.intp)
    sampled.setflags(write=False)
    return sampled


def channel_strip(crop: np.ndarray, names: Sequence[str] | None = None, cell: int = 48) -> np.ndarray:
    """``(C, S, S)`` crop -> ``(cell, (C + 1) * cell, 3)``: each channel's tile, then the composite, each
    NEAREST-resized to ``cell`` px. The pixels are sampled first and coloured after (colouring is per
    pixel; open sea is found at full size), which gives the same picture as resizing the coloured tiles."""
    rows, cols = nearest_indices(crop.shape[1], cell), nearest_indices(crop.shape[2], cell)
    alpha = crop[:, rows][:, :, cols].astype(np.float32)[..., None] / 255.0  # (C, cell, cell, 1)
    colours = PALETTE[np.arange(crop.shape[0]) % len(PALETTE)][:, None, None, :]
    tiles = (LAND * (1 - alpha) + colours * alpha).clip(0, 255).astype(np.uint8)
    strip = np.concatenate([tiles, resized_composite(crop, names, cell)[None]])  # (C + 1, cell, cell, 3)
    return strip.transpose(1, 0, 2, 3).reshape(cell, -1, 3)


def resized_composite(crop: np.ndarray, names: Sequence[str] | None, size: int) -> np.ndarray:
    """:func:`composite` of a ``(C, H, W)`` crop NEAREST-resized to ``size`` px, drawn at that size (open sea
    found at full size): the same picture as resizing the full composite, at a fraction of the work."""
    rows, cols = nearest_indices(crop.shape[1], size), nearest_indices(crop.shape[2], size)
    open_sea = None
    if names is not None and "water" in names:
        open_sea = sea_mask(crop, list(names).index("water"))[rows][:, cols]
    return _blend(crop[:, rows][:, :, cols], names, open_sea)


def _wrap(name: str, width: int, font) -> list[str]:
    """``name`` in lines no wider than ``width`` px, broken after ``_``/``-``/space (whole words kept)."""
    words, word = [], ""
    for ch in name:
        word += ch
        if ch in "_- ":
            words.append(word)
            word = ""
    if word:
        words.append(word)
    lines = [""]
    for w in words:
        if lines[-1] and font.getlength(lines[-1] + w) > width:
            lines.append(w)
        else:
            lines[-1] += w
    return lines


def channel_panel(crops: np.ndarray, names: list[str], cell: int = 64, columns: int | None = None) -> np.ndarray:
    """``(N, C, S, S)`` crops -> one labelled picture: per crop, a grid of ``columns`` tiles (each channel
    in its colour, the composite last), every tile's full name under it (wrapped, never cut)."""
    n, c = crops.shape[:2]
    columns = c + 1 if columns is None else max(1, columns)
    font = ImageFont.load_default(size=LABEL_FONT_PX)
    labels = [*names, "composite"]
    width = max(cell, max(int(font.getlength(w)) for name in labels for w in _wrap(name, cell, font)) + 4)
    lines = [_wrap(name, width - 4, font) for name in labels]
    line_px = LABEL_FONT_PX + 3
    label_px = max(len(x) for x in lines) * line_px + 2
    gap = 4
    rows = -(-(c + 1) // columns)
    tile_w, tile_h = width + gap, cell + label_px + gap
    canvas = Image.new("RGB", (columns * tile_w + gap, n * rows * tile_h + (n - 1) * gap + gap), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        strip = channel_strip(crops[i], names, cell)
        for j in range(c + 1):
            x = gap + (j % columns) * tile_w
            y = gap + (i * rows + j // columns) * tile_h + i * gap
            tile = Image.fromarray(strip[:, j * cell : (j + 1) * cell])
            canvas.paste(tile, (x + (width - cell) // 2, y))
            draw.rectangle(
                (x + (width - cell) // 2 - 1, y - 1, x + (width + cell) // 2, y + cell), outline=(160, 160, 160)
            )
            for k, line in enumerate(lines[j]):
                draw.text((x + width / 2, y + cell + 2 + k * line_px), line, fill=(20, 20, 20), font=font, anchor="ma")
    return np.asarray(canvas)


def overview(store, max_px: int = 1024) -> np.ndarray:
    """A ``(C, h, w)`` overview of the whole mosaic, ``step`` x ``step`` pixels max-pooled into one (thin
    lines stay visible), read unit by unit (bounded memory). ``step = ceil(max(H, W) / max_px)``."""
    grid = store.grid
    step = overview_step(grid, max_px)
    c = store.mosaic.shape[0]
    h, w = -(-grid.height // step), -(-grid.width // step)
    out = np.zeros((c, h, w), np.uint8)
    for unit in grid.units():
        win = grid.unit_window(*unit)
        r0, c0 = win.row0 // step, win.col0 // step
        r1, c1 = -(-win.row1 // step), -(-win.col1 // step)
        part = store.mosaic[:, r0 * step : min(r1 * step, grid.height), c0 * step : min(c1 * step, grid.width)]
        padded = np.zeros((c, (r1 - r0) * step, (c1 - c0) * step), np.uint8)
        padded[:, : part.shape[1], : part.shape[2]] = part
        pooled = padded.reshape(c, r1 - r0, step, c1 - c0, step).max(axis=(2, 4))
        np.maximum(out[:, r0:r1, c0:c1], pooled, out=out[:, r0:r1, c0:c1])
    return out


def overview_step(grid, max_px: int = 1024) -> int:
    """Mosaic pixels per overview pixel along each axis."""
    return max(1, int(np.ceil(max(grid.width, grid.height) / max_px)))


def busiest_crops(store_path, n: int = 4, size: int = 128, seed: int = 0, cache_mib: float = 64.0) -> np.ndarray:
    """``(n, C, size, size)`` north-up crops at the ``n`` busiest of 64 seeded candidate locations (previews
    that show something), read through a small chunk cache: only the chunks under the candidates are read,
    whatever the mosaic's size."""
    from loc2vec.data.chunked import ChunkedCropReader

    reader = ChunkedCropReader(store_path, int(cache_mib * 2**20))
    rng = np.random.default_rng(seed)
    cols = rng.uniform(size, max(reader.width - size, size + 1), 64)
    rows = rng.uniform(size, max(reader.height - size, size + 1), 64)
    crops, _ = reader.crops_px(cols, rows, size)
    busiest = np.argsort(-crops.reshape(64, -1).mean(axis=1), kind="stable")[:n]
    return crops[busiest].transpose(0, 3, 1, 2)
