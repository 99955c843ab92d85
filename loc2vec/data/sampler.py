"""Chunk-aware anchor order: neighbourhoods in a seeded order, mixed through a seeded shuffle buffer.

Drawing anchors uniformly over a region far larger than the chunk cache makes nearly every crop a cache
miss. Here the anchors are grouped into square neighbourhoods of ``cell_px`` pixels (a few Zarr chunks),
the neighbourhoods are visited in a seeded random order (the anchors of each one in a seeded random
order), and that stream passes through a shuffle buffer of ``buffer`` anchors from which each draw takes
a random slot (the idea of WebDataset's shard shuffle and TorchGeo's geo samplers). The cache then only
needs the chunks of the neighbourhoods the buffer currently holds, whatever the region's size.

Every pass over the stream is a permutation of the anchors (each anchor exactly once); a long epoch
continues with a new pass. The order depends only on ``(seed, epoch)`` and the anchors, so a resumed run
draws the same batches; it only reorders the train anchors, so the spatial split is untouched.
"""

from __future__ import annotations

import math

import numpy as np

from loc2vec.errors import ConfigError

ORDER_STREAM = 7_368_787  # the epoch plan's rng stream, apart from the per-batch draws [seed, epoch, step]


def neighbourhood_pass(cols: np.ndarray, rows: np.ndarray, cell_px: int, rng: np.random.Generator) -> np.ndarray:
    """One permutation of the anchors: neighbourhoods in random order, each one's anchors in random order."""
    cell_r = np.floor(np.asarray(rows, dtype=np.float64) / cell_px).astype(np.int64)
    cell_c = np.floor(np.asarray(cols, dtype=np.float64) / cell_px).astype(np.int64)
    _, cell = np.unique(np.stack([cell_r, cell_c], axis=1), axis=0, return_inverse=True)
    cell = cell.reshape(-1)
    rank = rng.permutation(int(cell.max()) + 1 if cell.size else 0)
    return np.lexsort((rng.random(cell.size), rank[cell]))


def neighbourhood_order(
    cols: np.ndarray, rows: np.ndarray, count: int, cell_px: int, buffer: int, seed: int, epoch: int
) -> np.ndarray:
    """``count`` anchor indices (into ``cols``/``rows``, the anchors' mosaic pixel coordinates) drawn
    through the shuffle buffer; see the module's docstring."""
    n = len(cols)
    if n == 0:
        raise ConfigError("no anchors to sample")
    if cell_px < 1 or buffer < 1:
        raise ConfigError(f"neighbourhood cell_px and shuffle buffer must be >= 1, got {cell_px} and {buffer}")
    rng = np.random.default_rng([seed, epoch, ORDER_STREAM])
    size = min(buffer, n)
    passes = math.ceil((size + count) / n)
    stream = np.concatenate([neighbourhood_pass(cols, rows, cell_px, rng) for _ in range(passes)])
    slots = stream[:size].copy()
    picks = rng.integers(0, size, count)
    out = np.empty(count, dtype=np.int64)
    for t, j in enumerate(picks.tolist()):  # a sequential buffer: each draw refills its slot from the stream
        out[t] = slots[j]
        slots[j] = stream[size + t]
    return out
