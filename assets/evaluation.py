"""embeddings, evaluation (model vs baselines, champion alias) and similarity_index."""

from dataclasses import asdict
from pathlib import Path

import dagster as dg
import numpy as np

from assets.automation import eager_except
from assets.metadata import markdown_table, osm_time_tags
from loc2vec import tracking
from loc2vec.data.locations import SamplesManifest
from loc2vec.evaluation.incremental import (
    LATEST,
    delta_path,
    refresh_base,
    refresh_for_mosaic,
    update_or_build_index,
)
from loc2vec.evaluation.metrics import METRICS
from loc2vec.evaluation.run import MAIN_METRIC
from loc2vec.evaluation.serve_maps import page_url
from loc2vec.evaluation.significance import LEVEL, format_lead
from loc2vec.evaluation.stage import (
    EmbeddingsManifest,
    IndexManifest,
    MapsManifest,
    build_embeddings,
    build_maps,
    evaluate_stage,
)
from loc2vec.io import json_text, write_atomic, write_json
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.render.mosaic import MosaicManifest
from loc2vec.training.run import ModelManifest
from resources import MlflowTracking, ProjectStorage


@dg.asset(
    # follows the model and the mosaic; the features are read for the evaluation points, and a new
    # version of them always comes before a new mosaic, which the embeddings then wait for
    automation_condition=eager_except("osm_features"),
    group_name="evaluation",
    kinds={"pytorch", "parquet"},
    description="Embedding of every evaluation point (locations, POIs) and of a grid over the region.",
    code_version="5",
    check_specs=[dg.AssetCheckSpec("finite_and_shaped", asset="embeddings", blocking=True)],
)
def embeddings(
    context: dg.AssetExecutionContext,
    trained_model: ModelManifest,
    sample_locations: SamplesManifest,
    osm_features: FeaturesManifest,
    raster_mosaic: MosaicManifest,
    storage: ProjectStorage,
):
    # cut from the current mosaic: after an OSM update the same model embeds the updated region, re-embedding
    # only the points whose crops reach a changed pixel (a new model or sample set embeds everything)
    out_dir = storage.path("embeddings")
    refresh = refresh_for_mosaic(storage.path("embeddings", LATEST), trained_model, raster_mosaic, out_dir)
    if refresh is None:
        manifest = build_embeddings(trained_model, sample_locations, osm_features, out_dir, mosaic=raster_mosaic)
        delta_path(manifest).unlink(missing_ok=True)  # a full table: nothing to update in place
        reembedded, removed = sum(manifest.counts.values()), 0
    else:
        manifest, delta = refresh
        reembedded, removed = len(delta.updated), len(delta.removed)
    write_json(asdict(manifest), storage.path("embeddings", LATEST))
    context.log.info(
        f"embedded {reembedded} points ({'refresh' if refresh else 'all'}), removed {removed}, "
        f"{sum(manifest.counts.values())} in the table"
    )
    vectors = manifest.vectors()
    storage.prune("embeddings", manifest.path)
    yield dg.Output(
        manifest,
        metadata={
            "refreshed_from": (refresh_base(manifest) or "") if refresh else "",
            "points_embedded": reembedded,
            "points_removed": removed,
            "points": markdown_table(["kind", "count"], list(manifest.counts.items())),
            "dim": manifest.dim,
            "model_version": manifest.model_version,
            "mosaic_version": manifest.mosaic_version,
            **osm_time_tags(manifest),
            "embeddings_file": dg.MetadataValue.path(manifest.path),
        },
    )
    norms = np.linalg.norm(vectors, axis=1)
    dim = trained_model.representation_dim or trained_model.load().representation_dim
    ok = bool(np.isfinite(vectors).all() and vectors.shape[1] == dim)
    yield dg.AssetCheckResult(
        check_name="finite_and_shaped",
        passed=ok and bool(np.allclose(norms, 1.0, atol=1e-3)),
        metadata={"shape": str(vectors.shape), "min_norm": float(norms.min()), "max_norm": float(norms.max())},
    )


@dg.asset(
    # the model's evaluation: re-run for a new model, not for embeddings refreshed after an OSM diff
    automation_condition=eager_except("embeddings"),
    group_name="evaluation",
    kinds={"sklearn", "mlflow"},
    description="Metrics on held-out test blocks for the model and baselines computed in the same run "
    "(re-run when the model changes, not for an OSM diff).",
    code_version="3",
)
def evaluation(
    context: dg.AssetExecutionContext,
    trained_model: ModelManifest,
    embeddings: EmbeddingsManifest,
    mlflow_tracking: MlflowTracking,
    storage: ProjectStorage,
) -> dg.Output[dict]:
    path = storage.path("evaluation", f"evaluation-v{trained_model.model_version}.json")
    result = evaluate_stage(trained_model, embeddings, path)
    storage.prune("evaluation", path)
    uri = trained_model.tracking_uri
    scores = {"model": result["model"], **result["baselines"]}
    tracking.log_evaluation(uri, trained_model.run_id, scores, json_text(result))
    tracking.describe_evaluation(
        uri, trained_model.model_name, trained_model.model_version, scores, MAIN_METRIC, result.get("by_construction")
    )
    promoted = tracking.promote_if_better(
        uri, trained_model.model_name, trained_model.model_version, MAIN_METRIC, result["model"][MAIN_METRIC]
    )
    context.log.info(f"model version {trained_model.model_version} champion: {promoted}")
    return dg.Output(
        result,
        metadata={
            "metrics": metrics_table(result),
            "n_test_locations": result["n_test_locations"],
            "n_test_pois": result["n_test_pois"],
            "main_metric": f"{MAIN_METRIC} = {result['model'][MAIN_METRIC]:.4f}",
            "champion": promoted,
            "evaluation_file": dg.MetadataValue.path(str(path)),
            "mlflow_run": dg.MetadataValue.url(
                mlflow_tracking.run_url(trained_model.experiment_id, trained_model.run_id)
            ),
        },
    )


def metrics_table(result: dict) -> dg.MetadataValue:
    """The evaluation's metrics, one row per metric: the model, each baseline, the test-set size and, when
    too small to tell embedders apart, why; then the model's lead over each compared baseline with its
    bootstrap interval (``loc2vec.evaluation.significance``), where the metric has one."""
    names = ["model", *result["baselines"]]
    compared = list(result.get("leads") or {})
    rows = [
        [m] + [_cell(result, n, m) for n in names] + _support_cells(result, m) + [_lead(result, n, m) for n in compared]
        for m in METRICS
    ]
    leads = [f"lead over {n} [{LEVEL:.0%}]" for n in compared]
    return markdown_table(["metric", *names, "n", "insufficient", *leads], rows)


def _lead(result: dict, baseline: str, metric: str) -> str:
    lead = result["leads"][baseline].get(metric)
    return "" if lead is None else format_lead(lead)


def _cell(result: dict, embedder: str, metric: str) -> float | str:
    value = (result["model"] if embedder == "model" else result["baselines"][embedder])[metric]
    if metric in result.get("by_construction", {}).get(embedder, ()):
        return f"{value:.4f} (by construction)"
    return value


def _support_cells(result: dict, metric: str) -> list[object]:
    """The metric's test-set size and, when too small to tell embedders apart, why (``loc2vec.evaluation.support``)."""
    support = result.get("support", {}).get(metric)
    if support is None:
        return ["", ""]
    return [support["n"], support["reason"] if support["insufficient"] else ""]


def _model_dir(storage: ProjectStorage, kind: str, model: ModelManifest) -> Path:
    """``<data_dir>/<kind>/v<version>-<run>``: one directory per registered model version (created by
    its first atomic write, so a failed build leaves none behind)."""
    return storage.path(kind, f"v{model.model_version}-{model.run_id[:8]}")


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    group_name="evaluation",
    kinds={"faiss"},
    description="IVF index over the embeddings keyed by point id, with recall@10 against exact search and "
    "query latency; after an OSM diff it is updated in place (ids removed and added), not rebuilt.",
    code_version="2",
)
def similarity_index(
    context: dg.AssetExecutionContext,
    trained_model: ModelManifest,
    embeddings: EmbeddingsManifest,
    storage: ProjectStorage,
) -> dg.Output[IndexManifest]:
    out_dir = _model_dir(storage, "index", trained_model)
    manifest, how = update_or_build_index(trained_model, embeddings, out_dir)
    context.log.info(f"similarity index {how}: {manifest.report['n_vectors']} vectors")
    current = storage.path("index", "CURRENT")
    write_atomic(current, lambda tmp: tmp.write_text(str(out_dir / "manifest.json")))  # the newest model's index
    storage.prune("index", out_dir)
    report = manifest.report
    return dg.Output(
        manifest,
        metadata={
            "vectors": report["n_vectors"],
            "recall_at_10_vs_exact": round(report["recall_at_10"], 4),
            "ann_ms_per_query": round(report["hnsw_ms_per_query"], 4),
            "update": how,
            "exact_ms_per_query": round(report["exact_ms_per_query"], 4),
            "build_seconds": round(report["build_seconds"], 3),
            "index": dg.MetadataValue.path(manifest.index_path),
        },
    )


@dg.asset(
    automation_condition=dg.AutomationCondition.eager(),
    group_name="evaluation",
    kinds={"html"},
    description="A folium map of the region coloured by embedding cluster and a plotly projector page.",
    code_version="2",  # 2: UMAP on scikit-learn's exact neighbours, pictures drawn at their size
)
def maps(
    trained_model: ModelManifest, embeddings: EmbeddingsManifest, storage: ProjectStorage
) -> dg.Output[MapsManifest]:
    out_dir = _model_dir(storage, "maps", trained_model)
    manifest = build_maps(trained_model, embeddings, out_dir)
    storage.prune("maps", out_dir)
    # http links (browsers refuse file:// from the UI): `make maps` serves them, $LOC2VEC_MAPS_URL overrides
    return dg.Output(
        manifest,
        metadata={
            "embedding_map": dg.MetadataValue.url(page_url(manifest.embedding_map, storage.data_dir)),
            "projector": dg.MetadataValue.url(page_url(manifest.projector, storage.data_dir)),
            "embedding_map_path": dg.MetadataValue.path(manifest.embedding_map),
            "projector_path": dg.MetadataValue.path(manifest.projector),
            "map_points": manifest.n_map_points,
            "projector_points": manifest.n_projector_points,
            "clusters": manifest.clusters,
        },
    )


def _is_score(value) -> bool:
    """A metric value: a finite number, or NaN/None where the test set cannot give one (no POIs)."""
    return value is None or (isinstance(value, int | float) and not np.isinf(value))


@dg.asset_check(
    asset=evaluation, description="Every metric of the model and baselines is there, a number or NaN, never inf."
)
def evaluation_metrics_valid(evaluation: dict) -> dg.AssetCheckResult:
    table = {"model": evaluation["model"], **evaluation["baselines"]}
    bad = [f"{e}/{name}" for e, values in table.items() for name, value in values.items() if not _is_score(value)]
    missing = sorted(set(METRICS) - set(evaluation["model"]))
    return dg.AssetCheckResult(
        passed=not bad and not missing and evaluation["n_test_locations"] > 0,
        metadata={"bad": ", ".join(bad) or "none", "missing": ", ".join(missing) or "none"},
    )


@dg.asset_check(
    asset=similarity_index,
    additional_ins={"embeddings": dg.AssetIn("embeddings")},
    description="The index holds every embedding and finds the exact top 10 (recall@10 >= 0.9; warns below).",
)
def similarity_index_recall(similarity_index: IndexManifest, embeddings: EmbeddingsManifest) -> dg.AssetCheckResult:
    report = similarity_index.report
    expected = sum(embeddings.counts.values())
    return dg.AssetCheckResult(
        passed=report["n_vectors"] == expected and report["recall_at_10"] >= 0.9,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"vectors": report["n_vectors"], "embeddings": expected, "recall_at_10": report["recall_at_10"]},
    )


@dg.asset_check(asset=maps, description="Both map pages exist, are non-empty HTML and name the OSM attribution.")
def maps_pages_written(maps: MapsManifest) -> dg.AssetCheckResult:
    problems = []
    for page in (maps.embedding_map, maps.projector):
        path = Path(page)
        if not path.is_file() or path.stat().st_size < 1000:
            problems.append(f"{path.name}: missing or empty")
        else:
            text = path.read_text(errors="replace")
            if "<html" not in text[:2000].lower():
                problems.append(f"{path.name}: not HTML")
            elif "OpenStreetMap" not in text:
                problems.append(f"{path.name}: no OpenStreetMap attribution")
    return dg.AssetCheckResult(passed=not problems, metadata={"problems": "; ".join(problems) or "none"})
