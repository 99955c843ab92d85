"""An existing model by reference, loaded with its training config and recorded by identity.

A reference is a registered MLflow version (``models:/NAME/VERSION``, ``models:/NAME@ALIAS``, or the same
without ``models:/``), read from a tracking URI, or a local file: a weights file written by
``save_encoder`` or a run's model directory holding one (``model.pt``). The encoder comes with its
training config (radii, crop size, untrained-baseline seed): a registered version's run logged it as
``config.json``; beside local weights it is ``config.json`` or the last checkpoint's, or the caller
passes one. Nothing is written anywhere: registry artifacts are read through a temporary directory.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import torch

from loc2vec import tracking
from loc2vec.errors import ConfigError, InputDataError
from loc2vec.models.encoders import Encoder, load_encoder
from loc2vec.osm.files import file_sha256
from loc2vec.training.config import TrainConfig

REGISTRY_REFERENCE = re.compile(r"^(?:models:/)?(?P<name>[^/@\s]+)(?:/(?P<version>\d+)|@(?P<alias>[\w-]+))$")
WEIGHTS_FILE = "model.pt"  # in a run's model directory (and the run's ``encoder/`` artifacts)


@dataclass(frozen=True)
class ExistingModel:
    """A trained encoder, the config it was trained with and where it came from (``source``, for
    evaluation.json); ``m_per_px`` and ``channel_names`` when the model records them (registered versions)."""

    encoder: Encoder
    config: TrainConfig
    source: dict[str, object]
    m_per_px: float | None = None
    channel_names: tuple[str, ...] | None = None


def load_existing_model(reference: str, tracking_uri: str, config_path: str | Path | None = None) -> ExistingModel:
    """The model ``reference`` names (an existing path first, else a registry reference at ``tracking_uri``);
    ``config_path`` (a run's ``config.json``) replaces the training config found with it."""
    path = Path(reference)
    if path.exists():
        return _from_files(path, config_path)
    match = REGISTRY_REFERENCE.match(reference)
    if match is None:
        raise InputDataError(
            f"model {reference!r}: no such file, and not a registered model reference "
            "(models:/NAME/VERSION, models:/NAME@ALIAS)"
        )
    return _from_registry(reference, match["name"], match["version"], match["alias"], tracking_uri, config_path)


def check_compatible(model: ExistingModel, resolution_m: float, channel_names: list[str]) -> None:
    """Refuse a model whose input the region's mosaic would not be: other channels or ground resolution."""
    spec = model.encoder.spec
    if spec.in_channels != len(channel_names):
        raise ConfigError(f"the model takes {spec.in_channels} channels, the region's schema has {len(channel_names)}")
    if model.channel_names is not None and list(model.channel_names) != list(channel_names):
        raise ConfigError(
            f"the model was trained on the channels {list(model.channel_names)}, the region's schema has "
            f"{list(channel_names)} (set LOC2VEC_SCHEMA to the model's schema)"
        )
    if model.m_per_px is not None and abs(model.m_per_px - resolution_m) > 1e-9:
        raise ConfigError(
            f"the model was trained at {model.m_per_px:g} m/pixel, the region would be rendered at {resolution_m:g}: "
            f"set LOC2VEC_RESOLUTION_M={model.m_per_px:g}"
        )


def _config(values: dict, where: str) -> TrainConfig:
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"training config of {where} has unknown fields {unknown}")
    return TrainConfig(**values)


def _check_config_fits(encoder: Encoder, config: TrainConfig, where: str) -> None:
    spec = encoder.spec
    if (config.encoder, config.embedding_dim) != (spec.name, spec.embedding_dim):
        raise ConfigError(
            f"the training config of {where} describes {config.encoder} with a {config.embedding_dim}-d head, the "
            f"weights are {spec.name} with a {spec.embedding_dim}-d head: give the run's own config.json"
        )


def _local_config(weights: Path, config_path: str | Path | None) -> tuple[TrainConfig, str]:
    """The training config of local weights: ``config_path``, else ``config.json`` beside them, else the
    config of the run's last checkpoint (``checkpoints/last.pt``)."""
    if config_path is not None:
        return TrainConfig.from_json(config_path), str(Path(config_path).resolve())
    beside = weights.parent / "config.json"
    if beside.is_file():
        return TrainConfig.from_json(beside), str(beside.resolve())
    checkpoint = weights.parent / "checkpoints" / "last.pt"
    if checkpoint.is_file():
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises several types for files that are not its own
            raise InputDataError(f"{checkpoint} is not a loc2vec checkpoint ({type(exc).__name__})") from exc
        if isinstance(state, dict) and isinstance(state.get("config"), dict):
            return _config(state["config"], str(checkpoint)), str(checkpoint.resolve())
    raise ConfigError(
        f"{weights}: no training config beside the weights (config.json or checkpoints/last.pt): "
        "pass --train-config with the run's config.json (an MLflow artifact of the training run)"
    )


def _from_files(path: Path, config_path: str | Path | None) -> ExistingModel:
    weights = path / WEIGHTS_FILE if path.is_dir() else path
    encoder = load_encoder(weights)  # a missing or foreign file is an InputDataError naming it
    config, config_from = _local_config(weights, config_path)
    _check_config_fits(encoder, config, str(weights))
    source = {
        "kind": "file",
        "weights_path": str(weights.resolve()),
        "weights_sha256": file_sha256(weights),
        "config": config_from,
    }
    return ExistingModel(encoder, config, source)


def public_uri(uri: str) -> str:
    """``uri`` without a password (what evaluation.json records of a tracking URI)."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _registered_version(name: str, version: str | None, alias: str | None, tracking_uri: str, reference: str):
    from mlflow.exceptions import MlflowException

    if tracking_uri.startswith("sqlite:///") and not Path(tracking_uri.removeprefix("sqlite:///")).is_file():
        raise InputDataError(
            f"model {reference!r}: no MLflow store at {tracking_uri.removeprefix('sqlite:///')} "
            "(set MLFLOW_TRACKING_URI to the store that registered it)"
        )
    tracking.check_reachable(tracking_uri)
    registry = tracking.client(tracking_uri)
    try:
        if alias is not None:
            return registry.get_model_version_by_alias(name, alias)
        return registry.get_model_version(name, version)
    except MlflowException:
        try:
            known = sorted(int(v.version) for v in registry.search_model_versions(f"name = '{name}'"))
        except MlflowException:
            known = []
        found = f"versions of {name}: {known}" if known else f"no registered model {name!r}"
        raise InputDataError(
            f"model {reference!r} not found in the registry at {public_uri(tracking_uri)} ({found})"
        ) from None


def _model_metadata(uri: str, tracking_uri: str) -> dict:
    """The metadata logged with a registered version (crop, m/pixel, channel names); {} when unreadable."""
    import mlflow.models

    try:
        with tracking.using(tracking_uri):
            return dict(mlflow.models.get_model_info(uri).metadata or {})
    except Exception:  # a version logged without metadata, or elsewhere: the checks then use the weights only
        return {}


def _from_registry(
    reference: str,
    name: str,
    version: str | None,
    alias: str | None,
    tracking_uri: str,
    config_path: str | Path | None,
) -> ExistingModel:
    import mlflow.artifacts

    found = _registered_version(name, version, alias, tracking_uri, reference)
    with tempfile.TemporaryDirectory(prefix="loc2vec-model-") as tmp:

        def artifact(path: str) -> Path:
            try:
                local = mlflow.artifacts.download_artifacts(
                    run_id=found.run_id, artifact_path=path, dst_path=tmp, tracking_uri=tracking_uri
                )
            except Exception as exc:  # MlflowException, OSError: the artifact store does not hold it
                raise InputDataError(
                    f"model {reference!r} (version {found.version}, run {found.run_id}): artifact {path} "
                    f"cannot be read ({type(exc).__name__}: {exc})"
                ) from exc
            return Path(local)

        weights = artifact(f"encoder/{WEIGHTS_FILE}")
        encoder = load_encoder(weights)
        sha256 = file_sha256(weights)
        if config_path is not None:
            config, config_from = TrainConfig.from_json(config_path), str(Path(config_path).resolve())
        else:
            config, config_from = TrainConfig.from_json(artifact("config.json")), f"run {found.run_id} config.json"
    where = f"model {reference!r}"
    _check_config_fits(encoder, config, where)
    uri = f"models:/{name}/{found.version}"
    metadata = _model_metadata(uri, tracking_uri)
    tags = found.tags or {}
    source = {
        "kind": "registered",
        "reference": reference,
        "name": name,
        "version": str(found.version),
        "aliases": sorted(found.aliases or []),
        "model_uri": uri,
        "run_id": found.run_id,
        "tracking_uri": public_uri(tracking_uri),
        "weights_sha256": sha256,
        "config": config_from,
        "trained_on": {k: tags[k] for k in ("region", "osm_bbox", "osm_sha256", "mosaic_version") if k in tags},
    }
    m_per_px = metadata.get("m_per_px")
    names = metadata.get("channel_names")
    return ExistingModel(
        encoder,
        config,
        source,
        m_per_px=float(m_per_px) if m_per_px is not None else None,
        channel_names=tuple(names) if names else None,
    )
