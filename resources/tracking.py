"""MLflow tracking and model registry."""

import os

import dagster as dg
from pydantic import Field

from loc2vec import tracking


class MlflowTracking(dg.ConfigurableResource):
    """Where runs and model versions go: a sqlite file in the data dir unless a server URI is set."""

    tracking_uri: str | None = Field(
        default_factory=lambda: os.environ.get("MLFLOW_TRACKING_URI") or None,
        description="MLflow tracking URI ($MLFLOW_TRACKING_URI); default sqlite:///<data_dir>/mlflow/mlflow.db.",
    )
    experiment: str = Field(default=tracking.EXPERIMENT, description="MLflow experiment name.")
    model_name: str = Field(default=tracking.MODEL_NAME, description="Registered model name.")
    ui_url: str = Field(
        default_factory=lambda: os.environ.get("LOC2VEC_MLFLOW_UI", "http://127.0.0.1:5000"),
        description="Base URL of the MLflow UI, for links in asset metadata.",
    )

    def uri(self, data_dir: str) -> str:
        return self.tracking_uri or tracking.default_tracking_uri(data_dir)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_url(self, name: str, version: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/models/{name}/versions/{version}"
