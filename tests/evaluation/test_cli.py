"""The one-command run and the open protocol, end to end on a real extract (slow)."""

import hashlib
import json
import re

import geopandas as gpd
import numpy as np
import pytest

from loc2vec.evaluation.metrics import METRICS
from pipelines.cli import main
from tests.conftest import KOTKA, MONACO, RUN_TRAINING, TRAIN_REGION

BBOX = ",".join(map(str, TRAIN_REGION))
KEYS = set(METRICS)


@pytest.fixture
def run_dir(monaco_run):
    return monaco_run


@pytest.mark.slow
def test_run_writes_evaluation_json_in_the_documented_shape(run_dir):
    doc = json.loads((run_dir / "evaluation.json").read_text())
    assert set(doc["model"]) == KEYS
    assert set(doc["baselines"]) == {"channel_stats", "untrained", "coordinates", "random"}
    assert all(set(v) == KEYS for v in doc["baselines"].values())
    assert doc["n_test_locations"] > 50 and doc["n_test_pois"] >= 0
    assert doc["baselines"]["coordinates"]["triplet_accuracy"] == 1.0
    assert list((run_dir / "maps").rglob("embedding_map.html")) and list((run_dir / "maps").rglob("projector.html"))


@pytest.mark.slow
def test_seeds_give_mean_and_std_in_the_json_and_in_mlflow(run_dir):
    doc = json.loads((run_dir / "evaluation.json").read_text())
    runs = doc["runs"]
    assert [r["seed"] for r in runs] == [0, 1] and doc["seeds"]["n_seeds"] == 2
    values = [r["model"]["triplet_accuracy"] for r in runs]
    stats = doc["seeds"]["model"]["triplet_accuracy"]
    assert stats == {"mean": pytest.approx(np.mean(values)), "std": pytest.approx(np.std(values))}
    assert doc["model"]["triplet_accuracy"] == pytest.approx(np.mean(values))
    assert "leads" not in doc  # an interval is one run's: each run keeps its own
    for r in runs:
        assert set(r["leads"]) == {"untrained", "channel_stats"}
        for lead in r["leads"]["untrained"].values():
            assert lead is None or lead["low"] <= lead["lead"] <= lead["high"]
        assert r["leads"]["untrained"]["landuse_balanced_recall_at_10"]["lead"] == pytest.approx(
            r["model"]["landuse_balanced_recall_at_10"] - r["baselines"]["untrained"]["landuse_balanced_recall_at_10"]
        )

    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow' / 'mlflow.db'}")
    summary = client.get_run(doc["mlflow_summary_run_id"])
    assert summary.data.tags["loc2vec.runs"].split(",") == [r["mlflow_run_id"] for r in runs]
    assert summary.info.run_name == f"seed summary small_cnn seeds 0,1 · 1 epochs · {MONACO.name.split('.')[0]}"
    assert all(f"v{r['model_version']}" in summary.data.tags["mlflow.note.content"] for r in runs)
    assert summary.data.metrics["eval_mean/model/triplet_accuracy"] == pytest.approx(stats["mean"])
    assert summary.data.metrics["eval_std/model/triplet_accuracy"] == pytest.approx(stats["std"])
    for r in runs:  # each training run holds its own evaluation
        metrics = client.get_run(r["mlflow_run_id"]).data.metrics
        assert metrics["eval/model/triplet_accuracy"] == pytest.approx(r["model"]["triplet_accuracy"])


@pytest.mark.slow
def test_similar_prints_neighbours_and_writes_a_map(run_dir, capsys):
    out_map = run_dir / "similar.html"
    code = main(
        ["similar", "--lat", "43.7384", "--lon", "7.4246", "-k", "5", "--data-dir", str(run_dir), "--map", str(out_map)]
    )
    assert code == 0
    out = capsys.readouterr().out.splitlines()
    lines = [line for line in out if line.strip() and not line.startswith("[loc2vec")]
    assert lines[0].split()[:3] == ["rank", "lat", "lon"] and len(lines) == 6
    assert out_map.stat().st_size > 10_000
    page = out_map.read_text(encoding="utf-8")  # query, ranks and distances over the region's composite
    assert "L.imageOverlay(" in page and ">query</td>" in page and "cluster" not in page
    shown = re.findall(r"rank (\d+) · embedding distance ([\d.]+) · ([\d.]+) km away", page)
    printed = [(int(row.split()[0]), float(row.split()[-2]), float(row.split()[-1])) for row in lines[1:]]
    assert [int(r) for r, _, _ in shown] == [r for r, _, _ in printed]
    for (_, dist, km), (_, want_dist, want_km) in zip(shown, printed, strict=True):
        assert float(dist) == pytest.approx(want_dist, abs=1e-4) and float(km) == pytest.approx(want_km, abs=1e-3)
    assert main(["similar", "--lat", "48.85", "--lon", "2.35", "--data-dir", str(run_dir)]) == 1  # outside


@pytest.mark.slow
def test_similar_places_elsewhere_skip_the_query_surroundings(run_dir):
    from loc2vec.evaluation.similar import similar_places
    from loc2vec.evaluation.stage import load_index_manifest

    manifest = load_index_manifest((run_dir / "index" / "CURRENT").read_text().strip())
    near = similar_places(manifest, 43.7384, 7.4246, k=10)
    assert near["ground_km"].min() < 0.3  # without a floor, the query's own surroundings come first
    far = similar_places(manifest, 43.7384, 7.4246, k=10, min_km=1.0)
    assert len(far) == 10 and (far["ground_km"] >= 1.0).all()
    assert far["embedding_distance"].is_monotonic_increasing and list(far["rank"]) == list(range(1, 11))


def _evaluate(work, *args) -> int:
    return main(["evaluate", "--pbf", str(MONACO), "--bbox", BBOX, "--work", str(work), *args])


@pytest.mark.slow
def test_external_embeddings_are_scored_on_the_same_protocol(run_dir, tmp_path):
    points_file = tmp_path / "points.parquet"
    work = tmp_path / "work"
    assert _evaluate(work, "--points-out", str(points_file)) == 0
    points = gpd.read_parquet(points_file)
    assert {"train", "test"} <= set(points["split"]) and {"location", "poi", "anchor"} >= set(points["kind"])
    # "another embedder": metric coordinates in km, i.e. exactly the coordinates baseline
    theirs = gpd.GeoDataFrame(
        {"vector": list(points[["x", "y"]].to_numpy() / 1000.0)}, geometry=points.geometry, crs="EPSG:4326"
    )
    theirs_file = tmp_path / "theirs.parquet"
    theirs.to_parquet(theirs_file)
    out = tmp_path / "scored"
    assert _evaluate(work, "--embeddings", str(theirs_file), "--out", str(out)) == 0
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["embeddings_file"]["path"] == str(theirs_file.resolve()) and doc["embeddings_file"]["dim"] == 2
    assert doc["embeddings_file"]["sha256"] == hashlib.sha256(theirs_file.read_bytes()).hexdigest()
    for metric in KEYS:
        ours, baseline = doc["model"][metric], doc["baselines"]["coordinates"][metric]
        assert (ours is None and baseline is None) or ours == pytest.approx(baseline, abs=1e-6), metric

    # with a run's training config, the baselines are exactly those that run computed
    run_doc = json.loads((run_dir / "evaluation.json").read_text())
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"seed": 1, "epochs": 1}))
    out_seed1 = tmp_path / "scored-seed1"
    assert (
        _evaluate(work, "--embeddings", str(theirs_file), "--out", str(out_seed1), "--train-config", str(config_file))
        == 0
    )
    doc1 = json.loads((out_seed1 / "evaluation.json").read_text())
    ran = next(r for r in run_doc["runs"] if r["seed"] == 1)
    for name in ("untrained", "channel_stats"):
        for metric in KEYS:
            assert doc1["baselines"][name][metric] == pytest.approx(ran["baselines"][name][metric], nan_ok=True)
    assert doc1["baselines"]["untrained"] != doc["baselines"]["untrained"]  # seed 1, not the default seed 0

    shuffled = theirs.iloc[np.random.default_rng(0).permutation(len(theirs))]
    bad_file = tmp_path / "bad.parquet"
    shuffled.to_parquet(bad_file)
    assert _evaluate(work, "--embeddings", str(bad_file), "--out", str(tmp_path / "bad")) == 1
    assert not (tmp_path / "bad" / "evaluation.json").exists()


def test_run_config_sets_the_split_seed_only_when_asked():
    from assets.training import SamplesConfig, TrainingConfig
    from pipelines.runner import main_job_config

    plain = main_job_config(3).ops
    assert set(plain) == {"trained_model"} and plain["trained_model"] == TrainingConfig(seed=3)
    drawn = main_job_config(0, epochs=2, split_seed=1).ops
    assert drawn["sample_locations"] == SamplesConfig(seed=1)
    assert drawn["trained_model"] == TrainingConfig(seed=0, epochs=2)
    short = main_job_config(1, steps_per_epoch=5).ops["trained_model"]
    assert short == TrainingConfig(seed=1, steps_per_epoch=5) and short.epochs == TrainingConfig().epochs
    assert main(["run", "--pbf", str(MONACO), "--out", "/nonexistent", "--split-seeds", "0"]) == 2


@pytest.mark.slow
def test_run_over_two_draws_of_the_test_blocks(tmp_path):
    out = tmp_path / "draws"
    # Kotka: small enough to be quick, large enough that either draw leaves train anchors in every split
    args = ["run", "--pbf", str(KOTKA), "--out", str(out), *RUN_TRAINING, "--split-seeds", "2"]
    assert main(args) == 0
    doc = json.loads((out / "evaluation.json").read_text())
    runs = doc["runs"]
    assert [r["split_seed"] for r in runs] == [0, 1] and doc["seeds"]["n_seeds"] == 2
    # another draw is other test ground: the protocol-fixed baselines change with it
    stats = [r["baselines"]["channel_stats"]["landuse_recall_at_10"] for r in runs]
    assert doc["baselines"]["channel_stats"]["landuse_recall_at_10"] == pytest.approx(np.mean(stats))
    assert runs[0]["baselines"]["channel_stats"] != runs[1]["baselines"]["channel_stats"]
    samples = sorted((out / "samples").glob("*.parquet"))
    model_dirs = [d for d in (out / "models").iterdir() if d.name != "mlruns"]
    assert len(samples) == 2 and {d.name.rsplit("-", 1)[0] for d in model_dirs} == {s.stem for s in samples}
    from mlflow import MlflowClient

    tracking = MlflowClient(f"sqlite:///{out}/mlflow/mlflow.db")
    trained = [tracking.get_run(r["mlflow_run_id"]).data.params for r in runs]
    assert [(p["epochs"], p["steps_per_epoch"]) for p in trained] == [("1", "10")] * 2  # --steps-per-epoch


@pytest.mark.parametrize(
    ("pbf", "bbox", "message"),
    [
        (MONACO, "2.2,48.8,2.4,48.9", "outside the extract"),
        (MONACO, "7.4,43.7,7.5", "bbox must be"),
        (MONACO, "7.5,43.7,7.4,43.8", "invalid bbox"),
        (None, None, "unsupported OSM file type"),
    ],
)
def test_run_refuses_bad_input_before_creating_anything(tmp_path, capsys, pbf, bbox, message):
    if pbf is None:
        pbf = tmp_path / "extract.csv"
        pbf.write_text("not osm")
    out = tmp_path / "out"
    args = ["run", "--pbf", str(pbf), "--out", str(out)] + (["--bbox", bbox] if bbox else [])
    assert main(args) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_similar_without_an_index_says_so(tmp_path, capsys):
    assert main(["similar", "--lat", "43.74", "--lon", "7.42", "--data-dir", str(tmp_path)]) == 1
    assert "no similarity index" in capsys.readouterr().err
    assert main(["similar", "--lat", "43.74", "--lon", "7.42", "--index", str(tmp_path / "manifest.json")]) == 1
    assert "manifest not found" in capsys.readouterr().err
