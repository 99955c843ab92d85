"""Linear probes on frozen embeddings: a location's land-use class and the POI categories around it.

Probes are fitted on train-block locations and scored on test-block locations (the split's leak buffer
keeps their crops apart). Features are standardised on the train rows; the logistic regression (lbfgs,
class-balanced) is deterministic and seeded. A class (land use) or category (POI presence) is scored only
where it has at least ``MIN_PER_CLASS`` examples on both sides of the split, so one location cannot swing
a class's score by more than 1/20.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from loc2vec.evaluation.protocol import PRESENCE_SEP

MIN_PER_CLASS = 20
UNMAPPED = "none"


def location_mask(points: pd.DataFrame, split: str) -> np.ndarray:
    """The protocol's (subsampled) locations of ``split``."""
    return ((points["kind"] == "location") & (points["split"] == split)).to_numpy()


def anchor_mask(points: pd.DataFrame, split: str) -> np.ndarray:
    """Every train/test anchor of ``split`` the protocol holds: its locations and its extra anchors."""
    return (points["kind"].isin(["location", "anchor"]) & (points["split"] == split)).to_numpy()


def _linear_probe(seed: int) -> Pipeline:
    return make_pipeline(
        StandardScaler(), LogisticRegression(max_iter=3000, class_weight="balanced", random_state=seed)
    )


def _class_counts(labels: np.ndarray) -> pd.Series:
    labels = np.asarray(labels, dtype=object)
    return pd.Series(labels[labels != UNMAPPED]).value_counts()


def landuse_test_classes(points: pd.DataFrame) -> list[str]:
    """Mapped land-use classes with at least ``MIN_PER_CLASS`` test locations (balanced recall's classes)."""
    counts = _class_counts(points.loc[location_mask(points, "test"), "landuse_class"].to_numpy())
    return sorted(counts.index[counts >= MIN_PER_CLASS])


def landuse_probe_classes(points: pd.DataFrame) -> list[str]:
    """Land-use classes with at least ``MIN_PER_CLASS`` test *and* train locations (the probe's classes)."""
    train = _class_counts(points.loc[location_mask(points, "train"), "landuse_class"].to_numpy())
    return [c for c in landuse_test_classes(points) if train.get(c, 0) >= MIN_PER_CLASS]


def landuse_probe_predictions(
    emb: np.ndarray, points: pd.DataFrame, seed: int = 0
) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(classes, true class, predicted class) of the test locations the land-use probe scores: a linear
    probe fitted on train locations, over the classes with enough examples on both sides; None with fewer
    than two such classes."""
    classes = landuse_probe_classes(points)
    if len(classes) < 2:
        return None
    labels = points["landuse_class"].to_numpy()
    scored = np.isin(labels, classes)
    train, test = location_mask(points, "train") & scored, location_mask(points, "test") & scored
    probe = _linear_probe(seed).fit(emb[train], labels[train])
    return classes, labels[test], probe.predict(emb[test])


def macro_f1_of(predicted: tuple[list[str], np.ndarray, np.ndarray] | None) -> float:
    """Macro-F1 of ``landuse_probe_predictions``' output; NaN with fewer than two classes to score."""
    if predicted is None:
        return float("nan")
    classes, truth, guess = predicted
    return float(f1_score(truth, guess, labels=classes, average="macro"))


def landuse_probe_macro_f1(emb: np.ndarray, points: pd.DataFrame, seed: int = 0) -> float:
    """Macro-F1 on test locations of the land-use probe (``landuse_probe_predictions``)."""
    return macro_f1_of(landuse_probe_predictions(emb, points, seed))


def presence_matrix(points: pd.DataFrame, mask: np.ndarray, categories: list[str]) -> np.ndarray:
    """(rows of ``mask``, categories) booleans: a POI of the category within the presence radius."""
    out = np.zeros((int(mask.sum()), len(categories)), dtype=bool)
    if "pois_nearby" not in points.columns:
        return out
    index = {c: j for j, c in enumerate(categories)}
    for i, value in enumerate(points.loc[mask, "pois_nearby"].fillna("")):
        for c in str(value).split(PRESENCE_SEP):
            if c in index:
                out[i, index[c]] = True
    return out


def presence_categories(points: pd.DataFrame) -> list[str]:
    """POI categories present near, and absent from, at least ``MIN_PER_CLASS`` train and test anchors."""
    if "pois_nearby" not in points.columns:
        return []
    listed = {c for v in points["pois_nearby"].fillna("") for c in str(v).split(PRESENCE_SEP) if c}
    candidates = sorted(listed)
    keep = np.ones(len(candidates), dtype=bool)
    for split in ("train", "test"):
        y = presence_matrix(points, anchor_mask(points, split), candidates)
        positives = y.sum(axis=0)
        keep &= (positives >= MIN_PER_CLASS) & (len(y) - positives >= MIN_PER_CLASS)
    return [c for c, k in zip(candidates, keep, strict=True) if k]


def poi_presence_scores(
    emb: np.ndarray, points: pd.DataFrame, seed: int = 0
) -> tuple[list[str], np.ndarray, np.ndarray] | None:
    """(categories, presence, probe scores) on the test anchors, (anchors, categories) each: one linear
    probe per frequent POI category (is one within the presence radius?), fitted on train anchors; None
    without any category with enough examples."""
    categories = presence_categories(points)
    if not categories:
        return None
    train, test = anchor_mask(points, "train"), anchor_mask(points, "test")
    y_train, y_test = presence_matrix(points, train, categories), presence_matrix(points, test, categories)
    scores = np.empty(y_test.shape, dtype=np.float64)
    for j in range(len(categories)):
        probe = _linear_probe(seed).fit(emb[train], y_train[:, j])
        scores[:, j] = probe.predict_proba(emb[test])[:, 1]
    return categories, y_test, scores


def macro_auc_of(scored: tuple[list[str], np.ndarray, np.ndarray] | None) -> float:
    """Macro ROC-AUC of ``poi_presence_scores``' output; NaN without any category to score."""
    if scored is None:
        return float("nan")
    _, truth, scores = scored
    return float(np.mean([roc_auc_score(truth[:, j], scores[:, j]) for j in range(truth.shape[1])]))


def poi_presence_macro_auc(emb: np.ndarray, points: pd.DataFrame, seed: int = 0) -> float:
    """Macro ROC-AUC on test anchors of the POI presence probes (``poi_presence_scores``)."""
    return macro_auc_of(poi_presence_scores(emb, points, seed))
