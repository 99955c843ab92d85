"""Triplet batches over several regions, each with its own mosaic and its own train/val split.

Each anchor of a batch picks its region by weight (a seeded categorical draw per anchor, so a batch's
mix follows the weights on average and batch ``k`` of epoch ``e`` depends only on ``(seed, e, k)``), then
an anchor of that region's train split (uniformly). Its positive is cut from the same region's mosaic
within ``r_pos_m`` (or ``r_context_m``), as in :mod:`loc2vec.data.triplets`: ground distance is only known
inside one region. In-batch negatives may come from any region: the batch's locations are Earth-centred
metres (WGS84 x, y, z), one frame for every region whatever its CRS, so the loss keeps a negative
exactly when it lies at least ``r_neg_m`` from the anchor on the ground (another region is always that
far, unless two regions touch and the two places lie within ``r_neg_m`` of their common edge).
Validation triplets are cut inside each region from its val split, negatives from its own val and train anchors.

With ``sampler="neighbourhood"`` (regions read out of core) the region of every anchor is drawn the same
way, and the anchors a region contributes come from that region's own endless neighbourhood stream
(:mod:`loc2vec.data.sampler`): each region's reader then only needs the chunks of a few neighbourhoods at a
time. A region's stream goes on across batches and epochs (its position is the number of anchors it gave
before, known from the seeded region draws), so a resumed run draws the same batches.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from loc2vec.data.crops import CropGeometry
from loc2vec.data.sampler import neighbourhood_order
from loc2vec.data.triplets import TripletSpec, cut_pairs, fixed_triplets, rank_batches
from loc2vec.errors import ConfigError

WGS84_A_M = 6_378_137.0  # WGS84 semi-major axis
WGS84_E2 = 6.69437999014e-3  # and first eccentricity squared
MIN_VAL_TRIPLETS = 8


class RegionDataError(ConfigError):
    """A region's data cannot be trained on; ``region`` names it."""

    def __init__(self, region: str, message: str) -> None:
        super().__init__(f"region {region!r}: {message}")
        self.region = region


@dataclass(frozen=True)
class RegionTriplets:
    """One region's training data: its mosaic reader and its train and val anchors (CRS metres)."""

    name: str
    weight: float
    reader: CropGeometry
    train_xy: np.ndarray
    val_xy: np.ndarray


def geocentric_m(reader: CropGeometry, xy: np.ndarray) -> np.ndarray:
    """(N, 3) Earth-centred coordinates (WGS84 ECEF, metres, on the ellipsoid) for CRS coordinates ``xy`` of
    ``reader``'s mosaic: one frame for every region, whose chords are ground distances at the scale of ``r_neg_m``."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    cols, rows = reader.grid.xy_to_pixel(xy[:, 0], xy[:, 1])
    lon, lat = (np.radians(np.asarray(v, dtype=np.float64)) for v in reader.grid.pixel_to_lonlat(cols, rows))
    n = WGS84_A_M / np.sqrt(1 - WGS84_E2 * np.sin(lat) ** 2)
    return np.stack(
        [n * np.cos(lat) * np.cos(lon), n * np.cos(lat) * np.sin(lon), n * (1 - WGS84_E2) * np.sin(lat)], axis=1
    )


def region_shares(regions: list[RegionTriplets]) -> np.ndarray:
    """The regions' weights as shares summing to 1; a weight that is not a positive number is an error."""
    for r in regions:
        if not (np.isfinite(r.weight) and r.weight > 0):
            raise RegionDataError(r.name, f"weight must be a positive number, got {r.weight!r}")
    weights = np.array([r.weight for r in regions], dtype=np.float64)
    return weights / weights.sum()


def check_region_data(regions: list[RegionTriplets]) -> None:
    """Refuse what one model cannot train on: no region, a name twice, a bad weight, too few anchors, or mosaics
    that differ in channels or ground resolution (a crop must cover the same ground and channels everywhere)."""
    if not regions:
        raise ConfigError("no region to train on")
    names = [r.name for r in regions]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"regions named more than once: {', '.join(twice)}")
    region_shares(regions)
    first = regions[0]
    for r in regions:
        if len(r.train_xy) < 1:
            raise RegionDataError(r.name, "its split has no train anchors")
        if len(r.val_xy) < 2:
            raise RegionDataError(r.name, f"its split has {len(r.val_xy)} val anchors; need at least 2")
        if list(r.reader.channel_names) != list(first.reader.channel_names):
            raise RegionDataError(r.name, f"its mosaic's channels differ from region {first.name!r}'s")
        if float(r.reader.grid.resolution) != float(first.reader.grid.resolution):
            raise RegionDataError(
                r.name,
                f"its mosaic has {r.reader.grid.resolution:g} m/px, region {first.name!r}'s "
                f"{first.reader.grid.resolution:g} m/px: one model needs one ground resolution",
            )


def regions_digest(regions: list[RegionTriplets]) -> str:
    """Identity of the training data (names, weights, anchors): a checkpoint resumes only on the same."""
    digest = hashlib.sha256()
    for r in regions:
        digest.update(f"{r.name}|{r.weight!r}|".encode())
        for xy in (r.train_xy, r.val_xy):
            digest.update(np.ascontiguousarray(xy, dtype=np.float64).tobytes())
            digest.update(b"|")
    return digest.hexdigest()[:16]


class MultiRegionBatches(torch.utils.data.IterableDataset):
    """``steps`` seeded batches of (anchors, positives, geocentric locations) over several regions."""

    def __init__(
        self,
        regions: list[RegionTriplets],
        spec: TripletSpec,
        seed: int,
        epoch: int,
        steps: int,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        super().__init__()
        self.regions, self.spec = regions, spec
        self.shares = region_shares(regions)
        self.seed, self.epoch, self.steps = seed, epoch, steps
        self.rank, self.world = rank, world
        self.xy = [np.asarray(r.train_xy, dtype=np.float64) for r in regions]
        self.locations = [geocentric_m(r.reader, xy) for r, xy in zip(regions, self.xy, strict=True)]
        self.orders: list[np.ndarray] | None = None  # per region, the epoch's anchors in draw order
        if spec.sampler == "neighbourhood":
            self.orders, self.offsets = self._neighbourhood_orders()

    def _region_counts(self, epoch: int) -> np.ndarray:
        """(steps, regions): how many anchors each batch of ``epoch`` draws from each region."""
        return np.stack([self._region_of(np.random.default_rng([self.seed, epoch, k])) for k in range(self.steps)])

    def _region_of(self, rng: np.random.Generator) -> np.ndarray:
        """A batch's anchors per region: the first draw of the batch's generator, the same for every sampler."""
        region_of = rng.choice(len(self.regions), size=self.spec.batch_size, p=self.shares)
        return np.bincount(region_of, minlength=len(self.regions))

    def _neighbourhood_orders(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Each region's draws of this epoch from its neighbourhood stream (which goes on where the earlier
        epochs stopped), and each batch's offset into them."""
        before = sum((self._region_counts(e).sum(axis=0) for e in range(self.epoch)), np.zeros(len(self.regions), int))
        counts = self._region_counts(self.epoch)
        orders = []
        for r, region in enumerate(self.regions):
            cols, rows = region.reader.grid.xy_to_pixel(self.xy[r][:, 0], self.xy[r][:, 1])
            stream_seed = int(np.random.SeedSequence([self.seed, r]).generate_state(1)[0])
            orders.append(
                neighbourhood_order(
                    cols,
                    rows,
                    int(before[r]),
                    int(counts[:, r].sum()),
                    self.spec.neighbourhood_px,
                    self.spec.shuffle_neighbourhoods,
                    stream_seed,
                )
            )
        offsets = np.vstack([np.zeros(len(self.regions), int), np.cumsum(counts, axis=0)[:-1]])
        return orders, offsets

    def _draw(self, step: int) -> tuple[np.random.Generator, list[tuple[int, np.ndarray]]]:
        rng = np.random.default_rng([self.seed, self.epoch, step])
        counts = self._region_of(rng)
        plan = []
        for r, n in enumerate(counts.tolist()):
            if not n:
                continue
            if self.orders is None:
                plan.append((r, rng.choice(len(self.xy[r]), size=n, replace=n > len(self.xy[r]))))
            else:
                start = int(self.offsets[step, r])
                plan.append((r, self.orders[r][start : start + n]))
        return rng, plan

    def plan(self, step: int) -> list[tuple[int, np.ndarray]]:
        """Batch ``step``'s anchors: (region index, indices into that region's train anchors), region by region."""
        return self._draw(step)[1]

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng, plan = self._draw(step)
        anchors, positives, locations = [], [], []
        for r, idx in plan:
            a, p = cut_pairs(self.regions[r].reader, self.xy[r][idx], self.spec, rng)
            anchors.append(a)
            positives.append(p)
            locations.append(self.locations[r][idx])
        return np.concatenate(anchors), np.concatenate(positives), np.concatenate(locations).astype(np.float32)

    def __iter__(self):
        return rank_batches(self.batch, self.steps, self.rank, self.world)


def region_val_triplets(
    regions: list[RegionTriplets], spec: TripletSpec, n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed validation triplets from every region's val split, about ``n`` in all, shared by weight (at least
    ``MIN_VAL_TRIPLETS`` per region); each triplet lies inside one region."""
    shares = region_shares(regions)
    parts = []
    for r, share in zip(regions, shares, strict=True):
        pool = np.concatenate([r.val_xy, r.train_xy])
        try:
            parts.append(fixed_triplets(r.reader, r.val_xy, spec, max(MIN_VAL_TRIPLETS, round(n * share)), seed, pool))
        except ConfigError as exc:
            raise RegionDataError(r.name, f"no validation triplets: {exc}") from exc
    return tuple(np.concatenate([part[i] for part in parts]) for i in range(3))
