"""An OSM change inside one spatial block, through Dagster: only that block's render partition becomes
stale and is requested by the automation, it renders only the units whose input changed, and the mosaic
it completes is byte-identical to a full render of the changed extract."""

from __future__ import annotations

import shutil
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.definitions.data_version import CachingStaleStatusResolver
from dagster._core.loader import LoadingContextForTest

from loc2vec.io import file_digests
from loc2vec.osm.edits import edit_buildings
from loc2vec.osm.layers import build_feature_layers
from loc2vec.render.mosaic import plan_grid, render_mosaic
from loc2vec.schema import load_schema
from pipelines.definitions import build_definitions
from resources import MapnikRenderer, OsmSource, ProjectStorage
from tests.conftest import KOTKA
from tests.render.incremental_case import inside_block

RENDERER = MapnikRenderer(resolution_m=3.0, chunk=64, unit_chunks=2)  # Kotka: 6 x 6 units, 3 x 3 per block
BLOCKS = ["block-0-0", "block-0-1", "block-1-0", "block-1-1"]


def _stale(instance: dg.DagsterInstance, defs: dg.Definitions) -> dict[str, str]:
    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    return {b: resolver.get_status(dg.AssetKey("raster_blocks"), b).value for b in BLOCKS}


def _run(defs: dg.Definitions, instance: dg.DagsterInstance, job: str, **kwargs) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def(job).execute_in_process(instance=instance, **kwargs)
    assert result.success
    return result


@pytest.mark.slow
def test_a_change_in_one_block_rerenders_that_block_only(tmp_path: Path) -> None:
    extract = tmp_path / "region.osm.pbf"
    shutil.copyfile(KOTKA, extract)
    storage = ProjectStorage(data_dir=str(tmp_path / "data"))
    defs = build_definitions(osm_source=OsmSource(pbf_path=str(extract)), storage=storage, renderer=RENDERER)
    with dg.instance_for_test() as instance:
        features = _run(defs, instance, "ingest_job").output_for_node("osm_features")
        for block in BLOCKS:
            _run(defs, instance, "render_job", partition_key=block)
        _run(defs, instance, "main_job", asset_selection=[dg.AssetKey("raster_mosaic")])
        first = instance.get_latest_materialization_event(dg.AssetKey("raster_mosaic")).asset_materialization
        assert _stale(instance, defs) == dict.fromkeys(BLOCKS, "FRESH")
        quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance)

        grid = plan_grid(features, RENDERER.spec(blocks_per_side=2))
        edits = edit_buildings(KOTKA, tmp_path / "edit", inside_block(grid, "block-1-1", 2), 3)
        shutil.copyfile(edits.edited, extract)  # the region's extract changed in one block
        _run(defs, instance, "ingest_job")

        assert _stale(instance, defs) == {**dict.fromkeys(BLOCKS, "FRESH"), "block-1-1": "STALE"}
        wanted = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
        assert wanted.get_requested_partitions(dg.AssetKey("raster_blocks")) == {"block-1-1"}

        block = _run(defs, instance, "render_job", partition_key="block-1-1")
        rendered = block.asset_materializations_for_node("raster_blocks")[0].metadata
        assert 0 < rendered["rendered_units"].value < 9  # the units whose input changed, not the whole block
        assert rendered["shared_from"].value == first.metadata["store"].value
        mosaic = _run(defs, instance, "main_job", asset_selection=[dg.AssetKey("raster_mosaic")])
        checks = {c.check_name: c.passed for c in mosaic.get_asset_check_evaluations()}
        assert checks["complete"] and checks["values_in_range"]
        new = mosaic.output_for_node("raster_mosaic")
        assert new.version != first.metadata["mosaic_version"].value
        assert _stale(instance, defs) == dict.fromkeys(BLOCKS, "FRESH")

        full_features, _ = build_feature_layers(edits.edited, load_schema(), tmp_path / "full" / "features")
        full = render_mosaic(full_features, RENDERER.spec(blocks_per_side=2), tmp_path / "full" / "mosaic")
        assert full.version == new.version
        assert file_digests(new.path) == file_digests(full.path)  # every chunk and metadata file
        assert Path(first.metadata["store"].value).is_dir()  # the previous version stays readable
        current = Path(storage.data_dir, "mosaic", "CURRENT").read_text()
        assert current == new.path

        # "Observe" on render_inputs in the UI (the asset job) records the same versions: nothing turns stale
        observe = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey("render_inputs")]
        )
        assert observe.success
        assert _stale(instance, defs) == dict.fromkeys(BLOCKS, "FRESH")
