"""Jobs over the asset graph."""

from __future__ import annotations

import dagster as dg

observe_osm_job = dg.define_asset_job(
    "observe_osm_job",
    selection=dg.AssetSelection.keys("osm_source"),
    description="Observe the OSM extract: records its content hash as the source's data version.",
)

main_job = dg.define_asset_job(
    "main_job",
    selection=dg.AssetSelection.keys("osm_source") | dg.AssetSelection.groups("osm"),
    description="The whole pipeline on the configured extract, end to end.",
)
