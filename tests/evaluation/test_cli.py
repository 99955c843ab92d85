"""The one-command run and the open protocol, end to end on a real extract (slow)."""

import json

import geopandas as gpd
import numpy as np
import pytest

from loc2vec.evaluation.metrics import METRICS
from pipelines.cli import main
from tests.conftest import MONACO, TRAIN_REGION

BBOX = ",".join(map(str, TRAIN_REGION))
KEYS = set(METRICS)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["run", "--pbf", str(MONACO), "--bbox", BBOX, "--out", str(out), "--epochs", "1"]) == 0
    return out


@pytest.mark.slow
def test_run_writes_evaluation_json_in_the_documented_shape(run_dir):
    doc = json.loads((run_dir / "evaluation.json").read_text())
    assert set(doc["model"]) == KEYS
    assert set(doc["baselines"]) == {"channel_stats", "untrained", "coordinates"}
    assert all(set(v) == KEYS for v in doc["baselines"].values())
    assert doc["n_test_locations"] > 50 and doc["n_test_pois"] >= 0
    assert doc["baselines"]["coordinates"]["triplet_accuracy"] == 1.0
    assert list((run_dir / "maps").rglob("embedding_map.html")) and list((run_dir / "maps").rglob("projector.html"))


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
    assert main(["similar", "--lat", "48.85", "--lon", "2.35", "--data-dir", str(run_dir)]) == 1  # outside


def _evaluate(work, *args) -> int:
    return main(["evaluate", "--pbf", str(MONACO), "--bbox", BBOX, "--work", str(work), *args])


@pytest.mark.slow
def test_external_embeddings_are_scored_on_the_same_protocol(run_dir, tmp_path):
    points_file = tmp_path / "points.parquet"
    work = tmp_path / "work"
    assert _evaluate(work, "--points-out", str(points_file)) == 0
    points = gpd.read_parquet(points_file)
    assert {"train", "test"} <= set(points["split"]) and {"location", "poi"} >= set(points["kind"])
    # "another embedder": metric coordinates in km, i.e. exactly the coordinates baseline
    theirs = gpd.GeoDataFrame(
        {"vector": list(points[["x", "y"]].to_numpy() / 1000.0)}, geometry=points.geometry, crs="EPSG:4326"
    )
    theirs_file = tmp_path / "theirs.parquet"
    theirs.to_parquet(theirs_file)
    out = tmp_path / "scored"
    assert _evaluate(work, "--embeddings", str(theirs_file), "--out", str(out)) == 0
    doc = json.loads((out / "evaluation.json").read_text())
    for metric in KEYS:
        ours, baseline = doc["model"][metric], doc["baselines"]["coordinates"][metric]
        assert (ours is None and baseline is None) or ours == pytest.approx(baseline, abs=1e-6), metric

    shuffled = theirs.iloc[np.random.default_rng(0).permutation(len(theirs))]
    bad_file = tmp_path / "bad.parquet"
    shuffled.to_parquet(bad_file)
    assert _evaluate(work, "--embeddings", str(bad_file), "--out", str(tmp_path / "bad")) == 1
    assert not (tmp_path / "bad" / "evaluation.json").exists()
