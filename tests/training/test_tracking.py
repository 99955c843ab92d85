"""What MLflow holds for a model: the registered place embedding, its descriptions, run names and pictures."""

import io

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from PIL import Image

from loc2vec import model_card, tracking
from loc2vec.evaluation.embedders import crops_at, encode
from loc2vec.models.encoders import build_encoder, load_encoder, save_encoder
from loc2vec.training.config import TrainConfig
from loc2vec.training.run import run_name, run_note, triplet_picture
from resources import MlflowTracking


def test_registered_version_returns_the_place_embedding_and_is_described(monaco_samples, tmp_path):
    reader, samples = monaco_samples
    torch.manual_seed(0)
    encoder = build_encoder("small_cnn", 16).eval()
    weights = save_encoder(encoder, tmp_path / "model.pt")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    experiment = tracking.setup(uri, "registry-test", artifact_root=str(tmp_path / "artifacts"))
    spec = model_card.EmbeddingIO(64, float(reader.grid.resolution), tuple(reader.channel_names), 224, "small_cnn", 16)
    lineage = {"region": "monaco", "osm_sha256": "ab" * 32, "mosaic_version": "m1", "samples_version": "s1"}
    description = model_card.version_description(spec, lineage, {"seed": 0})
    with tracking.using(uri), mlflow.start_run(experiment_id=experiment):
        version, model_uri = tracking.register_place_embedding(encoder, "enc", lineage, spec, description, weights, uri)
    with tracking.using(uri):
        loaded = mlflow.pytorch.load_model(model_uri)
        served = mlflow.pyfunc.load_model(model_uri)
        info = mlflow.models.get_model_info(model_uri)
    xy = samples.xy("test")[:3]  # a batch of 3: the batch dimension is not fixed to the example's
    crops = crops_at(reader, xy, 64).transpose(0, 3, 1, 2)  # (N, 12, S, S) uint8, as the description says
    expected = encode(encoder, reader, xy, 64)
    with torch.no_grad():
        np.testing.assert_allclose(loaded(torch.from_numpy(crops)).numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(served.predict(crops), expected, atol=1e-5)

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    registered = client.get_registered_model("enc")
    assert "224-d place embedding" in registered.description and "@champion" in registered.description
    found = client.get_model_version("enc", version)
    assert "## Data lineage" in found.description and "`" + "ab" * 32 + "`" in found.description
    assert "64 px at 3 m/px" in found.description and "`roads_major`" in found.description
    assert info.signature.outputs.inputs[0].shape == (-1, 224)
    assert info.signature.inputs.inputs[0].type == np.dtype(np.uint8)
    assert info.metadata["output_dim"] == 224 and info.metadata["channel_names"][0] == "roads_major"
    # the whole encoder (with the 16-d projection head) sits beside it, loadable by loc2vec
    path = client.download_artifacts(found.run_id, "encoder/model.pt", str(tmp_path / "download"))
    assert load_encoder(path).head.out_features == 16
    _check_evaluation_and_promotion_descriptions(uri, client, version, found)


def _check_evaluation_and_promotion_descriptions(uri: str, client: MlflowClient, v1: str, found) -> None:
    """Evaluation and promotion rewrite their own sections of the version descriptions, nothing else."""
    v2, v3 = (
        client.create_model_version(
            "enc", f"runs:/{found.run_id}/encoder", found.run_id, description=found.description
        ).version
        for _ in range(2)
    )
    metric = "landuse_recall_at_10"
    scores = {"model": {metric: 0.5, "silhouette": 0.2}, "coordinates": {metric: 0.3, "silhouette": float("nan")}}
    tracking.describe_evaluation(uri, "enc", v1, scores, metric, {"coordinates": ["silhouette"]})
    assert tracking.promote_if_better(uri, "enc", v1, metric, 0.5)
    assert not tracking.promote_if_better(uri, "enc", str(v2), metric, 0.4)
    assert tracking.promote_if_better(uri, "enc", str(v3), metric, 0.6)

    def described(version) -> str:
        return client.get_model_version("enc", str(version)).description

    first = described(v1)
    assert "`" + "ab" * 32 + "`" in first and "not evaluated yet" not in first  # lineage kept, evaluation replaced
    evaluation = model_card.section(first, model_card.EVALUATION)
    assert "| metric | model | coordinates |" in evaluation
    assert "| **landuse_recall_at_10** | 0.5000 | 0.3000 |" in evaluation
    assert "| silhouette | 0.2000 | n/a (by construction) |" in evaluation
    assert model_card.section(first, model_card.CHAMPION).startswith("`champion` until ")
    assert "replaced by v3 (`landuse_recall_at_10` 0.6000 vs 0.5000)" in first
    assert model_card.section(described(v2), model_card.CHAMPION) == (
        "not promoted: `champion` v1 scores better on `landuse_recall_at_10` (0.5000 vs 0.4000)"
    )
    assert model_card.section(described(v3), model_card.CHAMPION).startswith("`champion` since ")
    assert first.count(model_card.CHAMPION) == 1 and first.count(model_card.EVALUATION) == 1


def test_run_name_and_description_say_what_ran_and_link_to_dagster(monkeypatch):
    config = TrainConfig(encoder="small_cnn", seed=3, epochs=2)
    assert run_name(config, "monaco_region_2016") == "train small_cnn seed 3 · 2 epochs · monaco_region_2016"
    assert MlflowTracking().dagster_run_url("r1") == "http://127.0.0.1:3000/runs/r1"
    monkeypatch.setenv("LOC2VEC_DAGSTER_UI", "http://dagster.example:3000/")
    url = MlflowTracking.from_env().process_config_and_initialize().dagster_run_url("r1")  # as Dagster resolves it
    assert url == "http://dagster.example:3000/runs/r1"
    note = run_note(config, "monaco", {"dagster_run_id": "r1", "dagster_run_url": url})
    assert "Dagster run: [r1](http://dagster.example:3000/runs/r1)" in note


def test_triplet_picture_labels_columns_and_distances(monaco_samples):
    reader, samples = monaco_samples
    config = TrainConfig(crop_px=64, r_neg_m=300.0)
    picture = triplet_picture(reader, samples.xy("train"), config, n=3)
    assert picture.labels[:3] == ["anchor", "positive: < 250 m", "negative: > 300 m"]
    assert all(0 <= d <= 250 for d in picture.positive_m) and all(d >= 300 for d in picture.negative_m)
    assert picture.labels[4] == f"{picture.positive_m[0]:.0f} m away"
    assert picture.labels[5] == f"{picture.negative_m[0]:.0f} m away"
    image = np.asarray(Image.open(io.BytesIO(picture.png)))
    tile = 128  # 64-px crops are scaled up for the captions
    assert image.shape == (22 + 3 * (18 + tile + 4), 3 * tile + 2 * 4, 3)
    header = image[:22]
    assert (header == 255).all(axis=2).sum() > 50  # white label text drawn on the dark band


@pytest.mark.parametrize("value", ["a|b", "line\nbreak"])
def test_markdown_table_cells_cannot_break_the_table(value):
    table = model_card.table(["k", "v"], [("x", value)])
    assert table.splitlines()[-1].count(" | ") == 1
