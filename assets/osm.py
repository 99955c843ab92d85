"""osm_source (observable: content hash) and osm_features (GeoParquet feature layers)."""

from pathlib import Path

import dagster as dg
from pydantic import Field

from assets.metadata import counts_table
from loc2vec.osm.files import check_osm_file, file_sha256
from loc2vec.osm.layers import FeaturesManifest, build_feature_layers
from resources import OsmSource, ProjectStorage


@dg.observable_source_asset(
    description="The OSM extract; its data version is the SHA-256 of the file's content.",
    group_name="osm",
)
def osm_source(osm: OsmSource) -> dg.DataVersion:
    path = check_osm_file(osm.path)
    return dg.DataVersion(file_sha256(path))


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
    description="Features of the extract classified into the channel schema, clipped to the region.",
    code_version="1",
)
def osm_features(
    context: dg.AssetExecutionContext,
    config: OsmFeaturesConfig,
    osm: OsmSource,
    storage: ProjectStorage,
) -> dg.Output[FeaturesManifest]:
    manifest, stats = build_feature_layers(
        osm.path, osm.schema(), storage.path("features"), bbox=osm.region(), node_index=config.node_index
    )
    context.log.info(f"imported {stats.total} features in {stats.seconds:.2f} s")
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
            "schema": manifest.schema_name,
            "path": dg.MetadataValue.path(manifest.path),
            "pruned_old_versions": len(pruned),
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
