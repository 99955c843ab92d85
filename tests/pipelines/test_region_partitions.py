"""Catalog regions in Dagster: the catalog sensor adds each region's partitions and imports it; blocks render
per region × block partition, the run completing a region's mosaic publishes it, and embeddings follow per
region. One test goes the way the UI does, every partition in its own ``dagster asset materialize`` process,
two at a time; the others run in process."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import dagster as dg
import geopandas as gpd
import numpy as np
import pytest
import torch

from assets.regions import region_block_partitions, regions_partitions
from loc2vec.io import file_digests
from loc2vec.models.encoders import build_encoder, save_encoder
from loc2vec.osm.edits import edit_buildings
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.regions import load_catalog
from loc2vec.render.mosaic import plan_grid, render_mosaic
from loc2vec.store.mosaic import inspect_mosaic, open_mosaic
from loc2vec.training.config import TrainConfig
from pipelines.definitions import build_definitions
from pipelines.sensors import region_catalog_sensor
from resources import ProjectStorage, RegionCatalog
from resources.regions import region_spec
from tests.conftest import HELSINKI, KOTKA, ROOT
from tests.render.incremental_case import inside_block

KOTKA_BLOCKS = ["kotka|block-0-0", "kotka|block-0-1", "kotka|block-1-0", "kotka|block-1-1"]
TIMEOUT_S = 600


def write_catalog(path: Path, regions: dict[str, tuple[Path, int | None]]) -> Path:
    """A catalog of ``{name: (extract, unit_chunks or None for the default)}``."""
    parts = []
    for name, (extract, unit_chunks) in regions.items():
        parts.append(f'[[region]]\nname = "{name}"\nextract = "{extract}"\n')
        if unit_chunks is not None:
            parts.append(f"[region.render]\nunit_chunks = {unit_chunks}\n")
    path.write_text("\n".join(parts))
    return path


def sensor_tick(instance: dg.DagsterInstance, catalog: Path, cursor: str | None = None) -> dg.SensorResult:
    """One tick of ``region_catalog_sensor``, its partition requests applied as the daemon applies them."""
    context = dg.build_sensor_context(
        instance=instance, cursor=cursor, resources={"catalog": RegionCatalog(path=str(catalog))}
    )
    result = region_catalog_sensor(context)
    for request in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
    return result


def requested(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str, cursor=None):
    found = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    return found.get_requested_partitions(dg.AssetKey(asset)), found.cursor


def materialize(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str, partition: str):
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(asset)], partition_key=partition
    )
    assert result.success
    return result


def mosaic_events(instance: dg.DagsterInstance, region: str) -> list:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey("region_mosaic"), asset_partitions=[region]), limit=10
    ).records
    return [r.asset_materialization for r in records]


def current_mosaic(data_dir: Path, region: str) -> str:
    return (data_dir / "regions" / region / "mosaic" / "CURRENT").read_text().strip()


# --- the UI's way: every partition in its own process -----------------------------------------------------


def _env(home: Path, data: Path, catalog: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return env | {"DAGSTER_HOME": str(home), "LOC2VEC_DATA_DIR": str(data), "LOC2VEC_CATALOG": str(catalog)}


def _materialize_in_processes(
    env: dict[str, str], asset: str, partitions: list[str | None], config: dict | None = None, parallel: int = 2
) -> dict[str | None, subprocess.CompletedProcess]:
    """``dagster asset materialize`` for each partition (None: an unpartitioned asset), ``parallel`` at a time."""
    done = {}
    for i in range(0, len(partitions), parallel):
        procs = {}
        for key in partitions[i : i + parallel]:
            command = [str(Path(sys.executable).parent / "dagster"), "asset", "materialize"]
            command += ["-m", "pipelines.definitions", "--select", asset]
            command += ["--partition", key] if key is not None else []
            if config:
                command += ["--config-json", json.dumps(config)]
            procs[key] = subprocess.Popen(
                command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        for key, proc in procs.items():
            out, _ = proc.communicate(timeout=TIMEOUT_S)
            done[key] = subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    return done


@pytest.mark.slow
def test_two_regions_materialize_per_region_and_block_partitions_in_their_own_processes(tmp_path: Path) -> None:
    home, data = tmp_path / "home", tmp_path / "data"
    home.mkdir()
    (home / "dagster.yaml").write_text("")
    catalog = write_catalog(
        tmp_path / "catalog.toml",
        {"kotka": (KOTKA, 1), "helsinki": (HELSINKI, None), "lost": (tmp_path / "missing.osm.pbf", None)},
    )
    model = tmp_path / "model"
    torch.manual_seed(0)
    config = TrainConfig(crop_px=64)
    encoder = build_encoder(embedding_dim=16)
    save_encoder(encoder, model / "model.pt")
    (model / "config.json").write_text(json.dumps(config.to_dict()))
    env = _env(home, data, catalog)

    with dg.DagsterInstance.from_config(str(home)) as instance:
        tick = sensor_tick(instance, catalog)
        assert sorted(r.partition_key for r in tick.run_requests) == ["helsinki", "kotka"]  # not the faulty one
        assert sorted(instance.get_dynamic_partitions(regions_partitions.name)) == ["helsinki", "kotka", "lost"]
        assert sorted(instance.get_dynamic_partitions(region_block_partitions.name)) == [
            "helsinki|block-0-0",
            *KOTKA_BLOCKS,
        ]

    imports = _materialize_in_processes(env, "region_features", ["kotka", "helsinki", "lost"], parallel=3)
    assert imports["kotka"].returncode == 0, imports["kotka"].stdout[-3000:]
    assert imports["helsinki"].returncode == 0, imports["helsinki"].stdout[-3000:]
    assert imports["lost"].returncode != 0
    assert "region 'lost': extract not found" in imports["lost"].stdout
    assert not (data / "regions" / "lost").exists()  # nothing half-written for the faulty region

    blocks = _materialize_in_processes(env, "region_raster_blocks", ["helsinki|block-0-0", *KOTKA_BLOCKS])
    for key, proc in blocks.items():
        assert proc.returncode == 0, f"{key}: {proc.stdout[-3000:]}"
    embedded = _materialize_in_processes(
        env,
        "region_embeddings",
        ["kotka", "helsinki"],
        {"ops": {"region_embeddings": {"config": {"model": str(model)}}}},
    )
    for key, proc in embedded.items():
        assert proc.returncode == 0, f"{key}: {proc.stdout[-3000:]}"

    with dg.DagsterInstance.from_config(str(home)) as instance:
        for region, n_blocks in (("kotka", 4), ("helsinki", 1)):
            events = mosaic_events(instance, region)
            assert len(events) == 1  # published once, by the block run that completed it
            store = open_mosaic(current_mosaic(data, region))
            assert events[0].metadata["store"].value == store.path
            assert inspect_mosaic(store).complete
            runs = instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("region_raster_blocks")), limit=20
            ).records
            assert len([r for r in runs if r.partition_key.startswith(f"{region}|")]) == n_blocks
            table = gpd.read_parquet(next((data / "regions" / region / "embeddings").glob("*.parquet")))
            vectors = np.stack(table["embedding"].to_numpy())
            assert len(table) > 20 and vectors.shape[1] == encoder.representation_dim and np.isfinite(vectors).all()
        assert not mosaic_events(instance, "lost")

    # the four Kotka blocks, rendered by four processes two at a time, make the mosaic one render makes
    entry = load_catalog(catalog).region("kotka")
    features = FeaturesManifest.load(next((data / "regions" / "kotka" / "features").glob("*/manifest.json")))
    full = render_mosaic(features, region_spec(entry), tmp_path / "full")
    assert file_digests(full.path) == file_digests(current_mosaic(data, "kotka"))


# --- in process: following the catalog ---------------------------------------------------------------------


@pytest.mark.slow
def test_an_edit_in_one_block_of_one_region_rerenders_that_partition_only(tmp_path: Path) -> None:
    extract = tmp_path / "kotka.osm.pbf"
    shutil.copyfile(KOTKA, extract)
    catalog = write_catalog(tmp_path / "catalog.toml", {"kotka": (extract, 1), "helsinki": (HELSINKI, None)})
    data = tmp_path / "data"
    defs = build_definitions(storage=ProjectStorage(data_dir=str(data)), catalog=RegionCatalog(path=str(catalog)))
    with dg.instance_for_test() as instance:
        tick = sensor_tick(instance, catalog)
        _, cursor = requested(defs, instance, "region_raster_blocks")  # the automation ticks all along
        for request in tick.run_requests:
            materialize(defs, instance, "region_features", request.partition_key)
        wanted, cursor = requested(defs, instance, "region_raster_blocks", cursor)
        assert wanted == {"helsinki|block-0-0", *KOTKA_BLOCKS}
        for key in sorted(wanted):
            materialize(defs, instance, "region_raster_blocks", key)
        first = current_mosaic(data, "kotka")
        wanted, cursor = requested(defs, instance, "region_embeddings", cursor)
        assert wanted == {"kotka", "helsinki"}  # the published mosaics are what the embeddings follow

        again = sensor_tick(instance, catalog, tick.cursor)
        assert not again.run_requests  # nothing changed: nothing to import

        entry = load_catalog(catalog).region("kotka")
        features = FeaturesManifest.load(next((data / "regions" / "kotka" / "features").glob("*/manifest.json")))
        grid = plan_grid(features, region_spec(entry))
        edits = edit_buildings(KOTKA, tmp_path / "edit", inside_block(grid, "block-1-1", 2, margin_m=30.0), 3)
        shutil.copyfile(edits.edited, extract)
        changed = sensor_tick(instance, catalog, again.cursor)
        assert [r.partition_key for r in changed.run_requests] == ["kotka"]
        materialize(defs, instance, "region_features", "kotka")

        wanted, cursor = requested(defs, instance, "region_raster_blocks", cursor)
        assert wanted == {"kotka|block-1-1"}
        block = materialize(defs, instance, "region_raster_blocks", "kotka|block-1-1")
        events = block.asset_materializations_for_node("region_raster_blocks")
        metadata = next(e for e in events if e.asset_key == dg.AssetKey("region_raster_blocks")).metadata
        assert metadata["rendered_units"].value > 0
        assert metadata["shared_from"].value == first
        assert metadata["region_mosaic"].value.startswith("published")
        new = current_mosaic(data, "kotka")
        assert new != first and Path(first).is_dir()  # the previous version stays readable
        assert len(mosaic_events(instance, "kotka")) == 2 and len(mosaic_events(instance, "helsinki")) == 1
        wanted, _ = requested(defs, instance, "region_embeddings", cursor)
        assert wanted == {"kotka"}

        from loc2vec.osm.layers import build_feature_layers
        from loc2vec.schema import load_schema

        full_features, _ = build_feature_layers(edits.edited, load_schema(), tmp_path / "full" / "features")
        full = render_mosaic(full_features, region_spec(entry), tmp_path / "full" / "mosaic")
        assert file_digests(full.path) == file_digests(new)
        assert Path(new).name == Path(full.path).name  # the same version name

        # the region's split follows its render settings: its stale block partitions go
        write_catalog(catalog, {"kotka": (extract, None), "helsinki": (HELSINKI, None)})
        materialize(defs, instance, "region_features", "kotka")
        assert sorted(instance.get_dynamic_partitions(region_block_partitions.name)) == [
            "helsinki|block-0-0",
            "kotka|block-0-0",
        ]


def test_the_sensor_names_a_faulty_region_and_imports_the_others(tmp_path: Path) -> None:
    broken = tmp_path / "broken.osm.pbf"
    broken.write_bytes(KOTKA.read_bytes()[:5000])  # truncated
    catalog = write_catalog(tmp_path / "catalog.toml", {"helsinki": (HELSINKI, None), "broken": (broken, None)})
    data = tmp_path / "data"
    defs = build_definitions(storage=ProjectStorage(data_dir=str(data)), catalog=RegionCatalog(path=str(catalog)))
    with dg.instance_for_test() as instance:
        tick = sensor_tick(instance, catalog)
        assert [r.partition_key for r in tick.run_requests] == ["helsinki"]
        result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            instance=instance,
            asset_selection=[dg.AssetKey("region_features")],
            partition_key="broken",
            raise_on_error=False,
        )
        assert not result.success
        failure = result.get_step_failure_events()[0].event_specific_data.error.cause.message
        assert "region 'broken'" in failure and "unusable" in failure
        assert not (data / "regions" / "broken").exists()
        materialize(defs, instance, "region_features", "helsinki")
        assert (data / "regions" / "helsinki" / "features").is_dir()
