"""Linear probes and the insufficient flag: real small data (central Monaco), and bad input that must not crash."""

import numpy as np
import pandas as pd
import pytest

from loc2vec.evaluation.embedders import channel_stats, random_vectors
from loc2vec.evaluation.metrics import METRICS, score
from loc2vec.evaluation.probes import (
    MIN_PER_CLASS,
    landuse_probe_classes,
    landuse_probe_macro_f1,
    poi_presence_macro_auc,
    presence_categories,
    presence_matrix,
)
from loc2vec.evaluation.protocol import ProtocolSpec, build_points, pois_nearby
from loc2vec.evaluation.support import MIN_N, insufficient, merge_support, metric_support, warnings

NEW = ("landuse_balanced_recall_at_10", "landuse_probe_macro_f1", "poi_presence_macro_auc")


def test_probes_score_informative_features_above_random_ones(monaco_points):
    points, reader, crop_px = monaco_points
    informative = channel_stats(reader, points[["x", "y"]].to_numpy(), crop_px).astype(np.float64)
    noise = random_vectors(len(points), 16, seed=0).astype(np.float64)
    assert len(landuse_probe_classes(points)) >= 2 and len(presence_categories(points)) >= 1
    f1 = landuse_probe_macro_f1(informative, points), landuse_probe_macro_f1(noise, points)
    auc = poi_presence_macro_auc(informative, points), poi_presence_macro_auc(noise, points)
    assert f1[0] > f1[1] + 0.15, f1
    assert auc[0] > 0.65 and abs(auc[1] - 0.5) < 0.1, auc
    assert landuse_probe_macro_f1(informative, points, seed=0) == f1[0]  # deterministic


def test_presence_labels_name_the_frequent_categories_within_the_radius():
    pois = pd.DataFrame(
        {"x": [0.0, 50.0, 500.0, 900.0], "y": 0.0, "category": ["amenity=cafe", "shop=bakery", "amenity=cafe", "a=b|c"]}
    )
    xy = np.array([[10.0, 0.0], [520.0, 0.0], [2000.0, 0.0], [900.0, 0.0]])
    labels = pois_nearby(pois, xy, top=2, radius_m=100.0)
    assert list(labels) == ["amenity=cafe|shop=bakery", "amenity=cafe", "", ""]  # "|" in a value: never listed
    points = pd.DataFrame({"kind": "location", "split": "test", "pois_nearby": labels})
    y = presence_matrix(points, np.ones(4, dtype=bool), ["amenity=cafe", "shop=bakery"])
    assert y.tolist() == [[True, True], [True, False], [False, False], [False, False]]


def test_the_protocol_points_carry_presence_labels_and_extra_anchors(monaco_points, monaco_mosaic, monaco_samples):
    points, reader, _ = monaco_points
    features, _ = monaco_mosaic
    _, samples = monaco_samples
    frame = samples.read()
    anchors = int(frame["split"].isin(["train", "test"]).sum())
    spec = ProtocolSpec(max_train_locations=100, max_test_locations=100, max_extra_anchors=50)
    few = build_points(frame, features.read(), reader, 700.0, samples.leak_distance_m, spec)
    assert (few["kind"] == "location").sum() == 200 and (few["kind"] == "anchor").sum() == min(50, anchors - 200)
    labelled = points["kind"].isin(["location", "anchor"]) & (points["pois_nearby"] != "")
    assert labelled.sum() > 2 * (points["kind"] == "poi").sum()  # far more labels than POI points


def _synthetic(landuse: str | list[str], n: int = 300, pois_nearby: bool = True) -> pd.DataFrame:
    """Train and test locations on a 40 m grid, with the given land-use class(es)."""
    side = int(np.ceil(np.sqrt(2 * n)))
    xx, yy = np.meshgrid(np.arange(side) * 40.0, np.arange(side) * 40.0)
    xy = np.column_stack([xx.ravel(), yy.ravel()])[: 2 * n]
    frame = pd.DataFrame(
        {
            "kind": "location",
            "split": np.where(xy[:, 0] < xy[:, 0].max() / 2, "train", "test"),
            "x": xy[:, 0],
            "y": xy[:, 1],
            "category": "",
            "landuse_class": landuse if isinstance(landuse, str) else np.resize(landuse, 2 * n),
        }
    )
    if pois_nearby:
        frame["pois_nearby"] = ""
    return frame


@pytest.mark.parametrize(
    ("landuse", "with_presence"),
    [("none", True), ("landuse=forest", True), (["landuse=forest", "landuse=farmland"], False)],
    ids=["no land-use labels", "a single class", "no presence labels"],
)
def test_bad_input_is_insufficient_not_a_crash(landuse, with_presence):
    points = _synthetic(landuse, pois_nearby=with_presence)
    emb = random_vectors(len(points), 8, seed=1).astype(np.float64) + points[["x", "y"]].to_numpy() / 1000.0 @ np.ones(
        (2, 8)
    )
    scores = score(emb, points, r_pos=60.0, r_neg=300.0, exclude_m=300.0)
    assert set(scores) == set(METRICS)
    support = metric_support(points, n_triplets=500)
    bad = set(insufficient(support))
    assert "poi_presence_macro_auc" in bad and np.isnan(scores["poi_presence_macro_auc"])
    if with_presence:  # one land-use class or none: nothing for the probe to tell apart
        assert "landuse_probe_macro_f1" in bad and np.isnan(scores["landuse_probe_macro_f1"])
    else:  # two mapped classes: the land-use probe still runs
        assert "landuse_probe_macro_f1" not in bad and 0.0 <= scores["landuse_probe_macro_f1"] <= 1.0
    if landuse == "none":
        assert np.isnan(scores["landuse_recall_at_10"]) and np.isnan(scores["landuse_balanced_recall_at_10"])
        assert support["landuse_recall_at_10"]["n"] == 0 and "landuse_recall_at_10" in bad
    if landuse == "landuse=forest":  # every neighbour agrees: a perfect score that says nothing
        assert scores["landuse_recall_at_10"] == 1.0 and "landuse_recall_at_10" in bad
        assert "100%" in support["landuse_recall_at_10"]["reason"]
        assert "landuse_balanced_recall_at_10" in bad
    assert support["silhouette"]["n"] == (points["split"] == "test").sum() >= MIN_N and "silhouette" not in bad


def test_small_test_sets_are_flagged_and_runs_merge_to_the_smallest():
    small = _synthetic(["landuse=forest", "landuse=farmland"], n=40)
    support = metric_support(small, n_triplets=60)
    assert all(support[m]["insufficient"] for m in ("triplet_accuracy", "silhouette", *NEW))
    assert support["triplet_accuracy"]["reason"] == f"60 test examples < {MIN_N}"
    large = metric_support(_synthetic(["landuse=forest", "landuse=farmland"], n=400), n_triplets=1000)
    assert not large["landuse_balanced_recall_at_10"]["insufficient"]
    assert large["landuse_balanced_recall_at_10"]["classes"] == 2 and MIN_PER_CLASS <= 200
    merged = merge_support([large, support])
    assert merged["triplet_accuracy"] == {**support["triplet_accuracy"]}
    assert merged["landuse_balanced_recall_at_10"]["n"] == support["landuse_balanced_recall_at_10"]["n"]
    lines = warnings({"support": merged})
    assert len(lines) == len(insufficient(merged)) and any("triplet_accuracy" in line for line in lines)


@pytest.mark.slow
def test_cli_scores_external_embeddings_and_warns_about_insufficient_metrics(tmp_path, capsys):
    """``loc2vec evaluate --embeddings`` on a small real town: every metric with its n and flag in
    evaluation.json, the new metrics for the embeddings and every baseline, one warning per insufficient metric."""
    import json

    import geopandas as gpd

    from pipelines.cli import main
    from tests.conftest import KOTKA

    work, points_file = tmp_path / "work", tmp_path / "points.parquet"
    base = ["evaluate", "--pbf", str(KOTKA), "--work", str(work)]
    assert main([*base, "--points-out", str(points_file)]) == 0
    points = gpd.read_parquet(points_file)
    vectors = random_vectors(len(points), 8, seed=3)
    theirs = gpd.GeoDataFrame({"vector": list(vectors)}, geometry=points.geometry, crs="EPSG:4326")
    theirs.to_parquet(tmp_path / "theirs.parquet")
    capsys.readouterr()
    assert main([*base, "--embeddings", str(tmp_path / "theirs.parquet"), "--out", str(tmp_path / "out")]) == 0
    doc = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert set(doc["model"]) == set(METRICS) and set(NEW) <= set(METRICS)
    assert set(doc["baselines"]) == {"channel_stats", "untrained", "coordinates", "random"}
    assert all(set(scores) == set(METRICS) for scores in doc["baselines"].values())
    assert set(doc["support"]) == set(METRICS)
    assert all({"n", "classes", "insufficient", "reason"} == set(s) for s in doc["support"].values())
    assert doc["insufficient"] == [m for m in METRICS if doc["support"][m]["insufficient"]]
    assert "poi_logreg_macro_f1" in doc["insufficient"]  # a small town: a handful of test POIs
    printed = capsys.readouterr()
    warned = [line for line in (printed.out + printed.err).splitlines() if "insufficient on this test set" in line]
    assert len(warned) == len(doc["insufficient"]) and all(m in " ".join(warned) for m in doc["insufficient"])
