"""Many catalog regions in one model, in Dagster.

``region_samples`` splits a catalog region's current mosaic into train/val/test blocks with its own leak
buffer (blocking leakage check), as ``sample_locations`` splits the main region; a region too small for
that split gets the evaluation-only split (no validation blocks) and can be scored but not trained on.
``multi_region_model`` trains one model over the chosen regions' splits (the transfer recipe by default)
and registers it in MLflow with every region's lineage. ``region_evaluation`` scores a model on a
region's test blocks beside the baselines computed there, without training ("can I use this encoder on
my city?"). Each region's latest split is found through the instance's event log, so a faulty or not yet
rendered catalog region does not hold the others back.
"""

from dataclasses import replace
from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.evaluation import metrics_table
from assets.metadata import markdown_table
from assets.progress import progress_extra
from assets.raster import current_mosaic
from assets.regions import GROUP, REGION_MOSAIC, regions_partitions
from assets.training import (
    RETRAIN_POLICY,
    SamplesConfig,
    TrainingConfig,
    model_metadata,
    split_leakage_check,
    weights_finite,
)
from loc2vec import tracking
from loc2vec.data.chunked import open_reader
from loc2vec.data.locations import build_sample_locations, split_table
from loc2vec.data.samples import EVALUATION_ONLY, SplitSpec, SplitTooSmall
from loc2vec.evaluation.existing_model import check_compatible, load_existing_model
from loc2vec.evaluation.region import embed_and_evaluate, region_record
from loc2vec.evaluation.stage import protocol_points
from loc2vec.evaluation.support import warnings
from loc2vec.io import json_text, write_json
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.training.config import RECIPE_STEPS_PER_REGION, TrainConfig, transfer_recipe
from loc2vec.training.multi import (
    RegionInput,
    common_crop_px,
    model_dir_name,
    region_input,
    train_and_register_regions,
)
from loc2vec.training.run import ModelManifest
from resources import MlflowTracking, ProjectStorage, RegionCatalog, TorchDevice
from resources.paths import PROJECT_ROOT

REGION_SAMPLES = dg.AssetKey("region_samples")
MULTI_REGION_MODEL = dg.AssetKey("multi_region_model")
SPLIT_RECORD = "region_split"  # region_samples' metadata: the RegionInput as JSON, read by multi_region_model
TRAINING, EVALUATION_ONLY_SPLIT = "training", "evaluation_only"
_RECIPE = transfer_recipe()


def features_of(here: ProjectStorage, version: str) -> FeaturesManifest:
    """The region's feature layers of ``version`` (the ones its mosaic was drawn from)."""
    path = Path(here.data_dir, "features", version, "manifest.json")
    if not path.is_file():
        raise dg.Failure(f"feature layers {version} of {here.data_dir} are gone: materialize region_features again")
    return FeaturesManifest.load(path)


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    partitions_def=regions_partitions,
    deps=[REGION_MOSAIC],
    group_name=GROUP,
    kinds={"parquet"},
    description="Anchor locations of a catalog region with train/val/test splits by spatial blocks and its own "
    "leak buffer, cut from its current mosaic; a region too small for that split gets the evaluation-only split "
    "(scored, not trained on).",
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec(
            "no_split_leakage",
            asset="region_samples",
            blocking=True,
            description="No test anchor within r_pos + crop diagonal of a train or val anchor.",
        )
    ],
)
def region_samples(
    context: dg.AssetExecutionContext, config: SamplesConfig, catalog: RegionCatalog, storage: ProjectStorage
):
    name = context.partition_key
    entry = catalog.region(name)  # a fault of this region fails this partition only, naming the fault
    here = storage.for_region(name)
    mosaic_path = current_mosaic(here)
    if mosaic_path is None:
        raise dg.Failure(f"region {name!r} has no complete mosaic: materialize its region_raster_blocks")
    reader = open_reader(mosaic_path)
    version = Path(mosaic_path).name.removesuffix(".zarr")
    spec, split = SplitSpec(**config.model_dump()), TRAINING
    try:
        manifest, report = build_sample_locations(reader, spec, version, here.path("samples"))
    except SplitTooSmall as exc:
        context.log.warning(f"{name}: {exc}; splitting for evaluation only (no validation blocks): not trainable")
        spec, split = replace(spec, **EVALUATION_ONLY), EVALUATION_ONLY_SPLIT
        try:
            manifest, report = build_sample_locations(reader, spec, version, here.path("samples"))
        except SplitTooSmall as again:
            raise dg.Failure(f"region {name!r} is too small even for the evaluation-only split: {again}") from None
    bbox = ",".join(f"{v:g}" for v in entry.region.bbox.as_tuple()) if entry.region.bbox else ""
    record = region_input(name, entry.region.weight, manifest, mosaic_path, osm_bbox=bbox)
    pruned = here.prune("samples", manifest.path)
    frame = manifest.read()
    yield dg.Output(
        manifest,
        metadata={
            "region": name,
            "split": split,
            "splits": markdown_table(["split", "anchors", "blocks"], split_table(frame)),
            "leak_distance_m": round(report.leak_distance_m, 1),
            "min_test_train_m": round(report.min_test_train_m, 1),
            "leakage_passed": report.passed,
            "crop_px": spec.crop_px,
            "mosaic_version": version,
            "samples_file": dg.MetadataValue.path(manifest.path),
            SPLIT_RECORD: dg.MetadataValue.json(record.to_dict()),
            "pruned_old_versions": len(pruned),
        },
    )
    yield split_leakage_check(report)


def latest_split(instance: dg.DagsterInstance, region: str) -> tuple[RegionInput, str]:
    """The region's newest ``region_samples`` (its training inputs and which split), checked to still be there
    and to have passed its leakage check; a clear failure naming the region otherwise."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=REGION_SAMPLES, asset_partitions=[region]), limit=1
    ).records
    event = records[0].asset_materialization if records else None
    if event is None or SPLIT_RECORD not in event.metadata:
        raise dg.Failure(f"region {region!r} has no split: materialize region_samples for it first")
    found = RegionInput.from_dict(event.metadata[SPLIT_RECORD].value)
    for path in (found.samples.path, found.mosaic_path):
        if not Path(path).exists():
            raise dg.Failure(f"region {region!r}: its split's {path} is gone: materialize region_samples again")
    if not event.metadata["leakage_passed"].value:
        raise dg.Failure(f"region {region!r}: its split failed the leakage check: materialize region_samples again")
    return found, str(event.metadata["split"].value)


class MultiRegionTrainingConfig(TrainingConfig):
    regions: list[str] = Field(
        default=[],
        description="Catalog regions to train on (default: every usable catalog region whose region_samples "
        "holds a training split).",
    )
    weights: dict[str, float] = Field(
        default={}, description="Sampling weight per region name (default: the catalog's weight, 1.0)."
    )
    epochs: int = Field(_RECIPE.epochs, description="Maximum epochs (early stopping on validation loss).")
    steps_per_epoch: int | None = Field(
        None,
        description=f"Batches per epoch (default: {RECIPE_STEPS_PER_REGION} for each region trained on, so each "
        "region is seen as often as by a model of that region alone).",
    )
    recon_weight: float = Field(
        _RECIPE.recon_weight,
        description="Weight of the masked reconstruction of the channel raster beside the metric loss (0: off).",
    )
    recon_cells: int = Field(
        _RECIPE.recon_cells,
        description="Cells per crop side of the grid whose channel shares and presence it predicts.",
    )
    mask_ratio: float = Field(_RECIPE.mask_ratio, description="Share of the anchor's cells masked before encoding.")


def region_train_config(config: MultiRegionTrainingConfig, regions: int, crop_px: int) -> TrainConfig:
    """The training config of a model of ``regions`` regions (without ``steps_per_epoch``: the recipe's batches
    per epoch for each region)."""
    values = config.model_dump(exclude={"regions", "weights"})
    if values["steps_per_epoch"] is None:
        values["steps_per_epoch"] = transfer_recipe(regions).steps_per_epoch
    return TrainConfig(**values, crop_px=crop_px)


def chosen_regions(
    context: dg.AssetExecutionContext, config: MultiRegionTrainingConfig, catalog: RegionCatalog
) -> list[RegionInput]:
    """The regions to train on with their weights: the named ones (each must have a training split) or every
    usable catalog region that has one."""
    loaded = catalog.load()
    if config.regions:
        twice = sorted({n for n in config.regions if config.regions.count(n) > 1})
        if twice:
            raise dg.Failure(f"regions named more than once: {', '.join(twice)}")
        entries = [loaded.region(n) for n in config.regions]  # an unknown or faulty region fails here
        found = [(e, *latest_split(context.instance, e.name)) for e in entries]
        small = [e.name for e, _, split in found if split != TRAINING]
        if small:
            raise dg.Failure(f"regions {', '.join(small)} have only the evaluation-only split: too small to train on")
    else:
        found = []
        for entry in loaded.usable():
            try:
                region, split = latest_split(context.instance, entry.name)
            except dg.Failure as exc:
                context.log.info(f"skipping {entry.name}: {exc.description}")
                continue
            if split == TRAINING:
                found.append((entry, region, split))
            else:
                context.log.info(f"skipping {entry.name}: its split is for evaluation only")
        if not found:
            raise dg.Failure("no catalog region has a training split: materialize region_samples first")
    unknown = sorted(set(config.weights) - {e.name for e, _, _ in found})
    if unknown:
        raise dg.Failure(f"weights name regions not trained on: {', '.join(unknown)}")
    return [replace(region, weight=float(config.weights.get(e.name, e.region.weight))) for e, region, _ in found]


@dg.asset(
    # retrained on LOC2VEC_RETRAIN_CRON when a region's split changed since the previous tick (a region's OSM
    # update re-renders its mosaic, which re-splits it), or by hand
    automation_condition=RETRAIN_POLICY,
    deps=[dg.AssetDep(REGION_SAMPLES, partition_mapping=dg.AllPartitionMapping())],
    group_name="training",
    kinds={"pytorch", "mlflow"},
    pool="gpu",
    description="One encoder trained over several catalog regions (anchors drawn across them by weight, each "
    "region with its own split), logged and registered in MLflow with every region's lineage. Retrained on "
    "LOC2VEC_RETRAIN_CRON when a region's split changed, or by hand: choose the regions and weights in the "
    "Launchpad (default: every region with a training split, the transfer recipe).",
    code_version="1",
)
def multi_region_model(
    context: dg.AssetExecutionContext,
    config: MultiRegionTrainingConfig,
    catalog: RegionCatalog,
    device: TorchDevice,
    mlflow_tracking: MlflowTracking,
    storage: ProjectStorage,
) -> dg.Output[ModelManifest]:
    regions = chosen_regions(context, config, catalog)
    train_config = region_train_config(config, len(regions), common_crop_px(regions))
    schema_json = features_of(storage.for_region(regions[0].name), regions[0].features_version).schema().to_json()
    uri = mlflow_tracking.uri(storage.data_dir)
    spec = device.spec()
    context.log.info(f"training on {', '.join(r.name for r in regions)} on {spec.describe()}, tracking at {uri}")
    run_dir = storage.path("models", model_dir_name(train_config.digest(), regions))
    manifest = train_and_register_regions(
        train_config,
        regions,
        schema_json,
        spec,
        run_dir,
        uri,
        lineage_tags={
            "dagster_run_id": context.run.run_id,
            "dagster_run_url": mlflow_tracking.dagster_run_url(context.run.run_id),
            "git_commit": tracking.git_commit(PROJECT_ROOT),
        },
        model_name=mlflow_tracking.model_name,
        experiment=mlflow_tracking.experiment,
        log=context.log.info,
        progress=lambda done, total: context.log.info(
            f"trained {done}/{total} epochs", extra=progress_extra("epochs", done, total)
        ),
    )
    pruned = storage.prune("models", run_dir)
    rows = [(r["name"], r["weight"], r["n_train"], r["n_val"], r["mosaic_version"]) for r in manifest.regions]
    return dg.Output(
        manifest,
        metadata={
            "regions": markdown_table(["region", "weight", "train", "val", "mosaic"], rows),
            **model_metadata(manifest, mlflow_tracking, spec.describe(), len(pruned)),
        },
    )


@dg.asset_check(asset=multi_region_model, blocking=True, description="All model weights are finite.")
def multi_region_model_weights_finite(multi_region_model: ModelManifest) -> dg.AssetCheckResult:
    return weights_finite(multi_region_model)


class RegionEvaluationConfig(dg.Config):
    model: str = Field(
        default="",
        description="The model: models:/NAME/VERSION, models:/NAME@ALIAS or a local weights file (default: the "
        "latest multi_region_model's registered version, else the champion, models:/<model_name>@champion).",
    )


def default_model(instance: dg.DagsterInstance, mlflow_tracking: MlflowTracking) -> str:
    """The latest multi_region_model's registered version, else the registered champion."""
    records = instance.fetch_materializations(dg.AssetRecordsFilter(asset_key=MULTI_REGION_MODEL), limit=1).records
    event = records[0].asset_materialization if records else None
    if event is not None and "model_uri" in event.metadata:
        return str(event.metadata["model_uri"].value)
    return f"models:/{mlflow_tracking.model_name}@champion"


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),  # a new split or a new multi-region model
    partitions_def=regions_partitions,
    deps=[REGION_SAMPLES, MULTI_REGION_MODEL],
    group_name=GROUP,
    kinds={"sklearn", "mlflow"},
    description="A model scored on a catalog region's held-out test blocks beside the baselines computed on the "
    "same points, without training (default model: the latest multi_region_model; re-scored for a new split or "
    "model). Logged onto the model's MLflow run as region/<name>/<embedder>/<metric>.",
    code_version="1",
)
def region_evaluation(
    context: dg.AssetExecutionContext,
    config: RegionEvaluationConfig,
    catalog: RegionCatalog,
    mlflow_tracking: MlflowTracking,
    storage: ProjectStorage,
) -> dg.Output[dict]:
    name = context.partition_key
    entry = catalog.region(name)
    here = storage.for_region(name)
    region, split = latest_split(context.instance, name)
    reference = config.model or default_model(context.instance, mlflow_tracking)
    uri = mlflow_tracking.uri(storage.data_dir)
    model = load_existing_model(reference, uri)
    reader = open_reader(region.mosaic_path)
    check_compatible(model, entry.region.render.resolution_m, list(reader.channel_names))
    if model.config.crop_px > region.samples.spec["crop_px"]:
        raise dg.Failure(
            f"region {name!r} was split for {region.samples.spec['crop_px']}-px crops, the model cuts "
            f"{model.config.crop_px}-px ones: its test crops could reach training ones; split it for the model's crop"
        )
    features = features_of(here, region.features_version)
    points = protocol_points(region.samples, features, reader)
    document, vectors = embed_and_evaluate(model, points, reader)
    document["region"] = {"name": name, **region_record(features, region.mosaic_version, region.samples, split)}
    source = model.source
    model_id = f"v{source['version']}" if source.get("version") else str(source.get("weights_sha256"))[:12]
    path = here.path("evaluation", f"evaluation-{model_id}-{Path(region.samples.path).stem}.json")
    write_json(document, path)
    here.prune("evaluation", path)
    run_id = model.source.get("run_id")
    if run_id:  # a registered version: the scores go onto its run, per region
        tracking.log_region_evaluation(uri, str(run_id), name, _scores(document), json_text(document))
    for line in warnings(document):
        context.log.warning(f"{name}: {line}")
    return dg.Output(
        document,
        metadata={
            "region": name,
            "split": split,
            "model": reference,
            "model_source": dg.MetadataValue.json(model.source),
            "metrics": metrics_table(document),
            "n_points": len(vectors),
            "samples_version": Path(region.samples.path).stem,
            "evaluation_file": dg.MetadataValue.path(str(path)),
        },
    )


def _scores(document: dict) -> dict[str, dict[str, float]]:
    return {"model": document["model"], **document["baselines"]}


MULTI_REGION_ASSETS = [region_samples, multi_region_model, region_evaluation]
MULTI_REGION_CHECKS = [multi_region_model_weights_finite]
