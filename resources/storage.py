"""The project's data directory: every asset's files live under one root."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from loc2vec.errors import ConfigError
from loc2vec.store.retention import prune_versions
from resources.paths import default_data_dir


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name, str(default))
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {text!r}") from None


class ProjectStorage(dg.ConfigurableResource):
    """Root of the pipeline's files (features, Zarr store, checkpoints, MLflow store, maps)."""

    data_dir: str = Field(
        default_factory=default_data_dir,
        description="Root directory of the pipeline's outputs ($LOC2VEC_DATA_DIR; default <project>/var).",
    )

    keep_versions: int = Field(
        default_factory=lambda: _env_int("LOC2VEC_KEEP_VERSIONS", 3),
        description="Versions of each output kind kept in the data dir ($LOC2VEC_KEEP_VERSIONS; older are pruned).",
    )

    def prune(self, kind: str, current: str | Path) -> list[Path]:
        """Remove old versions of ``kind`` beyond ``keep_versions``, never ``current`` or what is in use."""
        return prune_versions(self.data_dir, kind, self.keep_versions, protect=[current])

    def for_region(self, name: str) -> ProjectStorage:
        """The data directory of catalog region ``name``: ``<data_dir>/regions/<name>``, laid out as this one."""
        return ProjectStorage(data_dir=str(Path(self.data_dir) / "regions" / name), keep_versions=self.keep_versions)

    def path(self, *parts: str) -> Path:
        p = Path(self.data_dir).joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p
