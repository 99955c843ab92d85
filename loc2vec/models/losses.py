"""Losses over a batch of anchors and their positives (pytorch-metric-learning).

A batch holds anchors and their positives; label i marks anchor i and its positive, so every other
sample is a candidate negative. Negatives whose anchor lies within ``r_neg`` of the anchor on the
ground are dropped (they are near places, not negatives), and so, when the caller marks them, are
negatives of the same kind as their anchor (``alike``: far places that hold the same at their centre).
``triplet`` and ``soft_pn`` use mined triplets; ``infonce`` (NT-Xent, as in SimCLR) contrasts each positive
pair with all its far negatives.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses, miners
from pytorch_metric_learning.utils import loss_and_miner_utils as lmu

from loc2vec.errors import ConfigError
from loc2vec.models.encoders import central_half

LOSSES = ("triplet", "soft_pn", "infonce")
MINING = ("semihard", "hard", "all")


def soft_pn(anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """Sentiance's soft-PN: Δ* = min(Δ(a,n), Δ(p,n)); softmax over (Δ(a,p), Δ*); d₊² + (d₋ − 1)²."""
    d_ap = (anchor - positive).norm(dim=1)
    d_star = torch.minimum((anchor - negative).norm(dim=1), (positive - negative).norm(dim=1))
    soft = torch.softmax(torch.stack([d_ap, d_star], dim=1), dim=1)
    return (soft[:, 0].pow(2) + (soft[:, 1] - 1).pow(2)).mean()


class TripletObjective:
    """Mine triplets in the batch and apply the margin triplet loss or soft-PN, or apply InfoNCE."""

    def __init__(
        self, loss: str = "triplet", margin: float = 0.2, mining: str = "semihard", temperature: float = 0.1
    ) -> None:
        if loss not in LOSSES:
            raise ConfigError(f"unknown loss {loss!r}; choose one of {LOSSES}")
        if mining not in MINING:
            raise ConfigError(f"unknown mining {mining!r}; choose one of {MINING}")
        if not margin > 0:
            raise ConfigError(f"margin must be > 0, got {margin}")
        if not temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {temperature}")
        self.kind = loss
        self.ntxent = losses.NTXentLoss(temperature=temperature)
        self.miner = miners.TripletMarginMiner(margin=margin, type_of_triplets=mining)
        self.triplet = losses.TripletMarginLoss(margin=margin)
        self.all_triplets = miners.TripletMarginMiner(margin=1e9, type_of_triplets="all")

    @staticmethod
    def _far_apart(
        labels: torch.Tensor,
        locations: torch.Tensor,
        i: torch.Tensor,
        j: torch.Tensor,
        r_neg: float,
        r_max: float | None = None,
    ):
        """Mask of sample pairs (i, j) whose anchors lie at least ``r_neg`` (and at most ``r_max``) apart on the
        ground."""
        distance = (locations[labels[i]] - locations[labels[j]]).norm(dim=1)
        return (distance >= r_neg) if r_max is None else (distance >= r_neg) & (distance <= r_max)

    @classmethod
    def far_negatives(
        cls,
        triplets,
        labels: torch.Tensor,
        locations: torch.Tensor,
        r_neg: float,
        r_max: float | None = None,
        alike: torch.Tensor | None = None,
    ):
        """The triplets whose negative lies ``r_neg`` to ``r_max`` from the anchor and, with ``alike`` (a
        samples x samples mask), is not marked alike to it."""
        a, p, n = triplets
        keep = cls._far_apart(labels, locations, a, n, r_neg, r_max)
        if alike is not None:
            keep &= ~alike[a, n]
        return a[keep], p[keep], n[keep]

    def __call__(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        locations: torch.Tensor,
        r_neg: float,
        r_max: float | None = None,
        alike: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``locations[label]`` are the anchors' ground coordinates (metres); negatives lie ``r_neg`` to
        ``r_max`` (None: any distance) from the anchor; ``alike[i, j]``: sample j is no negative of sample i."""
        if self.kind == "infonce":
            return self.infonce(embeddings, labels, locations, r_neg, r_max, alike)
        triplets = self.miner(embeddings, labels)
        if triplets[0].numel() == 0:  # nothing violates the margin: fall back to all triplets
            triplets = self.all_triplets(embeddings, labels)
        triplets = self.far_negatives(triplets, labels, locations, r_neg, r_max, alike)
        if triplets[0].numel() == 0:
            return embeddings.sum() * 0.0  # keeps the graph: a zero loss with zero gradients
        if self.kind == "triplet":
            return self.triplet(embeddings, labels, triplets)
        a, p, n = triplets
        return soft_pn(embeddings[a], embeddings[p], embeddings[n])

    def infonce(
        self,
        embeddings: torch.Tensor,
        labels: torch.Tensor,
        locations: torch.Tensor,
        r_neg: float,
        r_max: float | None = None,
        alike: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """NT-Xent over every positive pair, each against all samples of anchors ``r_neg`` (to ``r_max``) away
        and not marked ``alike``."""
        a1, p, a2, n = lmu.get_all_pairs_indices(labels)
        keep = self._far_apart(labels, locations, a2, n, r_neg, r_max)
        if alike is not None:
            keep &= ~alike[a2, n]
        return self.ntxent(embeddings, labels, indices_tuple=(a1, p, a2[keep], n[keep]))


def _in_unit_range(x: torch.Tensor) -> torch.Tensor:
    """A batch of crops as float in [0, 1]: uint8 pixels divided by 255, floats as they are."""
    return x.float().div(255.0) if x.dtype == torch.uint8 else x.float()


def channel_cells(x: torch.Tensor, cells: int) -> torch.Tensor:
    """What the reconstruction objective predicts of a batch of crops (N, C, S, S), in [0, 1]: each channel's
    share of every cell of a ``cells`` x ``cells`` grid over the crop and of the crop's central half, then
    whether the channel draws anything there at all (N, 2 * C * (cells² + 1)). Presence carries what a share
    hides: a point of interest covers a few pixels of a cell, a share near 0 whose loss is as small."""
    x = _in_unit_range(x)
    drawn = (x > 0).float()

    def per_cell(values: torch.Tensor, pool) -> list[torch.Tensor]:
        return [pool(values, cells).flatten(1), pool(central_half(values), 1).flatten(1)]

    shares = per_cell(x, F.adaptive_avg_pool2d)
    presence = per_cell(drawn, F.adaptive_max_pool2d)
    return torch.cat([*shares, *presence], dim=1)


def mask_cells(x: torch.Tensor, cells: int, ratio: float) -> torch.Tensor:
    """``x`` with a random ``ratio`` of the cells of a ``cells`` x ``cells`` grid blanked in every crop (all
    channels; drawn from torch's seeded generator): the masked input of the reconstruction objective."""
    n, _, h, w = x.shape
    keep = (torch.rand(n, 1, cells, cells, device=x.device) >= ratio).to(x.dtype)
    return x * F.interpolate(keep, size=(h, w), mode="nearest")


def decorrelation(representation: torch.Tensor) -> torch.Tensor:
    """Redundancy of a batch of representations: the squared correlations between different dimensions,
    summed and divided by the width (the covariance term of VICReg, Bardes et al. 2022, on standardised
    dimensions, so it does not depend on their scale). Low when the batch spreads over many independent
    directions; high when a few directions carry it (dimensional collapse)."""
    if representation.shape[0] < 2:
        raise ConfigError("decorrelation needs a batch of at least 2 representations")
    z = representation.float()
    z = (z - z.mean(dim=0)) / (z.std(dim=0) + 1e-4)
    correlation = z.T @ z / (len(z) - 1)
    off_diagonal = correlation - torch.diag(torch.diagonal(correlation))
    return off_diagonal.pow(2).sum() / z.shape[1]


def disc_composition(x: torch.Tensor, radius_px: float) -> torch.Tensor:
    """Each channel's mean value over a disc of ``radius_px`` at the centre of every crop of a batch (N, C, S, S),
    in [0, 1] (N, C): what lies at the place itself, read from the raster (no label)."""
    x = _in_unit_range(x)
    h, w = x.shape[-2:]
    rows = torch.arange(h, device=x.device, dtype=torch.float32) - (h - 1) / 2
    cols = torch.arange(w, device=x.device, dtype=torch.float32) - (w - 1) / 2
    disc = (rows[:, None] ** 2 + cols[None, :] ** 2 <= radius_px**2).float()
    if not disc.any():
        raise ConfigError(f"a disc of radius {radius_px} px holds no pixel of a {h} x {w} crop")
    return (x * disc).sum(dim=(2, 3)) / disc.sum()


def alike_compositions(composition: torch.Tensor, max_l1: float) -> torch.Tensor:
    """Pairs of crops whose ``disc_composition`` differs by less than ``max_l1`` (summed over channels): far
    places of the same kind, which a metric loss should not push apart (false negatives, as Huynh et al. 2022
    remove them in contrastive learning). A crop is alike to itself."""
    return torch.cdist(composition, composition, p=1) < max_l1


def composition_neighbours(
    representation: torch.Tensor, composition: torch.Tensor, temperature: float, composition_temperature: float
) -> torch.Tensor:
    """Cross-entropy between each crop's neighbours by what lies at its centre and its neighbours in the
    representation, over the batch (as SNE matches neighbour distributions, Hinton & Roweis 2002): the target
    is the softmax of minus the L1 distances of ``disc_composition`` over ``composition_temperature``, the
    prediction the softmax of the representations' cosine similarities over ``temperature``; a crop is not its
    own neighbour. Places whose centres hold the same mix of fills, however partial, become near neighbours."""
    if representation.shape[0] < 2:
        raise ConfigError("composition_neighbours needs a batch of at least 2 representations")
    z = F.normalize(representation.float(), dim=1)
    own = torch.eye(len(z), dtype=torch.bool, device=z.device)
    target = torch.softmax(
        (-torch.cdist(composition, composition, p=1) / composition_temperature).masked_fill(own, -torch.inf), dim=1
    )
    log_predicted = torch.log_softmax((z @ z.T / temperature).masked_fill(own, -torch.inf), dim=1).masked_fill(own, 0.0)
    return -(target * log_predicted).sum(dim=1).mean()


def distance_matching(representation: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """How differently two representations (N, D) and (N, D') of a batch space its crops: the Huber loss between the
    distances of every two crops' unit vectors in each, each divided by its mean over the batch (the distance term
    of relational knowledge distillation, Park et al. 2019). 0 when one is the other rotated or scaled, whatever
    their widths; what it compares is which places lie relatively near and far, not how near all of them are."""
    if representation.shape[0] < 2 or representation.shape[0] != reference.shape[0]:
        raise ConfigError("distance_matching needs two batches of the same at least 2 crops")
    other = ~torch.eye(len(representation), dtype=torch.bool, device=representation.device)

    def relative(x: torch.Tensor) -> torch.Tensor:
        z = F.normalize(x.float(), dim=1)
        d = (2.0 - 2.0 * z @ z.T)[other].clamp_min(1e-12).sqrt()  # unit vectors: |a - b|^2 = 2 - 2 a.b
        return d / d.mean().clamp_min(1e-12)

    return F.smooth_l1_loss(relative(representation), relative(reference))


class ReconstructionObjective(torch.nn.Module):
    """Masked reconstruction of the channel raster, beside the metric loss (after S2Vec, Google 2025, which
    rasterises built-environment features and trains a masked autoencoder on them): a linear decoder
    predicts ``channel_cells`` of the unmasked crop from the representation of the masked one, so the
    representation keeps what lies where in the crop, and infers what the mask hid from its context."""

    def __init__(self, representation_dim: int, channels: int, cells: int) -> None:
        super().__init__()
        if cells < 1:
            raise ConfigError(f"recon_cells must be >= 1, got {cells}")
        self.cells = cells
        self.decoder = torch.nn.Linear(representation_dim, 2 * channels * (cells * cells + 1))

    def forward(self, representation: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(self.decoder(representation.float()), target)


class PatchReconstruction(torch.nn.Module):
    """Each stem patch's pixels from that patch's stem features (a 1 x 1 convolution, a linear decoder per
    patch). The triplet loss alone lets a trained patch stem collapse onto a few directions, whose averages
    keep a place's channel composition worse than random filters do (docs/evaluation.md); decoding every
    pixel of the patch back from its features keeps the stem's view of the patch whole while it trains."""

    def __init__(self, stem_width: int, channels: int, patch: int) -> None:
        super().__init__()
        self.patch = patch
        self.decoder = torch.nn.Conv2d(stem_width, channels * patch * patch, kernel_size=1)

    def forward(self, stem: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``stem``: (N, W, S/p, S/p) features of the crops ``x`` (N, C, S, S) it was computed from."""
        x = _in_unit_range(x)
        target = F.pixel_unshuffle(x, self.patch)
        return F.binary_cross_entropy_with_logits(self.decoder(stem.float()), target)
