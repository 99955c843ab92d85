"""After a run, a person opens the UIs: the Dagster UI (asset graph, the job's runs, the model's links),
the MLflow UI the link leads to (and back to Dagster), and the map page served over HTTP.

Uses the session's real ``loc2vec run`` output (``monaco_run``), whose links were made for the ports in
its ``ui_ports.json``; the servers start there: `dagster-webserver` as `make ui` runs it, `mlflow ui` as
`make mlflow-ui` and the maps server as `make maps`. Screenshots go to ``test-artifacts/``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import MONACO, TRAIN_REGION
from tests.server.browser import browser, needs_chromium
from tests.server.servers import clean_env, dagster_ui, maps_server, mlflow_ui

pytestmark = [pytest.mark.server, pytest.mark.slow, needs_chromium]


def _main_job_runs(home: Path) -> list[str]:
    import dagster as dg
    from dagster._core.instance.ref import InstanceRef

    with dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home))) as instance:
        return [run.run_id for run in instance.get_runs(dg.RunsFilter(job_name="main_job"))]


def test_walk_the_uis_after_a_run(monaco_run, request, tmp_path):
    ports = json.loads((monaco_run / "ui_ports.json").read_text())
    doc = json.loads((monaco_run / "evaluation.json").read_text())
    latest = doc["runs"][-1]
    home = monaco_run / "dagster_home"
    env = clean_env(
        DAGSTER_HOME=str(home),
        LOC2VEC_DATA_DIR=str(monaco_run),
        LOC2VEC_PBF=str(MONACO),
        LOC2VEC_BBOX=",".join(map(str, TRAIN_REGION)),
    )
    store = f"sqlite:///{monaco_run / 'mlflow' / 'mlflow.db'}"
    with (
        mlflow_ui(store, ports["mlflow"], tmp_path / "mlflow.log") as mlflow_url,
        maps_server(monaco_run, ports["maps"], tmp_path / "maps.log"),
        dagster_ui(env, tmp_path / "webserver.log", daemon=False, port=ports["dagster"]) as dagster,
        browser(request.node.name) as page,
    ):
        page.open(f"{dagster.url}/asset-groups")
        page.dismiss_dagster_welcome()
        page.wait_text("Global asset lineage", "osm", "raster", "training", "evaluation")
        page.shot("1-asset-graph")
        page.open(f"{dagster.url}/assets/trained_model?view=lineage&lineageScope=upstream&lineageDepth=10")
        page.wait_text("osm_source", "osm_features", "raster_blocks", "raster_mosaic", "sample_locations")
        page.shot("1-trained-model-lineage")

        runs = _main_job_runs(home)
        assert len(runs) == 2  # one per training seed
        page.open(f"{dagster.url}/locations/loc2vec/jobs/main_job/runs")
        page.wait_text(*(run_id[:8] for run_id in runs))
        page.shot("2-main-job-runs")

        page.open(f"{dagster.url}/assets/trained_model")
        page.wait_text("mlflow_run", "mlflow_model")
        page.shot("3-trained-model")
        mlflow_run = next(href for href in page.links().values() if "/#/experiments/" in href)
        assert mlflow_run.startswith(mlflow_url) and mlflow_run.endswith(f"/runs/{latest['mlflow_run_id']}")

        from mlflow import MlflowClient

        run = MlflowClient(store).get_run(latest["mlflow_run_id"])
        page.open(mlflow_run)
        body = page.wait_text(run.info.run_name, "dagster_run_url", timeout=90)
        assert "does not exist" not in body
        page.shot("4-mlflow-run")
        back = run.data.tags["dagster_run_url"]
        assert back == f"{dagster.url}/runs/{runs[0]}"  # the newest main_job run trained the latest model
        page.open(back)
        page.wait_text(runs[0][:8], "Success")
        page.shot("5-back-in-dagster")

        page.open(f"{dagster.url}/assets/maps")
        page.wait_text("embedding_map", "projector")
        map_link = next(href for href in page.links().values() if href.endswith("embedding_map.html"))
        assert map_link.startswith(f"http://127.0.0.1:{ports['maps']}/maps/")
        page.open(map_link)
        page.wait_text("OpenStreetMap")
        assert page.driver.find_elements("css selector", ".leaflet-container .leaflet-image-layer")
        page.shot("6-map")
