"""osm_source on a replication source, observed as the sensor's run does (in process, real diffs)."""

from __future__ import annotations

from datetime import UTC, datetime

import dagster as dg

from loc2vec.osm.replication import extract_state, ledger_path, publish_diff
from pipelines.definitions import build_definitions
from pipelines.runner import Pipeline, PipelineFailed
from pipelines.sensors import last_observed_version
from resources import OsmSource, ProjectStorage
from tests.conftest import KOTKA
from tests.osm.test_replication import _diff_of_edits


def test_a_bad_diff_fails_the_observation_naming_it_and_changes_nothing(tmp_path):
    source = tmp_path / "replication"
    _, diff, _ = _diff_of_edits(tmp_path)
    publish_diff(source, diff, datetime(2026, 11, 30, tzinfo=UTC))
    osm = OsmSource(pbf_path=str(KOTKA), replication_url=str(source), replication_start=0)
    data_dir = tmp_path / "data"
    defs = build_definitions(osm, ProjectStorage(data_dir=str(data_dir)))
    copy = osm.extract(data_dir)
    with dg.instance_for_test() as instance, Pipeline(defs, instance, log=lambda _: None) as pipeline:
        pipeline.run_job("observe_osm_job")
        assert extract_state(copy).sequence == 1 and len(ledger_path(copy).read_text().splitlines()) == 1
        first = last_observed_version(instance)
        assert first.startswith("seq 1 @ 2026-11-30T00:00:00Z sha256 ")

        publish_diff(source, diff, datetime(2026, 12, 1, tzinfo=UTC))  # sequence 2 ...
        (source / "000" / "000" / "002.osc.gz").write_bytes(b"\x1f\x8b garbage")  # ... arrives corrupt
        before = copy.read_bytes()
        try:
            pipeline.run_job("observe_osm_job")
        except PipelineFailed as exc:
            assert "002.osc.gz" in str(exc) or "sequence 2" in str(exc), exc
        else:
            raise AssertionError("a corrupt diff was applied")
        assert copy.read_bytes() == before and last_observed_version(instance) == first
        assert sorted(p.name for p in copy.parent.iterdir()) == sorted([copy.name, ledger_path(copy).name])
