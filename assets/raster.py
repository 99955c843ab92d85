"""raster_blocks (one partition per spatial block) and raster_mosaic (the complete, checked mosaic)."""

import os

import dagster as dg
import numpy as np

from assets.metadata import markdown_table, osm_time_tags
from assets.progress import progress_extra
from loc2vec.grid import block_keys, check_blocks_per_side
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
from loc2vec.render.mosaic import MosaicManifest, render_mosaic
from loc2vec.store.mosaic import inspect_mosaic, open_mosaic
from resources import MapnikRenderer, ProjectStorage

# Spatial blocks per side of the region: read once, here, where the partitions are defined
BLOCKS_PER_SIDE = check_blocks_per_side(os.environ.get("LOC2VEC_RENDER_BLOCKS", "2"))
block_partitions = dg.StaticPartitionsDefinition(block_keys(BLOCKS_PER_SIDE))


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    partitions_def=block_partitions,
    group_name="raster",
    kinds={"mapnik", "zarr"},
    description="Renders one spatial block of the region into the Zarr mosaic (skips finished units).",
    code_version="1",
)
def raster_blocks(
    context: dg.AssetExecutionContext,
    osm_features: FeaturesManifest,
    renderer: MapnikRenderer,
    storage: ProjectStorage,
) -> dg.Output[MosaicManifest]:
    spec = renderer.spec(blocks_per_side=BLOCKS_PER_SIDE)
    block = context.partition_key
    manifest = render_mosaic(
        osm_features,
        spec,
        storage.path("mosaic"),
        block=block,
        progress=lambda done, total: context.log.info(
            f"{block}: rendered {done}/{total} units", extra=progress_extra("units", done, total)
        ),
    )
    context.log.info(
        f"{context.partition_key}: rendered {manifest.rendered_units} units, "
        f"skipped {manifest.skipped_units} already complete, {manifest.seconds:.2f} s"
    )
    return dg.Output(
        manifest,
        metadata={
            "rendered_units": manifest.rendered_units,
            "skipped_units": manifest.skipped_units,
            "seconds": round(manifest.seconds, 3),
            "mosaic_version": manifest.version,
            "store": dg.MetadataValue.path(manifest.path),
        },
    )


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    group_name="raster",
    kinds={"zarr"},
    description="The complete 12-channel mosaic of the region, validated, with previews.",
    code_version="1",
    check_specs=[
        dg.AssetCheckSpec("complete", asset="raster_mosaic", blocking=True, description="No unit missing."),
        dg.AssetCheckSpec("values_in_range", asset="raster_mosaic", blocking=True, description="uint8, non-blank."),
        dg.AssetCheckSpec("channel_coverage", asset="raster_mosaic", description="Warns on empty channels."),
    ],
)
def raster_mosaic(context: dg.AssetExecutionContext, raster_blocks: dict[str, MosaicManifest], storage: ProjectStorage):
    versions = {m.version for m in raster_blocks.values()}
    if len(versions) != 1:
        raise dg.Failure(f"blocks were rendered for different mosaic versions {sorted(versions)}: re-render all blocks")
    first = next(iter(raster_blocks.values()))
    store = open_mosaic(first.path)
    report = inspect_mosaic(store)
    if not report.complete:  # recorded, and the blocking "complete" check below keeps it from downstream
        context.log.error(f"mosaic {first.path} is missing units {report.missing_units[:10]}: render every block")
    names = first.channel_names
    inside = region_inside(store.grid, overview_step(store.grid, 1024))
    picture = composite(overview(store, 1024), names, inside=inside)  # light land, blue water and sea
    overview_path = storage.path("mosaic", f"{first.version}_overview.png")
    overview_path.write_bytes(png_bytes(picture))
    panel = channel_panel(busiest_crops(store.path), names)
    grid = first.mosaic_grid
    coverage = markdown_table(["channel", "share of pixels > 0"], [(n, report.coverage[n]) for n in names])
    pruned = storage.prune("mosaic", first.path)
    yield dg.Output(
        first,
        data_version=dg.DataVersion(first.version),
        metadata={
            "coverage": coverage,
            "size_px": f"{grid.width} x {grid.height} x {len(names)}",
            "resolution_m": grid.resolution,
            "crs": f"EPSG:{grid.crs_epsg}",
            "chunks_written": report.chunks_written,
            "chunks_total": report.chunks_total,
            "mosaic_version": first.version,
            **osm_time_tags(first),
            "store": dg.MetadataValue.path(first.path),
            "preview": dg.MetadataValue.md(markdown_image(png_bytes(panel), "12 channels at 4 locations")),
            "region": dg.MetadataValue.md(markdown_image(png_bytes(picture), "region composite")),
            "overview_png": dg.MetadataValue.path(str(overview_path)),
            "pruned_old_versions": len(pruned),
        },
    )
    yield dg.AssetCheckResult(
        check_name="complete",
        passed=report.complete,
        metadata={
            "missing_units": len(report.missing_units),
            "first_missing": str(report.missing_units[:10]),
            "chunks_written": report.chunks_written,
        },
    )
    in_range = store.mosaic.dtype == np.uint8 and report.max_value > 0 and report.min_value >= 0
    yield dg.AssetCheckResult(
        check_name="values_in_range",
        passed=bool(in_range),
        metadata={"min": report.min_value, "max": report.max_value, "dtype": str(store.mosaic.dtype)},
    )
    yield dg.AssetCheckResult(
        check_name="channel_coverage",
        passed=not report.empty_channels,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"empty_channels": ", ".join(report.empty_channels) or "none", "coverage": coverage},
    )
