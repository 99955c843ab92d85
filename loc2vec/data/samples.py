"""Anchor locations and spatial train/val/test splits with a leakage buffer.

Rule for anchors: a seeded, jittered grid over the mosaic; a candidate is *busy* when the 32x32-px
window around it has any drawn pixel. Every busy candidate is kept; empty ones (open sea, blank land)
are kept with probability ``empty_share`` so the model still sees them, without letting them dominate.

Splits are by square spatial blocks: whole blocks go to test, val or train, then every
train/val anchor closer than ``leak_distance_m`` to a test anchor (and every train anchor that close to
a val anchor) is moved to split ``buffer`` and never used. ``leak_distance_m = r_pos + crop diagonal``:
a positive of a train anchor lies within ``r_pos`` of it and any rotated crop reaches half a diagonal
from its centre, so no pixel of any training crop can appear in a test crop.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from loc2vec.data.crops import CropGeometry
from loc2vec.errors import ConfigError

SPLITS = ("train", "val", "test", "buffer")
# The split of a region that is scored, never trained on (``loc2vec evaluate`` where the training split does
# not fit): no validation blocks, and no training positives in the leak buffer (the crop diagonal only), so
# no crop of a probe's train point overlaps a test crop.
EVALUATION_ONLY = {"val_fraction": 0.0, "max_positive_m": 0.0}


class SplitTooSmall(ConfigError):
    """The region leaves a split (train or test) empty once the blocks and the leak buffer are applied."""


@dataclass(frozen=True)
class SplitSpec:
    """Sampling and split parameters (metres on the ground)."""

    spacing_m: float = 60.0
    empty_share: float = 0.05
    block_m: float | None = None
    test_fraction: float = 0.2
    val_fraction: float = 0.1
    max_positive_m: float = 250.0  # the furthest a training positive may be: TrainConfig.max_positive_m
    crop_px: int = 128
    seed: int = 0
    split_candidates: int = 256

    def __post_init__(self) -> None:
        if (
            self.spacing_m <= 0
            or (self.block_m is not None and self.block_m <= 0)
            or self.max_positive_m < 0
            or self.crop_px <= 0
        ):
            raise ConfigError("spacing_m, block_m, crop_px must be > 0 and max_positive_m >= 0")
        if not (0 < self.test_fraction < 1 and 0 <= self.val_fraction < 1):
            raise ConfigError("test_fraction must be in (0, 1) and val_fraction in [0, 1)")
        if self.test_fraction + self.val_fraction >= 1:
            raise ConfigError("test_fraction + val_fraction must leave room for training")
        if not 0 <= self.empty_share <= 1:
            raise ConfigError("empty_share must be in [0, 1]")
        if self.split_candidates < 1:
            raise ConfigError("split_candidates must be >= 1")

    def digest(self) -> str:
        """Identity of the split's parameters (part of the samples file name)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]

    def leak_distance_m(self, resolution: float) -> float:
        return self.max_positive_m + self.crop_px * resolution * math.sqrt(2)

    def resolved(self, width_m: float, height_m: float) -> SplitSpec:
        """``block_m=None`` (auto): about 20 blocks over the region, between 600 m and 1,500 m."""
        if self.block_m is not None:
            return self
        return replace(self, block_m=float(min(1500.0, max(600.0, math.sqrt(width_m * height_m / 20.0)))))


def channel_presence(reader: CropGeometry, cols: np.ndarray, rows: np.ndarray, window_px: int = 32) -> np.ndarray:
    """(N, C) bool: which channels have a drawn pixel in the ``window_px`` window around each position
    (visited in the reader's locality order, tile by tile when it reads out of core)."""
    cols, rows = np.asarray(cols), np.asarray(rows)
    order = reader.locality_order(cols, rows)
    if order is not None:
        cols, rows = cols[order], rows[order]
    out = np.zeros((len(cols), reader.channels), dtype=bool)
    for start in range(0, len(cols), 512):
        window, _ = reader.crops_px(cols[start : start + 512], rows[start : start + 512], window_px)
        out[start : start + 512] = window.any(axis=(1, 2))
    if order is not None:
        out[order] = out.copy()
    return out


def busy_mask(reader: CropGeometry, cols: np.ndarray, rows: np.ndarray, window_px: int = 32) -> np.ndarray:
    """True where the ``window_px`` window around a mosaic pixel position has any drawn pixel."""
    return channel_presence(reader, cols, rows, window_px).any(axis=1)


def _bits(presence: np.ndarray) -> np.ndarray:
    return (presence.astype(np.int64) << np.arange(presence.shape[1])).sum(axis=1)


def candidate_anchors(reader: CropGeometry, spec: SplitSpec) -> pd.DataFrame:
    """Jittered grid of candidates with their busy flag (pixel and CRS coordinates)."""
    grid = reader.grid
    rng = np.random.default_rng(spec.seed)
    step = spec.spacing_m / grid.resolution
    cols = np.arange(step / 2, reader.width, step)
    rows = np.arange(step / 2, reader.height, step)
    cc, rr = np.meshgrid(cols, rows)
    cc = (cc + rng.uniform(-step / 2, step / 2, cc.shape)).clip(0, reader.width - 1).ravel()
    rr = (rr + rng.uniform(-step / 2, step / 2, rr.shape)).clip(0, reader.height - 1).ravel()
    presence = channel_presence(reader, cc, rr)
    busy = presence.any(axis=1)
    keep = busy | (rng.random(cc.size) < spec.empty_share)
    x, y = grid.pixel_to_xy(cc[keep], rr[keep])
    lon, lat = grid.pixel_to_lonlat(cc[keep], rr[keep])
    drawn = _bits(presence[keep])
    return pd.DataFrame({"x": x, "y": y, "lon": lon, "lat": lat, "busy": busy[keep], "drawn": drawn})


def assign_blocks(frame: pd.DataFrame, x0: float, y0: float, block_m: float) -> pd.Series:
    i = np.floor((y0 - frame["y"].to_numpy()) / block_m).astype(int)
    j = np.floor((frame["x"].to_numpy() - x0) / block_m).astype(int)
    return pd.Series([f"r{a}c{b}" for a, b in zip(i, j, strict=True)], index=frame.index)


def _strata(frame: pd.DataFrame) -> pd.DataFrame:
    """Per block: anchor count and, per channel bit of ``drawn``, anchors near that channel."""
    columns = {"anchors": np.ones(len(frame), dtype=np.int64)}
    if "drawn" in frame:
        drawn = frame["drawn"].to_numpy(dtype=np.int64)
        for bit in range(int(drawn.max()).bit_length() if len(drawn) else 0):
            columns[f"c{bit}"] = (drawn >> bit) & 1
    table = pd.DataFrame(columns, index=frame.index).groupby(frame["block"]).sum()
    return table.loc[:, table.sum() > 0]


def _fill(order: np.ndarray, anchors: np.ndarray, spec: SplitSpec) -> np.ndarray:
    """Labels (0 test, 1 val, 2 train) of blocks taken in ``order`` until each split has its anchor share."""
    before = np.concatenate([[0], np.cumsum(anchors[order])[:-1]]) / anchors.sum()
    label = np.full(len(order), 2)
    label[before < spec.test_fraction + spec.val_fraction] = 1
    label[before < spec.test_fraction] = 0
    out = np.empty(len(order), dtype=int)
    out[order] = label
    return out


def split_blocks(frame: pd.DataFrame, spec: SplitSpec) -> pd.Series:
    """Seeded, content-stratified assignment of whole blocks to test, val and train.

    Each candidate is a random block order filled test first, then val, the rest train (by anchor
    share). The winner minimises the squared gap between each split's share of every stratum (anchors,
    anchors near each channel) and its target fraction.
    """
    strata = _strata(frame)
    counts = strata.to_numpy(dtype=float)
    rng = np.random.default_rng(spec.seed + 1)
    targets = np.array([spec.test_fraction, spec.val_fraction])
    best, best_cost = None, np.inf
    for _ in range(spec.split_candidates):
        labels = _fill(rng.permutation(len(strata)), counts[:, 0], spec)
        shares = np.stack([counts[labels == k].sum(axis=0) for k in (0, 1)]) / counts.sum(axis=0)
        cost = float(((shares - targets[:, None]) ** 2).sum())
        if cost < best_cost:
            best, best_cost = labels, cost
    names = np.array(["test", "val", "train"])[best]
    return frame["block"].map(dict(zip(strata.index, names, strict=True)))


def _near(points: np.ndarray, others: np.ndarray, distance: float) -> np.ndarray:
    if len(others) == 0 or len(points) == 0:
        return np.zeros(len(points), dtype=bool)
    d, _ = cKDTree(others).query(points, k=1, distance_upper_bound=distance)
    return np.isfinite(d) & (d <= distance)


def apply_buffer(frame: pd.DataFrame, leak_distance: float) -> pd.Series:
    """Move train/val anchors near test (and train anchors near val) to ``buffer``."""
    split = frame["split"].copy()
    xy = frame[["x", "y"]].to_numpy()
    test = xy[(split == "test").to_numpy()]
    for name in ("val", "train"):
        mask = (split == name).to_numpy()
        split[mask & _near(xy, test, leak_distance)] = "buffer"
    val = xy[(split == "val").to_numpy()]
    train_mask = (split == "train").to_numpy()
    split[train_mask & _near(xy, val, leak_distance)] = "buffer"
    return split


def sample_locations(reader: CropGeometry, spec: SplitSpec) -> pd.DataFrame:
    """Anchors with block ids and splits; raises ConfigError when train or test ends up empty.

    When the region is too small for a spatially separate validation split (fewer than 16 val anchors
    survive the buffer), a seeded tenth of the train anchors becomes ``val`` as well: it only steers
    early stopping, while the test split stays spatially held out.
    """
    grid = reader.grid
    spec = spec.resolved(grid.width * grid.resolution, grid.height * grid.resolution)
    frame = candidate_anchors(reader, spec)
    if frame.empty:
        raise ConfigError("no anchor locations: the mosaic is empty")
    frame["block"] = assign_blocks(frame, reader.grid.x0, reader.grid.y0, spec.block_m)
    frame["split"] = split_blocks(frame, spec)
    frame["split"] = apply_buffer(frame, spec.leak_distance_m(reader.grid.resolution))
    if (frame["split"] == "val").sum() < 16 and spec.val_fraction > 0:
        train = frame.index[frame["split"] == "train"]
        pick = np.random.default_rng(spec.seed + 2).permutation(train)[: max(2, int(len(train) * 0.1))]
        frame.loc[pick, "split"] = "val"
    sizes = frame["split"].value_counts()
    missing = [s for s in ("train", "test") if sizes.get(s, 0) == 0]
    if missing:
        raise SplitTooSmall(
            f"split(s) {missing} are empty: the region is too small for block_m={spec.block_m} m "
            f"and a leak buffer of {spec.leak_distance_m(reader.grid.resolution):.0f} m"
        )
    return frame.reset_index(drop=True)


@dataclass(frozen=True)
class LeakageReport:
    min_test_train_m: float
    min_test_val_m: float
    violations: int
    leak_distance_m: float

    @property
    def passed(self) -> bool:
        return self.violations == 0


def leakage_report(frame: pd.DataFrame, leak_distance: float) -> LeakageReport:
    """Distances between test anchors and train/val anchors; a violation is one closer than allowed."""
    xy = frame[["x", "y"]].to_numpy()
    test = xy[(frame["split"] == "test").to_numpy()]
    out = {}
    violations = 0
    for name in ("train", "val"):
        other = xy[(frame["split"] == name).to_numpy()]
        if len(other) == 0 or len(test) == 0:
            out[name] = math.inf
            continue
        d, _ = cKDTree(other).query(test, k=1)
        out[name] = float(d.min())
        violations += int((d <= leak_distance).sum())
    return LeakageReport(out["train"], out["val"], violations, leak_distance)
