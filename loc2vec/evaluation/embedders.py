"""Embedders scored by the protocol: the trained encoder and the baselines computed in the same run.

Baselines: ``channel_stats`` (per-channel mean coverage and share of drawn pixels of the same crop the
model sees), ``untrained`` (the same architecture with its initial, seeded weights), ``coordinates``
(the point's metric x, y in km) and ``random`` (seeded Gaussian vectors: the floor a metric must lift off).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from loc2vec.data.crops import CropGeometry

Embedder = Callable[[np.ndarray], np.ndarray]


def crops_at(reader: CropGeometry, xy: np.ndarray, crop_px: int) -> np.ndarray:
    """North-up crops (N, S, S, C) centred at CRS points."""
    cols, rows = reader.grid.xy_to_pixel(xy[:, 0], xy[:, 1])
    crops, _ = reader.crops_px(cols, rows, crop_px)
    return crops


def in_locality_order(
    reader: CropGeometry, xy: np.ndarray, per_point: Callable[[np.ndarray], np.ndarray]
) -> np.ndarray:
    """``per_point(xy)`` (one output row per point) computed over the points in the reader's locality order
    (tile by tile for an out-of-core reader, so each chunk is read about once), rows returned in ``xy``'s order."""
    order = reader.locality_order(*reader.grid.xy_to_pixel(xy[:, 0], xy[:, 1])) if len(xy) else None
    if order is None:
        return per_point(xy)
    out = per_point(xy[order])
    result = np.empty_like(out)
    result[order] = out
    return result


def encode(model: torch.nn.Module, reader: CropGeometry, xy: np.ndarray, crop_px: int, batch: int = 256) -> np.ndarray:
    """Embeddings of the model for CRS points (north-up crops, CPU or the model's device): the encoder's
    ``embed`` representation when it has one, else its output."""
    return in_locality_order(reader, np.asarray(xy), lambda part: _encode(model, reader, part, crop_px, batch))


def crops_tensor(reader: CropGeometry, xy: np.ndarray, crop_px: int, device: torch.device) -> torch.Tensor:
    """The crops at CRS points as a model's uint8 input batch (N, C, S, S), channels-last on ``device``."""
    crops = crops_at(reader, xy, crop_px)
    return torch.from_numpy(crops).permute(0, 3, 1, 2).to(device).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def _encode(model: torch.nn.Module, reader: CropGeometry, xy: np.ndarray, crop_px: int, batch: int) -> np.ndarray:
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(xy), batch):
        x = crops_tensor(reader, xy[start : start + batch], crop_px, device)
        vectors = model.embed(x) if hasattr(model, "embed") else model(x)
        out.append(vectors.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def channel_stats(reader: CropGeometry, xy: np.ndarray, crop_px: int, batch: int = 512) -> np.ndarray:
    return in_locality_order(reader, np.asarray(xy), lambda part: _channel_stats(reader, part, crop_px, batch))


def _channel_stats(reader: CropGeometry, xy: np.ndarray, crop_px: int, batch: int) -> np.ndarray:
    out = []
    for start in range(0, len(xy), batch):
        crops = crops_at(reader, xy[start : start + batch], crop_px).reshape(-1, crop_px * crop_px, reader.channels)
        out.append(np.concatenate([crops.mean(axis=1) / 255.0, (crops > 0).mean(axis=1)], axis=1))
    return np.concatenate(out).astype(np.float32)


def coordinates(xy: np.ndarray) -> np.ndarray:
    return (np.asarray(xy, dtype=np.float64) / 1000.0).astype(np.float32)


def random_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return np.random.default_rng([seed, 1729]).standard_normal((n, dim)).astype(np.float32)
