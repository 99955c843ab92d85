"""Many regions in one model, in Dagster: region_samples splits each catalog region, multi_region_model trains
one registered model over the regions with a training split, and region_evaluation scores it on each region's
test blocks. The flow runs the UI's way (every partition and the model in its own ``dagster asset materialize``
process); bad choices fail in process with an error naming the fault, and register nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dagster as dg
import pytest

from loc2vec import tracking
from pipelines.definitions import build_definitions
from resources import ProjectStorage, RegionCatalog
from tests.conftest import HELSINKI, KOTKA
from tests.pipelines.test_region_partitions import _env, _materialize_in_processes, sensor_tick, write_catalog

SPLIT_64 = {"ops": {"region_samples": {"config": {"crop_px": 64}}}}
TINY = {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8, "val_triplets": 16}


class Rendered:
    """Two catalog regions imported and rendered in a persistent Dagster instance (``home``)."""

    def __init__(self, root: Path) -> None:
        self.home, self.data = root / "home", root / "data"
        self.home.mkdir()
        (self.home / "dagster.yaml").write_text("")
        self.catalog = write_catalog(root / "catalog.toml", {"kotka": (KOTKA, 1), "helsinki": (HELSINKI, None)})
        self.defs = build_definitions(
            storage=ProjectStorage(data_dir=str(self.data)), catalog=RegionCatalog(path=str(self.catalog))
        )

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.home))

    def run(self, asset: str, partition: str | None = None, config: dict | None = None, ok: bool = True):
        with self.instance() as instance:
            result = self.defs.resolve_implicit_global_asset_job_def().execute_in_process(
                instance=instance,
                asset_selection=[dg.AssetKey(asset)],
                partition_key=partition,
                run_config=config or {},
                raise_on_error=False,
            )
        assert result.success == ok, result.get_step_failure_events()
        return result

    def versions(self) -> list[str]:
        uri = f"sqlite:///{self.data / 'mlflow' / 'mlflow.db'}"
        if not (self.data / "mlflow" / "mlflow.db").exists():
            return []
        return [v.version for v in tracking.client(uri).search_model_versions()]


def failure(result) -> str:
    error = result.get_step_failure_events()[0].event_specific_data.error
    return (error.cause or error).message


def render(case: Rendered) -> Rendered:
    """Import and render the case's regions, every partition in process."""
    with case.instance() as instance:
        sensor_tick(instance, case.catalog)
        blocks = instance.get_dynamic_partitions("region_blocks")
    for region in ("kotka", "helsinki"):
        case.run("region_features", region)
    for block in blocks:
        case.run("region_raster_blocks", block)
    return case


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Rendered:
    return render(Rendered(tmp_path_factory.mktemp("multi-region")))


@pytest.mark.slow
def test_regions_split_train_one_model_and_score_each_region_in_their_own_processes(rendered: Rendered) -> None:
    env = _env(rendered.home, rendered.data, rendered.catalog)
    splits = _materialize_in_processes(env, "region_samples", ["kotka", "helsinki"], SPLIT_64)
    for key, proc in splits.items():
        assert proc.returncode == 0, f"{key}: {proc.stdout[-3000:]}"
    model = _materialize_in_processes(
        env, "multi_region_model", [None], {"ops": {"multi_region_model": {"config": TINY}}}
    )
    assert model[None].returncode == 0, model[None].stdout[-3000:]
    scored = _materialize_in_processes(env, "region_evaluation", ["kotka", "helsinki"])
    for key, proc in scored.items():
        assert proc.returncode == 0, f"{key}: {proc.stdout[-3000:]}"

    with rendered.instance() as instance:
        split_events = {
            r.partition_key: r.asset_materialization
            for r in instance.fetch_materializations(
                dg.AssetRecordsFilter(asset_key=dg.AssetKey("region_samples")), 10
            ).records
        }
        model_event = instance.fetch_materializations(dg.AssetKey("multi_region_model"), limit=1).records[0]
    assert {k: e.metadata["split"].value for k, e in split_events.items()} == {
        "kotka": "training",
        "helsinki": "training",
    }
    assert all(e.metadata["leakage_passed"].value for e in split_events.values())
    version = model_event.asset_materialization.metadata["model_version"].value

    # the registered version records both regions, each with the mosaic and split it was trained on
    uri = f"sqlite:///{rendered.data / 'mlflow' / 'mlflow.db'}"
    registered = tracking.client(uri).get_model_version("loc2vec-encoder", version)
    records = {r["name"]: r for r in json.loads(registered.tags["regions_json"])}
    assert sorted(records) == ["helsinki", "kotka"]
    for name, record in records.items():
        split = split_events[name].metadata["region_split"].value
        assert record["mosaic_version"] == split["mosaic_version"]
        assert record["samples_version"] == Path(split["samples"]["path"]).stem
        assert record["n_train"] > 0 and record["n_val"] > 0

    # each region scored with that version, beside the baselines, and logged onto its run under its own keys
    run = tracking.client(uri).get_run(registered.run_id)
    for name in ("kotka", "helsinki"):
        document = json.loads(next((rendered.data / "regions" / name / "evaluation").glob("*.json")).read_text())
        assert document["model_source"]["version"] == version
        assert document["region"]["name"] == name and document["region"]["split"] == "training"
        assert {"untrained", "channel_stats"} <= set(document["baselines"])
        assert 0.0 <= document["model"]["landuse_recall_at_10"] <= 1.0
        assert run.data.metrics[f"region/{name}/model/landuse_recall_at_10"] == pytest.approx(
            document["model"]["landuse_recall_at_10"]
        )


def test_a_region_too_small_to_train_on_is_split_for_evaluation_only_and_not_trained_on(rendered: Rendered) -> None:
    # at 128-px crops Helsinki's 1 × 1.7 km leave no training block after the leak buffer
    result = rendered.run("region_samples", "helsinki")
    event = result.asset_materializations_for_node("region_samples")[0]
    assert event.metadata["split"].value == "evaluation_only"
    rendered.run("region_samples", "kotka", SPLIT_64)
    before = rendered.versions()

    named = rendered.run(
        "multi_region_model",
        config={"ops": {"multi_region_model": {"config": {**TINY, "regions": ["kotka", "helsinki"]}}}},
        ok=False,
    )
    assert "helsinki have only the evaluation-only split: too small to train on" in failure(named)
    unknown = rendered.run(
        "multi_region_model",
        config={"ops": {"multi_region_model": {"config": {**TINY, "regions": ["atlantis"]}}}},
        ok=False,
    )
    assert "atlantis" in failure(unknown)
    weights = rendered.run(
        "multi_region_model",
        config={"ops": {"multi_region_model": {"config": {**TINY, "weights": {"helsinki": 2.0}}}}},
        ok=False,
    )
    assert "weights name regions not trained on: helsinki" in failure(weights)
    assert rendered.versions() == before  # a refused choice registers nothing

    # the default: every region with a training split (Kotka alone here)
    trained = rendered.run("multi_region_model", config={"ops": {"multi_region_model": {"config": TINY}}})
    metadata = trained.asset_materializations_for_node("multi_region_model")[0].metadata
    assert "| kotka |" in metadata["regions"].value and "helsinki" not in metadata["regions"].value

    # the small region is still scored with that model, on its evaluation-only split
    scored = rendered.run("region_evaluation", "helsinki")
    document = scored.output_for_node("region_evaluation")
    assert document["region"]["split"] == "evaluation_only"
    assert document["model_source"]["version"] == metadata["model_version"].value


def test_regions_split_for_different_crop_edges_are_refused(rendered: Rendered) -> None:
    rendered.run("region_samples", "kotka", {"ops": {"region_samples": {"config": {"crop_px": 48}}}})
    rendered.run("region_samples", "helsinki", SPLIT_64)
    before = rendered.versions()
    result = rendered.run("multi_region_model", config={"ops": {"multi_region_model": {"config": TINY}}}, ok=False)
    assert "split for different crop edges (kotka: 48 px, helsinki: 64 px)" in failure(result)
    assert rendered.versions() == before


def test_the_model_retrains_on_the_cron_after_a_region_split_changed_and_regions_are_rescored(tmp_path: Path) -> None:
    case = render(Rendered(tmp_path))  # its own instance: no model trained since the last real cron tick
    now = datetime.now(UTC)

    def requested(when: datetime, cursor):
        with case.instance() as instance:
            found = dg.evaluate_automation_conditions(
                defs=case.defs, instance=instance, cursor=cursor, evaluation_time=when
            )
        wanted = {
            name: found.get_requested_partitions(dg.AssetKey(name))
            for name in ("multi_region_model", "region_evaluation")
        }
        return wanted, found.cursor

    def soon() -> datetime:
        return datetime.now(UTC) + timedelta(seconds=1)

    _, cursor = requested(now - timedelta(days=8), None)  # a week before: the retraining cron ticks in between
    wanted, cursor = requested(soon(), cursor)
    assert wanted == {"multi_region_model": set(), "region_evaluation": set()}  # no split yet
    case.run("region_samples", "kotka", SPLIT_64)
    case.run("region_samples", "helsinki", SPLIT_64)
    wanted, cursor = requested(soon(), cursor)
    assert wanted == {"multi_region_model": {None}, "region_evaluation": set()}  # splits changed since the tick
    case.run("multi_region_model", config={"ops": {"multi_region_model": {"config": TINY}}})
    wanted, cursor = requested(soon(), cursor)
    assert wanted == {"multi_region_model": set(), "region_evaluation": {"kotka", "helsinki"}}  # the new model
    for region in ("kotka", "helsinki"):
        case.run("region_evaluation", region)
    wanted, cursor = requested(soon(), cursor)  # the daemon's next tick sees them done
    assert wanted == {"multi_region_model": set(), "region_evaluation": set()}
    case.run("region_samples", "kotka", SPLIT_64)
    wanted, _ = requested(soon(), cursor)
    # a region re-split: re-scored now, retrained at the next tick (one retraining per tick)
    assert wanted == {"multi_region_model": set(), "region_evaluation": {"kotka"}}
