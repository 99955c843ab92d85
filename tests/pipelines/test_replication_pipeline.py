"""Following OSM through the pipeline: a region on a replication source, two real diffs.

The first run imports the project's copy of the extract brought to sequence 1; the lineage of the model
version (MLflow tags), the mosaic and every embedding row names that sequence. Sequence 2 then arrives:
observing the source applies it; the Dagster UI (headless Chromium, screenshots in test-artifacts/) shows
trained_model's lineage back to osm_source, the assets downstream of the source stale, the sequence on
the source's observation and on the model's materialization with its MLflow link. The automation asks
for a new import and not for a new model, and the refreshed embeddings, cut by the same model from the
new mosaic, carry sequence 2 (slow: one training).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
import geopandas as gpd
import osmium
import pytest

from loc2vec.osm.replication import extract_state, publish_diff, write_change
from loc2vec.store.mosaic import open_mosaic
from pipelines.definitions import build_definitions
from pipelines.runner import Pipeline, main_job_config, open_instance
from pipelines.sensors import retrain_when_region_changed
from resources import OsmSource, ProjectStorage
from tests.conftest import KOTKA
from tests.osm.test_replication import _diff_of_edits
from tests.server.browser import browser, needs_chromium
from tests.server.servers import clean_env, dagster_ui

pytestmark = [pytest.mark.slow, pytest.mark.server, needs_chromium]

STALE = """{ assetNodes { assetKey { path } staleStatus } }"""


def _retag_buildings(src: Path, dst: Path, n: int = 5) -> list[int]:
    """A copy of ``src`` with ``n`` more real buildings retagged as shops (a second, later edit)."""
    changed: list[int] = []
    with osmium.SimpleWriter(str(dst)) as writer:
        for obj in osmium.FileProcessor(str(src)):
            if obj.type_str() == "w" and "building" in obj.tags and len(changed) < n and obj.id % 7 == 0:
                tags = {t.k: t.v for t in obj.tags} | {"building": "retail", "shop": "convenience"}
                obj = obj.replace(tags=tags, version=obj.version + 1)
                changed.append(obj.id)
            writer.add(obj)
    return changed


def _check_the_ui(env: dict[str, str], log: Path, test_name: str, model_run_id: str) -> None:
    """After sequence 2 was observed: lineage, staleness and the sequences as the UI shows them."""
    with dagster_ui(env, log, daemon=False) as server, browser(test_name) as page:
        stale = {"/".join(n["assetKey"]["path"]): n["staleStatus"] for n in server.graphql(STALE)["assetNodes"]}
        # Dagster marks the source's direct dependant stale (its cause: the source's new data version)
        assert stale["osm_features"] == "STALE", stale
        page.open(f"{server.url}/assets/trained_model?view=lineage&lineageScope=upstream&lineageDepth=10")
        page.dismiss_dagster_welcome()
        page.wait_text("osm_source", "osm_features", "raster_mosaic", "sample_locations", "trained_model")
        page.shot("1-trained-model-lineage")
        page.open(f"{server.url}/assets/osm_features")
        page.wait_text("Unsynced")  # how the UI marks a stale asset: its source has a new data version
        page.shot("2-osm-features-stale")
        page.open(f"{server.url}/assets/osm_source")
        page.wait_text("osm_sequence", "2026-12-01T12:00:00+00:00", "diffs_applied")
        page.shot("3-osm-source-sequence-2")
        page.open(f"{server.url}/assets/trained_model")
        page.wait_text("osm_sequence", "mlflow_run")
        assert any(href.endswith(f"/runs/{model_run_id}") for href in page.links().values())
        page.shot("4-trained-model-sequence-1")


def test_osm_sequence_flows_to_model_and_embeddings_and_a_diff_does_not_retrain(tmp_path, request):
    extract = tmp_path / "kotka.osm.pbf"
    shutil.copy(KOTKA, extract)
    source = tmp_path / "replication"
    edited, first_diff, _ = _diff_of_edits(tmp_path)
    publish_diff(source, first_diff, datetime(2026, 11, 30, 12, tzinfo=UTC))
    osm = OsmSource(pbf_path=str(extract), replication_url=str(source), replication_start=0)
    data_dir = tmp_path / "data"
    defs = build_definitions(osm, ProjectStorage(data_dir=str(data_dir)))

    home = tmp_path / "dagster_home"
    with open_instance(home) as instance, Pipeline(defs, instance, log=lambda _: None) as pipeline:
        main = pipeline.run_stages({"main_job": main_job_config(epochs=1)})["main_job"]
        copy = osm.extract(data_dir)
        assert extract_state(copy).sequence == 1 and extract.read_bytes() == KOTKA.read_bytes()  # own copy

        model = main.output_for_node("trained_model")
        from mlflow import MlflowClient

        version = MlflowClient(model.tracking_uri).get_model_version(model.model_name, model.model_version)
        assert version.tags["osm_sequence"] == "1" and version.tags["mosaic_version"] == model.mosaic_version
        assert open_mosaic(model.mosaic_path).attrs["osm_sequence"] == 1
        rows = gpd.read_parquet(main.output_for_node("embeddings").path)
        assert set(rows["osm_sequence"]) == {1} and set(rows["mosaic_version"]) == {model.mosaic_version}

        # sequence 2: more buildings retagged, published later
        later = tmp_path / "later.osm.pbf"
        assert _retag_buildings(edited, later)
        second_diff = tmp_path / "later.osc.gz"
        write_change(edited, later, second_diff)
        publish_diff(source, second_diff, datetime(2026, 12, 1, 12, tzinfo=UTC))
        quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        pipeline.run_job("observe_osm_job")
        assert extract_state(copy).sequence == 2
        env = clean_env(
            DAGSTER_HOME=str(home),
            LOC2VEC_DATA_DIR=str(data_dir),
            LOC2VEC_PBF=str(extract),
            LOC2VEC_REPLICATION_URL=str(source),
            LOC2VEC_REPLICATION_START="0",
        )
        _check_the_ui(env, tmp_path / "webserver.log", request.node.name, model.run_id)
        wanted = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
        assert wanted.get_num_requested(dg.AssetKey("osm_features")) == 1
        assert wanted.get_num_requested(dg.AssetKey("trained_model")) == 0  # the retraining policy

        # what the automation runs downstream: import, render, the eager assets; not the model
        pipeline.run_job("ingest_job", asset_selection=["osm_features"])
        for block in defs.resolve_job_def("render_job").partitions_def.get_partition_keys():
            pipeline.run_job("render_job", block)
        refresh = ["raster_mosaic", "sample_locations", "embeddings", "similarity_index", "maps"]
        after = pipeline.run_job("main_job", asset_selection=refresh)
        mosaic = after.output_for_node("raster_mosaic")
        rows = gpd.read_parquet(after.output_for_node("embeddings").path)
        assert mosaic.version != model.mosaic_version and mosaic.osm_sequence == 2
        assert set(rows["osm_sequence"]) == {2} and set(rows["mosaic_version"]) == {mosaic.version}
        assert after.output_for_node("embeddings").model_version == model.model_version  # not retrained
        assert after.output_for_node("similarity_index").osm_sequence == 2

        # the policy's share rule: the sensor asks for a new model only past the configured share
        resources = {"osm": osm, "storage": ProjectStorage(data_dir=str(data_dir))}
        with pytest.MonkeyPatch.context() as env:
            env.setenv("LOC2VEC_RETRAIN_SHARE", "0.5")
            small = retrain_when_region_changed(dg.build_sensor_context(instance=instance, resources=resources))
            assert isinstance(small, dg.SkipReason) and "changed since sequence 1" in small.skip_message
            share = float(small.skip_message.split("%")[0]) / 100
            assert 0 < share < 0.5
            env.setenv("LOC2VEC_RETRAIN_SHARE", str(share / 2))
            retrain = retrain_when_region_changed(dg.build_sensor_context(instance=instance, resources=resources))
            assert isinstance(retrain, dg.RunRequest) and retrain.asset_selection == [dg.AssetKey("trained_model")]
