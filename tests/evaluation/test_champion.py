"""The champion alias moves only to a model version that beats the current champion."""

import mlflow
from mlflow import MlflowClient

from loc2vec import tracking


def test_champion_alias_moves_only_on_improvement(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.setup(uri, "champion-test", artifact_root=str(tmp_path / "artifacts"))
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("enc")
    with tracking.using(uri), mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_text("weights", "model/weights.txt")
    source = f"runs:/{run.info.run_id}/model"
    v0, v1, v2, v3 = (client.create_model_version("enc", source, run.info.run_id).version for _ in range(4))
    # a version that could not be scored does not become champion, even when there is none
    assert not tracking.promote_if_better(uri, "enc", str(v0), "landuse_recall_at_10", float("nan"))
    assert tracking.promote_if_better(uri, "enc", str(v1), "landuse_recall_at_10", 0.50)
    assert not tracking.promote_if_better(uri, "enc", str(v2), "landuse_recall_at_10", 0.45)
    assert str(client.get_model_version_by_alias("enc", "champion").version) == str(v1)
    assert tracking.promote_if_better(uri, "enc", str(v3), "landuse_recall_at_10", 0.55)
    champion = client.get_model_version_by_alias("enc", "champion")
    assert str(champion.version) == str(v3) and champion.tags["landuse_recall_at_10"] == "0.55"


def test_tracking_leaves_no_process_wide_setting_behind(tmp_path, monkeypatch):
    import os

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///elsewhere.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.setup(uri, "scoped")
    with tracking.using(uri), mlflow.start_run(experiment_id=experiment):
        assert mlflow.get_tracking_uri() == uri
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///elsewhere.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with tracking.using(uri):
        pass
    assert "MLFLOW_TRACKING_URI" not in os.environ
