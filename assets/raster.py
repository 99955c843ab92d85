"""render_inputs (what each spatial block draws), raster_blocks (one partition per spatial block) and
raster_mosaic (the complete, checked mosaic).

An OSM change makes only the blocks it touches stale: ``osm_features`` reports, for each block, the digest
of the feature rows its units draw (``loc2vec.render.inputs``) as an observation of ``render_inputs``; a
block whose features did not change keeps its data version, so only the touched ``raster_blocks``
partitions re-materialize. They start the new mosaic version from the current one (``mosaic/CURRENT``),
sharing every unit whose input did not change, and render their own changed units.
"""

import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import dagster as dg

from assets.metadata import markdown_table, osm_time_tags
from assets.progress import progress_extra
from loc2vec.grid import block_keys, check_blocks_per_side
from loc2vec.io import write_atomic
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.preview import (
    busiest_crops,
    channel_panel,
    composite,
    markdown_image,
    overview,
    overview_step,
    png_bytes,
    region_inside,
)
from loc2vec.render.incremental import VersionStart, start_version
from loc2vec.render.inputs import render_inputs as unit_render_inputs
from loc2vec.render.mosaic import MosaicManifest, MosaicSpec, plan_grid, render_mosaic
from loc2vec.render.styles import style_hash
from loc2vec.store.mosaic import MosaicReport, inspect_mosaic, open_mosaic
from resources import MapnikRenderer, ProjectStorage

# Spatial blocks per side of the region: read once, here, where the partitions are defined
BLOCKS_PER_SIDE = check_blocks_per_side(os.environ.get("LOC2VEC_RENDER_BLOCKS", "2"))
block_partitions = dg.StaticPartitionsDefinition(block_keys(BLOCKS_PER_SIDE))
RENDER_INPUTS = dg.AssetKey("render_inputs")
DATA_VERSION_TAG = "dagster/data_version"  # the tag an observation's data version is recorded under
CURRENT = "CURRENT"  # <data_dir>/mosaic/CURRENT: the path of the newest complete mosaic


def report_render_inputs(
    context: dg.AssetExecutionContext, features: FeaturesManifest, renderer: MapnikRenderer
) -> dict[str, str]:
    """Observe ``render_inputs``: each block's digest of what it draws from ``features`` (its data version)
    and where the features' manifest is. Returns the digests by block."""
    return observe_block_inputs(context, features, renderer.spec(blocks_per_side=BLOCKS_PER_SIDE), RENDER_INPUTS)


def observe_block_inputs(
    context: dg.AssetExecutionContext,
    features: FeaturesManifest,
    spec: MosaicSpec,
    asset_key: dg.AssetKey,
    partition_of: Callable[[str], str] = lambda block: block,
) -> dict[str, str]:
    """Log an observation of ``asset_key`` per spatial block of ``spec``, in the partition
    ``partition_of(block)``: the digest of the feature rows the block's units draw as its data version, and
    where ``features``' manifest is. Returns the digests by block."""
    grid = plan_grid(features, spec)
    schema = features.schema()
    inputs = unit_render_inputs(features, grid, style_hash(schema, grid.resolution, f"epsg:{grid.crs_epsg}"))
    manifest_path = features.save()
    digests = inputs.block_digests(spec.blocks_per_side)
    for block, digest in digests.items():
        context.log_event(
            dg.AssetObservation(
                asset_key=asset_key,
                partition=partition_of(block),
                tags={DATA_VERSION_TAG: digest},
                metadata={
                    "features_manifest": dg.MetadataValue.path(str(manifest_path)),
                    "features_version": features.version,
                    "units": len(grid.units_of_block(block, spec.blocks_per_side)),
                    **osm_time_tags(features),
                },
            )
        )
    return digests


@dg.multi_observable_source_asset(
    specs=[
        dg.AssetSpec(
            RENDER_INPUTS,
            deps=["osm_features"],
            partitions_def=block_partitions,
            group_name="raster",
            description="What each spatial block draws: a digest of the feature rows its render units reach, "
            "per block (the data version). Observed by osm_features; a block keeps its version when an OSM "
            "change does not touch it, so only the touched raster_blocks partitions become stale.",
        )
    ],
)
def render_inputs(context: dg.AssetExecutionContext, renderer: MapnikRenderer, storage: ProjectStorage):
    """Observe the blocks' render inputs again from the newest feature layers (as osm_features does)."""
    manifests = sorted(Path(storage.path("features")).glob("*/manifest.json"), key=lambda p: p.stat().st_mtime)
    if not manifests:
        raise dg.Failure("no feature layers yet: materialize osm_features first")
    report_render_inputs(context, FeaturesManifest.load(manifests[-1]), renderer)


def _features_of_block(context: dg.AssetExecutionContext, block: str) -> FeaturesManifest:
    """The feature layers the block's latest ``render_inputs`` observation names."""
    return observed_features(context, RENDER_INPUTS, block, "osm_features")


def observed_features(
    context: dg.AssetExecutionContext, asset_key: dg.AssetKey, partition: str, producer: str
) -> FeaturesManifest:
    """The feature layers the latest observation of ``asset_key``'s ``partition`` names (``producer``: the
    asset that observes it, named in the error when it has not yet)."""
    records = context.instance.fetch_observations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]), limit=1
    ).records
    observation = records[0].asset_observation if records else None
    if observation is None or "features_manifest" not in observation.metadata:
        raise dg.Failure(
            f"{asset_key.to_user_string()} of {partition} has not been observed: materialize {producer} first"
        )
    return FeaturesManifest.load(observation.metadata["features_manifest"].value)


def current_mosaic(storage: ProjectStorage) -> str | None:
    """The newest complete mosaic (``mosaic/CURRENT``, written by raster_mosaic), if it still exists."""
    pointer = Path(storage.path("mosaic", CURRENT))
    path = pointer.read_text().strip() if pointer.is_file() else ""
    return path if path and Path(path).is_dir() else None


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    partitions_def=block_partitions,
    deps=[RENDER_INPUTS],
    group_name="raster",
    kinds={"mapnik", "zarr"},
    description="Renders one spatial block of the region into the Zarr mosaic: the units whose render "
    "input changed since the current mosaic (the others are shared with it) and any not yet finished.",
    code_version="2",
)
def raster_blocks(
    context: dg.AssetExecutionContext, renderer: MapnikRenderer, storage: ProjectStorage
) -> dg.Output[MosaicManifest]:
    spec = renderer.spec(blocks_per_side=BLOCKS_PER_SIDE)
    block = context.partition_key
    features = _features_of_block(context, block)
    start = start_version(features, spec, storage.path("mosaic"), current_mosaic(storage))
    manifest = render_mosaic(
        features,
        spec,
        storage.path("mosaic"),
        block=block,
        progress=lambda done, total: context.log.info(
            f"{block}: rendered {done}/{total} units", extra=progress_extra("units", done, total)
        ),
    )
    context.log.info(
        f"{block}: rendered {manifest.rendered_units} units, "
        f"skipped {manifest.skipped_units} complete or unchanged, {manifest.seconds:.2f} s"
    )
    return dg.Output(manifest, metadata=render_metadata(manifest, start))


def render_metadata(manifest: MosaicManifest, start: VersionStart, **more: object) -> dict[str, object]:
    """A rendered block's materialization metadata (``more`` before the store's path)."""
    return {
        "rendered_units": manifest.rendered_units,
        "skipped_units": manifest.skipped_units,
        "seconds": round(manifest.seconds, 3),
        "mosaic_version": manifest.version,
        "shared_from": start.shared_from or "",
        **more,
        "store": dg.MetadataValue.path(manifest.path),
    }


def _mosaic_of_features(
    context: dg.AssetExecutionContext,
    blocks: dict[str, MosaicManifest],
    renderer: MapnikRenderer,
    storage: ProjectStorage,
) -> MosaicManifest:
    """The mosaic version of the newest feature layers: the touched blocks rendered into it, the others
    share their units with the current mosaic (a change that touched no block gives a version of shared
    units only)."""
    features = _features_of_block(context, block_keys(BLOCKS_PER_SIDE)[0])
    start = start_version(features, renderer.spec(BLOCKS_PER_SIDE), storage.path("mosaic"), current_mosaic(storage))
    for manifest in blocks.values():
        if Path(manifest.path) == start.path:
            return manifest
    if not start.path.is_dir():
        raise dg.Failure(f"no block was rendered for features {features.version}: materialize raster_blocks")
    return replace(
        next(iter(blocks.values())),
        path=str(start.path),
        version=start.path.name.removesuffix(".zarr"),
        block=None,
        rendered_units=0,
        skipped_units=0,
        seconds=0.0,
        features_version=features.version,
        osm_sha256=features.osm_sha256,
        osm_sequence=features.osm_sequence,
        osm_timestamp=features.osm_timestamp,
    )


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    group_name="raster",
    kinds={"zarr"},
    description="The complete 12-channel mosaic of the region, validated, with previews.",
    code_version="2",
    check_specs=[
        dg.AssetCheckSpec("complete", asset="raster_mosaic", blocking=True, description="No unit missing."),
        dg.AssetCheckSpec("values_in_range", asset="raster_mosaic", blocking=True, description="uint8, non-blank."),
        dg.AssetCheckSpec("channel_coverage", asset="raster_mosaic", description="Warns on empty channels."),
    ],
)
def raster_mosaic(
    context: dg.AssetExecutionContext,
    raster_blocks,  # {block: manifest}; the manifest itself when the region is one block (Dagster's IO manager)
    renderer: MapnikRenderer,
    storage: ProjectStorage,
):
    blocks = raster_blocks if isinstance(raster_blocks, dict) else {block_keys(BLOCKS_PER_SIDE)[0]: raster_blocks}
    first = _mosaic_of_features(context, blocks, renderer, storage)
    report, metadata = publish_mosaic(context, first, storage)
    yield dg.Output(first, data_version=dg.DataVersion(first.version), metadata=metadata)
    yield dg.AssetCheckResult(
        check_name="complete",
        passed=report.complete,
        metadata={
            "missing_units": len(report.missing_units),
            "first_missing": str(report.missing_units[:10]),
            "chunks_written": report.chunks_written,
        },
    )
    yield dg.AssetCheckResult(
        check_name="values_in_range",
        passed=values_in_range(report),
        metadata={"min": report.min_value, "max": report.max_value, "dtype": report.dtype},
    )
    yield dg.AssetCheckResult(
        check_name="channel_coverage",
        passed=not report.empty_channels,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"empty_channels": ", ".join(report.empty_channels) or "none", "coverage": metadata["coverage"]},
    )


def values_in_range(report: MosaicReport) -> bool:
    """uint8 values, not all blank."""
    return bool(report.dtype == "uint8" and report.max_value > 0 and report.min_value >= 0)


def publish_mosaic(
    context: dg.AssetExecutionContext, manifest: MosaicManifest, storage: ProjectStorage
) -> tuple[MosaicReport, dict]:
    """Inspect the mosaic version ``manifest`` names, write its previews, make it ``mosaic/CURRENT`` when it is
    complete and prune older versions; returns the inspection and the materialization's metadata."""
    store = open_mosaic(manifest.path)
    report = inspect_mosaic(store)
    if not report.complete:  # recorded, and the blocking "complete" check keeps it from downstream
        context.log.error(f"mosaic {manifest.path} is missing units {report.missing_units[:10]}: render every block")
    names = manifest.channel_names
    inside = region_inside(store.grid, overview_step(store.grid, 1024))
    picture = composite(overview(store, 1024), names, inside=inside)  # light land, blue water and sea
    overview_path = storage.path("mosaic", f"{manifest.version}_overview.png")
    overview_path.write_bytes(png_bytes(picture))
    panel = channel_panel(busiest_crops(store.path), names)
    grid = manifest.mosaic_grid
    coverage = markdown_table(["channel", "share of pixels > 0"], [(n, report.coverage[n]) for n in names])
    if report.complete:
        write_atomic(storage.path("mosaic", CURRENT), lambda tmp: tmp.write_text(str(manifest.path)))
    pruned = storage.prune("mosaic", manifest.path)
    metadata = {
        "coverage": coverage,
        "size_px": f"{grid.width} x {grid.height} x {len(names)}",
        "resolution_m": grid.resolution,
        "crs": f"EPSG:{grid.crs_epsg}",
        "chunks_written": report.chunks_written,
        "chunks_total": report.chunks_total,
        "mosaic_version": manifest.version,
        **osm_time_tags(manifest),
        "store": dg.MetadataValue.path(manifest.path),
        "preview": dg.MetadataValue.md(markdown_image(png_bytes(panel), "12 channels at 4 locations")),
        "region": dg.MetadataValue.md(markdown_image(png_bytes(picture), "region composite")),
        "overview_png": dg.MetadataValue.path(str(overview_path)),
        "pruned_old_versions": len(pruned),
    }
    return report, metadata
