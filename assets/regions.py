"""The region catalog in Dagster: import, render and embed each catalog region on its own.

Partitions: ``regions`` (one per catalog region) and ``region_blocks`` (``"<region>|block-I-J"``, one per
spatial block of a region; a region's blocks follow from its size). Both are dynamic: ``region_catalog_sensor``
adds the catalog's regions and their blocks, and ``region_features`` adds a region's blocks when it runs (so a
region partition added in the UI gets its blocks too). Each region lives in ``<data_dir>/regions/<name>``,
laid out as a single-region data directory.

``region_features`` imports a region and observes ``region_render_inputs`` per block: the digest of what the
block draws, so only blocks an OSM change touched re-render. ``region_raster_blocks`` renders one block into
the region's mosaic version (sharing unchanged units with the current one); the run that completes a version
makes it the region's current mosaic and reports ``region_mosaic`` for the region. ``region_embeddings``
embeds a grid over the region's current mosaic with a registered (or local) model: no training.
"""

import fcntl
from dataclasses import replace
from pathlib import Path

import dagster as dg
import numpy as np
from pydantic import Field

from assets.metadata import counts_table, osm_time_tags
from assets.progress import progress_extra
from assets.raster import (
    DATA_VERSION_TAG,
    current_mosaic,
    observe_block_inputs,
    observed_features,
    publish_mosaic,
    render_metadata,
    values_in_range,
)
from loc2vec.evaluation.embedders import encode
from loc2vec.evaluation.existing_model import check_compatible, load_existing_model
from loc2vec.evaluation.protocol import grid_points, to_geoparquet_frame
from loc2vec.io import write_geoparquet
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.regions import CheckedRegion, build_region_features, partition_key
from loc2vec.render.incremental import start_version
from loc2vec.render.mosaic import MosaicManifest, render_mosaic
from loc2vec.store.mosaic import open_mosaic
from resources import MlflowTracking, OsmSource, ProjectStorage, RegionCatalog
from resources.regions import region_spec

regions_partitions = dg.DynamicPartitionsDefinition(name="regions")
region_block_partitions = dg.DynamicPartitionsDefinition(name="region_blocks")
REGION_RENDER_INPUTS = dg.AssetKey("region_render_inputs")
REGION_MOSAIC = dg.AssetKey("region_mosaic")
GROUP = "regions"


def sync_block_partitions(instance: dg.DagsterInstance, entry: CheckedRegion) -> list[str]:
    """Make the region's ``region_blocks`` partitions its current blocks: add the missing ones and delete the
    region's keys of another split (its size or render settings changed). Returns the region's keys."""
    keys = entry.partition_keys()
    prefix = partition_key(entry.name, "block-0-0").removesuffix("block-0-0")
    known = set(instance.get_dynamic_partitions(region_block_partitions.name))
    missing = [k for k in keys if k not in known]
    if missing:
        instance.add_dynamic_partitions(region_block_partitions.name, missing)
    for stale in sorted(k for k in known if k.startswith(prefix) and k not in keys):
        instance.delete_dynamic_partition(region_block_partitions.name, stale)
    return keys


@dg.asset(
    partitions_def=regions_partitions,
    group_name=GROUP,
    kinds={"python", "parquet"},
    description="A catalog region's features, classified into the channel schema and clipped to its bbox; "
    "reports what each of its blocks draws (region_render_inputs).",
    code_version="1",
)
def region_features(
    context: dg.AssetExecutionContext, catalog: RegionCatalog, osm: OsmSource, storage: ProjectStorage
) -> dg.Output[FeaturesManifest]:
    name = context.partition_key
    entry = catalog.region(name)  # a fault of this region fails this partition only, naming the fault
    here = storage.for_region(name)
    manifest, stats = build_region_features(entry, osm.schema(), here.path("features"))
    keys = sync_block_partitions(context.instance, entry)
    digests = observe_block_inputs(
        context, manifest, region_spec(entry), REGION_RENDER_INPUTS, lambda block: partition_key(name, block)
    )
    pruned = here.prune("features", Path(manifest.path).parent)
    context.log.info(f"{name}: imported {stats.total} features in {stats.seconds:.2f} s; blocks {', '.join(keys)}")
    return dg.Output(
        manifest,
        data_version=dg.DataVersion(manifest.version),
        metadata={
            "region": name,
            "extract": dg.MetadataValue.path(str(entry.region.extract)),
            "features_per_channel": counts_table(stats.features_per_channel),
            "n_features": stats.total,
            "bbox": str(stats.bbox),
            "blocks": len(digests),
            "osm_sha256": manifest.osm_sha256,
            **osm_time_tags(manifest),
            "features_file": dg.MetadataValue.path(manifest.path),
            "pruned_old_versions": len(pruned),
        },
    )


@dg.multi_observable_source_asset(
    specs=[
        dg.AssetSpec(
            REGION_RENDER_INPUTS,
            deps=[dg.AssetDep("region_features", partition_mapping=dg.AllPartitionMapping())],
            partitions_def=region_block_partitions,
            group_name=GROUP,
            description="What each block of a catalog region draws: a digest of the feature rows its render "
            "units reach (the data version). Observed by region_features; a block an OSM change did not touch "
            "keeps its version, so only touched region_raster_blocks partitions become stale.",
        )
    ],
)
def region_render_inputs(context: dg.AssetExecutionContext, catalog: RegionCatalog, storage: ProjectStorage):
    """Observe every imported region's blocks again from its newest feature layers."""
    for entry in catalog.load().usable():
        manifests = sorted(
            Path(storage.for_region(entry.name).data_dir, "features").glob("*/manifest.json"),
            key=lambda p: p.stat().st_mtime,
        )
        if manifests:
            sync_block_partitions(context.instance, entry)
            observe_block_inputs(
                context,
                FeaturesManifest.load(manifests[-1]),
                region_spec(entry),
                REGION_RENDER_INPUTS,
                lambda block, name=entry.name: partition_key(name, block),
            )


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    partitions_def=region_block_partitions,
    deps=[REGION_RENDER_INPUTS],
    group_name=GROUP,
    kinds={"mapnik", "zarr"},
    description="Renders one spatial block of a catalog region into its Zarr mosaic (units whose input "
    "changed and any unfinished; the others are shared with the current mosaic). The run that completes a "
    "version checks it, makes it the region's current mosaic and reports region_mosaic.",
    code_version="1",
)
def region_raster_blocks(
    context: dg.AssetExecutionContext, catalog: RegionCatalog, storage: ProjectStorage
) -> dg.Output[MosaicManifest]:
    key = context.partition_key
    entry, block = catalog.load().parse_partition_key(key)
    here = storage.for_region(entry.name)
    spec = region_spec(entry)
    features = observed_features(context, REGION_RENDER_INPUTS, key, "region_features")
    start = start_version(features, spec, here.path("mosaic"), current_mosaic(here))
    manifest = render_mosaic(
        features,
        spec,
        here.path("mosaic"),
        block=block,
        progress=lambda done, total: context.log.info(
            f"{key}: rendered {done}/{total} units", extra=progress_extra("units", done, total)
        ),
    )
    published = publish_if_complete(context, entry.name, manifest, here)
    context.log.info(
        f"{key}: rendered {manifest.rendered_units} units, skipped {manifest.skipped_units} complete or "
        f"unchanged, {manifest.seconds:.2f} s; {published}"
    )
    return dg.Output(manifest, metadata=render_metadata(manifest, start, region_mosaic=published))


def publish_if_complete(
    context: dg.AssetExecutionContext, region: str, block: MosaicManifest, here: ProjectStorage
) -> str:
    """When every unit of ``block``'s mosaic version is rendered and it is not yet the region's current one:
    check it, make it current and report ``region_mosaic`` for ``region``. Serialised by a lock file, so of
    blocks finishing at once exactly one publishes. Returns what happened, for the run's metadata."""
    with open(here.path("mosaic", ".publish.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = int((~open_mosaic(block.path).done_mask()).sum())
        if missing:
            return f"waiting for {missing} units of other blocks"
        if current_mosaic(here) == block.path:
            return f"{block.version} is already current"
        whole = replace(block, block=None, rendered_units=0, skipped_units=0, seconds=0.0)
        report, metadata = publish_mosaic(context, whole, here)
        if not values_in_range(report):
            raise dg.Failure(f"region {region!r}: mosaic {block.version} has values out of range or is blank")
        context.log_event(
            dg.AssetMaterialization(
                asset_key=REGION_MOSAIC,
                partition=region,
                tags={DATA_VERSION_TAG: whole.version},
                metadata={**metadata, "region": region},
            )
        )
    return f"published {whole.version}"


region_mosaic = dg.AssetSpec(
    REGION_MOSAIC,
    deps=[dg.AssetDep("region_raster_blocks", partition_mapping=dg.AllPartitionMapping())],
    partitions_def=regions_partitions,
    group_name=GROUP,
    kinds={"zarr"},
    description="A catalog region's complete, checked mosaic (its current version). Reported by the "
    "region_raster_blocks run that completes a version; to re-publish one, materialize any of its blocks.",
)


class RegionEmbeddingsConfig(dg.Config):
    model: str = Field(
        default="",
        description="The model: models:/NAME/VERSION, models:/NAME@ALIAS or a local weights file "
        "(default: the registered champion, models:/<model_name>@champion, in the project's MLflow store).",
    )
    grid_spacing_m: float = Field(default=100.0, description="Spacing of the embedded grid in metres.")


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    partitions_def=regions_partitions,
    deps=[REGION_MOSAIC],
    group_name=GROUP,
    kinds={"pytorch", "parquet"},
    description="A grid over a catalog region's current mosaic, embedded with an existing model (no "
    "training): GeoParquet with one vector per point.",
    code_version="2",
)
def region_embeddings(
    context: dg.AssetExecutionContext,
    config: RegionEmbeddingsConfig,
    catalog: RegionCatalog,
    mlflow_tracking: MlflowTracking,
    storage: ProjectStorage,
) -> dg.MaterializeResult:
    from loc2vec.data.chunked import open_reader

    name = context.partition_key
    entry = catalog.region(name)
    here = storage.for_region(name)
    mosaic_path = current_mosaic(here)
    if mosaic_path is None:
        raise dg.Failure(f"region {name!r} has no complete mosaic: materialize its region_raster_blocks")
    reference = config.model or f"models:/{mlflow_tracking.model_name}@champion"
    model = load_existing_model(reference, mlflow_tracking.uri(storage.data_dir))
    store = open_mosaic(mosaic_path)
    check_compatible(model, entry.region.render.resolution_m, list(store.attrs["channel_names"]))
    reader = open_reader(mosaic_path)
    points = grid_points(reader, config.grid_spacing_m)
    vectors = encode(model.encoder, reader, points[["x", "y"]].to_numpy(), model.config.crop_px)
    version = Path(mosaic_path).name.removesuffix(".zarr")
    source = model.source
    model_id = f"v{source['version']}" if source.get("version") else str(source.get("weights_sha256", ""))[:12]
    path = here.path("embeddings", f"{version}-model-{model_id}.parquet")
    frame = to_geoparquet_frame(points).assign(embedding=list(np.asarray(vectors, dtype=np.float32)))
    write_geoparquet(frame, path)
    here.prune("embeddings", path)
    return dg.MaterializeResult(
        metadata={
            "region": name,
            "points": len(points),
            "dim": int(vectors.shape[1]) if len(vectors) else 0,
            "model": reference,
            "model_source": dg.MetadataValue.json(model.source),
            "mosaic_version": version,
            "finite": bool(np.isfinite(vectors).all()),
            "embeddings_file": dg.MetadataValue.path(str(path)),
        },
    )


REGION_ASSETS = [region_features, region_render_inputs, region_raster_blocks, region_mosaic, region_embeddings]
