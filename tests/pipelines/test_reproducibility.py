"""A seed gives the same model and metrics whatever the machine's core count (threads are pinned)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.conftest import MONACO, ROOT, RUN_TRAINING, TRAIN_REGION


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("taskset") is None, reason="needs taskset (util-linux)")
def test_one_core_and_two_cores_give_the_same_metrics(monaco_run, tmp_path):
    """``monaco_run`` ran in this process (two cores here); the same command on one core, with OpenMP told
    so too, stands for a smaller machine. Unpinned, torch would use one thread there and train another model."""
    out = tmp_path / "one-core"
    bbox = ",".join(map(str, TRAIN_REGION))
    command = ["taskset", "-c", "0", sys.executable, "-m", "pipelines.cli", "run", "--pbf", str(MONACO),
               "--bbox", bbox, "--out", str(out), *RUN_TRAINING, "--seed", "0"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"} | {"OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    one_core = json.loads((out / "evaluation.json").read_text())
    two_cores = json.loads((monaco_run / "evaluation.json").read_text())["runs"][0]  # seed 0 of the fixture
    assert two_cores["seed"] == 0
    assert one_core["model"] == two_cores["model"]
    assert one_core["baselines"] == two_cores["baselines"]

    from mlflow import MlflowClient

    params = MlflowClient(f"sqlite:///{out}/mlflow/mlflow.db").get_run(_run_id(out)).data.params
    assert params["torch_threads"] == "2" and params["cpu_isa"] and params["torch_version"]


def _run_id(out) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow/mlflow.db")
    (version,) = client.search_model_versions("name='loc2vec-encoder'")
    return version.run_id
