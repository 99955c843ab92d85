"""Triplet batches cut on the fly from the mosaic, with seeded augmentation.

A batch is ``(anchors, positives, locations)``: uint8 crops of shape (B, S, S, C) and the anchors' CRS
coordinates (B, 2). Anchors are drawn uniformly (``sampler="uniform"``) or, for mosaics read out of
core, by neighbourhood through a shuffle buffer (``"neighbourhood"``, :mod:`loc2vec.data.sampler`). Any
other anchor's pair in the batch is a negative for in-batch mining, except those within ``r_neg_m`` (the
loss drops such triplets using ``locations``). A positive is a crop centred
within ``r_pos_m`` of its anchor, or, for a ``context_share`` of the anchors when ``r_context_m`` is
set, within that wider radius (places further apart that should still look alike). Augmentations:
any-angle rotation (independent for anchor and positive), small shifts, flips, channel dropout. Batch
``k`` of epoch ``e`` depends only on ``(seed, e, k)`` (and the anchors), so a resumed run sees exactly the same data.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch

from loc2vec.data.crops import CropGeometry
from loc2vec.data.sampler import neighbourhood_order
from loc2vec.errors import ConfigError

SAMPLERS = ("uniform", "neighbourhood")


@dataclass(frozen=True)
class TripletSpec:
    crop_px: int = 128
    r_pos_m: float = 100.0
    r_neg_m: float = 500.0
    batch_size: int = 64
    max_shift_px: int = 4
    flip: bool = True
    channel_dropout: float = 0.1
    r_context_m: float | None = None
    context_share: float = 0.5
    sampler: str = "uniform"
    neighbourhood_px: int = 1024
    shuffle_neighbourhoods: int = 4

    def __post_init__(self) -> None:
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"sampler must be one of {SAMPLERS}, got {self.sampler!r}")
        if self.neighbourhood_px < 1 or self.shuffle_neighbourhoods < 1:
            raise ConfigError(
                "neighbourhood_px and shuffle_neighbourhoods must be >= 1, "
                f"got {self.neighbourhood_px} and {self.shuffle_neighbourhoods}"
            )
        if self.batch_size < 2:
            raise ConfigError(f"batch_size must be >= 2, got {self.batch_size}")
        if self.crop_px < 8:
            raise ConfigError(f"crop_px must be >= 8, got {self.crop_px}")
        if not 0 <= self.r_pos_m < self.r_neg_m:
            raise ConfigError(f"need 0 <= r_pos_m < r_neg_m, got {self.r_pos_m} and {self.r_neg_m}")
        if not 0 <= self.channel_dropout < 1:
            raise ConfigError(f"channel_dropout must be in [0, 1), got {self.channel_dropout}")
        if self.r_context_m is not None and not self.r_pos_m < self.r_context_m < self.r_neg_m:
            raise ConfigError(f"need r_pos_m < r_context_m < r_neg_m, got {self.r_context_m}")
        if not 0 <= self.context_share <= 1:
            raise ConfigError(f"context_share must be in [0, 1], got {self.context_share}")

    @property
    def max_positive_m(self) -> float:
        """How far from its anchor a positive can be centred."""
        return self.r_pos_m if self.r_context_m is None else self.r_context_m


def _augment_draws(rng: np.random.Generator, n: int, channels: int, spec: TripletSpec):
    """The random draws of ``augment`` for a batch of ``n`` crops, in its order: flip mask, dropped (b, c)."""
    flip = rng.random(n) < 0.5 if spec.flip else None
    drop = None
    if spec.channel_dropout > 0:
        drop = np.nonzero(rng.random((n, channels)) < spec.channel_dropout)
    return flip, drop


def _apply_augment(batch: np.ndarray, flip, drop) -> np.ndarray:
    if flip is not None:
        # mirror whole pixel records (one C-byte item each) rather than single bytes: ~2x faster
        c = batch.shape[-1]
        if batch.flags.c_contiguous and c > 0:
            pixels = batch.view(np.dtype((np.void, c * batch.itemsize))).reshape(batch.shape[:-1])
            pixels[flip] = pixels[flip, :, ::-1]
        else:
            batch[flip] = batch[flip, :, ::-1]
    if drop is not None:
        b, c = drop
        batch[b, :, :, c] = 0
    return batch


def augment(batch: np.ndarray, rng: np.random.Generator, spec: TripletSpec) -> np.ndarray:
    """Flips and channel dropout in place on a (B, S, S, C) batch."""
    return _apply_augment(batch, *_augment_draws(rng, len(batch), batch.shape[-1], spec))


_POOL: tuple[int, ThreadPoolExecutor] | None = None


def _usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _helper_thread() -> ThreadPoolExecutor | None:
    """One helper thread for the main process on a multi-core machine (None in loader workers).

    With ``num_workers=0`` the model's threads sit idle while a batch is cut, so anchors and positives
    are cut in parallel (numpy's gather releases the GIL). Loader workers already overlap with training
    and keep to one thread. The pool is re-created after a fork (threads do not survive it).
    """
    global _POOL
    if torch.utils.data.get_worker_info() is not None or _usable_cpus() < 2:
        return None
    if _POOL is None or _POOL[0] != os.getpid():
        _POOL = (os.getpid(), ThreadPoolExecutor(max_workers=1, thread_name_prefix="triplet-crops"))
    return _POOL[1]


def cut_pairs(
    reader: CropGeometry, xy: np.ndarray, spec: TripletSpec, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Augmented anchor and positive crops (B, S, S, C) at the anchors ``xy`` (CRS metres, one mosaic), every
    random draw taken from ``rng`` in a fixed order (the batch does not depend on how it is computed)."""
    grid = reader.grid
    n = len(xy)
    cols, rows = grid.xy_to_pixel(xy[:, 0], xy[:, 1])
    shift = rng.uniform(-spec.max_shift_px, spec.max_shift_px, (2, n))
    unit_radius = np.sqrt(rng.random(n))
    radius = spec.r_pos_m / grid.resolution * unit_radius
    theta = rng.uniform(0, 2 * np.pi, n)
    angles = rng.uniform(0, 2 * np.pi, (2, n))
    # every draw happens here, in a fixed order, so the batch does not depend on how it is computed
    channels = reader.channels
    aug_a, aug_p = _augment_draws(rng, n, channels, spec), _augment_draws(rng, n, channels, spec)
    if spec.r_context_m is not None:
        wide = rng.random(n) < spec.context_share
        radius[wide] = spec.r_context_m / grid.resolution * unit_radius[wide]

    def anchors() -> np.ndarray:
        crops, _ = reader.crops_px(cols + shift[0], rows + shift[1], spec.crop_px, angles[0])
        return _apply_augment(crops, *aug_a)

    def positives() -> np.ndarray:
        pc, pr = cols + radius * np.cos(theta), rows + radius * np.sin(theta)
        crops, _ = reader.crops_px(pc, pr, spec.crop_px, angles[1])
        return _apply_augment(crops, *aug_p)

    pool = _helper_thread()
    if pool is None:
        a, p = anchors(), positives()
    else:
        future = pool.submit(positives)
        a, p = anchors(), future.result()
    return a, p


class TripletBatches(torch.utils.data.IterableDataset):
    """``steps`` seeded batches of (anchors, positives) for one epoch."""

    def __init__(
        self,
        reader: CropGeometry,
        xy: np.ndarray,
        spec: TripletSpec,
        seed: int,
        epoch: int,
        steps: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__()
        if len(xy) < spec.batch_size:
            raise ConfigError(f"only {len(xy)} train anchors for batch_size {spec.batch_size}")
        self.reader, self.xy, self.spec = reader, np.asarray(xy, dtype=np.float64), spec
        self.seed, self.epoch, self.steps = seed, epoch, steps
        self.rank, self.world = rank, world
        self.order: np.ndarray | None = None  # the epoch's anchors, batch after batch (None: uniform draws)
        if spec.sampler == "neighbourhood":
            cols, rows = reader.grid.xy_to_pixel(self.xy[:, 0], self.xy[:, 1])
            count = steps * spec.batch_size  # epoch e takes the draws after epoch e - 1's
            self.order = neighbourhood_order(
                cols, rows, epoch * count, count, spec.neighbourhood_px, spec.shuffle_neighbourhoods, seed
            )

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        spec = self.spec
        rng = np.random.default_rng([self.seed, self.epoch, step])
        if self.order is None:
            idx = rng.choice(len(self.xy), size=spec.batch_size, replace=False)
        else:
            idx = self.order[step * spec.batch_size : (step + 1) * spec.batch_size]
        a, p = cut_pairs(self.reader, self.xy[idx], spec, rng)
        return a, p, self.xy[idx].astype(np.float32)

    def __iter__(self):
        return rank_batches(self.batch, self.steps, self.rank, self.world)


def rank_batches(
    batch: Callable[[int], tuple[np.ndarray, ...]], steps: int, rank: int, world: int
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Batches rank, rank + world, ... of an epoch of ``steps``, split again across loader workers in order,
    as tensors."""
    info = torch.utils.data.get_worker_info()
    mine = list(range(rank, steps, world))
    if info is not None:
        mine = mine[info.id :: info.num_workers]
    for k in mine:
        yield tuple(torch.from_numpy(part) for part in batch(k))


def fixed_triplets(
    reader: CropGeometry, xy: np.ndarray, spec: TripletSpec, n: int, seed: int, pool_xy: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A fixed, seeded set of explicit (anchor, positive, negative) crops for validation/evaluation.

    Negatives are locations of ``pool_xy`` (default: ``xy``) at least ``r_neg_m`` away. Returns uint8
    arrays (n, S, S, C).
    """
    return fixed_triplets_with_distances(reader, xy, spec, n, seed, pool_xy)[:3]


def fixed_triplets_with_distances(
    reader: CropGeometry, xy: np.ndarray, spec: TripletSpec, n: int, seed: int, pool_xy: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``fixed_triplets`` (the same crops) and the ground distances (m) of positive and negative from the anchor."""
    rng = np.random.default_rng([seed, 7919])
    xy = np.asarray(xy, dtype=np.float64)
    pool = xy if pool_xy is None else np.asarray(pool_xy, dtype=np.float64)
    grid = reader.grid
    anchors_idx, negatives_idx = [], []
    for a in rng.integers(0, len(xy), 4 * n):
        far = np.flatnonzero(np.hypot(*(pool - xy[a]).T) >= spec.r_neg_m)
        if len(far):
            anchors_idx.append(int(a))
            negatives_idx.append(int(far[rng.integers(len(far))]))
        if len(anchors_idx) == n:
            break
    if len(anchors_idx) < min(n, 8):
        raise ConfigError(f"too few locations {spec.r_neg_m} m apart for validation triplets: region too small")
    a_idx, neg_idx = np.asarray(anchors_idx), np.asarray(negatives_idx)
    n = len(a_idx)
    cols, rows = grid.xy_to_pixel(xy[a_idx, 0], xy[a_idx, 1])
    radius = spec.r_pos_m / grid.resolution * np.sqrt(rng.random(n))
    theta = rng.uniform(0, 2 * np.pi, n)
    angles = rng.uniform(0, 2 * np.pi, (3, n))
    anchors, _ = reader.crops_px(cols, rows, spec.crop_px, angles[0])
    positives, _ = reader.crops_px(
        cols + radius * np.cos(theta), rows + radius * np.sin(theta), spec.crop_px, angles[1]
    )
    ncols, nrows = grid.xy_to_pixel(pool[neg_idx, 0], pool[neg_idx, 1])
    negatives, _ = reader.crops_px(ncols, nrows, spec.crop_px, angles[2])
    positive_m = radius * grid.resolution
    negative_m = np.hypot(*(pool[neg_idx] - xy[a_idx]).T)
    return anchors, positives, negatives, positive_m, negative_m
