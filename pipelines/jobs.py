"""Jobs over the asset graph.

Dagster runs a partitioned asset one partition per run, so the end-to-end pipeline is three jobs run in
order by ``pipelines.runner`` (``make run``): ingest -> render (one run per spatial block) -> main.

Launched from the UI, a schedule or a sensor, ``main_job`` runs each step in its own process (the
multiprocess executor: independent steps in parallel, a step's memory returned when it ends). Every other
run (these jobs and what the UI, the backfills and the automation materialize: one asset, often one
partition) runs its steps in the run's own process (``pipelines.definitions``): a step process would load
the code a second time for a step of a few seconds.
"""

import dagster as dg

observe_osm_job = dg.define_asset_job(
    "observe_osm_job",
    selection=dg.AssetSelection.assets("osm_source"),
    description="Observe the OSM extract: records its content hash as the source's data version.",
)

ingest_job = dg.define_asset_job(
    "ingest_job",
    selection=dg.AssetSelection.assets("osm_source", "osm_features"),
    description="Observe the extract and import its feature layers.",
)

render_job = dg.define_asset_job(
    "render_job",
    selection=dg.AssetSelection.assets("raster_blocks"),
    description="Render one spatial block of the mosaic (a backfill renders all blocks in parallel).",
)

main_job = dg.define_asset_job(
    "main_job",
    selection=dg.AssetSelection.assets("raster_blocks").downstream(include_self=False),
    description="Everything downstream of the rendered blocks: mosaic, splits, training, evaluation.",
    executor_def=dg.multiprocess_executor,
)
