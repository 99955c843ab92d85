"""MLflow tracking and model registry."""

import dagster as dg
from pydantic import Field

from loc2vec import tracking
from resources.paths import env_fields


class MlflowTracking(dg.ConfigurableResource):
    """Where runs and model versions go: a sqlite file in the data dir unless a server URI is set."""

    tracking_uri: str | None = Field(
        default=None,
        description="MLflow tracking URI ($MLFLOW_TRACKING_URI); default sqlite:///<data_dir>/mlflow/mlflow.db.",
    )
    experiment: str = Field(default=tracking.EXPERIMENT, description="MLflow experiment name.")
    model_name: str = Field(default=tracking.MODEL_NAME, description="Registered model name.")
    ui_url: str = Field(
        default="http://127.0.0.1:5000",
        description="Base URL of the MLflow UI, for links in asset metadata ($LOC2VEC_MLFLOW_UI).",
    )
    dagster_ui_url: str = Field(
        default=tracking.DAGSTER_UI,
        description="Base URL of the Dagster UI, for the dagster_run_url links on MLflow runs ($LOC2VEC_DAGSTER_UI).",
    )

    @classmethod
    def from_env(cls) -> "MlflowTracking":
        """``dg.EnvVar`` for $MLFLOW_TRACKING_URI, $LOC2VEC_MLFLOW_UI and $LOC2VEC_DAGSTER_UI when set (shown as
        such in the UI)."""
        names = {"tracking_uri": "MLFLOW_TRACKING_URI", "ui_url": "LOC2VEC_MLFLOW_UI"}
        return cls(**env_fields({**names, "dagster_ui_url": "LOC2VEC_DAGSTER_UI"}))

    def uri(self, data_dir: str) -> str:
        return self.tracking_uri or tracking.default_tracking_uri(data_dir)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def model_url(self, name: str, version: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/models/{name}/versions/{version}"

    def dagster_run_url(self, run_id: str) -> str:
        return tracking.dagster_run_url(self.dagster_ui_url, run_id)
