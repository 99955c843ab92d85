"""Training hyper-parameters, validated up front so bad values fail before any work is done."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from loc2vec.data.chunked import ReaderConfig
from loc2vec.data.triplets import TripletSpec
from loc2vec.errors import ConfigError
from loc2vec.models.encoders import ENCODERS
from loc2vec.models.losses import LOSSES, MINING


@dataclass(frozen=True)
class TrainConfig:
    encoder: str = "small_cnn"
    embedding_dim: int = 16
    weights_path: str | None = None
    loss: str = "triplet"
    margin: float = 0.2
    temperature: float = 0.1  # of InfoNCE and of the composition term's representation neighbours
    mining: str = "semihard"
    epochs: int = 12
    steps_per_epoch: int = 40
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    crop_px: int = 128
    r_pos_m: float = 100.0
    r_neg_m: float = 500.0
    # negatives at most this far from the anchor (None: no limit); below the distance between regions, a
    # multi-region batch keeps each anchor's negatives inside its own region
    max_negative_m: float | None = None
    r_context_m: float | None = 250.0
    context_share: float = 0.5
    max_shift_px: int = 4
    channel_dropout: float = 0.1
    val_triplets: int = 256
    patience: int = 4
    seed: int = 0
    num_workers: int = 0
    # anchor order: "uniform", or "neighbourhood" (squares of neighbourhood_px in a seeded order, the anchors of
    # shuffle_neighbourhoods of them shuffled together; for mosaics read out of core), see loc2vec.data.sampler
    sampler: str = "uniform"
    neighbourhood_px: int = 1024
    shuffle_neighbourhoods: int = 4
    # how crops are read ("auto": in memory when the mosaic fits cache_mib, else through a chunk cache of
    # cache_mib per process); the crops are the same either way, so these two are not part of the digest
    crop_reader: str = "auto"
    cache_mib: float = 1024.0
    # masked reconstruction of the channel raster beside the metric loss (loc2vec.models.losses; 0: off):
    # its weight, the grid of cells it predicts each channel's share of, and the share of cells masked
    recon_weight: float = 0.0
    recon_cells: int = 4
    mask_ratio: float = 0.0
    # what the reconstruction decodes from: the whole place representation ("place"), or its context part alone
    # ("context": the last stage, so the context keeps the crop's content beside telling places apart)
    recon_from: str = "place"
    # weight of the decorrelation of the place representation within a batch (loc2vec.models.losses.decorrelation;
    # 0: off): keeps the representation from collapsing onto a few directions, as the triplet loss alone lets it
    decorrelation_weight: float = 0.0
    # keep the small CNN's patch stem at its seeded initial weights (its batch norm the identity) and train the rest:
    # a frozen random patch projection, as MoCo v3 (Chen et al. 2021) does for ViTs (loc2vec.training.objectives)
    freeze_stem: bool = False
    # the small CNN's patch stem trained at this share of the learning rate (1: as the rest; freeze_stem: not at all)
    stem_lr_scale: float = 1.0
    # weight of decoding each stem patch's pixels from its stem features (loc2vec.models.losses.PatchReconstruction;
    # 0: off): keeps the small CNN's patch stem from collapsing onto a few directions as it trains
    patch_recon_weight: float = 0.0
    # decoupled pull of the backbone's weights toward their seeded initial values at every step (L2-SP, Li et al.
    # 2018, decoupled as AdamW decouples weight decay; 0: off): training departs from the random features only as
    # far as the objectives pay for (loc2vec.training.objectives.InitialWeights)
    init_pull: float = 0.0
    # the small CNN's patch stem keeps its seeded response to a uniform fill of each channel: each kernel's mean over
    # its taps is put back after every step, the patterns around that mean train (loc2vec.training.objectives.StemFill).
    # A trained stem otherwise responds to a fill of the green channel 2-6 times less than to the others, where
    # random weights respond to every channel alike (docs/evaluation.md, "Kotka's gap, class by class")
    keep_stem_fill: bool = False
    # weight of matching each crop's neighbours in the place representation to its neighbours by the channels' mean
    # over a disc of composition_radius_px at the crop's centre (loc2vec.models.losses.composition_neighbours; 0: off),
    # with the temperature of that target distribution (the representation's is ``temperature``)
    composition_weight: float = 0.0
    composition_radius_px: float = 16.0
    composition_temperature: float = 0.1
    # which part of the place representation the composition term shapes: all of it ("place"), the context part alone
    # ("context": the part the triplet loss shapes, and where a trained model loses the composition), or both, as
    # the sum of the two terms ("both")
    composition_on: str = "place"
    # no negative of an anchor whose channels' means over that disc (composition_radius_px) lie within this L1
    # distance of the anchor's (loc2vec.models.losses.alike_compositions; None: every far place is a negative): a
    # far place of the same kind is not pushed away, so what tells kinds of place apart is what the loss rewards
    negative_composition_l1: float | None = None
    # weight of keeping the batch's relative distances in the place representation at those the seeded initial
    # encoder gives the unmasked crops (loc2vec.models.losses.distance_matching; 0: off): init_pull kept in
    # function space, so training keeps the random features' geometry of what a place holds unless the objectives
    # pay for the change (distillation from the encoder's own random start, as Sarnthein et al. 2023 distil from a
    # random teacher)
    init_geometry_weight: float = 0.0
    # which part of the place representation that term keeps: all of it ("place"), the context part alone ("context":
    # the part the triplet loss shapes, and the part a trained model moves furthest from its random twin), or both,
    # as the sum of the two terms ("both")
    init_geometry_on: str = "place"
    # weight of the context part's term under init_geometry_on="both" (None: init_geometry_weight, as for the whole
    # representation): the context kept less than the whole, so the triplet loss shapes it further
    init_geometry_context_weight: float | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.encoder in ENCODERS, f"encoder must be one of {ENCODERS}"),
            (self.loss in LOSSES, f"loss must be one of {LOSSES}"),
            (self.mining in MINING, f"mining must be one of {MINING}"),
            (self.embedding_dim >= 2, "embedding_dim must be >= 2"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.steps_per_epoch >= 1, "steps_per_epoch must be >= 1"),
            (self.batch_size >= 2, "batch_size must be >= 2"),
            (self.lr > 0, "lr must be > 0"),
            (self.weight_decay >= 0, "weight_decay must be >= 0"),
            (self.margin > 0, "margin must be > 0"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.val_triplets >= 8, "val_triplets must be >= 8"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.num_workers >= 0, "num_workers must be >= 0"),
            (self.max_negative_m is None or self.max_negative_m > self.r_neg_m, "max_negative_m must be > r_neg_m"),
            (self.recon_weight >= 0, "recon_weight must be >= 0"),
            (self.decorrelation_weight >= 0, "decorrelation_weight must be >= 0"),
            (self.recon_cells >= 1, "recon_cells must be >= 1"),
            (0 <= self.mask_ratio < 1, "mask_ratio must be in [0, 1)"),
            (self.recon_from in RECON_SOURCES, f"recon_from must be one of {RECON_SOURCES}"),
            (0 < self.stem_lr_scale <= 1, "stem_lr_scale must be in (0, 1]"),
            (self.patch_recon_weight >= 0, "patch_recon_weight must be >= 0"),
            (self.init_pull >= 0, "init_pull must be >= 0"),
            (self.init_geometry_weight >= 0, "init_geometry_weight must be >= 0"),
            (self.init_geometry_on in PART_TARGETS, f"init_geometry_on must be one of {PART_TARGETS}"),
            (
                self.init_geometry_context_weight is None or self.init_geometry_context_weight >= 0,
                "init_geometry_context_weight must be >= 0 (or None: init_geometry_weight)",
            ),
            (
                self.init_geometry_context_weight is None or self.init_geometry_on == "both",
                "init_geometry_context_weight weighs the context part beside the whole: set init_geometry_on='both'",
            ),
            (
                not (self.keep_stem_fill and self.freeze_stem),
                "keep_stem_fill keeps part of a stem that freeze_stem keeps whole: set one of them",
            ),
            (self.composition_weight >= 0, "composition_weight must be >= 0"),
            (0 < self.composition_radius_px <= self.crop_px / 2, "composition_radius_px must be in (0, crop_px / 2]"),
            (self.composition_temperature > 0, "composition_temperature must be > 0"),
            (self.composition_on in PART_TARGETS, f"composition_on must be one of {PART_TARGETS}"),
            (
                self.negative_composition_l1 is None or self.negative_composition_l1 > 0,
                "negative_composition_l1 must be > 0 (or None: off)",
            ),
            (
                self.patch_recon_weight == 0 or not self.freeze_stem,
                "patch_recon_weight trains the patch stem, which freeze_stem keeps at its initial weights",
            ),
        ]
        checks += [
            (
                getattr(self, name) == UNLESS_DEFAULT[name] or self.encoder.startswith("small_cnn"),
                f"{name} needs a small_cnn encoder (the torchvision backbones have no patch stem)",
            )
            for name in STEM_FIELDS
        ]
        errors = [f"{msg} (got {self._value_for(msg)!r})" for ok, msg in checks if not ok]
        if errors:
            raise ConfigError("bad training config: " + "; ".join(errors))
        self.triplet_spec()  # validates the sampling fields
        self.reader_config()  # and the reader's

    def _value_for(self, message: str):
        return getattr(self, message.split()[0], None)

    def triplet_spec(self) -> TripletSpec:
        return TripletSpec(
            crop_px=self.crop_px,
            r_pos_m=self.r_pos_m,
            r_neg_m=self.r_neg_m,
            batch_size=self.batch_size,
            max_shift_px=self.max_shift_px,
            channel_dropout=self.channel_dropout,
            r_context_m=self.r_context_m,
            context_share=self.context_share,
            sampler=self.sampler,
            neighbourhood_px=self.neighbourhood_px,
            shuffle_neighbourhoods=self.shuffle_neighbourhoods,
        )

    def reader_config(self) -> ReaderConfig:
        return ReaderConfig(kind=self.crop_reader, cache_mib=self.cache_mib)

    @property
    def max_positive_m(self) -> float:
        return self.triplet_spec().max_positive_m

    @classmethod
    def from_json(cls, path: str | Path) -> TrainConfig:
        """A config saved with ``to_dict`` (the ``config.json`` every training run logs to MLflow)."""
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read training config {path}: {exc}") from exc
        if not isinstance(values, dict):
            raise ConfigError(f"training config {path} must be a JSON object")
        unknown = sorted(set(values) - {f.name for f in fields(cls)})
        if unknown:
            raise ConfigError(f"training config {path} has unknown fields {unknown}")
        return cls(**values)

    def to_dict(self) -> dict:
        return asdict(self)

    def digest(self) -> str:
        """Identity of what is trained: every field but the reader's; the sampler's, the reconstruction's and
        those of ``UNLESS_DEFAULT`` only when not the default (digests of configs from before they existed stay
        the same, and their checkpoints resume)."""
        values = {k: v for k, v in self.to_dict().items() if k not in READER_FIELDS}
        if values["sampler"] == "uniform":
            for name in SAMPLER_FIELDS:
                values.pop(name)
        for name, default in UNLESS_DEFAULT.items():
            if values[name] == default:
                values.pop(name)
        if values["recon_weight"] == 0 and values["mask_ratio"] == 0:
            for name in RECON_FIELDS:  # recon_from may be gone already, as a default of UNLESS_DEFAULT
                values.pop(name, None)
        if values["composition_weight"] == 0:
            # composition_on may be gone already, as a default of UNLESS_DEFAULT; the disc stays while negatives use it
            kept = () if "negative_composition_l1" not in values else ("composition_radius_px",)
            for name in set(COMPOSITION_FIELDS) - set(kept):
                values.pop(name, None)
        if values.get("init_geometry_weight", 0.0) == 0:  # no term (gone as a default): nothing to choose
            values.pop("init_geometry_on", None)
            values.pop("init_geometry_context_weight", None)
        return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


READER_FIELDS = ("crop_reader", "cache_mib")
SAMPLER_FIELDS = ("sampler", "neighbourhood_px", "shuffle_neighbourhoods")
RECON_FIELDS = ("recon_weight", "recon_cells", "mask_ratio", "recon_from")
RECON_SOURCES = ("place", "context")
COMPOSITION_FIELDS = ("composition_weight", "composition_radius_px", "composition_temperature", "composition_on")
# What a term on the place representation acts on (`composition_on`, `init_geometry_on`): the whole
# representation, its context part (the representation's first ``Encoder.context_dim`` columns), or both,
# each part with a term of its own
PARTS_OF_TARGET = {"place": ("place",), "context": ("context",), "both": ("place", "context")}
PART_TARGETS = tuple(PARTS_OF_TARGET)
# the options on the small CNN's patch stem, each refused with another encoder unless at its default
STEM_FIELDS = ("freeze_stem", "stem_lr_scale", "patch_recon_weight", "keep_stem_fill")
# fields added after the first trained configs, part of the digest only when not at these defaults
UNLESS_DEFAULT = {
    "max_negative_m": None,
    "freeze_stem": False,
    "stem_lr_scale": 1.0,
    "decorrelation_weight": 0.0,
    "patch_recon_weight": 0.0,
    "recon_from": "place",
    "init_pull": 0.0,
    "composition_on": "place",
    "negative_composition_l1": None,
    "keep_stem_fill": False,
    "init_geometry_weight": 0.0,
    "init_geometry_on": "place",
    "init_geometry_context_weight": None,
}

# What `loc2vec train-regions` trains a model for new regions with, unless given a config: the recipe of the
# leave-one-region-out study in docs/evaluation.md (masked reconstruction beside the triplet loss, 24 epochs).
# With the default patience (4) runs stop after 7-17 epochs on the noisy validation loss; the whole one-cycle
# schedule (patience 24) was measured over three seeds too: the same means at twice the training time.
TRANSFER_RECIPE = {"recon_weight": 10.0, "mask_ratio": 0.5, "recon_cells": 4, "epochs": 24}
# Batches per epoch per region of the recipe: a model of N regions trains N times as many, so it sees each region as
# often as a model of that region alone (docs/evaluation.md, "The multi-region model on each region's own test blocks").
RECIPE_STEPS_PER_REGION = 40


def transfer_recipe(regions: int = 1) -> TrainConfig:
    """The training config of ``TRANSFER_RECIPE`` for a model of ``regions`` regions: ``RECIPE_STEPS_PER_REGION``
    batches per epoch for each region, the other fields at their defaults."""
    if regions < 1:
        raise ConfigError(f"a model trains on at least one region, got {regions}")
    return TrainConfig(**TRANSFER_RECIPE, steps_per_epoch=RECIPE_STEPS_PER_REGION * regions)
