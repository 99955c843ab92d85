"""Re-runs on OSM updates: the sensor fires once per new content hash; eager automation follows."""

import shutil

import dagster as dg

from pipelines.definitions import build_definitions
from pipelines.sensors import osm_update_sensor
from resources import OsmSource, ProjectStorage
from tests.conftest import KOTKA, MONACO_2023


def test_sensor_requests_a_run_per_new_content_hash(tmp_path):
    extract = tmp_path / "region.osm.pbf"
    shutil.copy(KOTKA, extract)
    osm = OsmSource(pbf_path=str(extract))
    with dg.instance_for_test() as instance:
        first = osm_update_sensor(
            dg.build_sensor_context(
                instance=instance, resources={"osm": osm, "storage": ProjectStorage(data_dir=str(tmp_path / "data"))}
            )
        )
        assert isinstance(first, dg.RunRequest)
        cursor = first.run_key
        same = osm_update_sensor(
            dg.build_sensor_context(
                instance=instance,
                cursor=cursor,
                resources={"osm": osm, "storage": ProjectStorage(data_dir=str(tmp_path / "data"))},
            )
        )
        assert isinstance(same, dg.SkipReason)
        shutil.copy(MONACO_2023, extract)  # "the OSM data updated"
        changed = osm_update_sensor(
            dg.build_sensor_context(
                instance=instance,
                cursor=cursor,
                resources={"osm": osm, "storage": ProjectStorage(data_dir=str(tmp_path / "data"))},
            )
        )
        assert isinstance(changed, dg.RunRequest) and changed.run_key != cursor


def test_a_new_source_version_makes_the_import_eager_to_rerun(tmp_path):
    extract = tmp_path / "region.osm.pbf"
    shutil.copy(KOTKA, extract)
    defs = build_definitions(OsmSource(pbf_path=str(extract)), ProjectStorage(data_dir=str(tmp_path / "data")))
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance).success
        quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        shutil.copy(MONACO_2023, extract)
        assert defs.resolve_job_def("observe_osm_job").execute_in_process(instance=instance).success
        after = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
        assert quiet.get_num_requested(dg.AssetKey("osm_features")) == 0
        assert after.get_num_requested(dg.AssetKey("osm_features")) == 1


def test_first_tick_after_a_run_launches_nothing_until_the_extract_changes(tmp_path):
    """Turning the sensor on after `make run` must not re-run the pipeline on an unchanged extract."""
    extract = tmp_path / "region.osm.pbf"
    shutil.copy(KOTKA, extract)
    osm = OsmSource(pbf_path=str(extract))
    defs = build_definitions(osm, ProjectStorage(data_dir=str(tmp_path / "data")))
    with dg.instance_for_test() as instance:
        assert defs.resolve_job_def("observe_osm_job").execute_in_process(instance=instance).success
        context = dg.build_sensor_context(
            instance=instance, resources={"osm": osm, "storage": ProjectStorage(data_dir=str(tmp_path / "data"))}
        )
        first = osm_update_sensor(context)
        assert isinstance(first, dg.SkipReason) and "unchanged" in first.skip_message
        shutil.copy(MONACO_2023, extract)
        changed = osm_update_sensor(
            dg.build_sensor_context(
                instance=instance,
                cursor=context.cursor,
                resources={"osm": osm, "storage": ProjectStorage(data_dir=str(tmp_path / "data"))},
            )
        )
        assert isinstance(changed, dg.RunRequest)


def test_the_automation_sensor_runs_by_default_over_every_asset():
    """With the daemon up, only osm_update_sensor needs switching on for updates to flow downstream."""
    from pipelines.definitions import defs

    follow = defs.resolve_sensor_def("osm_follow_automation")
    assert follow.default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_sensor_def("osm_update_sensor").default_status == dg.DefaultSensorStatus.STOPPED
    graph = defs.resolve_asset_graph()
    eager = {key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).automation_condition}
    assert {"osm_features", "raster_blocks", "raster_mosaic", "embeddings"} <= eager


def test_in_process_runs_are_listed_under_their_jobs(tmp_path):
    """The UI's job page filters runs by job name and the repository label tag of the code location."""
    from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

    from pipelines.runner import Pipeline

    defs = build_definitions(OsmSource(pbf_path=str(KOTKA)), ProjectStorage(data_dir=str(tmp_path / "data")))
    with dg.instance_for_test() as instance, Pipeline(defs, instance, log=lambda _: None) as pipeline:
        run_id = pipeline.run_job("observe_osm_job").run_id
        listed = instance.get_runs(
            dg.RunsFilter(job_name="observe_osm_job", tags={REPOSITORY_LABEL_TAG: "__repository__@loc2vec"})
        )
        assert [run.run_id for run in listed] == [run_id]


def test_replication_settings_come_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("LOC2VEC_REPLICATION_URL", str(tmp_path / "replication"))
    monkeypatch.setenv("LOC2VEC_REPLICATION_START", "41")
    osm = OsmSource.from_env().process_config_and_initialize()
    assert (osm.replication_url, osm.replication_start) == (str(tmp_path / "replication"), 41)
    assert osm.extract(tmp_path / "data") == tmp_path / "data" / "osm" / osm.path.name  # the project's copy


def test_sensor_on_a_replication_source_asks_once_per_new_sequence(tmp_path):
    from datetime import UTC, datetime

    from loc2vec.osm.replication import publish_diff, sync_extract
    from tests.conftest import free_port
    from tests.osm.test_replication import _diff_of_edits

    source = tmp_path / "replication"
    _, diff, _ = _diff_of_edits(tmp_path)
    publish_diff(source, diff, datetime(2026, 11, 30, tzinfo=UTC))
    osm = OsmSource(pbf_path=str(KOTKA), replication_url=str(source), replication_start=0)
    storage = ProjectStorage(data_dir=str(tmp_path / "data"))
    with dg.instance_for_test() as instance:

        def tick(source: OsmSource):
            return osm_update_sensor(
                dg.build_sensor_context(instance=instance, resources={"osm": source, "storage": storage})
            )

        first = tick(osm)
        assert isinstance(first, dg.RunRequest) and first.run_key == "osm-sequence-1"
        sync_extract(osm.path, osm.extract(storage.data_dir), source, osm.followed_region(), 0)  # what the run does
        again = osm_update_sensor(
            dg.build_sensor_context(instance=instance, resources={"osm": osm, "storage": storage})
        )
        assert isinstance(again, dg.SkipReason) and "up to date at sequence 1" in again.skip_message
        down = OsmSource(pbf_path=str(KOTKA), replication_url=f"http://127.0.0.1:{free_port()}/minute/")
        skipped = osm_update_sensor(
            dg.build_sensor_context(instance=instance, resources={"osm": down, "storage": storage})
        )
        assert isinstance(skipped, dg.SkipReason) and "not readable" in skipped.skip_message
