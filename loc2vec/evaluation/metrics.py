"""The protocol's metrics, computed identically for every embedder on the same points.

All metrics use test points only, except the POI classifiers, which are fitted on train-block POIs, and
the linear probes (``loc2vec.evaluation.probes``), which are fitted on train-block locations.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.manifold import trustworthiness
from sklearn.metrics import accuracy_score, f1_score, silhouette_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from loc2vec.evaluation.probes import (
    MIN_PER_CLASS,
    UNMAPPED,
    landuse_probe_predictions,
    location_mask,
    macro_auc_of,
    macro_f1_of,
    poi_presence_scores,
)

METRICS = (
    "triplet_accuracy",
    "poi_knn_accuracy",
    "poi_knn_macro_f1",
    "poi_logreg_accuracy",
    "poi_logreg_macro_f1",
    "landuse_recall_at_10",
    "landuse_balanced_recall_at_10",
    "landuse_probe_macro_f1",
    "poi_presence_macro_auc",
    "silhouette",
    "geo_spearman",
    "trustworthiness",
)
# the POI-category classifiers fitted on POI points (poi_presence_macro_auc is a probe over locations)
POI_METRICS = ("poi_knn_accuracy", "poi_knn_macro_f1", "poi_logreg_accuracy", "poi_logreg_macro_f1")


def held_out_triplets(xy: np.ndarray, r_pos: float, r_neg: float, n: int, seed: int) -> np.ndarray:
    """(anchor, positive, negative) index triples among test locations: p within r_pos, n beyond r_neg."""
    rng = np.random.default_rng([seed, 31])
    tree = cKDTree(xy)
    out = []
    for a in rng.permutation(len(xy)):
        near = [j for j in tree.query_ball_point(xy[a], r_pos) if j != a]
        if not near:
            continue
        far = rng.integers(0, len(xy), 20)
        far = far[np.hypot(*(xy[far] - xy[a]).T) >= r_neg]
        if len(far) == 0:
            continue
        out.append((a, near[int(rng.integers(len(near)))], int(far[0])))
        if len(out) == n:
            break
    return np.asarray(out, dtype=np.int64).reshape(-1, 3)


def triplet_accuracy(emb: np.ndarray, triplets: np.ndarray) -> float:
    a, p, n = (emb[triplets[:, i]] for i in range(3))
    return float(np.mean(np.linalg.norm(a - p, axis=1) < np.linalg.norm(a - n, axis=1)))


def _neighbour_agreement(
    emb: np.ndarray, labels: np.ndarray, xy: np.ndarray, k: int, exclude_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per query: how many of its k nearest embedding neighbours (ignoring those closer than ``exclude_m``
    on the ground) share its label, and how many such neighbours it has."""
    sq = (emb**2).sum(axis=1)
    d = sq[:, None] + sq[None, :] - 2.0 * emb @ emb.T
    geo = np.hypot(xy[:, None, 0] - xy[None, :, 0], xy[:, None, 1] - xy[None, :, 1])
    d[geo < exclude_m] = np.inf
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    valid = np.isfinite(np.take_along_axis(d, order, axis=1))
    same = labels[order] == labels[:, None]
    return (same & valid).sum(axis=1), valid.sum(axis=1)


def _drop_label(emb, labels, xy, skip_label):
    if skip_label is None:
        return emb, labels, xy
    keep = labels != skip_label
    return emb[keep], labels[keep], xy[keep]


def recall_at_k(
    emb: np.ndarray, labels: np.ndarray, xy: np.ndarray, k: int, exclude_m: float, skip_label: str | None = None
) -> float:
    """Share of each point's k nearest embedding neighbours with its label, ignoring neighbours closer
    than ``exclude_m`` on the ground (they share pixels with the query, so agreeing is trivial) and
    points labelled ``skip_label`` (unmapped), as queries and as neighbours."""
    emb, labels, xy = _drop_label(emb, labels, xy, skip_label)
    if len(emb) < 2:
        return float("nan")
    same, valid = _neighbour_agreement(emb, labels, xy, k, exclude_m)
    return float(same.sum() / max(valid.sum(), 1))


def class_agreement(
    emb: np.ndarray,
    labels: np.ndarray,
    xy: np.ndarray,
    k: int,
    exclude_m: float,
    min_per_class: int = MIN_PER_CLASS,
    skip_label: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(share of its k nearest embedding neighbours with its label, label) of each query
    ``balanced_recall_at_k`` averages: points of a label with at least ``min_per_class`` points (after
    dropping ``skip_label``) that have neighbours beyond ``exclude_m``."""
    emb, labels, xy = _drop_label(emb, labels, xy, skip_label)
    if len(emb) < 2:
        return np.zeros(0), labels[:0]
    same, valid = _neighbour_agreement(emb, labels, xy, k, exclude_m)
    classes, counts = np.unique(labels, return_counts=True)
    counted = (valid > 0) & np.isin(labels, classes[counts >= min_per_class])
    return same[counted] / valid[counted], labels[counted]


def balanced_recall_at_k(
    emb: np.ndarray,
    labels: np.ndarray,
    xy: np.ndarray,
    k: int,
    exclude_m: float,
    min_per_class: int = MIN_PER_CLASS,
    skip_label: str | None = None,
) -> float:
    """Recall@k (as :func:`recall_at_k`, every labelled point a candidate neighbour) averaged per query
    within each class, then over the classes with at least ``min_per_class`` points: each such class
    counts once, however large. NaN without such a class."""
    return balanced_recall_of(*class_agreement(emb, labels, xy, k, exclude_m, min_per_class, skip_label))


def landuse_neighbour_agreement(
    emb: np.ndarray, points: pd.DataFrame, exclude_m: float
) -> tuple[np.ndarray, np.ndarray]:
    """The per-query outcomes of ``landuse_balanced_recall_at_10`` (``class_agreement`` of the labelled
    test locations, 10 neighbours)."""
    loc = location_mask(points, "test")
    emb = np.asarray(emb, dtype=np.float64)[loc]
    xy, labels = points.loc[loc, ["x", "y"]].to_numpy(), points.loc[loc, "landuse_class"].to_numpy()
    return class_agreement(emb, labels, xy, 10, exclude_m, skip_label=UNMAPPED)


def balanced_recall_of(agreement: np.ndarray, labels: np.ndarray) -> float:
    """``landuse_balanced_recall_at_10`` from ``landuse_neighbour_agreement``'s outcomes: the mean per
    class, then over the classes; NaN without any."""
    if len(agreement) == 0:
        return float("nan")
    return float(np.mean([np.mean(agreement[labels == c]) for c in np.unique(labels)]))


def geo_spearman(emb: np.ndarray, xy: np.ndarray, max_m: float, max_pairs: int, seed: int) -> float:
    """Spearman correlation of embedding and ground distance over pairs closer than ``max_m``."""
    pairs = np.asarray(sorted(cKDTree(xy).query_pairs(max_m)), dtype=np.int64).reshape(-1, 2)
    if len(pairs) > max_pairs:
        pairs = pairs[np.random.default_rng(seed).choice(len(pairs), max_pairs, replace=False)]
    if len(pairs) < 3:
        return float("nan")
    e = np.linalg.norm(emb[pairs[:, 0]] - emb[pairs[:, 1]], axis=1)
    g = np.linalg.norm(xy[pairs[:, 0]] - xy[pairs[:, 1]], axis=1)
    return float(spearmanr(e, g).statistic)


def poi_scores(emb: np.ndarray, points: pd.DataFrame) -> dict[str, float]:
    pois = points["kind"].to_numpy() == "poi"
    train = pois & (points["split"].to_numpy() == "train")
    test = pois & (points["split"].to_numpy() == "test")
    y = points["category"].to_numpy()
    if train.sum() < 2 or test.sum() < 1 or len(set(y[train])) < 2:
        return dict.fromkeys(POI_METRICS, float("nan"))
    knn = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=min(5, int(train.sum()))))
    knn.fit(emb[train], y[train])
    logreg = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced"))
    logreg.fit(emb[train], y[train])
    scores = {}
    for name, model in (("knn", knn), ("logreg", logreg)):
        predicted = model.predict(emb[test])
        scores[f"poi_{name}_accuracy"] = float(accuracy_score(y[test], predicted))
        scores[f"poi_{name}_macro_f1"] = float(f1_score(y[test], predicted, average="macro"))
    return scores


def score(
    emb: np.ndarray,
    points: pd.DataFrame,
    r_pos: float,
    r_neg: float,
    exclude_m: float,
    seed: int = 0,
    clusters: int = 8,
) -> dict[str, float]:
    """Every metric of the protocol for one embedder (rows of ``emb`` align with ``points``)."""
    return score_with_outcomes(emb, points, r_pos, r_neg, exclude_m, seed, clusters)[0]


def score_with_outcomes(
    emb: np.ndarray,
    points: pd.DataFrame,
    r_pos: float,
    r_neg: float,
    exclude_m: float,
    seed: int = 0,
    clusters: int = 8,
) -> tuple[dict[str, float], dict[str, tuple | None]]:
    """``score``, and the per-example outcomes of the bar's metrics it computed them from (balanced recall:
    ``landuse_neighbour_agreement``; the probe: ``landuse_probe_predictions``; POI presence:
    ``poi_presence_scores``), for ``loc2vec.evaluation.significance``."""
    emb = np.asarray(emb, dtype=np.float64)
    loc = location_mask(points, "test")
    xy, e, labels = points.loc[loc, ["x", "y"]].to_numpy(), emb[loc], points.loc[loc, "landuse_class"].to_numpy()
    triplets = held_out_triplets(xy, r_pos, r_neg, 1000, seed)
    k = min(clusters, len(e) - 1)
    assign = KMeans(n_clusters=k, n_init=4, random_state=seed).fit_predict(e)
    sub = np.random.default_rng(seed).permutation(len(e))[:1500]
    outcomes = {
        "landuse_balanced_recall_at_10": landuse_neighbour_agreement(emb, points, exclude_m),
        "landuse_probe_macro_f1": landuse_probe_predictions(emb, points, seed),
        "poi_presence_macro_auc": poi_presence_scores(emb, points, seed),
    }
    scores = {
        "triplet_accuracy": triplet_accuracy(e, triplets) if len(triplets) else float("nan"),
        **poi_scores(emb, points),
        "landuse_recall_at_10": recall_at_k(e, labels, xy, 10, exclude_m, skip_label=UNMAPPED),
        "landuse_balanced_recall_at_10": balanced_recall_of(*outcomes["landuse_balanced_recall_at_10"]),
        "landuse_probe_macro_f1": macro_f1_of(outcomes["landuse_probe_macro_f1"]),
        "poi_presence_macro_auc": macro_auc_of(outcomes["poi_presence_macro_auc"]),
        "silhouette": float(silhouette_score(e, assign)) if len(set(assign)) > 1 else float("nan"),
        "geo_spearman": geo_spearman(e, xy, 1000.0, 20000, seed),
        "trustworthiness": float(trustworthiness(xy[sub], e[sub], n_neighbors=10)),
    }
    return scores, outcomes
