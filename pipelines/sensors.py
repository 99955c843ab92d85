"""Re-runs when the OSM data changes: a sensor on the extract's content hash, a nightly schedule, and the
automation sensor that carries a new source version downstream.

The one switch is ``osm_update_sensor`` (off by default; turn it on in the UI, or start the schedule):
it *observes* ``osm_source`` when the extract's hash changes. ``osm_follow_automation`` runs by default
whenever the daemon runs (``make ui``) and evaluates the assets' automation conditions, so a new data
version of the source flows through import, rendering, embeddings, index, maps and evaluation; the model
follows its retraining policy (``assets.training.RETRAIN_POLICY`` and ``retrain_when_region_changed``).
"""

import json
import os

import dagster as dg
from dagster._core.definitions.data_version import extract_data_version_from_entry

from assets.regions import region_block_partitions, regions_partitions
from loc2vec.osm.files import file_sha256
from loc2vec.osm.replication import ReplicationError, changed_share, extract_state, source_state
from loc2vec.regions import Catalog
from pipelines.jobs import observe_osm_job
from resources import OsmSource, ProjectStorage, RegionCatalog

# how often the sensor looks at the source (seconds; $LOC2VEC_OSM_CHECK_SECONDS, read when the code loads)
CHECK_SECONDS = max(30, int(os.environ.get("LOC2VEC_OSM_CHECK_SECONDS", "600")))

OSM_SOURCE = dg.AssetKey("osm_source")


def last_observed_version(instance: dg.DagsterInstance) -> str | None:
    """The data version recorded by the latest observation of ``osm_source`` (None if never observed)."""
    record = instance.get_latest_data_version_record(OSM_SOURCE, is_source=True)
    version = extract_data_version_from_entry(record.event_log_entry) if record else None
    return version.value if version else None


@dg.sensor(
    job=observe_osm_job,
    minimum_interval_seconds=CHECK_SECONDS,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Observes osm_source when the source has news: a new replication sequence "
    "(LOC2VEC_REPLICATION_URL; the observation applies the diffs), else a new content hash of the extract. "
    "The switch that makes OSM updates flow downstream, with osm_follow_automation running.",
)
def osm_update_sensor(context: dg.SensorEvaluationContext, osm: OsmSource, storage: ProjectStorage):
    if osm.replication_url:
        return _replication_request(context, osm, storage)
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


def _replication_request(context: dg.SensorEvaluationContext, osm: OsmSource, storage: ProjectStorage):
    """A run observing (= updating) the source when the replication source is ahead of the project's copy."""
    try:
        newest = source_state(osm.replication_url)
    except ReplicationError as exc:
        return dg.SkipReason(f"replication source not readable: {exc}")
    copy = osm.extract(storage.data_dir)
    current = extract_state(copy) if copy.exists() else None
    known = current.sequence if current else osm.replication_start
    if known is not None and newest.sequence <= known:
        return dg.SkipReason(f"up to date at sequence {known}")
    context.update_cursor(str(newest.sequence))
    return dg.RunRequest(
        run_key=f"osm-sequence-{newest.sequence}",
        tags={"osm_sequence": str(newest.sequence), "osm_timestamp": newest.timestamp.isoformat()},
    )


def retrain_share() -> float:
    """Share of the region that must have changed since the model's OSM sequence to retrain it
    ($LOC2VEC_RETRAIN_SHARE, default 0.2)."""
    return float(os.environ.get("LOC2VEC_RETRAIN_SHARE", "0.2"))


@dg.sensor(
    asset_selection=dg.AssetSelection.assets("trained_model"),
    minimum_interval_seconds=CHECK_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="The retraining policy's share rule: retrains trained_model when the OSM changes applied "
    "since the model's sequence cover LOC2VEC_RETRAIN_SHARE of the region (replication sources only).",
)
def retrain_when_region_changed(context: dg.SensorEvaluationContext, osm: OsmSource, storage: ProjectStorage):
    if not osm.replication_url:
        return dg.SkipReason("no replication source (LOC2VEC_REPLICATION_URL)")
    event = context.instance.get_latest_materialization_event(dg.AssetKey("trained_model"))
    if event is None or event.asset_materialization is None:
        return dg.SkipReason("no trained model yet")
    recorded = event.asset_materialization.metadata.get("osm_sequence")
    since = int(recorded.value) if recorded is not None else None
    copy = osm.extract(storage.data_dir)
    current = extract_state(copy) if copy.exists() else None
    if current is None or (since is not None and current.sequence <= since):
        return dg.SkipReason(f"the model is at the extract's sequence ({since})")
    share, threshold = changed_share(copy, since, osm.followed_region()), retrain_share()
    if share < threshold:
        return dg.SkipReason(f"{share:.1%} of the region changed since sequence {since}; retrains at {threshold:.0%}")
    return dg.RunRequest(
        run_key=f"retrain-at-sequence-{current.sequence}",
        asset_selection=[dg.AssetKey("trained_model")],
        tags={"osm_sequence": str(current.sequence), "changed_share": f"{share:.4f}"},
    )


osm_follow_automation = dg.AutomationConditionSensorDefinition(
    "osm_follow_automation",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get("LOC2VEC_AUTOMATION_SECONDS", "30")),
    description="Evaluates the assets' automation conditions (eager: follow a new OSM source version).",
)


nightly_osm_refresh = dg.ScheduleDefinition(
    name="nightly_osm_refresh",
    job=observe_osm_job,
    cron_schedule="0 3 * * *",
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Observes osm_source every night; a changed hash triggers the eager assets downstream.",
)


@dg.sensor(
    asset_selection=dg.AssetSelection.assets("region_features"),
    minimum_interval_seconds=CHECK_SECONDS,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Follows the region catalog (LOC2VEC_CATALOG): adds each region's partitions (regions, "
    "region_blocks) and imports a region when it is new or its extract's content changed; rendering and "
    "embedding follow by automation. A region with a fault is named in the tick's log and not imported.",
)
def region_catalog_sensor(context: dg.SensorEvaluationContext, catalog: RegionCatalog):
    return follow_catalog(context, catalog.load())


def follow_catalog(context: dg.SensorEvaluationContext, found: Catalog) -> dg.SensorResult:
    """The partitions ``found`` adds and the imports it needs: a region whose extract hash differs from the
    one the cursor recorded (the first tick records the hashes of regions already imported, so turning the
    sensor on after an import launches nothing until an extract changes)."""
    seen = json.loads(context.cursor) if context.cursor else {}
    known_regions = set(context.instance.get_dynamic_partitions(regions_partitions.name))
    known_blocks = set(context.instance.get_dynamic_partitions(region_block_partitions.name))
    new_regions = [name for name in found.names() if name not in known_regions]
    new_blocks = [key for key in found.partition_keys() if key not in known_blocks]
    for fault in found.check():
        context.log.warning(f"not imported: {fault}")
    requests, hashes = [], {}
    for entry in found.usable():
        digest = hashes[entry.name] = file_sha256(entry.region.extract)
        before = seen.get(entry.name) or _imported_hash(context.instance, entry.name)
        if digest != before:
            requests.append(
                dg.RunRequest(
                    run_key=f"{entry.name}-{digest[:16]}",
                    partition_key=entry.name,
                    asset_selection=[dg.AssetKey("region_features")],
                    tags={"region": entry.name, "osm_sha256": digest},
                )
            )
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[
            regions_partitions.build_add_request(new_regions),
            region_block_partitions.build_add_request(new_blocks),
        ],
        cursor=json.dumps(hashes, sort_keys=True),
    )


def _imported_hash(instance: dg.DagsterInstance, region: str) -> str | None:
    """The extract hash the region's latest ``region_features`` materialization recorded."""
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("region_features"), asset_partitions=[region]), limit=1
    ).records
    value = records[0].asset_materialization.metadata.get("osm_sha256") if records else None
    return value.value if value is not None else None
