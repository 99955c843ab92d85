"""Chunk-aware anchor order: neighbourhoods in a seeded order, shuffled together a few at a time.

Drawing anchors uniformly over a region far larger than the chunk cache makes nearly every crop a cache
miss. Here the anchors are grouped into square neighbourhoods of ``cell_px`` pixels (a few Zarr chunks),
the neighbourhoods are visited in a seeded random order, and the anchors of every ``mix`` consecutive
neighbourhoods are shuffled together (a shuffle buffer that holds whole neighbourhoods, as WebDataset
shuffles samples across the shards it has open). Batches then mix ``mix`` places of the region, and the
cache only needs the chunks of ``mix`` neighbourhoods (with their borders, for crops and positives) at a
time: a bound that depends on ``cell_px`` and ``mix``, not on the region's size or on how dense the
anchors are. (A buffer of single anchors with random replacement keeps stragglers from neighbourhoods
long gone, so its working set is unbounded; measured in ``docs/benchmarks.md``, "Scale".)

The stream is endless: pass after pass, each a permutation of the anchors (each anchor exactly once), and
epoch ``e`` takes the next ``steps * batch_size`` draws, so epochs go on where the last one stopped. The
order depends only on the seed and the anchors, so a resumed run draws the same batches; it only reorders
the train anchors, so the spatial split is untouched.
"""

from __future__ import annotations

import numpy as np

from loc2vec.errors import ConfigError

ORDER_STREAM = 7_368_787  # the epoch plan's rng stream, apart from the per-batch draws [seed, epoch, step]


def neighbourhoods(cols: np.ndarray, rows: np.ndarray, cell_px: int) -> np.ndarray:
    """Each anchor's neighbourhood id (0..K-1): its ``cell_px`` square of the mosaic's pixel grid."""
    cell_r = np.floor(np.asarray(rows, dtype=np.float64) / cell_px).astype(np.int64)
    cell_c = np.floor(np.asarray(cols, dtype=np.float64) / cell_px).astype(np.int64)
    _, cell = np.unique(np.stack([cell_r, cell_c], axis=1), axis=0, return_inverse=True)
    return cell.reshape(-1)


def neighbourhood_pass(cell: np.ndarray, mix: int, rng: np.random.Generator) -> np.ndarray:
    """One permutation of the anchors: neighbourhoods in random order, ``mix`` at a time shuffled together."""
    rank = rng.permutation(int(cell.max()) + 1 if cell.size else 0)
    return np.lexsort((rng.random(cell.size), rank[cell] // mix))


def neighbourhood_order(
    cols: np.ndarray, rows: np.ndarray, start: int, count: int, cell_px: int, mix: int, seed: int
) -> np.ndarray:
    """Draws ``start`` to ``start + count`` of the endless seeded stream of passes over the anchors (indices into
    ``cols``/``rows``, their mosaic pixel coordinates); see the module's docstring. Pass ``p`` depends only on
    ``(seed, p)``, so epoch ``e`` of ``count`` draws is ``start = e * count`` and the epochs go on where the
    last one stopped: every anchor is drawn once per pass."""
    n = len(cols)
    if n == 0:
        raise ConfigError("no anchors to sample")
    if cell_px < 1 or mix < 1:
        raise ConfigError(f"neighbourhood cell_px and mix must be >= 1, got {cell_px} and {mix}")
    if start < 0 or count < 0:
        raise ConfigError(f"start and count must be >= 0, got {start} and {count}")
    cell = neighbourhoods(cols, rows, cell_px)
    first, last = start // n, (start + count - 1) // n if count else start // n - 1
    passes = [
        neighbourhood_pass(cell, mix, np.random.default_rng([seed, p, ORDER_STREAM])) for p in range(first, last + 1)
    ]
    stream = np.concatenate(passes) if passes else np.zeros(0, np.int64)
    return stream[start - first * n : start - first * n + count]
