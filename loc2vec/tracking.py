"""MLflow tracking and registry: a local sqlite store by default, any server URI otherwise.

Every training run logs params, per-epoch metrics and artifacts and registers one new model version,
tagged with its lineage (Dagster run id, OSM data version, mosaic version, git commit).
"""

from __future__ import annotations

import json
import math
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loc2vec.errors import ConfigError, Loc2VecError
from loc2vec.process import ProcessId

MODEL_NAME = "loc2vec-encoder"
EXPERIMENT = "loc2vec"
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


def setup(tracking_uri: str, experiment: str = EXPERIMENT, artifact_root: str | None = None) -> str:
    """Point MLflow at ``tracking_uri`` and make sure the experiment exists; returns its id."""
    import mlflow

    check_reachable(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    location = None
    if artifact_root is not None:
        Path(artifact_root).mkdir(parents=True, exist_ok=True)
        location = Path(artifact_root).resolve().as_uri()
    return mlflow.create_experiment(experiment, artifact_location=location)


def log_json(obj: Any, name: str) -> None:
    import mlflow

    mlflow.log_text(json.dumps(obj, indent=2, sort_keys=True, default=str), name)


def register_torch_model(model, name: str, tags: dict[str, str], example) -> tuple[str, str]:
    """Log ``model`` in the active run and register a new version with ``tags``; returns (version, uri)."""
    import mlflow
    import mlflow.pytorch
    from mlflow import MlflowClient

    info = mlflow.pytorch.log_model(
        model,
        name="model",
        registered_model_name=name,
        input_example=example,
        pip_requirements=["torch", "torchvision", "pytorch-metric-learning"],
        await_registration_for=60,
    )
    version = str(info.registered_model_version)
    client = MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, str(value))
    return version, f"models:/{name}/{version}"


def log_evaluation(run_id: str, metrics: dict[str, dict[str, float]], document_json: str) -> None:
    """Metrics of the model and baselines onto the model's training run (``eval/<embedder>/<metric>``)."""
    import mlflow

    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(_flat_metrics("eval", metrics))
        mlflow.log_text(document_json, "evaluation.json")


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

    mlflow.set_tracking_uri(tracking_uri)
    embedders = {"model": summary["model"], **summary["baselines"]}
    flat: dict[str, float] = {}
    for stat in ("mean", "std"):
        per_metric = {name: {m: v[stat] for m, v in values.items()} for name, values in embedders.items()}
        flat.update(_flat_metrics(f"eval_{stat}", per_metric))
    tags = {
        "loc2vec.kind": "seed_summary",
        "loc2vec.runs": ",".join(r["mlflow_run_id"] for r in runs),
        "loc2vec.model_versions": ",".join(str(r["model_version"]) for r in runs),
    }
    name = f"summary of {len(runs)} runs"
    with mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=tags) as run:
        mlflow.log_params(
            {
                "seeds": ",".join(str(r["seed"]) for r in runs),
                "split_seeds": ",".join(str(r["split_seed"]) for r in runs),
            }
        )
        mlflow.log_metrics(flat)
        mlflow.log_text(document_json, "evaluation.json")
    return run.info.run_id


def run_owner_tags() -> dict[str, str]:
    """Tags naming this process on a run, so that a later start can tell the run was orphaned."""
    return ProcessId.current().as_tags(OWNER_TAG_PREFIX)


def fail_orphaned_runs(tracking_uri: str, experiment: str = EXPERIMENT) -> list[str]:
    """Mark FAILED every RUNNING run of ``experiment`` whose owner process (on this host) is gone.

    A killed process cannot end its own run; without this the run says RUNNING forever. Runs without
    owner tags, or owned by processes on other hosts, are left alone. Returns the run ids marked.
    """
    from mlflow import MlflowClient

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        return []  # nothing tracked yet (and no empty database created here)
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        return []
    marked = []
    for run in client.search_runs([found.experiment_id], filter_string="attributes.status = 'RUNNING'"):
        owner = ProcessId.from_tags(run.data.tags, OWNER_TAG_PREFIX)
        if owner is not None and owner.is_alive() is False:
            client.set_tag(run.info.run_id, "loc2vec.failure", f"its process ({owner.describe()}) died")
            client.set_terminated(run.info.run_id, status="FAILED")
            marked.append(run.info.run_id)
    return marked


def promote_if_better(name: str, version: str, metric: str, value: float, alias: str = "champion") -> bool:
    """Give ``version`` the alias when it beats the current holder on ``metric`` (stored as a version tag)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    client.set_model_version_tag(name, version, metric, str(value))
    if math.isnan(value):  # a version that could not be scored never becomes champion
        return False
    try:
        current = client.get_model_version_by_alias(name, alias)
    except MlflowException:
        current = None
    if current is not None and str(current.version) != str(version):
        best = float(current.tags.get(metric, "-inf"))
        if not value > best:
            return False
    client.set_registered_model_alias(name, alias, version)
    return True
