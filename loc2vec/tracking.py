"""MLflow tracking and registry: a local sqlite store by default, any server URI otherwise.

Every training run logs params, per-epoch metrics and artifacts and registers one new model version of the
place embedding, tagged with its lineage (Dagster run id and link, OSM data version, mosaic version, git
commit) and described (``loc2vec.model_card``); evaluation and promotion add metrics and champion status.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loc2vec import model_card
from loc2vec.errors import ConfigError, Loc2VecError
from loc2vec.process import ProcessId

if TYPE_CHECKING:
    from loc2vec.models.encoders import Encoder

MODEL_NAME = "loc2vec-encoder"
EXPERIMENT = "loc2vec"
DAGSTER_UI = "http://127.0.0.1:3000"  # default base of dagster_run_url tags ($LOC2VEC_DAGSTER_UI)
NOTE = "mlflow.note.content"  # the tag the MLflow UI shows (and edits) as a run's description
OWNER_TAG_PREFIX = "loc2vec.owner."  # the process that runs a training run: pid, host, started


class TrackingUnavailable(Loc2VecError):
    """The MLflow tracking server cannot be reached."""


def default_tracking_uri(data_dir: str | Path) -> str:
    path = Path(data_dir).resolve() / "mlflow" / "mlflow.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def check_reachable(uri: str, timeout: float = 5.0) -> None:
    """Fail fast (before any training) when an HTTP tracking server does not answer its health check."""
    if uri.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingUnavailable(f"MLflow server {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError) as exc:
            raise TrackingUnavailable(f"MLflow tracking server {uri} is unreachable: {exc}") from exc
    elif uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    elif not uri.startswith(("file:", "databricks", "postgresql", "mysql")) and "://" in uri:
        raise ConfigError(f"unsupported MLflow tracking URI {uri!r}")


def git_commit(cwd: str | Path | None = None) -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str
    model_uri: str
    tracking_uri: str
    experiment_id: str


def client(tracking_uri: str):
    """An MLflow client for ``tracking_uri`` (tracking and registry), touching no process-wide setting."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextmanager
def using(tracking_uri: str) -> Iterator[None]:
    """MLflow's fluent API (``start_run``, ``log_*``, ``log_model``) pointed at ``tracking_uri`` for this
    block only: the process's tracking and registry URIs and their environment variables are restored."""
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        tracking_utils._tracking_uri, registry_utils._registry_uri = saved
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def setup(tracking_uri: str, experiment: str = EXPERIMENT, artifact_root: str | None = None) -> str:
    """Make sure ``experiment`` exists at ``tracking_uri`` (a server must answer first); returns its id."""
    check_reachable(tracking_uri)
    mlflow_client = client(tracking_uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if artifact_root is not None:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        location = Path(artifact_root).resolve().as_uri()
    return mlflow_client.create_experiment(experiment, artifact_location=location)


def log_json(obj: Any, name: str) -> None:
    import mlflow

    mlflow.log_text(json.dumps(obj, indent=2, sort_keys=True, default=str), name)


def dagster_run_url(base: str, run_id: str) -> str:
    """The Dagster UI page of run ``run_id`` (``base``: the UI's root URL)."""
    return f"{base.rstrip('/')}/runs/{run_id}"


def register_place_embedding(
    model: Encoder,
    name: str,
    tags: dict[str, str],
    io: model_card.EmbeddingIO,
    description: str,
    weights_path: str | Path,
    tracking_uri: str,
) -> tuple[str, str]:
    """Log ``model``'s place embedding (``PlaceEmbedding``) in the active run as ``place_embedding`` and
    register it as a new version of ``name`` with ``tags`` and ``description``; the whole encoder's weights
    (with the projection head) go to the run's ``encoder/`` artifacts. Returns (version, models:/ URI)."""
    import mlflow
    import mlflow.pytorch
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    from loc2vec.models.encoders import PlaceEmbedding

    channels = len(io.channel_names)
    # unnamed specs: pyfunc's predict takes a plain array only when the single input has no name
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, channels, io.crop_px, io.crop_px))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, io.output_dim))]),
    )
    mlflow.log_artifact(str(weights_path), "encoder")
    info = mlflow.pytorch.log_model(
        PlaceEmbedding(model).eval(),
        name="place_embedding",
        registered_model_name=name,
        signature=signature,
        # a batch of 2: torch.export would fix a batch dimension of 1 into the graph
        input_example=np.zeros((2, channels, io.crop_px, io.crop_px), dtype=np.uint8),
        metadata={"output": f"place_embedding ({io.output_dim}-d, L2-normalised)", **asdict(io)},
        pip_requirements=["torch", "torchvision", "pytorch-metric-learning"],
        await_registration_for=60,
    )
    version = str(info.registered_model_version)
    registry = client(tracking_uri)
    for key, value in tags.items():
        registry.set_model_version_tag(name, version, key, str(value))
    registry.update_registered_model(name, description=model_card.model_description(name, io))
    registry.update_model_version(name, version, description=description)
    return version, f"models:/{name}/{version}"


def _update_version_section(tracking_uri: str, name: str, version: str, heading: str, body: str) -> None:
    registry = client(tracking_uri)
    current = registry.get_model_version(name, version).description or ""
    registry.update_model_version(name, version, description=model_card.with_section(current, heading, body))


def describe_evaluation(
    tracking_uri: str,
    name: str,
    version: str,
    metrics: dict[str, dict[str, float]],
    main_metric: str,
    by_construction: dict[str, list[str]] | None = None,
) -> None:
    """The version description's evaluation section: metrics of the model vs the baselines."""
    body = "Held-out test blocks, baselines computed in the same run:\n\n" + model_card.metrics_table(
        metrics, main_metric, by_construction
    )
    _update_version_section(tracking_uri, name, version, model_card.EVALUATION, body)


def log_evaluation(tracking_uri: str, run_id: str, metrics: dict[str, dict[str, float]], document_json: str) -> None:
    """Metrics of the model and baselines onto the model's training run (``eval/<embedder>/<metric>``)."""
    mlflow_client = client(tracking_uri)
    for key, value in _flat_metrics("eval", metrics).items():
        mlflow_client.log_metric(run_id, key, value)
    mlflow_client.log_text(run_id, document_json, "evaluation.json")


def log_region_evaluation(
    tracking_uri: str, run_id: str, region: str, metrics: dict[str, dict[str, float]], document_json: str
) -> None:
    """A region's scores onto the model's training run (``region/<region>/<embedder>/<metric>``, and
    ``evaluation/<region>.json``): one model is scored on many regions, each under its own keys."""
    mlflow_client = client(tracking_uri)
    for key, value in _flat_metrics(f"region/{region}", metrics).items():
        mlflow_client.log_metric(run_id, key, value)
    mlflow_client.log_text(run_id, document_json, f"evaluation/{region}.json")


def _flat_metrics(prefix: str, metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    """``{embedder: {metric: value}}`` -> ``{prefix/embedder/metric: value}``, without missing values."""
    return {
        f"{prefix}/{embedder}/{name}": value
        for embedder, values in metrics.items()
        for name, value in values.items()
        if value is not None and not math.isnan(value)
    }


def log_seed_summary(tracking_uri: str, experiment_id: str, summary: dict, document_json: str, runs: list[dict]) -> str:
    """One run holding mean and std over several training runs (``eval_mean/...``, ``eval_std/...``), tagged
    with the runs it summarises; returns its run id."""
    import mlflow

    embedders = {"model": summary["model"], **summary["baselines"]}
    flat: dict[str, float] = {}
    for stat in ("mean", "std"):
        per_metric = {name: {m: v[stat] for m, v in values.items()} for name, values in embedders.items()}
        flat.update(_flat_metrics(f"eval_{stat}", per_metric))
    mlflow_client = client(tracking_uri)
    trained = [mlflow_client.get_run(r["mlflow_run_id"]).data for r in runs]
    first = trained[0]
    seeds = ",".join(sorted({str(r["seed"]) for r in runs}, key=int))
    splits = sorted({r["split_seed"] for r in runs})
    name = " · ".join(
        [
            f"seed summary {first.params.get('encoder', '?')} seeds {seeds}"
            + (f" splits {','.join(map(str, splits))}" if len(splits) > 1 else ""),
            f"{first.params.get('epochs', '?')} epochs",
            first.tags.get("region", "?"),
        ]
    )
    rows = [
        (r["seed"], r["split_seed"], f"v{r['model_version']}", f"`{r['mlflow_run_id']}`", _link(data.tags))
        for r, data in zip(runs, trained, strict=True)
    ]
    note = f"Mean and std over {len(runs)} training runs (`eval_mean/...`, `eval_std/...`):\n\n" + model_card.table(
        ["seed", "split seed", "model version", "MLflow run", "Dagster run"], rows
    )
    tags = {
        "loc2vec.kind": "seed_summary",
        "loc2vec.runs": ",".join(r["mlflow_run_id"] for r in runs),
        "loc2vec.model_versions": ",".join(str(r["model_version"]) for r in runs),
        NOTE: note,
    }
    with using(tracking_uri), mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as run:
        mlflow.log_params(
            {
                "seeds": ",".join(str(r["seed"]) for r in runs),
                "split_seeds": ",".join(str(r["split_seed"]) for r in runs),
            }
        )
        mlflow.log_metrics(flat)
        mlflow.log_text(document_json, "evaluation.json")
    return run.info.run_id


def _link(tags: dict[str, str]) -> str:
    run_id = tags.get("dagster_run_id", "")
    return f"[{run_id[:8]}]({tags['dagster_run_url']})" if "dagster_run_url" in tags else run_id


def run_owner_tags() -> dict[str, str]:
    """Tags naming this process on a run, so that a later start can tell the run was orphaned."""
    return ProcessId.current().as_tags(OWNER_TAG_PREFIX)


def fail_orphaned_runs(tracking_uri: str, experiment: str = EXPERIMENT) -> list[str]:
    """Mark FAILED every RUNNING run of ``experiment`` whose owner process (on this host) is gone.

    A killed process cannot end its own run; without this the run says RUNNING forever. Runs without
    owner tags, or owned by processes on other hosts, are left alone. Returns the run ids marked.
    """
    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return []  # nothing tracked yet (and no empty database created here)
    mlflow_client = client(tracking_uri)
    found = mlflow_client.get_experiment_by_name(experiment)
    if found is None:
        return []
    marked = []
    for run in mlflow_client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'"):
        owner = ProcessId.from_tags(run.data.tags, OWNER_TAG_PREFIX)
        if owner is not None and owner.is_alive() is False:
            mlflow_client.set_tag(run.info.run_id, "loc2vec.failure", f"its process ({owner.describe()}) died")
            mlflow_client.set_terminated(run.info.run_id, status="FAILED")
            marked.append(run.info.run_id)
    return marked


def alias_holder(tracking_uri: str, name: str, alias: str = "champion"):
    """The version of model ``name`` that holds ``alias`` (None when no version holds it)."""
    from mlflow.exceptions import MlflowException

    try:
        return client(tracking_uri).get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def promote_if_better(
    tracking_uri: str, name: str, version: str, metric: str, value: float, alias: str = "champion"
) -> bool:
    """Give ``version`` the alias when it beats the current holder on ``metric`` (stored as a version tag);
    the champion status section of the version descriptions says why (and since when)."""
    registry = client(tracking_uri)
    registry.set_model_version_tag(name, version, metric, str(value))

    def status(text: str, of: str = version) -> None:
        _update_version_section(tracking_uri, name, of, model_card.CHAMPION, text)

    if math.isnan(value):  # a version that could not be scored never becomes champion
        status(f"not promoted: `{metric}` could not be scored")
        return False
    current = alias_holder(tracking_uri, name, alias)
    if current is not None and str(current.version) == str(version):
        return True  # already the champion: its status stands
    now = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if current is not None:
        best = float(current.tags.get(metric, "-inf"))
        if not value > best:
            how = "better" if best > value else "as well"
            status(f"not promoted: `{alias}` v{current.version} scores {how} on `{metric}` ({best:.4f} vs {value:.4f})")
            return False
        status(f"`{alias}` until {now}: replaced by v{version} (`{metric}` {value:.4f} vs {best:.4f})", current.version)
    registry.set_registered_model_alias(name, alias, version)
    previous = "" if current is None else f"; replaced v{current.version}"
    status(f"`{alias}` since {now} (`{metric}` = {value:.4f}{previous})")
    return True
