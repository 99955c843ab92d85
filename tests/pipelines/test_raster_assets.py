"""The staged pipeline through Dagster: ingest -> one render run per block -> validated mosaic."""

import dagster as dg
import pytest

from loc2vec.errors import ConfigError
from pipelines.definitions import build_definitions
from pipelines.runner import run_pipeline
from resources import MapnikRenderer, OsmSource, ProjectStorage
from tests.conftest import KOTKA


def _defs(tmp_path, **renderer):
    return build_definitions(
        OsmSource(pbf_path=str(KOTKA)),
        ProjectStorage(data_dir=str(tmp_path)),
        MapnikRenderer(**renderer),
    )


def test_runner_materializes_every_block_and_the_checked_mosaic(tmp_path):
    with dg.instance_for_test() as instance:
        results = run_pipeline(
            _defs(tmp_path, resolution_m=2.0, unit_chunks=1),
            instance,
            log=lambda _: None,
            main_assets=["raster_mosaic"],
        )
        assert [k for k in results if k.startswith("render_job")] == [
            "render_job[block-0-0]",
            "render_job[block-0-1]",
            "render_job[block-1-0]",
            "render_job[block-1-1]",
        ]
        record = instance.get_latest_materialization_event(dg.AssetKey("raster_mosaic"))
        meta = record.asset_materialization.metadata
        assert "data:image/png;base64," in meta["preview"].value
        assert "data:image/png;base64," in meta["region"].value
        assert "| buildings |" in meta["coverage"].value
        checks = {e.check_name: e.passed for e in results["main_job"].get_asset_check_evaluations()}
        assert checks["complete"] and checks["values_in_range"]
        assert checks["channel_coverage"] is False  # Kotka has no railway or water: warned, not blocking
        for key in ("block-0-0", "block-1-1"):
            assert instance.get_latest_materialization_event(dg.AssetKey("raster_blocks")) is not None
            assert key in instance.get_materialized_partitions(dg.AssetKey("raster_blocks"))


def test_bad_resolution_is_refused_before_any_stage_and_fails_the_render_asset(tmp_path):
    defs = _defs(tmp_path / "data", resolution_m=0.0)
    with dg.instance_for_test() as instance:
        with pytest.raises(ConfigError, match="resolution"):
            run_pipeline(defs, instance, log=lambda _: None)
        assert not instance.get_runs()  # refused before the first stage
        assert not (tmp_path / "data").exists()
        # launched on its own (as from the UI), the render asset fails with the same message
        result = defs.resolve_job_def("render_job").execute_in_process(
            instance=instance, partition_key="block-0-0", raise_on_error=False
        )
        assert not result.success
        assert instance.get_latest_materialization_event(dg.AssetKey("raster_blocks")) is None
        assert not list(tmp_path.glob("data/mosaic/*.zarr"))


def test_main_job_runs_a_process_per_step_and_every_other_run_runs_in_its_own_process(tmp_path):
    """``main_job`` keeps the multiprocess executor (parallel steps, each step's memory returned); the
    partition runs, the observe/ingest/render jobs and what the UI or the automation materializes run in
    process (their start-up is tests/server/test_ui_backfill.py's and benchmarks/run_start_bench.py's)."""
    defs = build_definitions(OsmSource(pbf_path=str(KOTKA)), ProjectStorage(data_dir=str(tmp_path)))
    assert defs.resolve_job_def("main_job").executor_def.name == dg.multiprocess_executor.name
    others = [defs.resolve_job_def(n) for n in ("observe_osm_job", "ingest_job", "render_job")]
    for job in [*others, defs.resolve_implicit_global_asset_job_def()]:
        assert job.executor_def.name == dg.in_process_executor.name, job.name
