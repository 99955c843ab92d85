"""Rendering launched from the Dagster UI with the daemon running, as a person does it: "Materialize…" on
``raster_blocks``, all partitions, "Launch backfill"; the backfill renders every block in its own run,
then ``osm_follow_automation`` (on by default) materializes the mosaic from the new blocks. Every process
computed the same mosaic version, and the mosaic equals a one-process render, chunk file for chunk file.
"""

from __future__ import annotations

import time
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from loc2vec.io import file_digests
from loc2vec.store.mosaic import open_mosaic
from pipelines.definitions import build_definitions
from pipelines.runner import open_instance, run_pipeline
from resources import MapnikRenderer, OsmSource, ProjectStorage
from tests.conftest import KOTKA
from tests.server.browser import browser, needs_chromium
from tests.server.servers import clean_env, dagster_ui

pytestmark = [pytest.mark.server, pytest.mark.slow, needs_chromium]

BACKFILL_TIMEOUT = 300.0
# several render units per block on the small Kotka extract (the UI's processes read them from the environment)
RENDER = {"resolution_m": 2.0, "unit_chunks": 1}
RENDER_ENV = {"LOC2VEC_RESOLUTION_M": "2.0", "LOC2VEC_UNIT_CHUNKS": "1"}

BACKFILLS = """{ partitionBackfillsOrError { ... on PartitionBackfills { results { id status numPartitions } } } }"""
MATERIALIZATIONS = """
query Materializations($path: [String!]!) {
  assetOrError(assetKey: {path: $path}) {
    ... on Asset { assetMaterializations(limit: 20) { runId partition } }
  }
}"""


def _materializations(server, asset: str) -> list[dict]:
    return server.graphql(MATERIALIZATIONS, {"path": [asset]})["assetOrError"]["assetMaterializations"]


def _assert_equals_a_one_process_render(home: Path, per_process: Path, one_process_dir: Path) -> None:
    """Every block's run recorded one mosaic version, the store's; a one-process render gives the same bytes."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(dg.AssetKey("raster_blocks"), limit=100).records
        versions = {r.asset_materialization.metadata["mosaic_version"].value for r in records}
    assert versions == {per_process.stem}, versions
    defs = build_definitions(
        OsmSource(pbf_path=str(KOTKA)), ProjectStorage(data_dir=str(one_process_dir)), MapnikRenderer(**RENDER)
    )
    with dg.instance_for_test() as instance:
        run_pipeline(defs, instance, log=lambda _: None, main_assets=["raster_mosaic"])
    (one_process,) = list(one_process_dir.glob("mosaic/*.zarr"))
    assert one_process.name == per_process.name
    a, b = open_mosaic(per_process), open_mosaic(one_process)
    assert a.is_complete() and b.is_complete()
    np.testing.assert_array_equal(a.read(), b.read())
    assert file_digests(per_process / "mosaic") == file_digests(one_process / "mosaic")


def _assert_each_block_run_is_one_process(home: Path) -> None:
    """A partition's run executes its step in the run's own process (the in-process executor), not in a
    process of its own: the step starts in the process that started the run."""
    with dg.DagsterInstance.from_config(str(home)) as instance:
        runs = [r for r in instance.get_runs() if r.tags.get("dagster/partition")]
        assert len(runs) == 4
        for run in runs:
            pids = {
                e.dagster_event.event_type: e.dagster_event.pid
                for e in instance.all_logs(run.run_id)
                if e.dagster_event is not None
            }
            assert pids[dg.DagsterEventType.STEP_START] == pids[dg.DagsterEventType.RUN_START] is not None, pids


def test_materialize_the_render_partitions_from_the_ui(tmp_path_factory, request):
    base = tmp_path_factory.mktemp("ui-backfill")
    home, data = base / "dagster_home", base / "data"
    # the automation sensor looks every 2 s instead of 30 (the test waits for it)
    env = clean_env(
        DAGSTER_HOME=str(home),
        LOC2VEC_DATA_DIR=str(data),
        LOC2VEC_PBF=str(KOTKA),
        LOC2VEC_AUTOMATION_SECONDS="2",
        **RENDER_ENV,
    )
    # the import is done first, in the same instance, as an earlier run would have done it; the UI's part
    # is the rendering
    defs = build_definitions(
        OsmSource(pbf_path=str(KOTKA)), ProjectStorage(data_dir=str(data)), MapnikRenderer(**RENDER)
    )
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

    _assert_each_block_run_is_one_process(home)
    (per_process,) = list(data.glob("mosaic/*.zarr"))
    _assert_equals_a_one_process_render(home, per_process, base / "one-process")
