"""`dagster dev` serves the loc2vec code location and materializes its assets the way the UI does.

Starts the real `dagster dev` (webserver + daemon + code server) on 127.0.0.1 with a fresh DAGSTER_HOME
and talks to it only through the GraphQL API the UI uses: the asset graph, a "Materialize selected" launch
of osm_source + osm_features from the global asset graph (the implicit asset job `__ASSET_JOB` with an asset
selection; queued, then dequeued by the daemon) and the materialization metadata the UI shows.
`dagster dev` runs as `make ui` runs it: from DAGSTER_HOME over workspace.yaml (location "loc2vec").
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from tests.conftest import KOTKA, ROOT
from tests.server.servers import ASSET_STATE, LAUNCH, clean_env, dagster_ui, wait_for_run

pytestmark = pytest.mark.server

ASSETS = {"osm_source", "osm_features"}
ASSET_JOB = "__ASSET_JOB"  # the implicit job holding every asset; the asset graph launches through it


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory):
    base = tmp_path_factory.mktemp("dagster-dev")
    env = clean_env(
        DAGSTER_HOME=str(base / "dagster_home"), LOC2VEC_DATA_DIR=str(base / "data"), LOC2VEC_PBF=str(KOTKA)
    )
    (base / "data").mkdir()
    with dagster_ui(env, base / "dagster_dev.log") as server:
        yield server


def test_make_ui_and_pyproject_name_the_same_code_location():
    """`make ui` loads workspace.yaml; plain `dagster dev` in the repo reads pyproject: both say "loc2vec"."""
    import tomllib

    import yaml

    (entry,) = yaml.safe_load((ROOT / "workspace.yaml").read_text())["load_from"]
    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["dagster"]
    assert entry["python_module"]["location_name"] == tool["code_location_name"] == "loc2vec"
    assert entry["python_module"]["module_name"] == tool["module_name"] == "pipelines.definitions"


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

    run = wait_for_run(dagster_dev, run_id)
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
    features_file = Path(meta["features_file"]["path"]).resolve()
    assert features_file.is_relative_to(dagster_dev.data_dir.resolve()), features_file
    assert features_file.suffix == ".parquet" and features_file.is_file()  # the layers, not the IO manager's pickle
    sha = hashlib.sha256(KOTKA.read_bytes()).hexdigest()
    assert meta["osm_sha256"]["text"] == sha

    (check,) = features["definition"]["assetChecksOrError"]["checks"]
    assert check["executionForLatestMaterialization"]["runId"] == run_id, check

    source = dagster_dev.graphql(ASSET_STATE, {"path": ["osm_source"]})["assetOrError"]
    (obs,) = source["assetObservations"]
    assert obs["runId"] == run_id
    assert {"key": "dagster/data_version", "value": sha} in obs["tags"]
    assert source["definition"]["dataVersion"] == sha
