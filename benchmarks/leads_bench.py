"""What ``leads`` in evaluation.json costs: the paired bootstrap beside scoring one embedder.

Run ``python -m benchmarks.leads_bench``. On the embedded Monaco extract (the default ``MosaicSpec`` and
split, as ``make run``), the protocol's points are built and the baselines embedded once. Then, over
``--rounds`` alternating rounds:

- ``score``: ``score_with_outcomes`` of one embedder (every metric of the protocol, and the per-example
  outcomes the bootstrap reads);
- ``leads``: ``significance.leads`` of the untrained encoder over channel statistics and random vectors
  (two baselines, the bar's three metrics, ``RESAMPLES`` resamples), what every evaluation adds;
- the weighted ROC-AUC of every resample of one POI category: ours (one cumulative sum over the examples
  sorted once, all resamples at a time) against scikit-learn's ``roc_auc_score`` with ``sample_weight``,
  once per resample (the baseline; both must agree).

Prints the median seconds of each and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score
from threadpoolctl import threadpool_limits

from benchmarks.common import Clock
from loc2vec.data.crops import CropReader
from loc2vec.data.locations import build_sample_locations
from loc2vec.data.samples import SplitSpec
from loc2vec.evaluation import significance
from loc2vec.evaluation.metrics import score_with_outcomes
from loc2vec.evaluation.protocol import build_points
from loc2vec.evaluation.run import METRIC_THREADS, baseline_embeddings, protocol_radii
from loc2vec.osm.layers import build_feature_layers
from loc2vec.render.mosaic import MosaicSpec, render_mosaic
from loc2vec.schema import load_schema
from loc2vec.training.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
PBF = ROOT / "data" / "osm" / "monaco_region_2016.osm.pbf"


def monaco_protocol(work: Path) -> tuple:
    """The protocol's points of the embedded extract, its crop reader and the metric radii."""
    features, _ = build_feature_layers(PBF, load_schema(), work / "features")
    mosaic = render_mosaic(features, MosaicSpec(), work / "mosaic")
    reader = CropReader.from_store(mosaic.path)
    samples, _ = build_sample_locations(reader, SplitSpec(), mosaic.version, work / "samples")
    spec = samples.split_spec()
    points = build_points(samples.read(), features.read(), reader, spec.block_m, samples.leak_distance_m)
    config = TrainConfig(crop_px=spec.crop_px)
    return points, reader, config, protocol_radii(config, reader.grid.resolution)


def auc_per_resample(weights: np.ndarray, positive: np.ndarray, score: np.ndarray) -> np.ndarray:
    """The baseline: scikit-learn's weighted ROC-AUC, one call per resample."""
    return np.array([roc_auc_score(positive, score, sample_weight=w) for w in weights])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(limits=METRIC_THREADS):
        with Clock() as prep:
            points, reader, config, radii = monaco_protocol(Path(tmp))
            embeddings = baseline_embeddings(points, reader, config)
        print(f"protocol and baseline embeddings: {prep.wall:.0f} s; {len(points)} points")
        scored = {name: score_with_outcomes(embeddings[name], points, **radii) for name in embeddings}
        model = significance.outcomes(scored["untrained"][1])
        baselines = {name: significance.outcomes(scored[name][1]) for name in ("channel_stats", "random")}
        _, truth, scores = scored["untrained"][1]["poi_presence_macro_auc"]
        column = int(np.argmax(truth.sum(axis=0)))  # the most frequent category
        positive, score = truth[:, column].astype(bool), scores[:, column]
        weights = significance._resample_weights(len(truth), [np.arange(len(truth))], np.random.default_rng(0))
        ours, theirs = significance._weighted_auc(weights, positive, score), auc_per_resample(weights, positive, score)
        if not np.allclose(ours, theirs, atol=1e-9):
            raise SystemExit(f"the weighted AUCs differ: {np.abs(ours - theirs).max()}")
        seconds: dict[str, list[float]] = {k: [] for k in ("score", "leads", "auc ours", "auc scikit-learn")}
        for _ in range(args.rounds):
            steps = {
                "score": lambda: score_with_outcomes(embeddings["untrained"], points, **radii),
                "leads": lambda: significance.leads(model, baselines, seed=0),
                "auc ours": lambda: significance._weighted_auc(weights, positive, score),
                "auc scikit-learn": lambda: auc_per_resample(weights, positive, score),
            }
            for name, step in steps.items():
                with Clock() as clock:
                    step()
                seconds[name].append(clock.wall)
    median = {name: statistics.median(values) for name, values in seconds.items()}
    n = int(positive.sum())
    print(f"{significance.RESAMPLES} resamples; POI category with {n} positives of {len(positive)} test anchors")
    print("| step | median s | min s | max s |\n|---|---|---|---|")
    for name, values in seconds.items():
        print(f"| {name} | {median[name]:.3f} | {min(values):.3f} | {max(values):.3f} |")
    print(f"leads / score of one embedder: {median['leads'] / median['score']:.2f}")
    print(f"weighted AUC, scikit-learn per resample / ours: {median['auc scikit-learn'] / median['auc ours']:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
