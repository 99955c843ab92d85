"""Jobs over the asset graph.

Dagster runs a partitioned asset one partition per run, so the end-to-end pipeline is three jobs run in
order by ``pipelines.runner`` (``make run``): ingest -> render (one run per spatial block) -> main.
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
)
