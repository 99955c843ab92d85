"""osm_source (observable: content hash) and osm_features (GeoParquet feature layers)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.metadata import counts_table, markdown_table, osm_time_tags
from assets.raster import report_render_inputs
from loc2vec.lock import DataDirLock
from loc2vec.osm.files import check_osm_file, file_sha256
from loc2vec.osm.layers import FeaturesManifest, build_feature_layers
from loc2vec.osm.replication import extract_state, osm_data_version, remove_leftovers, sync_extract
from resources import MapnikRenderer, OsmSource, ProjectStorage


@dg.observable_source_asset(
    description="The OSM extract. With a replication source (LOC2VEC_REPLICATION_URL) observing it first "
    "applies the pending diffs to the project's copy, kept to the region. Data version: replication "
    "sequence and timestamp (when the extract records them) and the file's SHA-256.",
    group_name="osm",
)
def osm_source(osm: OsmSource, storage: ProjectStorage) -> dg.ObserveResult:
    extract = osm.extract(storage.data_dir)
    update = None
    if osm.replication_url:
        with DataDirLock(extract.parent, command="osm_source: apply replication diffs"):
            remove_leftovers(extract)  # of an update killed midway: it restarts from the untouched extract
            update = sync_extract(osm.path, extract, osm.replication_url, osm.followed_region(), osm.replication_start)
    path = check_osm_file(extract)
    state, sha = extract_state(path), file_sha256(path)
    metadata = {
        "osm_sequence": state.sequence if state else None,
        "osm_timestamp": state.timestamp.isoformat() if state else None,
        "osm_sha256": sha,
        "extract": dg.MetadataValue.path(str(path)),
    }
    if update is not None:
        metadata |= {
            "diffs_applied": update.diffs_applied,
            "objects_in_diffs": update.objects_in_diffs,
            "objects_kept_in_region": update.objects_kept,
            "changed_bbox": str(update.changed_bbox),
        }
    return dg.ObserveResult(data_version=dg.DataVersion(osm_data_version(state, sha)), metadata=metadata)


class OsmFeaturesConfig(dg.Config):
    node_index: str = Field(
        default="auto",
        description="pyosmium node location storage: auto, flex_mem, or sparse_file_array,PATH.",
    )


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    deps=[osm_source],
    group_name="osm",
    kinds={"python", "parquet"},
    description="Features of the extract classified into the channel schema, clipped to the region; "
    "reports what each render block draws of them (render_inputs).",
    code_version="1",
)
def osm_features(
    context: dg.AssetExecutionContext,
    config: OsmFeaturesConfig,
    osm: OsmSource,
    renderer: MapnikRenderer,
    storage: ProjectStorage,
) -> dg.Output[FeaturesManifest]:
    manifest, stats = build_feature_layers(
        osm.extract(storage.data_dir),
        osm.schema(),
        storage.path("features"),
        bbox=osm.region(),
        node_index=config.node_index,
    )
    context.log.info(f"imported {stats.total} features in {stats.seconds:.2f} s")
    blocks = report_render_inputs(context, manifest, renderer)
    pruned = storage.prune("features", Path(manifest.path).parent)
    return dg.Output(
        manifest,
        data_version=dg.DataVersion(manifest.version),
        metadata={
            "features_per_channel": counts_table(stats.features_per_channel),
            "n_features": stats.total,
            "bbox": str(stats.bbox),
            "skipped_missing_nodes": stats.skipped_missing_nodes,
            "objects_seen": stats.objects_seen,
            "seconds": round(stats.seconds, 3),
            "node_index": stats.node_index,
            "osm_sha256": manifest.osm_sha256,
            **osm_time_tags(manifest),
            "schema": manifest.schema_name,
            "features_file": dg.MetadataValue.path(manifest.path),
            "pruned_old_versions": len(pruned),
            "render_inputs": markdown_table(["block", "digest"], sorted(blocks.items())),
        },
    )


@dg.asset_check(asset=osm_features, description="Every channel has features in the region (warns otherwise).")
def osm_features_channels_covered(osm_features: FeaturesManifest) -> dg.AssetCheckResult:
    empty = [name for name, n in osm_features.features_per_channel.items() if n == 0]
    return dg.AssetCheckResult(
        passed=not empty,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"empty_channels": ", ".join(empty) or "none", "n_features": osm_features.n_features},
    )
