"""Following OSM through the pipeline: a region on a replication source, real diffs, one trained model.

The shared history (``followed``): the project's copy of the Kotka extract brought to sequence 1 and one
``main_job`` run on it, in process. Then:

- the lineage of the model version (MLflow tags), the mosaic and every embedding row names sequence 1;
  sequence 2 arrives and observing the source applies it; the Dagster UI (headless Chromium, screenshots in
  test-artifacts/) shows trained_model's lineage back to osm_source, the assets downstream of the source
  stale, the sequence on the source's observation and on the model's materialization with its MLflow link;
  the automation asks for a new import and not for a new model, and the share sensor retrains only past
  its threshold;
- the daemon end to end: `dagster dev` with ``osm_update_sensor`` switched on, a new sequence published:
  the sensor applies it, the automation refreshes everything downstream except the model (the retraining
  policy), and the new embeddings, cut by the same model from the new mosaic, carry the new sequence.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import geopandas as gpd
import pytest

from loc2vec.evaluation.incremental import delta_path
from loc2vec.evaluation.stage import EmbeddingsManifest
from loc2vec.grid import MosaicGrid
from loc2vec.osm.edits import edit_buildings
from loc2vec.osm.replication import extract_state, publish_diff
from loc2vec.store.mosaic import open_mosaic
from pipelines.definitions import build_definitions
from pipelines.runner import Pipeline, main_job_config, open_instance
from pipelines.sensors import retrain_when_region_changed
from resources import MapnikRenderer, OsmSource, ProjectStorage
from tests.conftest import KOTKA
from tests.osm.test_replication import _diff_of_edits
from tests.render.incremental_case import inside_block
from tests.server.browser import browser, needs_chromium
from tests.server.servers import clean_env, dagster_ui

pytestmark = [pytest.mark.slow, pytest.mark.server, needs_chromium]

STALE = """{ assetNodes { assetKey { path } staleStatus } }"""
START_SENSOR = """
mutation StartSensor($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { sensorState { status } }
    ... on PythonError { message }
  }
}"""
# what a new OSM sequence refreshes through the automation, each after what it follows; trained_model and
# evaluation follow the retraining policy instead
FOLLOWING = {
    "osm_features": None,
    "raster_blocks": "osm_features",
    "raster_mosaic": "raster_blocks",
    "sample_locations": "raster_mosaic",
    "embeddings": "sample_locations",
    "similarity_index": "embeddings",
    "maps": "embeddings",
}
UNIT_CHUNKS = 1  # render units of 256 px (768 m): Kotka is 3 x 3 units in the 2 x 2 render partitions
EDITED_BLOCK = "block-0-1"  # every published sequence edits buildings inside this render partition only
DAEMON_TIMEOUT = 600.0
TRAINING = {"epochs": 1, "steps_per_epoch": 4, "batch_size": 16}


@dataclass
class Followed:
    """The project state the tests share; ``latest``/``sequence``: the OSM content last published."""

    root: Path
    extract: Path
    source: Path
    data_dir: Path
    home: Path
    osm: OsmSource
    model: object  # the ModelManifest of the one training
    latest: Path
    sequence: int

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(
            DAGSTER_HOME=str(self.home),
            LOC2VEC_DATA_DIR=str(self.data_dir),
            LOC2VEC_PBF=str(self.extract),
            LOC2VEC_REPLICATION_URL=str(self.source),
            LOC2VEC_REPLICATION_START="0",
            LOC2VEC_UNIT_CHUNKS=str(UNIT_CHUNKS),
            **extra,
        )

    def grid(self) -> MosaicGrid:
        return open_mosaic(self.model.mosaic_path).grid

    def publish_edits(self, n: int) -> list[int]:
        """The next sequence: ``n`` real buildings of the latest content inside ``EDITED_BLOCK`` edited
        (moved, reshaped, retagged or deleted)."""
        edits = edit_buildings(
            self.latest, self.root / f"seq-{self.sequence + 1}", inside_block(self.grid(), EDITED_BLOCK, 2), n,
            seed=self.sequence,
        )  # fmt: skip
        when = datetime(2026, 11, 30, 12, tzinfo=UTC) + timedelta(days=self.sequence)
        self.sequence = publish_diff(self.source, edits.diff, when).sequence
        self.latest = edits.edited
        return edits.buildings


@pytest.fixture(scope="module")
def followed(tmp_path_factory) -> Followed:
    root = tmp_path_factory.mktemp("followed")
    extract = root / "kotka.osm.pbf"
    shutil.copy(KOTKA, extract)
    source = root / "replication"
    edited, first_diff, _ = _diff_of_edits(root)
    publish_diff(source, first_diff, datetime(2026, 11, 30, 12, tzinfo=UTC))
    osm = OsmSource(pbf_path=str(extract), replication_url=str(source), replication_start=0)
    data_dir, home = root / "data", root / "dagster_home"
    defs = build_definitions(osm, ProjectStorage(data_dir=str(data_dir)), MapnikRenderer(unit_chunks=UNIT_CHUNKS))
    config = main_job_config(epochs=1)
    config.ops["trained_model"] = config.ops["trained_model"].model_copy(update=TRAINING)
    with open_instance(home) as instance, Pipeline(defs, instance, log=lambda _: None) as pipeline:
        main = pipeline.run_stages({"main_job": config})["main_job"]
    model = main.output_for_node("trained_model")
    return Followed(root, extract, source, data_dir, home, osm, model, edited, 1)


def _check_the_ui(followed: Followed, test_name: str) -> None:
    """After sequence 2 was observed: lineage, staleness and the sequences as the UI shows them."""
    with (
        dagster_ui(followed.env(), followed.root / "webserver.log", daemon=False) as server,
        browser(test_name) as page,
    ):
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
        assert any(href.endswith(f"/runs/{followed.model.run_id}") for href in page.links().values())
        page.shot("4-trained-model-sequence-1")


def test_osm_sequence_flows_to_model_and_embeddings_and_a_diff_does_not_retrain(followed, request):
    model, copy = followed.model, followed.osm.extract(followed.data_dir)
    assert extract_state(copy).sequence == 1 and followed.extract.read_bytes() == KOTKA.read_bytes()  # own copy
    from mlflow import MlflowClient

    version = MlflowClient(model.tracking_uri).get_model_version(model.model_name, model.model_version)
    assert version.tags["osm_sequence"] == "1" and version.tags["mosaic_version"] == model.mosaic_version
    assert open_mosaic(model.mosaic_path).attrs["osm_sequence"] == 1
    with open_instance(followed.home) as instance:
        embeddings = instance.get_latest_materialization_event(dg.AssetKey("embeddings")).asset_materialization
    rows = gpd.read_parquet(embeddings.metadata["embeddings_file"].value)
    assert set(rows["osm_sequence"]) == {1} and set(rows["mosaic_version"]) == {model.mosaic_version}

    storage = ProjectStorage(data_dir=str(followed.data_dir))
    defs = build_definitions(followed.osm, storage, MapnikRenderer(unit_chunks=UNIT_CHUNKS))
    with open_instance(followed.home) as instance, Pipeline(defs, instance, log=lambda _: None) as pipeline:
        quiet = dg.evaluate_automation_conditions(defs=defs, instance=instance)
        followed.publish_edits(5)  # sequence 2, published 2026-12-01T12:00
        pipeline.run_job("observe_osm_job")
        assert extract_state(copy).sequence == 2
        _check_the_ui(followed, request.node.name)
        wanted = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=quiet.cursor)
        assert wanted.get_num_requested(dg.AssetKey("osm_features")) == 1
        assert wanted.get_num_requested(dg.AssetKey("trained_model")) == 0  # the retraining policy
        # the embeddings wait for the new mosaic, the evaluation for a new model
        assert wanted.get_num_requested(dg.AssetKey("embeddings")) == 0
        assert wanted.get_num_requested(dg.AssetKey("evaluation")) == 0

        # the policy's share rule: the sensor asks for a new model only past the configured share
        resources = {"osm": followed.osm, "storage": ProjectStorage(data_dir=str(followed.data_dir))}
        with pytest.MonkeyPatch.context() as env:
            env.setenv("LOC2VEC_RETRAIN_SHARE", "0.5")
            small = retrain_when_region_changed(dg.build_sensor_context(instance=instance, resources=resources))
            assert isinstance(small, dg.SkipReason) and "changed since sequence 1" in small.skip_message
            share = float(small.skip_message.split("%")[0]) / 100
            assert 0 < share < 0.5
            env.setenv("LOC2VEC_RETRAIN_SHARE", str(share / 2))
            retrain = retrain_when_region_changed(dg.build_sensor_context(instance=instance, resources=resources))
            assert isinstance(retrain, dg.RunRequest) and retrain.asset_selection == [dg.AssetKey("trained_model")]


def _materializations(instance: dg.DagsterInstance, asset: str, after: float) -> list[dg.EventLogRecord]:
    records = instance.fetch_materializations(dg.AssetKey(asset), limit=50).records
    return [r for r in records if r.timestamp > after]


def _running(instance: dg.DagsterInstance) -> bool:
    statuses = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]
    return bool(instance.get_runs(dg.RunsFilter(statuses=statuses)))


def _start_sensor(server, name: str) -> None:
    selector = {"repositoryLocationName": server.location, "repositoryName": "__repository__", "sensorName": name}
    started = server.graphql(START_SENSOR, {"selector": selector})["startSensor"]
    assert started["__typename"] == "Sensor" and started["sensorState"]["status"] == "RUNNING", started


def test_the_daemon_applies_a_new_sequence_and_refreshes_downstream_without_retraining(followed):
    """`make ui` with the switch on: publish N+1, edits of buildings inside one render block → the sensor
    applies it → the automation refreshes the assets downstream, each once and after what it follows: the
    touched block's render partition only, the embeddings re-embedded in that block only and the index
    updated in place; the model and its evaluation stay; the embeddings carry N+1. Every process is
    stopped by its group."""
    with open_instance(followed.home) as instance:
        before = {a: len(_materializations(instance, a, 0.0)) for a in ("trained_model", "evaluation")}
    published_at = time.time()
    followed.publish_edits(3)
    sequence = followed.sequence
    env = followed.env(LOC2VEC_OSM_CHECK_SECONDS="30", LOC2VEC_AUTOMATION_SECONDS="2")

    with dagster_ui(env, followed.root / "dagster_dev.log") as server:
        _start_sensor(server, "osm_update_sensor")  # the README's one switch
        deadline = time.monotonic() + DAEMON_TIMEOUT
        with open_instance(followed.home) as instance:
            while True:
                refreshed = {a: _materializations(instance, a, published_at) for a in FOLLOWING}
                if all(refreshed.values()):
                    latest = refreshed["embeddings"][0].asset_materialization.metadata
                    if latest["osm_sequence"].value == str(sequence) and refreshed["maps"] and not _running(instance):
                        break
                if time.monotonic() > deadline:
                    done = {a: len(r) for a, r in refreshed.items()}
                    pytest.fail(f"not refreshed within {DAEMON_TIMEOUT:.0f} s: {done}\n{server.log_tail()}")
                time.sleep(3)
            observe = instance.get_runs(dg.RunsFilter(tags={"dagster/run_key": f"osm-sequence-{sequence}"}))
            after = {a: len(_materializations(instance, a, 0.0)) for a in before}
            runs = {r.run_id: r for r in instance.get_runs(dg.RunsFilter(updated_after=datetime.fromtimestamp(
                published_at, UTC)))}  # fmt: skip

    assert len(observe) == 1 and observe[0].job_name == "observe_osm_job"  # the sensor's one run for N+1
    assert extract_state(followed.osm.extract(followed.data_dir)).sequence == sequence
    assert after == before  # a diff retrains nothing and does not re-score the model (the policy)
    assert all(r.status == dg.DagsterRunStatus.SUCCESS for r in runs.values()), {
        r.job_name: r.status for r in runs.values()
    }
    automation = {r.run_id for r in runs.values() if r.tags.get("dagster/sensor_name") == "osm_follow_automation"}
    for asset, follows in FOLLOWING.items():
        records = refreshed[asset]
        assert {r.run_id for r in records} <= automation, f"{asset} refreshed outside the automation"
        if asset != "raster_blocks":
            assert len(records) == 1, f"{asset} refreshed {len(records)} times"  # once, not once per input
        if follows:  # after the refresh of what it follows
            assert min(r.storage_id for r in records) > max(r.storage_id for r in refreshed[follows]), asset
    # the runs of exactly the affected render partition: the other blocks stay fresh and are not re-rendered
    assert [r.partition_key for r in refreshed["raster_blocks"]] == [EDITED_BLOCK]
    block = refreshed["raster_blocks"][0].asset_materialization.metadata
    assert 0 < block["rendered_units"].value <= 2 and block["shared_from"].value  # of the 9 units

    embeddings = refreshed["embeddings"][0].asset_materialization.metadata
    rows = gpd.read_parquet(embeddings["embeddings_file"].value)
    mosaic = refreshed["raster_mosaic"][0].asset_materialization.metadata
    assert mosaic["osm_sequence"].value == str(sequence)
    assert set(rows["osm_sequence"]) == {sequence}
    assert set(rows["mosaic_version"]) == {mosaic["mosaic_version"].value} != {followed.model.mosaic_version}
    assert embeddings["model_version"].value == followed.model.model_version  # the same model embeds N+1
    # re-embedded near the edited block only (a crop's reach around it), the index updated in place
    assert embeddings["refreshed_from"].value and 0 < embeddings["points_embedded"].value < len(rows) / 3
    delta = json.loads(delta_path(EmbeddingsManifest(embeddings["embeddings_file"].value, "", 0, {})).read_text())
    grid = followed.grid()
    windows = [grid.window_bounds(grid.unit_window(*u)) for u in grid.units_of_block(EDITED_BLOCK, 2)]
    reach = 2 * 128 * grid.resolution  # a crop's width and the busy window around a changed pixel
    moved = rows[rows["point_id"].isin(delta["updated"])]
    assert len(moved) == len(delta["updated"]) > 0
    assert moved["x"].between(min(w[0] for w in windows) - reach, max(w[2] for w in windows) + reach).all()
    assert moved["y"].between(min(w[1] for w in windows) - reach, max(w[3] for w in windows) + reach).all()
    index = refreshed["similarity_index"][0].asset_materialization.metadata
    assert index["update"].value.startswith("updated in place"), index["update"].value
