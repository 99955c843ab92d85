"""How sure is a lead? A paired bootstrap of the model's lead over a baseline on the bar's metrics.

Each resample draws the test examples of a metric with replacement (balanced recall: within each class,
as each class counts once) and recomputes the metric for the model and the baseline on the same draw:
they are scored on the same points, so the draw is paired. The fitted probes and the neighbour lists
stay fixed, so the interval covers which test examples were drawn, not the training of the probes or of
the model (seeds cover that). A lead whose interval lies above 0 is one the test set can tell apart.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np

LEAD_METRICS = ("landuse_balanced_recall_at_10", "landuse_probe_macro_f1", "poi_presence_macro_auc")
LEAD_BASELINES = ("untrained", "channel_stats")
RESAMPLES = 1000
LEVEL = 0.95
RULE = (
    f"model minus baseline on the same test examples; [low, high]: the central {LEVEL:.0%} of {RESAMPLES} "
    "paired bootstrap resamples of the test examples (loc2vec.evaluation.significance)"
)


class Outcomes(NamedTuple):
    """One embedder's per-example outcomes of a metric: ``of(weights)`` takes (resamples, examples)
    counts and gives the metric of each weighting; a resample draws within each of ``strata`` (index
    arrays that cover the examples)."""

    n: int
    of: Callable[[np.ndarray], np.ndarray]
    strata: list[np.ndarray]


def _balanced_recall(agreement: np.ndarray, labels: np.ndarray) -> Outcomes | None:
    if len(agreement) == 0:
        return None
    classes = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    return Outcomes(
        len(agreement),
        lambda w: np.mean([w[:, c] @ agreement[c] / w[:, c].sum(axis=1) for c in classes], axis=0),
        classes,
    )


def _macro_f1(classes: list[str], truth: np.ndarray, guess: np.ndarray) -> Outcomes:
    """As scikit-learn's ``f1_score(average="macro", labels=classes)``, 0 where a class has no examples."""

    def of(w: np.ndarray) -> np.ndarray:
        scores = []
        for c in classes:
            tp = w @ ((truth == c) & (guess == c))
            wrong = w @ ((truth == c) != (guess == c))  # false positives and false negatives
            denominator = 2 * tp + wrong
            scores.append(np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0))
        return np.mean(scores, axis=0)

    return Outcomes(len(truth), of, [np.arange(len(truth))])


def _weighted_auc(w: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """ROC-AUC of ``score`` for ``positive`` with example weights ``w`` (resamples, examples): the weighted
    share of (positive, negative) pairs ranked right, ties counting half."""
    order = np.argsort(score, kind="stable")
    _, starts, counts = np.unique(score[order], return_index=True, return_counts=True)
    ranked = np.ascontiguousarray(w.T[order])  # (examples by score, resamples)
    below = np.cumsum(np.where(positive[order, None], 0, ranked), axis=0)  # negatives up to each row
    rows = np.flatnonzero(positive[order])
    group = np.repeat(np.arange(len(starts)), counts)[rows]
    first, last = starts[group], starts[group] + counts[group] - 1  # each positive's group of equal scores
    before = below[np.maximum(first - 1, 0)] * (first > 0)[:, None]  # negatives scored lower
    weight = ranked[rows]
    right = (weight * (before + below[last]) / 2).sum(axis=0)  # lower ones, and half of the tied ones
    pairs = weight.sum(axis=0) * below[-1]
    return np.divide(right, pairs, out=np.full(len(w), np.nan), where=pairs > 0)


def _macro_auc(truth: np.ndarray, scores: np.ndarray) -> Outcomes:
    def of(w: np.ndarray) -> np.ndarray:
        return np.nanmean([_weighted_auc(w, truth[:, j], scores[:, j]) for j in range(truth.shape[1])], axis=0)

    return Outcomes(len(truth), of, [np.arange(len(truth))])


def outcomes(raw: dict[str, tuple | None]) -> dict[str, Outcomes | None]:
    """The per-example outcomes of ``LEAD_METRICS`` from ``score_with_outcomes``' second value; None where
    the metric is NaN."""
    agreement, probe, presence = (raw[m] for m in LEAD_METRICS)
    return {
        "landuse_balanced_recall_at_10": _balanced_recall(*agreement) if agreement is not None else None,
        "landuse_probe_macro_f1": _macro_f1(*probe) if probe is not None else None,
        "poi_presence_macro_auc": _macro_auc(presence[1], presence[2]) if presence is not None else None,
    }


def _resample_weights(n: int, strata: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """(RESAMPLES, n) counts of a draw with replacement within each stratum (index arrays covering 0..n-1)."""
    drawn = np.concatenate([s[rng.integers(0, len(s), (RESAMPLES, len(s)))] for s in strata], axis=1)
    flat = (np.arange(RESAMPLES)[:, None] * n + drawn).ravel()
    return np.bincount(flat, minlength=RESAMPLES * n).reshape(RESAMPLES, n).astype(np.float32)


def leads(
    model: dict[str, Outcomes | None], baselines: dict[str, dict[str, Outcomes | None]], seed: int = 0
) -> dict[str, dict[str, dict[str, float] | None]]:
    """Per baseline and metric: the model's lead over the baseline on every test example and the bootstrap
    interval of the lead (``{"lead", "low", "high"}``); None where either has no value. Every baseline
    is compared on the same resamples."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, dict[str, float] | None]] = {name: {} for name in baselines}
    tail = (1 - LEVEL) / 2
    for metric in LEAD_METRICS:
        m = model[metric]
        weights = _resample_weights(m.n, m.strata, rng) if m is not None else None
        drawn, full = (m.of(weights), m.of(np.ones((1, m.n)))[0]) if m is not None else (None, None)
        for name, outcomes_of in baselines.items():
            b = outcomes_of[metric]
            if m is None or b is None:
                out[name][metric] = None
                continue
            if b.n != m.n:
                raise ValueError(f"{metric}: the model and {name} were scored on other test examples")
            lead = drawn - b.of(weights)
            out[name][metric] = {
                "lead": float(full - b.of(np.ones((1, b.n)))[0]),
                "low": float(np.nanquantile(lead, tail)),
                "high": float(np.nanquantile(lead, 1 - tail)),
            }
    return out


def format_lead(lead: dict[str, float] | None) -> str:
    """``+0.031 [+0.001, +0.060]``: a lead and its interval; ``n/a`` without one."""
    return "n/a" if lead is None else f"{lead['lead']:+.3f} [{lead['low']:+.3f}, {lead['high']:+.3f}]"
