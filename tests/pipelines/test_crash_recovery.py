"""A run killed with SIGKILL, a second run on the same data dir, a restart, and Ctrl-C: each as a real process.

One scenario, shared by the tests below: ``loc2vec run`` is started, stopped (SIGSTOP) once it has
checkpointed an epoch, and killed (SIGKILL of its process group) after a second run on the same directory
was refused meanwhile (stopped, it cannot finish training however slowly the second run starts); then
the same command is run again and must resume; finally a run with another config is interrupted (SIGINT).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import KOTKA, ROOT

pytestmark = pytest.mark.slow

TIMEOUT_S = 600


@dataclass
class Scenario:
    out: Path
    first_pid: int
    second: subprocess.CompletedProcess
    before_restart: dict
    third: subprocess.CompletedProcess
    outputs_after_restart: dict[str, int]
    interrupted: subprocess.CompletedProcess


def _command(out: Path, epochs: int, steps_per_epoch: int | None = None) -> list[str]:
    # the small Kotka extract: the scenario is about processes, not about the region
    steps = [] if steps_per_epoch is None else ["--steps-per-epoch", str(steps_per_epoch)]
    return [sys.executable, "-m", "pipelines.cli", "run", "--pbf", str(KOTKA), "--out", str(out),
            "--epochs", str(epochs), *steps]  # fmt: skip


def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "DAGSTER_HOME")}
    return {**env, "PYTHONUNBUFFERED": "1"}


def _wait_for(
    predicate, what: str, proc: subprocess.Popen | None = None, timeout: float = TIMEOUT_S, poll_s: float = 0.5
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) before {what}: {proc.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll_s)


def _versions(out: Path) -> list:
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{out}/mlflow/mlflow.db").search_model_versions("name='loc2vec-encoder'")


def _records(out: Path) -> dict:
    """Run statuses in the run's MLflow store and Dagster instance."""
    import dagster as dg
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out}/mlflow/mlflow.db")
    mlflow_runs = {r.info.run_id: (r.info.status, r.data.tags) for r in client.search_runs(["1"])}
    with dg.DagsterInstance.local_temp(str(out / "dagster_home")) as instance:
        dagster_runs = {r.run_id: (r.job_name, r.status.value) for r in instance.get_runs()}
    return {"mlflow": mlflow_runs, "dagster": dagster_runs}


@pytest.fixture(scope="module")
def scenario(tmp_path_factory) -> Scenario:
    out = tmp_path_factory.mktemp("crash") / "out"
    command = _command(out, epochs=2, steps_per_epoch=10)  # short epochs: the killed and the resumed run
    first = subprocess.Popen(
        command, cwd=ROOT, env=_env(), start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        _wait_for(lambda: any(out.glob("models/*/checkpoints/last.pt")), "the first checkpoint", first, poll_s=0.1)
        # frozen (alive, holding its lock) so it cannot train on to the end while the second run starts
        os.killpg(first.pid, signal.SIGSTOP)
        second = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    before = _records(out)
    third = subprocess.run(command, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    outputs = {
        "mosaics": len(list(out.glob("mosaic/*.zarr"))),
        "model_dirs": len([p for p in out.glob("models/*") if p.name != "mlruns"]),
        "model_versions": len(_versions(out)),
    }

    other = subprocess.Popen(  # the default epochs' length: Ctrl-C lands while it trains
        _command(out, epochs=3), cwd=ROOT, env=_env(), start_new_session=True, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    try:
        for line in other.stdout:  # line by line as printed, so the signal lands during training
            lines.append(line)
            if "trained_model: epoch 0" in line:
                break
        os.killpg(other.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        stdout, stderr = other.communicate(timeout=120)
    finally:
        if other.poll() is None:
            os.killpg(other.pid, signal.SIGKILL)
    interrupted = subprocess.CompletedProcess(other.args, other.returncode, "".join(lines) + stdout, stderr)
    return Scenario(out, first.pid, second, before, third, outputs, interrupted)


def test_a_second_run_on_the_same_data_dir_is_refused_in_one_line(scenario):
    assert scenario.second.returncode == 1
    err = scenario.second.stderr.strip().splitlines()
    assert err[-1].startswith("loc2vec: error: data directory") and f"in use by pid {scenario.first_pid}" in err[-1]
    assert "Traceback" not in scenario.second.stderr
    assert "ingest_job" not in scenario.second.stdout  # refused before any stage ran


def test_runs_left_running_by_the_killed_process_are_marked_failed_on_restart(scenario):
    before = scenario.before_restart
    killed = [run_id for run_id, (status, _) in before["mlflow"].items() if status == "RUNNING"]
    assert len(killed) == 1  # the killed training run could not end itself
    assert any(status == "STARTED" for _, status in before["dagster"].values())
    after = _records(scenario.out)
    status, tags = after["mlflow"][killed[0]]
    assert status == "FAILED" and f"pid {scenario.first_pid}" in tags["loc2vec.failure"]
    assert not [s for s, _ in after["mlflow"].values() if s == "RUNNING"]
    assert not [s for _, s in after["dagster"].values() if s in ("STARTED", "STARTING")]
    assert "broke a stale lock" in scenario.third.stdout and "marked MLflow run" in scenario.third.stdout


def test_the_restart_reuses_the_mosaic_and_resumes_training(scenario):
    third = scenario.third
    assert third.returncode == 0, third.stderr
    assert "rendered 0 units" in third.stdout and "rendered 1 units" not in third.stdout
    assert "resuming from the checkpoint" in third.stdout
    assert "trained_model: epoch 0:" not in third.stdout  # epoch 0 was not trained again
    assert scenario.outputs_after_restart == {"mosaics": 1, "model_dirs": 1, "model_versions": 1}
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{scenario.out}/mlflow/mlflow.db")
    version = min(_versions(scenario.out), key=lambda v: int(v.version))  # the killed run registered none
    run = client.get_run(version.run_id)
    assert int(run.data.tags["resumed_from_epoch"]) >= 1
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "val_loss")) == [0, 1]
    assert json.loads((scenario.out / "evaluation.json").read_text())["model_version"] == str(version.version)


def test_ctrl_c_ends_in_one_line_and_the_next_run_can_resume(scenario):
    result = scenario.interrupted
    assert result.returncode == 130, result.stderr
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    last = result.stderr.strip().splitlines()[-1]
    assert "interrupted" in last and "run the same command again" in last
    assert not (scenario.out / ".loc2vec.lock").exists()  # released on the way out
    after = _records(scenario.out)
    assert not [s for s, _ in after["mlflow"].values() if s == "RUNNING"]
    assert len(_versions(scenario.out)) == 1  # interrupted in training: nothing registered
