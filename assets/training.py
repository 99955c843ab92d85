"""sample_locations (spatial splits, blocking leakage check) and trained_model (MLflow-registered)."""

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.metadata import markdown_table, osm_time_tags
from assets.progress import progress_extra
from loc2vec.data.chunked import open_reader
from loc2vec.data.locations import SamplesManifest, build_sample_locations, split_table
from loc2vec.data.samples import LeakageReport, SplitSpec
from loc2vec.models.encoders import load_encoder
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.render.mosaic import MosaicManifest
from loc2vec.tracking import git_commit
from loc2vec.training.config import TrainConfig
from loc2vec.training.run import ModelManifest, train_and_register
from resources import MlflowTracking, ProjectStorage, TorchDevice
from resources.paths import PROJECT_ROOT

# The retraining policy (README "Keeping a region up to date"): an OSM diff refreshes the mosaic, samples,
# embeddings and index with the current model; the model itself is retrained on this cron (default Sundays
# 04:00) when its inputs changed since, by the sensor `retrain_when_region_changed`, or by hand in the UI.
RETRAIN_CRON = os.environ.get("LOC2VEC_RETRAIN_CRON", "0 4 * * 0")
RETRAIN_POLICY = dg.AutomationCondition.on_cron(RETRAIN_CRON)

_SPLIT = SplitSpec()  # defaults live in the domain dataclasses; the Launchpad shows them
_TRAIN = TrainConfig()


class SamplesConfig(dg.Config):
    spacing_m: float = Field(_SPLIT.spacing_m, description="Candidate grid spacing (metres).")
    empty_share: float = Field(_SPLIT.empty_share, description="Share of empty candidates kept (sea, blank land).")
    block_m: float | None = Field(
        _SPLIT.block_m,
        description="Edge of the square spatial blocks that go whole to a split (None: ~20 blocks, 600-1500 m).",
    )
    test_fraction: float = Field(_SPLIT.test_fraction, description="Share of anchors (by whole blocks) for test.")
    val_fraction: float = Field(_SPLIT.val_fraction, description="Share of anchors (by whole blocks) for validation.")
    max_positive_m: float = Field(
        _SPLIT.max_positive_m,
        description="Furthest training positive (trained_model's r_context_m, else r_pos_m); part of the leak buffer.",
    )
    crop_px: int = Field(_SPLIT.crop_px, description="Crop edge in pixels; its diagonal is part of the leak buffer.")
    seed: int = Field(_SPLIT.seed, description="Seed of the candidate jitter and the block assignment.")
    split_candidates: int = Field(
        _SPLIT.split_candidates,
        description="Seeded block orders tried; the one whose splits best match their share of each channel wins.",
    )


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    group_name="training",
    kinds={"parquet"},
    description="Anchor locations with train/val/test splits by spatial blocks and a leak buffer.",
    code_version="2",
    check_specs=[
        dg.AssetCheckSpec(
            "no_split_leakage",
            asset="sample_locations",
            blocking=True,
            description="No test anchor within r_pos + crop diagonal of a train or val anchor.",
        )
    ],
)
def sample_locations(config: SamplesConfig, raster_mosaic: MosaicManifest, storage: ProjectStorage):
    spec = SplitSpec(**config.model_dump())
    reader = open_reader(raster_mosaic.path)  # in memory when it fits the default cache, else out of core
    manifest, report = build_sample_locations(reader, spec, raster_mosaic.version, storage.path("samples"))
    frame = manifest.read()
    pruned = storage.prune("samples", manifest.path)
    yield dg.Output(
        manifest,
        metadata={
            "splits": markdown_table(["split", "anchors", "blocks"], split_table(frame)),
            "leak_distance_m": round(report.leak_distance_m, 1),
            "min_test_train_m": round(report.min_test_train_m, 1),
            "busy_share": round(float(frame["busy"].mean()), 4),
            "samples_file": dg.MetadataValue.path(manifest.path),
            "pruned_old_versions": len(pruned),
        },
    )
    yield split_leakage_check(report)


class TrainingConfig(dg.Config):
    encoder: str = Field(
        _TRAIN.encoder, description="small_cnn | small_cnn_wide | resnet18 | efficientnet_b0 | mobilenet_v3_small"
    )
    embedding_dim: int = Field(
        _TRAIN.embedding_dim,
        description="Projection size the triplet loss trains (16 as in Loc2Vec); embeddings are the layer before.",
    )
    weights_path: str | None = Field(
        _TRAIN.weights_path, description="Local torchvision RGB weights (inflated to 12 ch)."
    )
    loss: str = Field(_TRAIN.loss, description="triplet (margin) | soft_pn (Sentiance) | infonce (NT-Xent).")
    margin: float = Field(_TRAIN.margin, description="Triplet margin (also of the validation loss).")
    temperature: float = Field(
        _TRAIN.temperature,
        description="Softmax temperature of InfoNCE (loss=infonce) and of the composition term's place "
        "representation similarities.",
    )
    mining: str = Field(_TRAIN.mining, description="In-batch mining: semihard | hard | all.")
    epochs: int = Field(_TRAIN.epochs, description="Maximum epochs (early stopping on validation loss).")
    steps_per_epoch: int = Field(_TRAIN.steps_per_epoch, description="Batches per epoch.")
    batch_size: int = Field(_TRAIN.batch_size, description="Anchors per batch (plus as many positives).")
    lr: float = Field(_TRAIN.lr, description="Peak learning rate (one-cycle).")
    weight_decay: float = Field(_TRAIN.weight_decay, description="AdamW weight decay.")
    r_pos_m: float = Field(_TRAIN.r_pos_m, description="Positives within this distance of the anchor.")
    r_neg_m: float = Field(_TRAIN.r_neg_m, description="Negatives at least this far from the anchor.")
    max_negative_m: float | None = Field(
        _TRAIN.max_negative_m,
        description="Negatives at most this far from the anchor (None: no limit); below the distance between "
        "regions, multi-region batches keep each anchor's negatives inside its own region.",
    )
    r_context_m: float | None = Field(
        _TRAIN.r_context_m,
        description="Wider positive radius for a share of anchors (None: off); sample_locations.max_positive_m must "
        "cover it.",
    )
    context_share: float = Field(_TRAIN.context_share, description="Share of anchors with a wide (context) positive.")
    max_shift_px: int = Field(_TRAIN.max_shift_px, description="Random shift of anchor and positive crops (pixels).")
    channel_dropout: float = Field(_TRAIN.channel_dropout, description="Chance of blanking each channel of a crop.")
    val_triplets: int = Field(_TRAIN.val_triplets, description="Fixed validation triplets (early stopping).")
    patience: int = Field(_TRAIN.patience, description="Early-stopping patience in epochs.")
    seed: int = Field(_TRAIN.seed, description="Seed of weights and data order.")
    num_workers: int = Field(_TRAIN.num_workers, description="DataLoader worker processes.")
    sampler: str = Field(
        _TRAIN.sampler,
        description="Anchor order: uniform | neighbourhood (squares of neighbourhood_px in a seeded order, "
        "shuffled shuffle_neighbourhoods at a time: for mosaics read out of core).",
    )
    neighbourhood_px: int = Field(_TRAIN.neighbourhood_px, description="Edge of a sampler neighbourhood (pixels).")
    shuffle_neighbourhoods: int = Field(
        _TRAIN.shuffle_neighbourhoods, description="Neighbourhoods whose anchors are shuffled together."
    )
    crop_reader: str = Field(
        _TRAIN.crop_reader,
        description="auto | memory | chunked: auto holds the mosaic in memory when it fits cache_mib, else reads "
        "it through a chunk cache (the crops are the same).",
    )
    cache_mib: float = Field(_TRAIN.cache_mib, description="Chunk cache budget per process (MiB).")
    recon_weight: float = Field(
        _TRAIN.recon_weight,
        description="Weight of the masked reconstruction of the channel raster beside the metric loss (0: off).",
    )
    recon_cells: int = Field(
        _TRAIN.recon_cells, description="Cells per crop side of the grid whose channel shares and presence it predicts."
    )
    mask_ratio: float = Field(_TRAIN.mask_ratio, description="Share of the anchor's cells masked before encoding.")
    recon_from: str = Field(
        _TRAIN.recon_from,
        description="place | context: what the reconstruction decodes from, the whole place representation or "
        "its context part alone (the last stage).",
    )
    decorrelation_weight: float = Field(
        _TRAIN.decorrelation_weight,
        description="Weight of the correlation between the place representation's dimensions within a batch "
        "(VICReg's covariance term; 0: off).",
    )
    freeze_stem: bool = Field(
        _TRAIN.freeze_stem,
        description="Keep the small CNN's patch stem at its seeded initial weights (a frozen random patch "
        "projection) and train the rest.",
    )
    stem_lr_scale: float = Field(
        _TRAIN.stem_lr_scale,
        description="Share of the learning rate the small CNN's patch stem trains at (1: as the rest).",
    )
    patch_recon_weight: float = Field(
        _TRAIN.patch_recon_weight,
        description="Weight of decoding each patch's pixels from the small CNN's patch stem features (0: off).",
    )
    init_pull: float = Field(
        _TRAIN.init_pull,
        description="Decoupled pull of the backbone's weights toward their seeded initial values at every step "
        "(L2-SP; 0: off).",
    )
    keep_stem_fill: bool = Field(
        _TRAIN.keep_stem_fill,
        description="Keep the small CNN's patch stem's seeded response to a uniform fill of each channel (each "
        "kernel's mean over its taps); the patterns around it train.",
    )
    composition_weight: float = Field(
        _TRAIN.composition_weight,
        description="Weight of matching each crop's neighbours in the place representation to its neighbours by the "
        "channels' mean over a disc at the crop's centre (0: off).",
    )
    composition_radius_px: float = Field(
        _TRAIN.composition_radius_px,
        description="Radius in pixels of the disc at the crop's centre that composition_weight and "
        "negative_composition_l1 compare crops by.",
    )
    composition_temperature: float = Field(
        _TRAIN.composition_temperature,
        description="Temperature of the neighbours by the disc's channel means (L1 distances); the place "
        "representation's neighbours use temperature.",
    )
    composition_on: str = Field(
        _TRAIN.composition_on,
        description="place | context | both: what the composition term shapes, the whole place representation, "
        "its context part alone (the last stage), or each with a term of its own.",
    )
    negative_composition_l1: float | None = Field(
        _TRAIN.negative_composition_l1,
        description="No negative of an anchor whose channel means over the composition disc lie within this L1 "
        "distance of the anchor's: far places of the same kind are not pushed apart (None: off).",
    )
    init_geometry_weight: float = Field(
        _TRAIN.init_geometry_weight,
        description="Weight of keeping the batch's relative distances in the place representation at those the "
        "seeded initial encoder (the untrained baseline, frozen) gives the unmasked crops (0: off).",
    )
    init_geometry_on: str = Field(
        _TRAIN.init_geometry_on,
        description="place | context | both: what init_geometry_weight keeps, the whole place representation's "
        "distances, its context part's alone (the last stage), or each with a term of its own.",
    )
    init_geometry_context_weight: float | None = Field(
        _TRAIN.init_geometry_context_weight,
        description="Under init_geometry_on=both, the weight of the context part's term apart from the whole "
        "representation's (None: init_geometry_weight).",
    )


@dg.asset(
    automation_condition=RETRAIN_POLICY,
    group_name="training",
    kinds={"pytorch", "mlflow"},
    pool="gpu",
    description="Triplet-trained encoder, logged and registered in MLflow with its data lineage. Retrained "
    "by the retraining policy (not on every OSM diff): on LOC2VEC_RETRAIN_CRON when its inputs changed, when "
    "retrain_when_region_changed sees LOC2VEC_RETRAIN_SHARE of the region changed, or by hand.",
    code_version="2",
)
def trained_model(
    context: dg.AssetExecutionContext,
    config: TrainingConfig,
    sample_locations: SamplesManifest,
    raster_mosaic: MosaicManifest,
    osm_features: FeaturesManifest,
    device: TorchDevice,
    mlflow_tracking: MlflowTracking,
    storage: ProjectStorage,
) -> dg.Output[ModelManifest]:
    train_config = TrainConfig(**config.model_dump(), crop_px=sample_locations.spec["crop_px"])
    uri = mlflow_tracking.uri(storage.data_dir)
    spec = device.spec()
    context.log.info(f"training on {spec.describe()}, tracking at {uri}")
    # one directory per (split, config): a new split never resumes a checkpoint trained on other anchors
    run_dir = storage.path("models", f"{Path(sample_locations.path).stem}-{train_config.digest()}")
    manifest = train_and_register(
        train_config,
        sample_locations,
        raster_mosaic.path,
        raster_mosaic.version,
        osm_features.osm_sha256,
        osm_features.schema().to_json(),
        spec,
        run_dir,
        uri,
        lineage_tags={
            "region": Path(osm_features.osm_path).name.removesuffix(".pbf").removesuffix(".osm"),
            "osm_bbox": ",".join(f"{v:g}" for v in osm_features.bbox),
            "dagster_run_id": context.run.run_id,
            "dagster_run_url": mlflow_tracking.dagster_run_url(context.run.run_id),
            "git_commit": git_commit(PROJECT_ROOT),
            **osm_time_tags(osm_features),
        },
        model_name=mlflow_tracking.model_name,
        experiment=mlflow_tracking.experiment,
        log=context.log.info,
        progress=lambda done, total: context.log.info(
            f"trained {done}/{total} epochs", extra=progress_extra("epochs", done, total)
        ),
    )
    pruned = storage.prune("models", run_dir)
    rows = [
        (h["epoch"], h["train_loss"], h["val_loss"], h["val_triplet_accuracy"], h["samples_per_s"])
        for h in manifest.history
    ]
    return dg.Output(
        manifest,
        metadata={
            "epochs": markdown_table(["epoch", "train loss", "val loss", "val triplet acc", "samples/s"], rows),
            **model_metadata(manifest, mlflow_tracking, spec.describe(), len(pruned)),
            **osm_time_tags(osm_features),
        },
    )


def split_leakage_check(report: LeakageReport) -> dg.AssetCheckResult:
    """The ``no_split_leakage`` check of a sample_locations materialization."""
    return dg.AssetCheckResult(
        check_name="no_split_leakage",
        passed=report.passed,
        metadata={
            "violations": report.violations,
            "min_test_train_m": report.min_test_train_m,
            "min_test_val_m": report.min_test_val_m,
            "leak_distance_m": report.leak_distance_m,
        },
    )


def model_metadata(
    manifest: ModelManifest, mlflow_tracking: MlflowTracking, device: str, pruned: int
) -> dict[str, object]:
    """A trained model's materialization metadata: its version, links to its MLflow run and model, its weights."""
    return {
        "best_epoch": manifest.best_epoch,
        "model_version": manifest.model_version,
        "model_uri": manifest.model_uri,
        "mlflow_run": dg.MetadataValue.url(mlflow_tracking.run_url(manifest.experiment_id, manifest.run_id)),
        "mlflow_model": dg.MetadataValue.url(mlflow_tracking.model_url(manifest.model_name, manifest.model_version)),
        "device": device,
        "weights": dg.MetadataValue.path(manifest.weights_path),
        "pruned_old_versions": pruned,
    }


@dg.asset_check(asset=trained_model, blocking=True, description="All model weights are finite.")
def trained_model_weights_finite(trained_model: ModelManifest) -> dg.AssetCheckResult:
    return weights_finite(trained_model)


def weights_finite(model: ModelManifest) -> dg.AssetCheckResult:
    """Passed when every floating-point tensor of the model's weights is finite; names the others."""
    import torch

    state = load_encoder(model.weights_path).state_dict()
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    return dg.AssetCheckResult(passed=not bad, metadata={"non_finite_tensors": ", ".join(bad) or "none"})
