"""The one Definitions of the loc2vec code location (``build_definitions`` for other resources)."""

from pathlib import Path

from loc2vec.runtime import configure_process

configure_process()  # the code location is the entry point of every Dagster process (before torch loads)

import dagster as dg  # noqa: E402

from assets import evaluation, multiregion, osm, raster, regions, training  # noqa: E402
from pipelines.jobs import ingest_job, main_job, observe_osm_job, render_job  # noqa: E402
from pipelines.loggers import file_logger, progress_logger  # noqa: E402
from pipelines.sensors import (  # noqa: E402
    nightly_osm_refresh,
    osm_follow_automation,
    osm_update_sensor,
    region_catalog_sensor,
    retrain_when_region_changed,
)
from resources import (  # noqa: E402
    MapnikRenderer,
    MlflowTracking,
    OsmSource,
    ProjectStorage,
    RegionCatalog,
    TorchDevice,
)


def build_definitions(
    osm_source: OsmSource | None = None,
    storage: ProjectStorage | None = None,
    renderer: MapnikRenderer | None = None,
    device: TorchDevice | None = None,
    mlflow_tracking: MlflowTracking | None = None,
    catalog: RegionCatalog | None = None,
    executor: dg.ExecutorDefinition = dg.in_process_executor,
) -> dg.Definitions:
    """Definitions with the given resources; the defaults are chosen here, from the environment (README,
    "Configuration"): ``dg.EnvVar`` where a variable is set, so the UI shows the variable, not its value.
    ``executor`` runs every job but ``main_job`` (``pipelines.jobs``)."""
    storage = storage or ProjectStorage()
    return dg.Definitions(
        assets=[
            osm.osm_source,
            osm.osm_features,
            raster.render_inputs,
            raster.raster_blocks,
            raster.raster_mosaic,
            training.sample_locations,
            training.trained_model,
            evaluation.embeddings,
            evaluation.evaluation,
            evaluation.similarity_index,
            evaluation.maps,
            *regions.REGION_ASSETS,
            *multiregion.MULTI_REGION_ASSETS,
        ],
        asset_checks=[
            osm.osm_features_channels_covered,
            training.trained_model_weights_finite,
            evaluation.evaluation_metrics_valid,
            evaluation.similarity_index_recall,
            evaluation.maps_pages_written,
            *multiregion.MULTI_REGION_CHECKS,
        ],
        jobs=[main_job, observe_osm_job, ingest_job, render_job],
        executor=executor,
        sensors=[osm_update_sensor, osm_follow_automation, retrain_when_region_changed, region_catalog_sensor],
        schedules=[nightly_osm_refresh],
        loggers={"console": dg.colored_console_logger, "file": file_logger, "progress": progress_logger},
        resources={
            "osm": osm_source or OsmSource.from_env(),
            "storage": storage,
            "renderer": renderer or MapnikRenderer.from_env(),
            "device": device or TorchDevice(),
            "mlflow_tracking": mlflow_tracking or MlflowTracking.from_env(),
            "catalog": catalog or RegionCatalog(),
            # a path only: nothing is created until a run writes (a refused run leaves no directory behind)
            "io_manager": dg.FilesystemIOManager(base_dir=str(Path(storage.data_dir) / "dagster_storage")),
        },
    )


defs = build_definitions()
