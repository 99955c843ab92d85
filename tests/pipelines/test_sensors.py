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
        first = osm_update_sensor(dg.build_sensor_context(instance=instance, resources={"osm": osm}))
        assert isinstance(first, dg.RunRequest)
        cursor = first.run_key
        same = osm_update_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"osm": osm}))
        assert isinstance(same, dg.SkipReason)
        shutil.copy(MONACO_2023, extract)  # "the OSM data updated"
        changed = osm_update_sensor(dg.build_sensor_context(instance=instance, cursor=cursor, resources={"osm": osm}))
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
