"""Dagster's own parallel path: each render partition materialized in its own process, as a UI backfill
runs them, then the mosaic assembled in another; the result equals the one-process runner's, byte for byte."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from loc2vec.store.mosaic import open_mosaic
from pipelines.definitions import build_definitions
from pipelines.runner import run_pipeline
from resources import MapnikRenderer, OsmSource, ProjectStorage
from tests.conftest import KOTKA, ROOT

pytestmark = pytest.mark.slow

BLOCKS = ["block-0-0", "block-0-1", "block-1-0", "block-1-1"]
RENDER = {"resolution_m": 2.0, "unit_chunks": 1}  # several units per block on the small Kotka extract


def _materialize(env: dict, select: str, partition: str | None = None) -> subprocess.Popen:
    args = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "tests.pipelines.kotka_definitions"]
    args += ["--select", select] + (["--partition", partition] if partition else [])
    return subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(processes: dict[str, subprocess.Popen]) -> None:
    for label, proc in processes.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{label}: {err[-3000:]}"


def _chunk_files(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.rglob("*")) if p.is_file()}


def test_render_partitions_in_separate_processes_assemble_the_same_mosaic(tmp_path):
    data_dir, home = tmp_path / "per-process", tmp_path / "dagster_home"
    home.mkdir()
    env = {**os.environ, "DAGSTER_HOME": str(home), "LOC2VEC_DATA_DIR": str(data_dir), "LOC2VEC_RENDER_BLOCKS": "2"}
    _wait({"osm_features": _materialize(env, "osm_features")})
    # the blocks two at a time, each in its own process, as a backfill with run concurrency 2 runs them
    for pair in (BLOCKS[:2], BLOCKS[2:]):
        _wait({block: _materialize(env, "raster_blocks", block) for block in pair})
    _wait({"raster_mosaic": _materialize(env, "raster_mosaic")})

    with dg.DagsterInstance.from_config(str(home)) as instance:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("raster_blocks"), asset_partitions=BLOCKS), limit=100
        ).records
        assert sorted(r.partition_key for r in records) == BLOCKS
        versions = {r.asset_materialization.metadata["mosaic_version"].value for r in records}
        mosaic_event = instance.get_latest_materialization_event(dg.AssetKey("raster_mosaic"))
    assert len(versions) == 1  # every process computed the same version
    assert mosaic_event is not None
    (per_process,) = list(data_dir.glob("mosaic/*.zarr"))
    assert per_process.stem == versions.pop()

    one_process_dir = tmp_path / "one-process"
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
    assert _chunk_files(per_process / "mosaic") == _chunk_files(one_process / "mosaic")
