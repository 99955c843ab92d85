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


def landuse_probe_macro_f1(emb: np.ndarray, points: pd.DataFrame, seed: int = 0) -> float:
    """Macro-F1 on test locations of a linear probe of the land-use class fitted on train locations, over
    the classes with enough examples on both sides; NaN with fewer than two such classes."""
    classes = landuse_probe_classes(points)
    if len(classes) < 2:
        return float("nan")
    labels = points["landuse_class"].to_numpy()
    scored = np.isin(labels, classes)
    train, test = location_mask(points, "train") & scored, location_mask(points, "test") & scored
    probe = _linear_probe(seed).fit(emb[train], labels[train])
    return float(f1_score(labels[test], probe.predict(emb[test]), labels=classes, average="macro"))


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


def poi_presence_macro_auc(emb: np.ndarray, points: pd.DataFrame, seed: int = 0) -> float:
    """Macro ROC-AUC on test anchors of one linear probe per frequent POI category (is one within the
    presence radius?), fitted on train anchors; NaN without any category with enough examples."""
    categories = presence_categories(points)
    if not categories:
        return float("nan")
    train, test = anchor_mask(points, "train"), anchor_mask(points, "test")
    y_train, y_test = presence_matrix(points, train, categories), presence_matrix(points, test, categories)
    aucs = []
    for j in range(len(categories)):
        probe = _linear_probe(seed).fit(emb[train], y_train[:, j])
        aucs.append(roc_auc_score(y_test[:, j], probe.predict_proba(emb[test])[:, 1]))
    return float(np.mean(aucs))
