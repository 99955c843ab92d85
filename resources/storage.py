"""The project's data directory: every asset's files live under one root."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
from pydantic import Field

from resources.paths import default_data_dir


class ProjectStorage(dg.ConfigurableResource):
    """Root of the pipeline's files (features, Zarr store, checkpoints, MLflow store, maps)."""

    data_dir: str = Field(
        default_factory=default_data_dir,
        description="Root directory of the pipeline's outputs ($LOC2VEC_DATA_DIR; default <project>/var).",
    )

    def path(self, *parts: str) -> Path:
        p = Path(self.data_dir).joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p
