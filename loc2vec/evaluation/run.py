"""The evaluation stage: score the trained encoder and the baselines on the protocol's points."""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from loc2vec.data.crops import CropGeometry
from loc2vec.evaluation.embedders import channel_stats, coordinates, encode, random_vectors
from loc2vec.evaluation.metrics import METRICS, held_out_triplets, score_with_outcomes
from loc2vec.evaluation.probes import landuse_probe_classes, landuse_test_classes, presence_categories
from loc2vec.evaluation.significance import LEAD_BASELINES, leads, outcomes
from loc2vec.evaluation.significance import RULE as LEAD_RULE
from loc2vec.evaluation.support import RULE, insufficient, merge_support, metric_support
from loc2vec.models.encoders import build_encoder
from loc2vec.training.config import TrainConfig

MAIN_METRIC = "landuse_recall_at_10"
# Metrics a baseline scores perfectly by definition, not by learning anything: the triplets, the
# Spearman correlation and trustworthiness are all defined by ground distance, which *is* the
# coordinates embedding. No embedder can beat it there; those cells compare the image embedders only.
BY_CONSTRUCTION = {"coordinates": ("triplet_accuracy", "geo_spearman", "trustworthiness")}


METRIC_THREADS = 1
RANDOM_DIM = 16  # the floor: seeded Gaussian vectors, no information about the place


def protocol_radii(config: TrainConfig, resolution: float) -> dict[str, float]:
    """r_pos / r_neg of the triplets, and the exclusion radius of neighbour recall: neighbours must be
    negatives by the training definition (beyond r_neg) and share no pixels with the query (beyond the
    crop's edge), so recall measures similar places elsewhere, not spatial autocorrelation."""
    return {
        "r_pos": config.r_pos_m,
        "r_neg": config.r_neg_m,
        "exclude_m": max(config.r_neg_m, config.crop_px * resolution),
    }


def untrained_encoder(config: TrainConfig, channels: int) -> torch.nn.Module:
    """The ``untrained`` baseline's encoder: the config's architecture with its seeded initial weights."""
    torch.manual_seed(config.seed)
    return build_encoder(config.encoder, config.embedding_dim, channels)


def baseline_embeddings(points: pd.DataFrame, reader: CropGeometry, config: TrainConfig) -> dict[str, np.ndarray]:
    xy = points[["x", "y"]].to_numpy()
    return {
        "channel_stats": channel_stats(reader, xy, config.crop_px),
        "untrained": encode(untrained_encoder(config, reader.channels), reader, xy, config.crop_px),
        "coordinates": coordinates(xy),
        "random": random_vectors(len(xy), RANDOM_DIM, config.seed),
    }


def scored_with_leads(
    model_embeddings: np.ndarray,
    others: Mapping[str, np.ndarray],
    points: pd.DataFrame,
    radii: Mapping[str, float],
    seed: int,
    lead_over: Collection[str],
) -> tuple[dict, dict[str, dict], dict]:
    """Every metric of the model's embeddings and of each of ``others`` on the protocol's points (all rows of
    ``points``, in order), and the model's leads over those named in ``lead_over``, each with its paired
    bootstrap interval (``loc2vec.evaluation.significance``).

    The metrics are computed with one BLAS/OpenMP thread: with more, sums split by thread change the last
    digits of distances, and ties in neighbour ranks (trustworthiness) follow them, so the numbers would
    depend on the machine's core count.
    """
    with threadpool_limits(limits=METRIC_THREADS):
        model, model_outcomes = score_with_outcomes(model_embeddings, points, seed=seed, **radii)
        scored, compared = {}, {}
        for name, emb in others.items():
            scored[name], raw = score_with_outcomes(emb, points, seed=seed, **radii)
            if name in lead_over:
                compared[name] = outcomes(raw)
        return model, scored, leads(outcomes(model_outcomes), compared, seed=seed)


def evaluate_embeddings(
    model_embeddings: np.ndarray,
    points: pd.DataFrame,
    reader: CropGeometry,
    config: TrainConfig,
    seed: int = 0,
) -> dict:
    """The evaluation.json document: model and baseline metrics on the same test points (``scored_with_leads``)."""
    radii = protocol_radii(config, reader.grid.resolution)
    baselines = baseline_embeddings(points, reader, config)
    test = points["split"] == "test"
    model, scored, model_leads = scored_with_leads(model_embeddings, baselines, points, radii, seed, LEAD_BASELINES)
    test_xy = points.loc[test & (points["kind"] == "location"), ["x", "y"]].to_numpy()
    support = metric_support(points, len(held_out_triplets(test_xy, radii["r_pos"], radii["r_neg"], 1000, seed)))
    return {
        "model": model,
        "baselines": scored,
        "n_test_locations": int((test & (points["kind"] == "location")).sum()),
        "n_test_pois": int((test & (points["kind"] == "poi")).sum()),
        "n_train_pois": int(((points["split"] == "train") & (points["kind"] == "poi")).sum()),
        "poi_categories": sorted(points.loc[points["kind"] == "poi", "category"].unique().tolist()),
        "landuse_classes_balanced": landuse_test_classes(points),
        "landuse_classes_probe": landuse_probe_classes(points),
        "poi_presence_categories": presence_categories(points),
        "support": support,
        "insufficient": insufficient(support),
        "support_rule": RULE,
        "leads": model_leads,
        "lead_rule": LEAD_RULE,
        "protocol": {**radii, "seed": seed, "main_metric": MAIN_METRIC},
        "by_construction": {name: list(metrics) for name, metrics in BY_CONSTRUCTION.items()},
    }


def evaluate_model(model: torch.nn.Module, points: pd.DataFrame, reader: CropGeometry, config: TrainConfig) -> dict:
    emb = encode(model, reader, points[["x", "y"]].to_numpy(), config.crop_px)
    return evaluate_embeddings(emb, points, reader, config, seed=config.seed)


def aggregate_seeds(results: Sequence[Mapping]) -> dict:
    """Mean and standard deviation of every metric over runs with different training seeds."""

    def stats(values: list[float]) -> dict[str, float]:
        arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
        return {"mean": float(arr.mean()) if arr.size else math.nan, "std": float(arr.std()) if arr.size else math.nan}

    out = {"model": {m: stats([r["model"][m] for r in results]) for m in METRICS}, "baselines": {}}
    for name in results[0]["baselines"]:
        out["baselines"][name] = {m: stats([r["baselines"][name][m] for r in results]) for m in METRICS}
    out["n_seeds"] = len(results)
    return out


def sweep_document(results: Sequence[Mapping], runs: list[dict], seeds: list[int]) -> dict:
    """The evaluation document of several runs: the first run's, with the means in place of its metrics,
    plus ``seeds`` (mean and std per metric) and ``runs`` (every run's metrics and leads: a lead's interval
    is one run's, so the document has none of its own), and the support of the smallest test set among the
    runs; one run's as it is."""
    document = dict(results[0])
    if len(results) > 1:
        document.pop("leads", None)
        summary = aggregate_seeds(results)
        document["model"] = {m: v["mean"] for m, v in summary["model"].items()}
        document["baselines"] = {n: {m: v["mean"] for m, v in b.items()} for n, b in summary["baselines"].items()}
        document["seeds"] = {**summary, "seeds": seeds, "split_seeds": [r["split_seed"] for r in runs]}
        document["runs"] = runs
        document["support"] = merge_support([r["support"] for r in results])
        document["insufficient"] = insufficient(document["support"])
    return document
