"""What changed on the ground: affected objects and their footprint on the mosaic, from real edits."""

from __future__ import annotations

import gzip
import shutil
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import osmium
import pytest
import shapely

from loc2vec.errors import InputDataError
from loc2vec.geo import to_crs_transformer
from loc2vec.osm.changes import ForeignDiffError, change_footprint, scan_changes, snapshot_extract, style_margin_m
from loc2vec.osm.edits import edit_buildings
from loc2vec.osm.files import file_sha256, header_bounds
from loc2vec.osm.layers import build_feature_layers, refresh_feature_layers
from loc2vec.osm.replication import ReplicationState, fetch_diffs, publish_diff, update_extract, write_change
from loc2vec.render.mosaic import plan_grid
from loc2vec.schema import load_schema
from tests.conftest import KOTKA, MONACO
from tests.osm.test_replication import MINUTELY_2013, _diff_of_edits
from tests.render.incremental_case import SPEC, south_west_quarter


def _with_node_moved(src: Path, dst: Path, node: int, dlon: float = 1e-4) -> None:
    header = osmium.io.Header()
    header.add_box(osmium.io.Reader(str(src)).header().box())
    with osmium.SimpleWriter(str(dst), header=header, overwrite=True) as writer:
        for obj in osmium.FileProcessor(str(src)):
            if obj.is_node() and obj.id == node:
                obj = obj.replace(location=osmium.osm.Location(obj.location.lon + dlon, obj.location.lat))
            writer.add(obj)


def _ways_using(src: Path) -> dict[int, set[int]]:
    users: dict[int, set[int]] = {}
    for way in osmium.FileProcessor(str(src), osmium.osm.WAY):
        for ref in way.nodes:
            users.setdefault(ref.ref, set()).add(way.id)
    return users


def _projected_way(src: Path, way_id: int, grid) -> shapely.Geometry:
    for way in osmium.FileProcessor(str(src), osmium.osm.NODE | osmium.osm.WAY).with_locations():
        if way.is_way() and way.id == way_id:
            lon, lat = zip(*[(n.lon, n.lat) for n in way.nodes if n.location.valid()], strict=True)
            x, y = to_crs_transformer(grid.crs).transform(lon, lat)
            return shapely.linestrings(np.column_stack([x, y]))
    raise AssertionError(way_id)


def test_a_moved_node_reaches_every_way_that_uses_it(tmp_path: Path) -> None:
    users = _ways_using(KOTKA)
    node, ways = next((n, w) for n, w in sorted(users.items()) if len(w) >= 2)  # a junction
    edited, diff = tmp_path / "moved.osm.pbf", tmp_path / "moved.osc.gz"
    _with_node_moved(KOTKA, edited, node)
    assert write_change(KOTKA, edited, diff) == (0, 1, 0)

    changes = scan_changes(KOTKA, [diff])
    assert changes.nodes == {node} and changes.ways == ways and changes.relations == set()
    assert (changes.counts.modified, changes.counts.ways_with_moved_nodes) == (1, len(ways))

    features, _ = build_feature_layers(KOTKA, load_schema(), tmp_path / "features")
    grid = plan_grid(features, SPEC)
    footprint = change_footprint(KOTKA, [diff], grid, load_schema())
    for way in ways:  # old and new shapes of each way, buffered: the footprint covers them whole
        for extract in (KOTKA, edited):
            line = _projected_way(extract, way, grid).intersection(footprint.area.envelope)
            assert footprint.area.buffer(1e-3).covers(line)
    boxes = {u: shapely.box(*grid.window_bounds(grid.unit_window(*u))) for u in grid.units()}
    expected = {u for u, b in boxes.items() if b.intersects(footprint.area)}
    assert set(footprint.units) == expected and 0 < len(expected) < len(grid.units())


def test_created_modified_deleted_objects_are_counted_and_covered(tmp_path: Path) -> None:
    _, osc, edits = _diff_of_edits(tmp_path)  # real edits: retags, moved nodes, a deleted and a new building
    features, _ = build_feature_layers(KOTKA, load_schema(), tmp_path / "features")
    grid = plan_grid(features, SPEC)
    footprint = change_footprint(KOTKA, [osc], grid, load_schema())
    counts = footprint.counts
    assert (counts.created, counts.modified, counts.deleted) == (edits["created"], edits["modified"], edits["deleted"])
    x, y = to_crs_transformer(grid.crs).transform(*zip(*edits["square"], strict=True))
    assert footprint.area.covers(shapely.multipoints(np.column_stack([x, y])))  # the new building
    deleted = edit_buildings(KOTKA, tmp_path / "deleted", south_west_quarter(), 3, kinds=("delete_way",))
    gone = change_footprint(KOTKA, [deleted.diff], grid, load_schema())
    assert gone.counts.deleted == 3 and gone.changes.ways == set(deleted.buildings)
    for way in deleted.buildings:
        assert gone.area.covers(shapely.convex_hull(_projected_way(KOTKA, way, grid)))


def test_feature_layers_refreshed_from_the_change_equal_a_full_import(tmp_path: Path) -> None:
    schema = load_schema()
    before, _ = build_feature_layers(KOTKA, schema, tmp_path / "before")
    edits = edit_buildings(KOTKA, tmp_path / "edit", south_west_quarter(), 9)
    refreshed = refresh_feature_layers(before, scan_changes(KOTKA, [edits.diff]), edits.edited, tmp_path / "refreshed")
    full, _ = build_feature_layers(edits.edited, schema, tmp_path / "full")
    assert refreshed.version == full.version and refreshed.n_features == full.n_features
    assert refreshed.read().equals(full.read())
    # created objects too (a new building and new nodes)
    (tmp_path / "created").mkdir()
    edited, osc, _ = _diff_of_edits(tmp_path / "created")
    refreshed = refresh_feature_layers(before, scan_changes(KOTKA, [osc]), edited, tmp_path / "refreshed2")
    assert refreshed.read().equals(build_feature_layers(edited, schema, tmp_path / "full2")[0].read())


def test_a_multipolygon_whose_member_way_moves_is_affected_and_rebuilt(tmp_path: Path) -> None:
    relation, members = next(
        (r.id, [m.ref for m in r.members if m.type == "w"])
        for r in osmium.FileProcessor(str(MONACO), osmium.osm.RELATION)
        if r.tags.get("type") == "multipolygon" and "landuse" in r.tags
    )
    node = next(w.nodes[1].ref for w in osmium.FileProcessor(str(MONACO), osmium.osm.WAY) if w.id == members[0])
    edited, diff = tmp_path / "moved.osm.pbf", tmp_path / "moved.osc.gz"
    _with_node_moved(MONACO, edited, node, dlon=2e-4)
    with osmium.SimpleWriter(str(diff)) as writer:  # the OsmChange of that one edit (write_change reads all)
        for n in osmium.FileProcessor(str(edited), osmium.osm.NODE).with_filter(osmium.filter.IdFilter([node])):
            writer.add_node(n.replace(version=n.version + 1))
    changes = scan_changes(MONACO, [diff])
    assert relation in changes.relations and members[0] in changes.ways
    assert changes.counts.relations_with_changed_members >= 1
    assert set(members) - changes.ways <= changes.member_ways  # the other members: geometry only
    schema = load_schema()
    before, _ = build_feature_layers(MONACO, schema, tmp_path / "before")
    refreshed = refresh_feature_layers(before, changes, edited, tmp_path / "refreshed")
    full, _ = build_feature_layers(edited, schema, tmp_path / "full")
    assert refreshed.version == full.version
    assert refreshed.read().equals(full.read())


def test_a_corrupt_diff_fails_naming_it(tmp_path: Path) -> None:
    garbage = tmp_path / "broken.osc.gz"
    garbage.write_bytes(gzip.compress(b"<osmChange version='0.6'><modify><node id='1' lat='x'"))
    truncated = tmp_path / "truncated.osc.gz"
    truncated.write_bytes(MINUTELY_2013.read_bytes()[:5000])
    for bad in (garbage, truncated):
        with pytest.raises(InputDataError, match=bad.name):
            scan_changes(KOTKA, [bad])
    with pytest.raises(InputDataError, match="not an OsmChange"):
        scan_changes(KOTKA, [KOTKA])
    with pytest.raises(InputDataError, match="not found"):
        scan_changes(KOTKA, [tmp_path / "missing.osc.gz"])


def test_a_diff_for_another_region_is_refused(tmp_path: Path) -> None:
    features, _ = build_feature_layers(KOTKA, load_schema(), tmp_path / "features")
    with pytest.raises(ForeignDiffError, match="another region"):
        change_footprint(KOTKA, [MINUTELY_2013], plan_grid(features, SPEC), load_schema())


def test_the_margin_is_derived_from_the_styles() -> None:
    schema = load_schema()
    widest_line = max(max(c.width_m.values()) for c in schema.channels)
    widest_disc = max(c.point_radius_m for c in schema.channels)
    assert style_margin_m(schema, 3.0) == pytest.approx(max(widest_line / 2, widest_disc, 1.5) + 6.0)
    source = dict(schema.source)
    source["channels"] = [dict(c) for c in source["channels"]]
    source["channels"][0]["width_m"] = {"*": 400.0}
    from loc2vec.schema import parse_schema

    assert style_margin_m(parse_schema(source), 3.0) == pytest.approx(200.0 + 6.0)


def test_a_replication_update_gives_the_pre_change_extract_and_the_diffs_the_refresh_needs(tmp_path: Path) -> None:
    """The flow the pipeline runs: snapshot, update_extract from a replication directory, fetch the applied
    diffs, then footprint and feature refresh; the result equals importing the updated copy."""
    schema = load_schema()
    copy = tmp_path / "region" / "kotka.osm.pbf"
    copy.parent.mkdir()
    shutil.copyfile(KOTKA, copy)
    features, _ = build_feature_layers(copy, schema, tmp_path / "features")
    edits = edit_buildings(KOTKA, tmp_path / "edit", south_west_quarter(), 6)
    repl = tmp_path / "repl"
    publish_diff(repl, edits.diff, datetime(2024, 1, 2, tzinfo=UTC))
    before = snapshot_extract(copy, tmp_path / "region" / "kotka.before.osm.pbf")

    result = update_extract(
        copy, repl, header_bounds(KOTKA), start=ReplicationState(0, datetime(2024, 1, 1, tzinfo=UTC))
    )

    assert result is not None and file_sha256(before) == file_sha256(KOTKA) != file_sha256(copy)
    diffs = fetch_diffs(repl, result.previous.sequence + 1, result.current.sequence, tmp_path / "diffs")
    assert [p.name for p in diffs] == ["000000001.osc.gz"]
    grid = plan_grid(features, SPEC)
    footprint = change_footprint(before, diffs, grid, schema)
    refreshed = refresh_feature_layers(features, footprint.changes, copy, tmp_path / "features")
    full, _ = build_feature_layers(copy, schema, tmp_path / "full")
    assert refreshed.version == full.version and refreshed.osm_sequence == 1
    assert refreshed.read().equals(full.read())
