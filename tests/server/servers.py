"""Servers the UI tests start: `dagster dev`/`dagster-webserver`, `mlflow ui`, the maps server.

Each binds to 127.0.0.1 on a free port, runs in its own process group (``start_new_session``) and is
stopped by that group's id: SIGTERM, then SIGKILL for whatever is left (webserver, daemon, code servers,
run workers).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import ROOT, free_port

STARTUP_TIMEOUT = 120.0
RUN_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0


@dataclass
class DagsterDev:
    port: int
    location: str
    data_dir: Path
    log: Path
    proc: subprocess.Popen

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, n: int = 60) -> str:
        lines = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        return "\n".join(lines[-n:])

    def graphql(self, query: str, variables: dict | None = None, timeout: float = 30.0) -> dict:
        body = json.dumps({"query": query, "variables": variables or {}}).encode()
        req = urllib.request.Request(f"{self.url}/graphql", data=body, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                payload = json.load(resp)
        except urllib.error.HTTPError as e:
            raise AssertionError(f"GraphQL HTTP {e.code}: {e.read().decode(errors='replace')[:2000]}") from e
        assert not payload.get("errors"), f"GraphQL errors: {payload['errors']}"
        return payload["data"]


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen:
    # dagster maps SIGTERM to the SIGINT handler; if this pytest inherited an ignored SIGINT (started in
    # the background by a non-interactive shell), the child would inherit it and ignore SIGTERM as well.
    # A handled (not ignored) SIGINT is reset to the default on exec, so Python installs its own handler.
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with log.open("wb") as out:
            return subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the whole process group (webserver, daemon, code servers, run workers), then SIGKILL."""
    pgid = proc.pid  # start_new_session: the leader's pid is the group id
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=STOP_TIMEOUT)
    # Members may outlive the leader (or the leader may hang): kill whatever is left of the group.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    proc.wait(timeout=STOP_TIMEOUT)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    warnings.warn(f"processes of group {pgid} still exist after SIGKILL (unreaped zombies?)", stacklevel=1)


def wait_until_loaded(server: DagsterDev) -> None:
    """Wait for /server_info, then for the code location to finish loading (fail fast on a load error)."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    state = "webserver not answering"
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            pytest.fail(f"dagster dev exited with {server.proc.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/server_info", timeout=5) as resp:
                info = json.load(resp)
            assert info.get("dagster_version"), info
            data = server.graphql(
                """{ workspaceOrError { __typename ... on Workspace { locationEntries {
                       name loadStatus
                       locationOrLoadError { __typename ... on PythonError { message stack } } } } } }"""
            )
        except (urllib.error.URLError, ConnectionError, TimeoutError) as e:
            state = f"webserver not answering: {e}"
        else:
            entries = data["workspaceOrError"].get("locationEntries") or []
            for entry in entries:
                error = entry.get("locationOrLoadError") or {}
                if error.get("__typename") == "PythonError":
                    pytest.fail(
                        f"code location {entry['name']} failed to load: {error['message']}\n"
                        + "".join(error.get("stack") or [])
                    )
            if entries and all(e["loadStatus"] == "LOADED" for e in entries):
                return
            state = f"workspace: {data}"
        time.sleep(0.5)
    pytest.fail(f"dagster dev not ready after {STARTUP_TIMEOUT:.0f} s ({state}):\n{server.log_tail()}")


LAUNCH = """
mutation LaunchPipelineExecution($executionParams: ExecutionParams!) {
  launchPipelineExecution(executionParams: $executionParams) {
    __typename
    ... on LaunchRunSuccess { run { runId status pipelineName } }
    ... on PipelineNotFoundError { message }
    ... on InvalidSubsetError { message }
    ... on RunConfigValidationInvalid { errors { message } }
    ... on PythonError { message stack }
  }
}"""

RUN_STATUS = """
query RunStatus($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run { status stepKeysToExecute }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}"""

RUN_ERRORS = """
query RunErrors($runId: ID!) {
  logsForRun(runId: $runId, limit: 500) {
    ... on EventConnection { events { __typename ... on MessageEvent { message level stepKey } } }
  }
}"""

ASSET_STATE = """
query AssetState($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    __typename
    ... on Asset {
      assetMaterializations(limit: 1) {
        runId
        metadataEntries {
          __typename label
          ... on MarkdownMetadataEntry { mdStr }
          ... on IntMetadataEntry { intValue }
          ... on PathMetadataEntry { path }
          ... on TextMetadataEntry { text }
        }
      }
      assetObservations(limit: 1) { runId tags { key value } }
      definition {
        dataVersion
        assetChecksOrError { ... on AssetChecks { checks { name
          executionForLatestMaterialization { runId status } } } }
      }
    }
  }
}"""


def wait_for_run(server: DagsterDev, run_id: str) -> dict:
    deadline = time.monotonic() + RUN_TIMEOUT
    seen = []
    while time.monotonic() < deadline:
        run = server.graphql(RUN_STATUS, {"runId": run_id})["runOrError"]
        assert run["__typename"] == "Run", run
        if not seen or seen[-1] != run["status"]:
            seen.append(run["status"])
        if run["status"] == "SUCCESS":
            return {**run, "seen": seen}
        if run["status"] in ("FAILURE", "CANCELED"):
            events = server.graphql(RUN_ERRORS, {"runId": run_id})["logsForRun"].get("events", [])
            errors = [f"{e.get('stepKey')}: {e['message']}" for e in events if e.get("level") in ("ERROR", "CRITICAL")]
            pytest.fail(f"run {run_id} ended {run['status']}:\n" + "\n".join(errors))
        time.sleep(0.5)
    pytest.fail(f"run {run_id} not finished after {RUN_TIMEOUT:.0f} s (statuses {seen}):\n{server.log_tail()}")


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without LOC2VEC_*/DAGSTER_*/MLFLOW_* settings, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOC2VEC_", "DAGSTER_", "MLFLOW_"))}
    return {**env, "PYTHONUNBUFFERED": "1", **extra}


@contextlib.contextmanager
def dagster_ui(env: dict[str, str], log: Path, daemon: bool = True, port: int | None = None) -> Iterator[DagsterDev]:
    """What `make ui` runs (`dagster dev` started from DAGSTER_HOME over workspace.yaml), or with
    ``daemon=False`` the webserver alone; yields once the code location has loaded."""
    home = Path(env["DAGSTER_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    port = port or free_port()
    exe = [sys.executable, "-m", "dagster", "dev"] if daemon else [sys.executable, "-m", "dagster_webserver"]
    cmd = [*exe, "-w", str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)]
    proc = start(cmd, env, log, cwd=home)
    server = DagsterDev(port=port, location="loc2vec", data_dir=Path(env["LOC2VEC_DATA_DIR"]), log=log, proc=proc)
    try:
        wait_until_loaded(server)
        yield server
    finally:
        stop(proc)


def wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float = STARTUP_TIMEOUT) -> None:
    """Wait until ``url`` answers 200 (fail with the log's tail if the server exits or never answers)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{url}: server exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        with (
            contextlib.suppress(urllib.error.URLError, ConnectionError, TimeoutError),
            urllib.request.urlopen(url, timeout=5) as resp,
        ):
            if resp.status == 200:
                return
        time.sleep(0.5)
    pytest.fail(f"{url} not answering after {timeout:.0f} s:\n{log.read_text(errors='replace')[-3000:]}")


@contextlib.contextmanager
def mlflow_ui(backend_store_uri: str, port: int, log: Path) -> Iterator[str]:
    """`make mlflow-ui`'s server over ``backend_store_uri`` on 127.0.0.1:``port``; yields its URL."""
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", backend_store_uri]
    proc = start([*cmd, "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], clean_env(), log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", proc, log)
        yield url
    finally:
        stop(proc)


@contextlib.contextmanager
def maps_server(data_dir: Path, port: int, log: Path) -> Iterator[str]:
    """`make maps`'s server over ``data_dir`` on 127.0.0.1:``port``; yields its URL."""
    cmd = [sys.executable, "-m", "loc2vec.evaluation.serve_maps", "--dir", str(data_dir), "--port", str(port)]
    proc = start(cmd, clean_env(), log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/maps/", proc, log)
        yield url
    finally:
        stop(proc)
