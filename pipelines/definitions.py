"""The one Definitions of the loc2vec code location."""

from __future__ import annotations

import dagster as dg

from assets import osm
from pipelines.jobs import main_job, observe_osm_job
from resources import OsmSource, ProjectStorage

defs = dg.Definitions(
    assets=[osm.osm_source, osm.osm_features],
    asset_checks=[osm.osm_features_channels_covered],
    jobs=[main_job, observe_osm_job],
    resources={"osm": OsmSource(), "storage": ProjectStorage()},
)
