"""How much held-out data stands behind each metric, and whether it is enough to tell embedders apart.

Every metric gets ``n`` (the test examples it is computed on), ``classes`` (for class-based metrics: the
classes with at least ``MIN_PER_CLASS`` test examples, 20) and ``insufficient``. A metric is
insufficient when

- ``n < MIN_N`` (100): below that one example moves a share by more than 0.01 and the binomial spread of
  a score (about 0.05 at n = 100) is as large as the gaps between embedders;
- a class-based metric has fewer than ``MIN_CLASSES`` (2) classes with ``MIN_PER_CLASS`` test examples
  each (for the probes also train examples): it cannot measure telling classes apart;
- ``landuse_recall_at_10`` (not class-balanced): one class holds more than ``MAX_MAJORITY`` (80 %) of the
  labelled test locations, so any embedder that finds that class scores high (the rural case in docs/evaluation.md,
  where the model, the untrained encoder and channel_stats all scored 0.94).

The flags depend on the points only, never on an embedder: every column of a row shares them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from loc2vec.evaluation.metrics import METRICS, POI_METRICS
from loc2vec.evaluation.probes import (
    MIN_PER_CLASS,
    UNMAPPED,
    anchor_mask,
    landuse_probe_classes,
    landuse_test_classes,
    location_mask,
    presence_categories,
)

MIN_N = 100
MIN_CLASSES = 2
MAX_MAJORITY = 0.8
RULE = (
    f"insufficient: fewer than {MIN_N} test examples, fewer than {MIN_CLASSES} classes with {MIN_PER_CLASS} "
    f"test (probes: and train) examples each, or (landuse_recall_at_10) one class above {MAX_MAJORITY:.0%}"
)


@dataclass(frozen=True)
class Support:
    n: int
    classes: int | None
    insufficient: bool
    reason: str


def _judge(n: int, classes: int | None = None, majority: float | None = None) -> Support:
    reasons = []
    if n < MIN_N:
        reasons.append(f"{n} test examples < {MIN_N}")
    if classes is not None and classes < MIN_CLASSES:
        reasons.append(f"{classes} classes with >= {MIN_PER_CLASS} examples < {MIN_CLASSES}")
    if majority is not None and majority > MAX_MAJORITY:
        reasons.append(f"one class holds {majority:.0%} > {MAX_MAJORITY:.0%} of the test locations")
    return Support(n, classes, bool(reasons), "; ".join(reasons))


def metric_support(points: pd.DataFrame, n_triplets: int) -> dict[str, dict]:
    """``{metric: {"n", "classes", "insufficient", "reason"}}`` for every metric of the protocol."""
    test_locations = location_mask(points, "test")
    n_locations = int(test_locations.sum())
    landuse = points.loc[test_locations, "landuse_class"].to_numpy()
    mapped = landuse[landuse != UNMAPPED]
    counts = pd.Series(mapped).value_counts()
    majority = float(counts.iloc[0] / len(mapped)) if len(mapped) else None
    test_classes = landuse_test_classes(points)
    probe_classes = landuse_probe_classes(points)

    test_pois = ((points["kind"] == "poi") & (points["split"] == "test")).to_numpy()
    poi_counts = points.loc[test_pois, "category"].value_counts()
    poi_classes = int((poi_counts >= MIN_PER_CLASS).sum())

    out: dict[str, Support] = {
        "triplet_accuracy": _judge(n_triplets),
        "landuse_recall_at_10": _judge(len(mapped), int((counts >= MIN_PER_CLASS).sum()), majority),
        "landuse_balanced_recall_at_10": _judge(int(np.isin(landuse, test_classes).sum()), len(test_classes)),
        "landuse_probe_macro_f1": _judge(int(np.isin(landuse, probe_classes).sum()), len(probe_classes)),
        "poi_presence_macro_auc": _judge(int(anchor_mask(points, "test").sum()), len(presence_categories(points))),
        **{m: _judge(int(test_pois.sum()), poi_classes) for m in POI_METRICS},
        **{m: _judge(n_locations) for m in ("silhouette", "geo_spearman", "trustworthiness")},
    }
    return {m: asdict(out[m]) for m in METRICS}


def insufficient(support: dict[str, dict]) -> list[str]:
    return [m for m, s in support.items() if s["insufficient"]]


def merge_support(supports: list[dict[str, dict]]) -> dict[str, dict]:
    """Over several runs (other draws of the test blocks): the smallest ``n`` and ``classes``, insufficient
    when any run's is, with that run's reason."""
    merged = {}
    for metric in supports[0]:
        rows = [s[metric] for s in supports]
        classes = [r["classes"] for r in rows if r["classes"] is not None]
        bad = [r["reason"] for r in rows if r["insufficient"]]
        merged[metric] = {
            "n": min(r["n"] for r in rows),
            "classes": min(classes) if classes else None,
            "insufficient": bool(bad),
            "reason": bad[0] if bad else "",
        }
    return merged


def warnings(document: dict) -> list[str]:
    """One line per insufficient metric of an evaluation document (what the CLI prints)."""
    support = document.get("support", {})
    return [
        f"warning: {metric} is insufficient on this test set ({support[metric]['reason']}): "
        "it cannot tell embedders apart here"
        for metric in insufficient(support)
    ]
