"""A region embedded and scored with an existing model, no training (``loc2vec evaluate --model``): a real
2.5 x 2.5 km town the training split does not fit (Neubrandenburg's centre), scored with the model
``monaco_run`` registered."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
import torch

from loc2vec import tracking
from loc2vec.errors import ConfigError
from loc2vec.evaluation.existing_model import (
    REGISTRY_REFERENCE,
    ExistingModel,
    check_compatible,
    load_existing_model,
    public_uri,
)
from loc2vec.evaluation.metrics import METRICS
from loc2vec.models.encoders import build_encoder
from loc2vec.osm.files import file_sha256
from loc2vec.training.config import TrainConfig
from pipelines.cli import main
from tests.conftest import KOTKA, ROOT

TOWN = ROOT / "data" / "osm" / "neubrandenburg_josm.osm.bz2"
TOWN_BBOX = "13.2421,53.5463,13.2799,53.5687"  # 2.5 x 2.5 km of the centre: too small for the training split

BASELINES = {"channel_stats", "untrained", "coordinates", "random"}


@dataclass(frozen=True)
class TownEvaluation:
    run_dir: Path  # monaco_run's output: its MLflow store registered the model
    out: Path
    work: Path
    process: subprocess.CompletedProcess
    document: dict
    mlflow_runs_before: int


def _store(run_dir: Path) -> str:
    return f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}"


def _mlflow_runs(run_dir: Path) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(_store(run_dir))
    return len(client.search_runs([e.experiment_id for e in client.search_experiments()]))


@pytest.fixture(scope="module")
def town(monaco_run, tmp_path_factory) -> TownEvaluation:
    """``loc2vec evaluate --model models:/loc2vec-encoder/1`` (seed 0 of monaco_run) on the town, in a
    separate process as a user runs it."""
    root = tmp_path_factory.mktemp("town")
    out, work = root / "out", root / "work"
    before = _mlflow_runs(monaco_run)
    env = {k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"}
    env.update(
        MLFLOW_TRACKING_URI=_store(monaco_run),
        LOC2VEC_DATA_DIR=str(root / "data"),
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    args = [
        "evaluate",
        "--pbf",
        str(TOWN),
        "--bbox",
        TOWN_BBOX,
        "--model",
        "models:/loc2vec-encoder/1",
        "--out",
        str(out),
    ]
    process = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args, "--work", str(work)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    document = json.loads((out / "evaluation.json").read_text())
    return TownEvaluation(monaco_run, out, work, process, document, before)


def _model_dir(run_dir: Path, sha256: str) -> Path:
    """The run's model directory whose weights have this digest."""
    found = [d for d in (run_dir / "models").iterdir() if (d / "model.pt").is_file()]
    return next(d for d in found if file_sha256(d / "model.pt") == sha256)


@pytest.mark.slow
def test_a_town_too_small_to_train_on_is_embedded_and_scored_with_a_registered_model(town):
    doc, console = town.document, town.process.stdout + town.process.stderr
    from mlflow import MlflowClient

    version = MlflowClient(_store(town.run_dir)).get_model_version("loc2vec-encoder", "1")
    source = doc["model_source"]
    assert source["kind"] == "registered" and (source["name"], source["version"]) == ("loc2vec-encoder", "1")
    assert source["run_id"] == version.run_id and source["model_uri"] == "models:/loc2vec-encoder/1"
    assert source["trained_on"]["region"] == "monaco_region_2016"
    assert file_sha256(_model_dir(town.run_dir, source["weights_sha256"]) / "model.pt") == source["weights_sha256"]

    region = doc["region"]
    assert region["extract"] == str(TOWN.resolve()) and region["osm_sha256"] == file_sha256(TOWN)
    assert region["bbox"] == pytest.approx([13.2421, 53.5463, 13.2799, 53.5687])
    # the training split leaves no train anchors here; the evaluation-only split has no val and a smaller buffer
    assert region["split"] == "evaluation_only" and "val" not in region["anchors"]
    assert region["split_spec"]["val_fraction"] == 0 and region["split_spec"]["max_positive_m"] == 0
    assert "too small for the training split" in console

    assert set(doc["model"]) == set(METRICS) and set(doc["baselines"]) == BASELINES
    assert all(set(b) == set(METRICS) for b in doc["baselines"].values())
    assert doc["n_test_locations"] > 100 and doc["baselines"]["coordinates"]["triplet_accuracy"] == 1.0
    support = doc["support"]
    assert set(support) == set(METRICS)
    assert doc["insufficient"] == [m for m in METRICS if support[m]["insufficient"]]
    for metric, s in support.items():
        assert s["insufficient"] == bool(s["reason"]), metric
        assert s["n"] >= 100 or s["insufficient"], metric
    # a town: enough test locations for the land-use and distance metrics, too few POIs for the POI classifiers
    assert {"poi_knn_accuracy", "poi_logreg_macro_f1"} <= set(doc["insufficient"])
    assert not {"landuse_probe_macro_f1", "triplet_accuracy", "silhouette"} & set(doc["insufficient"])
    for metric in doc["insufficient"]:
        assert f"warning: {metric} is insufficient" in console
    assert _mlflow_runs(town.run_dir) == town.mlflow_runs_before  # nothing trained, nothing logged


@pytest.mark.slow
def test_the_town_scores_equal_evaluate_embeddings_on_the_vectors_the_model_wrote(town, tmp_path):
    import mlflow.pytorch

    from loc2vec.data.chunked import open_reader
    from loc2vec.evaluation.embedders import crops_at

    frame = gpd.read_parquet(town.out / "embeddings.parquet")
    assert len(frame) == len(frame["point_id"].unique()) and np.stack(frame["embedding"]).shape[1] == 224
    # the vectors are the registered model's place embedding (what the registry serves)
    reader = open_reader(town.work / "mosaic" / f"{town.document['region']['mosaic_version']}.zarr")
    crops = crops_at(reader, frame[["x", "y"]].to_numpy()[:16], 128).transpose(0, 3, 1, 2)
    with tracking.using(_store(town.run_dir)):
        served = mlflow.pytorch.load_model("models:/loc2vec-encoder/1", dst_path=str(tmp_path))
    with torch.no_grad():
        expected = served(torch.from_numpy(np.ascontiguousarray(crops))).numpy()
    np.testing.assert_allclose(np.stack(frame["embedding"])[:16], expected, atol=1e-5)

    out = tmp_path / "scored"
    embeddings = str(town.out / "embeddings.parquet")
    args = [
        "evaluate",
        "--pbf",
        str(TOWN),
        "--bbox",
        TOWN_BBOX,
        "--embeddings",
        embeddings,
        "--out",
        str(out),
        "--work",
        str(town.work),
    ]
    assert main(args) == 0
    scored = json.loads((out / "evaluation.json").read_text())
    for name in ["model", *BASELINES]:
        ours = town.document["model"] if name == "model" else town.document["baselines"][name]
        theirs = scored["model"] if name == "model" else scored["baselines"][name]
        for metric in METRICS:
            assert theirs[metric] == pytest.approx(ours[metric], abs=1e-9, nan_ok=True), (name, metric)
    assert scored["support"] == town.document["support"] and scored["region"] == town.document["region"]


@pytest.mark.slow
def test_a_run_model_directory_loads_as_its_registered_version(town):
    model_dir = _model_dir(town.run_dir, town.document["model_source"]["weights_sha256"])
    local = load_existing_model(str(model_dir), "sqlite:///unused.db")
    registered = load_existing_model("models:/loc2vec-encoder/1", _store(town.run_dir))
    assert local.source["kind"] == "file" and local.source["weights_path"] == str(model_dir / "model.pt")
    assert local.source["weights_sha256"] == registered.source["weights_sha256"]
    assert local.source["config"].endswith("checkpoints/last.pt") and local.config == registered.config
    expected = registered.encoder.state_dict()
    assert all(torch.equal(value, expected[key]) for key, value in local.encoder.state_dict().items())
    assert (registered.m_per_px, local.m_per_px) == (3.0, None)  # a local file does not record its mosaic


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "store", "message"),
    [
        ("models:/loc2vec-encoder/99", "run", "not found in the registry"),
        ("models:/nope@champion", "run", "no registered model 'nope'"),
        ("models:/loc2vec-encoder@champion", "missing", "no MLflow store"),
        ("missing/model.pt", "run", "no such file"),
    ],
)
def test_a_model_that_does_not_exist_is_refused_before_any_work(
    monaco_run, tmp_path, monkeypatch, capsys, model, store, message
):
    uri = _store(monaco_run) if store == "run" else f"sqlite:///{tmp_path / 'none' / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out, work = tmp_path / "out", tmp_path / "work"
    model = str(tmp_path / model) if model.startswith("missing/") else model
    args = [
        "evaluate",
        "--pbf",
        str(TOWN),
        "--bbox",
        TOWN_BBOX,
        "--model",
        model,
        "--out",
        str(out),
        "--work",
        str(work),
    ]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not work.exists() and not (tmp_path / "none").exists()


@pytest.mark.slow
def test_a_region_too_small_even_for_the_evaluation_split_fails_in_one_line(town, tmp_path, capsys):
    model_dir = _model_dir(town.run_dir, town.document["model_source"]["weights_sha256"])
    config = tmp_path / "config.json"  # 256-px crops: a leak buffer of 1,086 m on a 1.6 km region
    config.write_text(json.dumps({"crop_px": 256, "seed": 0}))
    out = tmp_path / "out"
    bbox = "26.935,60.522,26.965,60.536"
    args = ["evaluate", "--pbf", str(KOTKA), "--bbox", bbox, "--model", str(model_dir), "--train-config", str(config)]
    assert main([*args, "--out", str(out), "--work", str(tmp_path / "work")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "too small for the evaluation protocol, even without training" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("reference", "parts"),
    [
        ("models:/loc2vec-encoder/3", ("loc2vec-encoder", "3", None)),
        ("models:/loc2vec-encoder@champion", ("loc2vec-encoder", None, "champion")),
        ("loc2vec-encoder/12", ("loc2vec-encoder", "12", None)),
        ("my.model@v-2", ("my.model", None, "v-2")),
        ("models:/a/b/c", None),
        ("loc2vec-encoder", None),
    ],
)
def test_registry_references(reference, parts):
    match = REGISTRY_REFERENCE.match(reference)
    assert ((match["name"], match["version"], match["alias"]) if match else None) == parts


def test_a_tracking_uri_is_recorded_without_its_password():
    assert public_uri("postgresql://mlflow:secret@db:5432/mlflow") == "postgresql://mlflow:***@db:5432/mlflow"
    assert public_uri("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"


def test_a_model_is_refused_on_a_mosaic_it_was_not_trained_for():
    names = [f"c{i}" for i in range(12)]
    model = ExistingModel(build_encoder(), TrainConfig(), {}, m_per_px=3.0, channel_names=tuple(names))
    check_compatible(model, 3.0, names)
    with pytest.raises(ConfigError, match="LOC2VEC_RESOLUTION_M=3"):
        check_compatible(model, 2.0, names)
    with pytest.raises(ConfigError, match="trained on the channels"):
        check_compatible(model, 3.0, names[::-1])
    with pytest.raises(ConfigError, match="takes 12 channels"):
        check_compatible(model, 3.0, names[:11])
    assert math.isclose(model.m_per_px, 3.0)
