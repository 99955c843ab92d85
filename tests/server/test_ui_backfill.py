"""Rendering launched from the Dagster UI with the daemon running, as a person does it: "Materialize…" on
``raster_blocks``, all partitions, "Launch backfill"; the backfill renders every block in its own run,
then ``osm_follow_automation`` (on by default) materializes the mosaic from the new blocks.
"""

from __future__ import annotations

import time

import pytest

from pipelines.definitions import build_definitions
from pipelines.runner import open_instance
from resources import OsmSource, ProjectStorage
from tests.conftest import KOTKA
from tests.server.browser import browser, needs_chromium
from tests.server.servers import clean_env, dagster_ui

pytestmark = [pytest.mark.server, pytest.mark.slow, needs_chromium]

BACKFILL_TIMEOUT = 300.0

BACKFILLS = """{ partitionBackfillsOrError { ... on PartitionBackfills { results { id status numPartitions } } } }"""
MATERIALIZATIONS = """
query Materializations($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(limit: 20) { runId partition } }
  }
}"""


def _materializations(server, asset: str) -> list[dict]:
    return server.graphql(MATERIALIZATIONS, {"path": [asset]})["assetOrError"]["assetMaterializations"]


def test_materialize_the_render_partitions_from_the_ui(tmp_path_factory, request):
    base = tmp_path_factory.mktemp("ui-backfill")
    home, data = base / "dagster_home", base / "data"
    # the automation sensor looks every 10 s instead of 30 (the test waits for it)
    env = clean_env(
        DAGSTER_HOME=str(home), LOC2VEC_DATA_DIR=str(data), LOC2VEC_PBF=str(KOTKA), LOC2VEC_AUTOMATION_SECONDS="10"
    )
    # the import is done first, in the same instance, as an earlier run would have done it; the UI's part
    # is the rendering
    defs = build_definitions(OsmSource(pbf_path=str(KOTKA)), ProjectStorage(data_dir=str(data)))
    with open_instance(home) as instance:
        assert defs.resolve_job_def("ingest_job").execute_in_process(instance=instance).success

    with dagster_ui(env, base / "dagster_dev.log") as server, browser(request.node.name) as page:
        page.open(f"{server.url}/automation")
        page.dismiss_dagster_welcome()
        page.wait_text("osm_follow_automation", "osm_update_sensor")
        page.shot("1-automation")

        page.open(f"{server.url}/assets/raster_blocks")
        page.button("Materialize").click()
        page.wait_text("Launch runs to materialize raster_blocks")
        page.button("All").click()
        page.wait_text("4 partitions")
        page.shot("2-launch-dialog")
        page.button("Launch").click()

        deadline = time.monotonic() + BACKFILL_TIMEOUT
        backfills: list[dict] = []
        while time.monotonic() < deadline:
            backfills = server.graphql(BACKFILLS)["partitionBackfillsOrError"]["results"]
            if backfills and backfills[0]["status"] not in ("REQUESTED", "CANCELING"):
                break
            time.sleep(2)
        assert [(b["status"], b["numPartitions"]) for b in backfills] == [("COMPLETED_SUCCESS", 4)], backfills
        blocks = {m["partition"] for m in _materializations(server, "raster_blocks")}
        assert blocks == {"block-0-0", "block-0-1", "block-1-0", "block-1-1"}
        page.open(f"{server.url}/runs/b/{backfills[0]['id']}")
        page.wait_text("Succeeded", "100% completed")
        page.shot("3-backfill")

        while not _materializations(server, "raster_mosaic"):  # the automation sensor follows the blocks
            if time.monotonic() > deadline:
                pytest.fail(f"raster_mosaic not materialized after the backfill:\n{server.log_tail()}")
            time.sleep(2)
        page.open(f"{server.url}/assets/raster_mosaic")
        page.wait_text("Latest materialization", "coverage")
        page.shot("4-mosaic")
