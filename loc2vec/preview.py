"""Pictures of the mosaic: per-channel panels of crops and a false-colour composite of the region."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image, ImageDraw

# One colour per channel (RGB), drawn in channel order so later channels sit on top.
PALETTE = np.array(
    [
        [255, 80, 40],
        [250, 200, 60],
        [200, 140, 255],
        [120, 120, 120],
        [230, 60, 90],
        [40, 120, 255],
        [60, 200, 80],
        [200, 170, 120],
        [255, 255, 255],
        [255, 120, 220],
        [0, 220, 220],
        [160, 90, 30],
    ],
    dtype=np.float32,
)


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def markdown_image(png: bytes, alt: str = "image") -> str:
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})"


def composite(channels: np.ndarray) -> np.ndarray:
    """``(C, H, W)`` uint8 -> ``(H, W, 3)`` false-colour picture (alpha-over in channel order)."""
    out = np.zeros((*channels.shape[1:], 3), dtype=np.float32)
    for index in range(channels.shape[0]):
        alpha = channels[index].astype(np.float32)[..., None] / 255.0
        out = out * (1 - alpha) + PALETTE[index % len(PALETTE)] * alpha
    return out.clip(0, 255).astype(np.uint8)


def channel_panel(crops: np.ndarray, names: list[str], cell: int = 64) -> np.ndarray:
    """``(N, C, S, S)`` crops -> one picture: a row per crop, a column per channel, composite last."""
    n, c = crops.shape[:2]
    gap, header = 2, 14
    width = (c + 1) * (cell + gap)
    height = header + n * (cell + gap)
    canvas = Image.new("RGB", (width, height), (32, 32, 32))
    draw = ImageDraw.Draw(canvas)
    for j, name in enumerate([*names, "composite"]):
        draw.text((j * (cell + gap) + 2, 1), name[:10], fill=(230, 230, 230))
    for i in range(n):
        y = header + i * (cell + gap)
        for j in range(c):
            tile = Image.fromarray(crops[i, j]).resize((cell, cell), Image.NEAREST)
            canvas.paste(tile.convert("RGB"), (j * (cell + gap), y))
        comp = Image.fromarray(composite(crops[i])).resize((cell, cell), Image.NEAREST)
        canvas.paste(comp, (c * (cell + gap), y))
    return np.asarray(canvas)


def overview(store, max_px: int = 1024) -> np.ndarray:
    """A strided ``(C, h, w)`` overview of the whole mosaic, read unit by unit (bounded memory)."""
    grid = store.grid
    step = max(1, int(np.ceil(max(grid.width, grid.height) / max_px)))
    out = np.zeros((store.mosaic.shape[0], -(-grid.height // step), -(-grid.width // step)), np.uint8)
    for unit in grid.units():
        w = grid.unit_window(*unit)
        r0, c0 = -(-w.row0 // step) * step, -(-w.col0 // step) * step
        if r0 >= w.row1 or c0 >= w.col1:
            continue
        part = store.mosaic[:, r0 : w.row1 : step, c0 : w.col1 : step]
        out[:, r0 // step : r0 // step + part.shape[1], c0 // step : c0 // step + part.shape[2]] = part
    return out
