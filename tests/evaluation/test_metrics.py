"""The protocol's metrics on small seeded data where the right answer is known."""

import numpy as np
import pandas as pd
import pytest

from loc2vec.evaluation.index import build_hnsw, measure
from loc2vec.evaluation.metrics import (
    METRICS,
    POI_METRICS,
    balanced_recall_at_k,
    geo_spearman,
    held_out_triplets,
    poi_scores,
    recall_at_k,
    triplet_accuracy,
)
from loc2vec.evaluation.run import aggregate_seeds


def _grid(n=20, step=50.0):
    xx, yy = np.meshgrid(np.arange(n) * step, np.arange(n) * step)
    return np.column_stack([xx.ravel(), yy.ravel()])


def test_test_triplets_respect_the_radii():
    xy = _grid()
    triplets = held_out_triplets(xy, r_pos=60.0, r_neg=400.0, n=200, seed=0)
    assert len(triplets) == 200
    d_ap = np.linalg.norm(xy[triplets[:, 0]] - xy[triplets[:, 1]], axis=1)
    d_an = np.linalg.norm(xy[triplets[:, 0]] - xy[triplets[:, 2]], axis=1)
    assert (d_ap <= 60.0).all() and (d_an >= 400.0).all()
    assert triplet_accuracy(xy, triplets) == 1.0  # coordinates solve distance-defined triplets
    assert triplet_accuracy(np.zeros_like(xy), triplets) == 0.0  # a constant embedding never does


def test_recall_ignores_neighbours_closer_than_the_exclusion_radius():
    xy = _grid(10)
    labels = np.where(xy[:, 0] < 250, "west", "east")
    perfect = np.column_stack([(labels == "west").astype(float), np.zeros(len(xy))])
    assert recall_at_k(perfect + 1e-6 * xy, labels, xy, k=5, exclude_m=0.0) == 1.0
    # with coordinates as the embedding, excluding everything within 200 m forces far neighbours
    near = recall_at_k(xy, labels, xy, k=5, exclude_m=0.0)
    far = recall_at_k(xy, labels, xy, k=5, exclude_m=200.0)
    assert near > far
    assert np.isnan(recall_at_k(xy, np.array(["none"] * len(xy)), xy, 5, 0.0, skip_label="none"))


def test_geo_spearman_is_one_for_coordinates_and_near_zero_for_noise():
    xy = _grid()
    assert geo_spearman(xy, xy, 300.0, 5000, 0) == pytest.approx(1.0)
    noise = np.random.default_rng(0).normal(size=(len(xy), 8))
    assert abs(geo_spearman(noise, xy, 300.0, 5000, 0)) < 0.1


def test_poi_classifiers_learn_a_separable_category():
    rng = np.random.default_rng(0)
    cats = np.repeat(["amenity=cafe", "shop=bakery"], 40)
    emb = rng.normal(size=(80, 4)) + np.where(cats == "amenity=cafe", 3.0, -3.0)[:, None]
    points = pd.DataFrame({"kind": "poi", "split": np.tile(["train", "test"], 40), "category": cats})
    scores = poi_scores(emb, points)
    assert scores == dict.fromkeys(POI_METRICS, 1.0)


def test_poi_scores_are_nan_without_enough_train_pois():
    points = pd.DataFrame({"kind": "poi", "split": ["train", "test"], "category": ["a=b", "a=b"]})
    scores = poi_scores(np.zeros((2, 3)), points)
    assert set(scores) == set(POI_METRICS) and all(np.isnan(v) for v in scores.values())


def test_hnsw_recall_against_exact_search():
    vectors = np.random.default_rng(0).normal(size=(2000, 16)).astype(np.float32)
    report = measure(build_hnsw(vectors), vectors, n_queries=200, build_seconds=0.5)
    assert report.recall_at_10 > 0.9 and report.n_vectors == 2000
    assert report.hnsw_ms_per_query > 0 and report.exact_ms_per_query > 0 and report.build_seconds == 0.5


def test_aggregate_seeds_mean_and_std():
    metrics = list(METRICS)
    runs = [{"model": dict.fromkeys(metrics, v), "baselines": {"b": dict.fromkeys(metrics, 0.5)}} for v in (0.2, 0.4)]
    summary = aggregate_seeds(runs)
    assert summary["model"]["triplet_accuracy"] == {"mean": pytest.approx(0.3), "std": pytest.approx(0.1)}
    assert summary["baselines"]["b"]["silhouette"]["std"] == 0.0 and summary["n_seeds"] == 2


def test_pois_are_nodes_and_areas_once_each_and_never_land_cover(monaco_mosaic):
    from loc2vec.data.crops import CropReader
    from loc2vec.evaluation.protocol import LANDUSE_KEYS, POI_KEYS, poi_points

    features_manifest, mosaic = monaco_mosaic
    features = features_manifest.read()
    reader = CropReader.from_store(mosaic.path)
    pois = poi_points(features, reader)
    candidates = features[features["key"].isin(POI_KEYS)]
    nodes = candidates[candidates["kind"] == "point"]
    areas = candidates[(candidates["kind"] == "area") & ~candidates["key"].isin(LANDUSE_KEYS)]
    objects = pd.concat([nodes, areas]).drop_duplicates(["osm_type", "osm_id"])
    assert 0 < len(pois) <= len(objects) and len(areas) > 0
    # an area POI sits inside its polygon: a point of every area is among the POIs
    area_points = areas.to_crs(reader.grid.crs).geometry.representative_point()
    xy = set(zip(np.round(pois["x"], 3), np.round(pois["y"], 3), strict=True))
    inside = [(round(p.x, 3), round(p.y, 3)) in xy for p in area_points]
    assert np.mean(inside) > 0.9  # all but the few outside the mosaic
    land_cover = candidates[(candidates["kind"] == "area") & candidates["key"].isin(LANDUSE_KEYS)]
    also_poi = set(zip(areas["osm_type"], areas["osm_id"], strict=True))  # e.g. amenity= and leisure=swimming_pool
    land_cover = land_cover[[k not in also_poi for k in zip(land_cover["osm_type"], land_cover["osm_id"], strict=True)]]
    assert len(land_cover) > 0
    cover_points = land_cover.to_crs(reader.grid.crs).geometry.representative_point()
    assert not any((round(p.x, 3), round(p.y, 3)) in xy for p in cover_points)


def test_balanced_recall_counts_each_large_enough_class_once():
    # 1-d embeddings, k=1, places 1 km apart on the ground (only the query itself is excluded):
    # A at 0.0, 0.1, 0.2 -> neighbours A, A, B (0.25): recall 2/3
    # B at 0.25, 5.0     -> neighbours A (0.2), B (0.25): recall 1/2
    # C at 10.0          -> a neighbour only: one point is below min_per_class
    emb = np.array([[0.0], [0.1], [0.2], [0.25], [5.0], [10.0]])
    labels = np.array(["A", "A", "A", "B", "B", "C"])
    xy = np.column_stack([np.arange(6) * 1000.0, np.zeros(6)])
    assert balanced_recall_at_k(emb, labels, xy, k=1, exclude_m=1.0, min_per_class=2) == pytest.approx(7 / 12)
    assert recall_at_k(emb, labels, xy, k=1, exclude_m=1.0) == pytest.approx(3 / 6)  # pooled over the queries
    # a class only counts where it has enough points: with min_per_class=3, A alone
    assert balanced_recall_at_k(emb, labels, xy, k=1, exclude_m=1.0, min_per_class=3) == pytest.approx(2 / 3)
    assert np.isnan(balanced_recall_at_k(emb, labels, xy, k=1, exclude_m=1.0, min_per_class=4))
    unmapped = np.array(["none"] * 6)
    assert np.isnan(balanced_recall_at_k(emb, unmapped, xy, 1, 1.0, min_per_class=2, skip_label="none"))
