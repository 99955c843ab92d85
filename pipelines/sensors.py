"""Re-runs when the OSM data changes: a sensor on the extract's content hash, a nightly schedule, and the
automation sensor that carries a new source version downstream.

The one switch is ``osm_update_sensor`` (off by default; turn it on in the UI, or start the schedule):
it *observes* ``osm_source`` when the extract's hash changes. ``osm_follow_automation`` runs by default
whenever the daemon runs (``make ui``) and evaluates the assets' ``AutomationCondition.eager()``, so a
new data version of the source flows through import, rendering, training and evaluation.
"""

import dagster as dg
from dagster._core.definitions.data_version import extract_data_version_from_entry

from loc2vec.osm.files import file_sha256
from pipelines.jobs import observe_osm_job
from resources import OsmSource

OSM_SOURCE = dg.AssetKey("osm_source")


def last_observed_version(instance: dg.DagsterInstance) -> str | None:
    """The data version recorded by the latest observation of ``osm_source`` (None if never observed)."""
    record = instance.get_latest_data_version_record(OSM_SOURCE, is_source=True)
    version = extract_data_version_from_entry(record.event_log_entry) if record else None
    return version.value if version else None


@dg.sensor(
    job=observe_osm_job,
    minimum_interval_seconds=600,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Observes osm_source when the extract's content hash changes (the switch that makes "
    "OSM updates flow downstream, with osm_follow_automation running).",
)
def osm_update_sensor(context: dg.SensorEvaluationContext, osm: OsmSource):
    if not osm.path.is_file():
        return dg.SkipReason(f"extract {osm.path} not found")
    digest = file_sha256(osm.path)
    # the first tick compares with what the instance last observed, so turning the sensor on after
    # `make run` launches nothing until the extract changes
    known = context.cursor or last_observed_version(context.instance)
    if digest == known:
        context.update_cursor(digest)
        return dg.SkipReason(f"extract unchanged ({digest[:12]})")
    context.update_cursor(digest)
    return dg.RunRequest(run_key=digest, tags={"osm_sha256": digest})


osm_follow_automation = dg.AutomationConditionSensorDefinition(
    "osm_follow_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description="Evaluates the assets' automation conditions (eager: follow a new OSM source version).",
)


nightly_osm_refresh = dg.ScheduleDefinition(
    name="nightly_osm_refresh",
    job=observe_osm_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Observes osm_source every night; a changed hash triggers the eager assets downstream.",
)
