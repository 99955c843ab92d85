"""Training through Dagster: lineage-tagged model versions, fail-fast tracking, blocking leakage check."""

import re
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from loc2vec import tracking
from loc2vec.errors import ConfigError
from loc2vec.tracking import TrackingUnavailable
from pipelines.definitions import build_definitions
from pipelines.runner import PipelineFailed, run_pipeline
from resources import MlflowTracking, OsmSource, ProjectStorage
from tests.conftest import MONACO, TRAIN_REGION

SAMPLES = {"spacing_m": 50.0, "block_m": 700.0, "crop_px": 64}
TRAINING = {"epochs": 2, "steps_per_epoch": 4, "batch_size": 16, "r_neg_m": 300.0}


def _config(**training):
    ops = {"sample_locations": {"config": SAMPLES}, "trained_model": {"config": {**TRAINING, **training}}}
    return {"main_job": {"ops": ops}}


def _defs(tmp_path, tracking_uri=None):
    return build_definitions(
        OsmSource(pbf_path=str(MONACO), bbox=",".join(map(str, TRAIN_REGION))),
        ProjectStorage(data_dir=str(tmp_path)),
        mlflow_tracking=MlflowTracking(tracking_uri=tracking_uri),
    )


def _versions(tmp_path):
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    return client, client.search_model_versions("name='loc2vec-encoder'")


def _metadata(instance, key: str) -> dict:
    return instance.get_latest_materialization_event(dg.AssetKey(key)).asset_materialization.metadata


def _assert_evaluation_outputs(instance, client, version) -> None:
    """What the evaluation assets show in the UI and leave in MLflow for a first model version."""
    evaluation = _metadata(instance, "evaluation")
    table = evaluation["metrics"].value
    assert table.startswith("| metric | model | channel_stats | untrained | coordinates |")
    assert "| landuse_recall_at_10 |" in table and "(by construction)" in table
    header, *rows = table.splitlines()
    assert header.endswith("| insufficient | lead over channel_stats [95%] | lead over untrained [95%] |")
    (balanced,) = [row for row in rows if row.startswith("| landuse_balanced_recall_at_10 |")]
    assert len(re.findall(r"[+-]\d\.\d{3} \[[+-]\d\.\d{3}, [+-]\d\.\d{3}\]", balanced)) == 2
    assert evaluation["champion"].value is True  # the first scored version becomes champion
    assert str(client.get_model_version_by_alias("loc2vec-encoder", "champion").version) == str(version.version)
    described = client.get_model_version("loc2vec-encoder", version.version).description
    for lineage in ("monaco_region_2016", version.tags["osm_sha256"], version.tags["mosaic_version"]):
        assert f"`{lineage}`" in described
    assert f"`{version.tags['samples_version']}`" in described and "| loss | `triplet`" in described
    assert "| **landuse_recall_at_10** |" in described and "| metric | model | channel_stats |" in described
    assert "## Champion status\n\n`champion` since " in described
    assert "224-d place embedding" in client.get_registered_model("loc2vec-encoder").description
    run_metrics = client.get_run(version.run_id).data.metrics
    assert {"eval/model/triplet_accuracy", "eval/untrained/triplet_accuracy"} <= set(run_metrics)
    assert "evaluation.json" in {a.path for a in client.list_artifacts(version.run_id)}
    assert "| location |" in _metadata(instance, "embeddings")["points"].value
    index = _metadata(instance, "similarity_index")
    assert index["recall_at_10_vs_exact"].value > 0.8 and index["build_seconds"].value > 0
    maps = _metadata(instance, "maps")
    for key in ("embedding_map_path", "projector_path"):
        assert Path(maps[key].value).stat().st_size > 10_000


@pytest.mark.slow
def test_each_training_materialization_registers_one_tagged_version(tmp_path):
    defs = _defs(tmp_path)
    with dg.instance_for_test() as instance:
        first = run_pipeline(defs, instance, run_config=_config(), log=lambda _: None)
        client, versions = _versions(tmp_path)
        assert len(versions) == 1
        tags = versions[0].tags
        assert tags["dagster_run_id"] == first["main_job"].run_id
        assert len(tags["osm_sha256"]) == 64 and tags["mosaic_version"] and tags["git_commit"]
        record = instance.get_latest_materialization_event(dg.AssetKey("trained_model"))
        meta = record.asset_materialization.metadata
        assert meta["model_version"].value == "1"
        assert "/runs/" in meta["mlflow_run"].value
        run = client.get_run(versions[0].run_id)
        assert run.data.params["encoder"] == "small_cnn"
        assert run.info.run_name == "train small_cnn seed 0 · 2 epochs · monaco_region_2016"
        dagster_url = f"http://127.0.0.1:3000/runs/{first['main_job'].run_id}"
        assert run.data.tags["dagster_run_url"] == dagster_url
        assert f"]({dagster_url})" in run.data.tags["mlflow.note.content"]
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 2
        artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.json", "channel_schema.json", "sample_triplets.png"} <= artifacts
        checks = {e.check_name: e.passed for e in first["main_job"].get_asset_check_evaluations()}
        assert checks["no_split_leakage"] and checks["trained_model_weights_finite"]
        assert checks["finite_and_shaped"]
        _assert_evaluation_outputs(instance, client, versions[0])

        second = defs.resolve_job_def("main_job").execute_in_process(
            instance=instance, run_config=_config(seed=1)["main_job"]
        )
        assert second.success
        _, versions = _versions(tmp_path)
        assert sorted(str(v.version) for v in versions) == ["1", "2"]
        assert {v.tags["dagster_run_id"] for v in versions} == {first["main_job"].run_id, second.run_id}
        second_version = next(v for v in versions if str(v.version) == "2")
        status = second_version.description.split("## Champion status\n\n")[1]
        assert status.startswith(("`champion` since ", "not promoted: `champion` v1 scores "))


@pytest.mark.slow
def test_unreachable_tracking_server_fails_before_any_stage(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    defs = _defs(tmp_path, tracking_uri=f"http://127.0.0.1:{port}")
    with dg.instance_for_test() as instance:
        with pytest.raises(TrackingUnavailable, match="unreachable"):
            run_pipeline(defs, instance, run_config=_config(), log=lambda _: None)
        assert not instance.get_runs()  # before the import, not after rendering
        assert not list(tmp_path.glob("models/*/checkpoints"))
    # the training stage checks it too (a run launched from the UI), before it trains
    with pytest.raises(TrackingUnavailable, match="unreachable"):
        tracking.setup(f"http://127.0.0.1:{port}")


@pytest.mark.slow
def test_bad_hyperparameters_fail_before_any_stage_and_register_nothing(tmp_path):
    with dg.instance_for_test() as instance:
        with pytest.raises(ConfigError, match="lr must be > 0"):
            run_pipeline(_defs(tmp_path), instance, run_config=_config(lr=-0.1), log=lambda _: None)
        assert not instance.get_runs()  # refused before the import
    db = tmp_path / "mlflow" / "mlflow.db"
    assert not db.exists() or not _versions(tmp_path)[1]


@pytest.mark.slow
def test_leaky_split_blocks_training(tmp_path, monkeypatch):
    import loc2vec.data.samples as samples

    monkeypatch.setattr(samples, "apply_buffer", lambda frame, distance: frame["split"])
    with dg.instance_for_test() as instance:
        with pytest.raises(PipelineFailed):
            run_pipeline(_defs(tmp_path), instance, run_config=_config(), log=lambda _: None)
        check = instance.event_log_storage.get_latest_asset_check_execution_by_key(
            [dg.AssetCheckKey(dg.AssetKey("sample_locations"), "no_split_leakage")]
        )
        evaluation = next(iter(check.values())).event.dagster_event.event_specific_data
        assert evaluation.passed is False
        assert instance.get_latest_materialization_event(dg.AssetKey("trained_model")) is None
