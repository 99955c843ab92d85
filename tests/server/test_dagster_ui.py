"""`dagster dev` serves the loc2vec code location and materializes its assets the way the UI does.

Starts the real `dagster dev` (webserver + daemon + code server) on 127.0.0.1 with a fresh DAGSTER_HOME
and talks to it only through the GraphQL API the UI uses: the asset graph, a "Materialize selected" launch
of osm_source + osm_features from the global asset graph (the implicit asset job `__ASSET_JOB` with an asset
selection; queued, then dequeued by the daemon) and the materialization metadata the UI shows.
Both ways of pointing `dagster dev` at the project are covered: `-m pipelines.definitions` (location
named after the module) and plain `dagster dev` as `make ui` runs it (location "loc2vec" from pyproject).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import KOTKA, ROOT

pytestmark = pytest.mark.server

STARTUP_TIMEOUT = 120.0
RUN_TIMEOUT = 180.0
STOP_TIMEOUT = 30.0
ASSETS = {"osm_source", "osm_features"}
ASSET_JOB = "__ASSET_JOB"  # the implicit job holding every asset; the asset graph launches through it


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


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
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
                cwd=ROOT,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
    finally:
        if previous is signal.SIG_IGN:
            signal.signal(signal.SIGINT, previous)


def _stop(proc: subprocess.Popen) -> None:
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


def _wait_until_loaded(server: DagsterDev) -> None:
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


@pytest.fixture(
    scope="module",
    params=[
        pytest.param((["-m", "pipelines.definitions"], "pipelines.definitions"), id="module"),
        pytest.param(([], "loc2vec"), id="pyproject"),
    ],
)
def dagster_dev(request, tmp_path_factory):
    workspace_args, location = request.param
    base = tmp_path_factory.mktemp("dagster-dev")
    home, data_dir = base / "dagster_home", base / "data"
    home.mkdir()
    data_dir.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOC2VEC_", "DAGSTER_"))}
    env |= {
        "DAGSTER_HOME": str(home),
        "LOC2VEC_DATA_DIR": str(data_dir),
        "LOC2VEC_PBF": str(KOTKA),
        "PYTHONUNBUFFERED": "1",
    }
    port = _free_port()
    cmd = [sys.executable, "-m", "dagster", "dev", *workspace_args, "-h", "127.0.0.1", "-p", str(port)]
    log = base / "dagster_dev.log"
    proc = _start(cmd, env, log)
    server = DagsterDev(port=port, location=location, data_dir=data_dir, log=log, proc=proc)
    try:
        _wait_until_loaded(server)
        yield server
    finally:
        _stop(proc)


def test_serves_code_location_and_asset_graph(dagster_dev):
    repos = dagster_dev.graphql(
        """{ repositoriesOrError { __typename
               ... on RepositoryConnection { nodes { name location { name } jobs { name } } }
               ... on PythonError { message } } }"""
    )["repositoriesOrError"]
    assert repos["__typename"] == "RepositoryConnection", repos
    by_location = {(n["location"]["name"], n["name"]): n for n in repos["nodes"]}
    assert set(by_location) == {(dagster_dev.location, "__repository__")}, by_location
    jobs = {j["name"] for j in by_location[dagster_dev.location, "__repository__"]["jobs"]}
    assert {"main_job", "observe_osm_job"} <= jobs

    nodes = dagster_dev.graphql(
        """{ assetNodes { assetKey { path } groupName isObservable isMaterializable jobNames
               assetChecksOrError { ... on AssetChecks { checks { name } } } } }"""
    )["assetNodes"]
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert set(by_key) >= ASSETS, by_key.keys()
    assert all(by_key[k]["groupName"] == "osm" and ASSET_JOB in by_key[k]["jobNames"] for k in ASSETS)
    assert by_key["osm_source"]["isObservable"]
    assert by_key["osm_features"]["isMaterializable"]
    checks = by_key["osm_features"]["assetChecksOrError"]["checks"]
    assert [c["name"] for c in checks] == ["osm_features_channels_covered"]


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


def _wait_for_run(server: DagsterDev, run_id: str) -> dict:
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


def test_materialize_osm_assets_like_the_ui(dagster_dev):
    nodes = dagster_dev.graphql(
        """{ assetNodes { assetKey { path } jobNames
               assetChecksOrError { ... on AssetChecks { checks { name } } } } }"""
    )["assetNodes"]
    selected = [n for n in nodes if "/".join(n["assetKey"]["path"]) in ASSETS]
    assert len(selected) == len(ASSETS) and all(ASSET_JOB in n["jobNames"] for n in selected), selected
    # What "Materialize selected" on the global asset graph sends: the implicit asset job, the selected
    # assets and their checks, default mode, no run config (the resources read LOC2VEC_* themselves).
    params = {
        "selector": {
            "repositoryLocationName": dagster_dev.location,
            "repositoryName": "__repository__",
            "pipelineName": ASSET_JOB,
            "assetSelection": [{"path": n["assetKey"]["path"]} for n in selected],
            "assetCheckSelection": [
                {"assetKey": {"path": n["assetKey"]["path"]}, "name": c["name"]}
                for n in selected
                for c in (n["assetChecksOrError"].get("checks") or [])
            ],
        },
        "mode": "default",
        "runConfigData": {},
        "executionMetadata": {"tags": []},
    }
    launched = dagster_dev.graphql(LAUNCH, {"executionParams": params})["launchPipelineExecution"]
    assert launched["__typename"] == "LaunchRunSuccess", launched
    run_id = launched["run"]["runId"]
    assert launched["run"]["pipelineName"] == ASSET_JOB

    run = _wait_for_run(dagster_dev, run_id)
    assert {"osm_source", "osm_features"} <= set(run["stepKeysToExecute"]), run

    features = dagster_dev.graphql(ASSET_STATE, {"path": ["osm_features"]})["assetOrError"]
    assert features["__typename"] == "Asset", features
    (mat,) = features["assetMaterializations"]
    assert mat["runId"] == run_id
    meta = {e["label"]: e for e in mat["metadataEntries"]}
    table = meta["features_per_channel"]
    assert table["__typename"] == "MarkdownMetadataEntry", table
    rows = [line for line in table["mdStr"].splitlines() if line.startswith("| ") and "---" not in line]
    assert rows[0] == "| channel | features |"
    counts = {r.strip("| ").split(" | ")[0]: int(r.strip("| ").split(" | ")[1]) for r in rows[1:]}
    assert len(counts) == 12 and counts["buildings"] > 1000, counts
    assert 0 < meta["n_features"]["intValue"] <= sum(counts.values())  # a feature may be in several channels
    # The server used the environment it was given: the extract from LOC2VEC_PBF, outputs in the data dir.
    assert Path(meta["path"]["path"]).resolve().is_relative_to(dagster_dev.data_dir.resolve()), meta["path"]
    assert Path(meta["path"]["path"]).exists()
    sha = hashlib.sha256(KOTKA.read_bytes()).hexdigest()
    assert meta["osm_sha256"]["text"] == sha

    (check,) = features["definition"]["assetChecksOrError"]["checks"]
    assert check["executionForLatestMaterialization"]["runId"] == run_id, check

    source = dagster_dev.graphql(ASSET_STATE, {"path": ["osm_source"]})["assetOrError"]
    (obs,) = source["assetObservations"]
    assert obs["runId"] == run_id
    assert {"key": "dagster/data_version", "value": sha} in obs["tags"]
    assert source["definition"]["dataVersion"] == sha
