"""osm_source / osm_features through Dagster: metadata on success, nothing recorded on bad input."""

import dagster as dg
import pytest

from assets.osm import osm_features, osm_features_channels_covered, osm_source
from pipelines.definitions import defs
from resources import MapnikRenderer, OsmSource, ProjectStorage
from tests.conftest import KOTKA


def _materialize(instance, tmp_path, **osm_kwargs):
    return dg.materialize(
        [osm_source, osm_features, osm_features_channels_covered],
        instance=instance,
        resources={
            "osm": OsmSource(**osm_kwargs),
            "storage": ProjectStorage(data_dir=str(tmp_path)),
            "renderer": MapnikRenderer(),
        },
        raise_on_error=False,
    )


def test_definitions_load_and_validate():
    assert defs.resolve_asset_graph().get_all_asset_keys() >= {
        dg.AssetKey("osm_source"),
        dg.AssetKey("osm_features"),
    }
    assert defs.resolve_job_def("main_job") is not None


def test_osm_features_materializes_with_metadata(tmp_path):
    with dg.instance_for_test() as instance:
        result = _materialize(instance, tmp_path, pbf_path=str(KOTKA))
        assert result.success
        mat = result.asset_materializations_for_node("osm_features")[0]
        assert "| buildings |" in mat.metadata["features_per_channel"].value
        assert mat.metadata["skipped_missing_nodes"].value > 0
        assert mat.metadata["n_features"].value > 1000
        manifest = result.output_for_node("osm_features")
        assert manifest.read().shape[0] == manifest.n_features
        checks = result.get_asset_check_evaluations()
        assert checks and checks[0].check_name == "osm_features_channels_covered"
        assert not checks[0].passed  # Kotka has no railway and no water


def test_observation_data_version_is_file_hash():
    from loc2vec.osm.files import file_sha256

    with dg.instance_for_test() as instance:
        job = defs.resolve_job_def("observe_osm_job")
        result = job.execute_in_process(instance=instance, resources={"osm": OsmSource(pbf_path=str(KOTKA))})
        assert result.success
        record = instance.get_latest_data_version_record(dg.AssetKey("osm_source"))
        assert record.asset_observation.data_version == file_sha256(KOTKA)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"pbf_path": "/nonexistent/x.osm.pbf"}, "not found"),
        ({"pbf_path": str(KOTKA), "bbox": "2.2,48.8,2.4,48.9"}, "outside the extract"),
        ({"pbf_path": str(KOTKA), "bbox": "2.2,48.8,2.1,48.9"}, "invalid bbox"),
    ],
)
def test_bad_input_records_no_materialization(tmp_path, kwargs, message):
    with dg.instance_for_test() as instance:
        result = _materialize(instance, tmp_path, **kwargs)
        assert not result.success
        failures = [e for e in result.all_events if e.is_step_failure]
        assert any(message in str(e.event_specific_data.error) for e in failures)
        assert instance.get_latest_materialization_event(dg.AssetKey("osm_features")) is None
        assert not (tmp_path / "features").exists() or not any((tmp_path / "features").rglob("*.parquet"))
