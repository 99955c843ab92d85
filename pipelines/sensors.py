"""Re-runs when the OSM data changes: a sensor on the extract's content hash and a nightly schedule.

Both only *observe* ``osm_source``; every asset downstream carries ``AutomationCondition.eager()``, so
a new data version of the source flows through import, rendering, training and evaluation.
"""

import dagster as dg

from loc2vec.osm.files import file_sha256
from pipelines.jobs import observe_osm_job
from resources import OsmSource


@dg.sensor(
    job=observe_osm_job,
    minimum_interval_seconds=600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Observes osm_source when the extract's content hash changes.",
)
def osm_update_sensor(context: dg.SensorEvaluationContext, osm: OsmSource):
    if not osm.path.is_file():
        return dg.SkipReason(f"extract {osm.path} not found")
    digest = file_sha256(osm.path)
    if digest == context.cursor:
        return dg.SkipReason(f"extract unchanged ({digest[:12]})")
    context.update_cursor(digest)
    return dg.RunRequest(run_key=digest, tags={"osm_sha256": digest})


nightly_osm_refresh = dg.ScheduleDefinition(
    name="nightly_osm_refresh",
    job=observe_osm_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Observes osm_source every night; a changed hash triggers the eager assets downstream.",
)
