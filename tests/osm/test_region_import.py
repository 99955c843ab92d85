"""The region strategy (large files, small regions) gives exactly the stream strategy's features."""

import osmium
import pytest
from osmium.osm.mutable import Node, Relation, Way

from benchmarks.tiled_pbf import build_tiled_extracts
from loc2vec.geo import BBox
from loc2vec.osm.files import header_bounds, pbf_type_ranges, pbf_way_blocks_for, write_pbf_part
from loc2vec.osm.importer import import_features
from loc2vec.schema import load_schema
from tests.conftest import HELSINKI, KOTKA, MONACO


def _both(path, bbox):
    schema = load_schema()
    a, sa = import_features(path, schema, bbox=bbox, strategy="stream")
    b, sb = import_features(path, schema, bbox=bbox, strategy="region")
    assert sa.extra["strategy_region"] == 0.0 and sb.extra["strategy_region"] == 1.0
    return a, b


def _assert_same(a, b):
    assert len(a) == len(b) > 0
    a, b = a.reset_index(drop=True), b.reset_index(drop=True)
    assert a.drop(columns="geometry").equals(b.drop(columns="geometry"))
    assert list(a.geometry.to_wkb()) == list(b.geometry.to_wkb())


@pytest.mark.parametrize(
    ("path", "bbox"),
    [
        (MONACO, BBox(7.41, 43.725, 7.43, 43.74)),
        (MONACO, BBox(7.40, 43.70, 7.45, 43.745)),
        (HELSINKI, BBox(24.935, 60.164, 24.944, 60.1716)),
        (KOTKA, None),
    ],
    ids=["monaco-small", "monaco-half", "helsinki-cut-ways", "kotka-whole"],
)
def test_region_strategy_equals_stream_strategy(path, bbox):
    a, b = _both(path, bbox or header_bounds(path))
    _assert_same(a, b)


def _edge_case_file(path, sorted_header=True, reverse_nodes=False):
    """Around the region (0.4..0.6)²: features that touch it with no node inside it, and some that do not."""
    nodes = {
        1: (0.1, 0.5),
        2: (0.9, 0.5),  # 1-2: a road crossing the region, no node inside
        3: (0.1, 0.1),
        4: (0.9, 0.1),
        5: (0.9, 0.9),
        6: (0.1, 0.9),  # 3-4-5-6-3: a park around the region
        7: (0.45, 0.45),  # a shop inside
        8: (0.05, 0.05),
        9: (0.2, 0.05),  # 8-9: a path far away, one zone
        10: (0.3, 0.95),
        11: (0.7, 0.95),  # 10-11: a fence above the region, two zones, not touching it
        12: (0.0, 0.0),
        13: (1.0, 0.0),
        14: (1.0, 1.0),
        15: (0.0, 1.0),  # 12..15: an administrative boundary around everything, as a relation
        16: (0.3, 0.2),  # 16-17: a diagonal track from below-left to above-right, crossing the region
        17: (0.7, 0.8),
        18: (0.05, 0.95),  # a shop outside
    }
    ways = {
        101: ([1, 2], {"highway": "primary"}),
        102: ([3, 4, 5, 6, 3], {"leisure": "park"}),
        103: ([8, 9], {"highway": "footway"}),
        104: ([10, 11], {"barrier": "fence"}),
        105: ([12, 13, 14], {}),
        106: ([14, 15, 12], {}),
        107: ([16, 17], {"highway": "track"}),
    }
    header = osmium.io.Header()
    header.add_box(osmium.osm.Box(osmium.osm.Location(0, 0), osmium.osm.Location(1, 1)))
    if sorted_header:
        header.set("sorting", "Type_then_ID")
    with osmium.SimpleWriter(str(path), header=header) as w:
        for nid, (lon, lat) in sorted(nodes.items(), reverse=reverse_nodes):
            tags = {"shop": "bakery"} if nid in (7, 18) else {}
            w.add_node(Node(id=nid, location=(lon, lat), tags=tags))
        for wid, (refs, tags) in ways.items():
            w.add_way(Way(id=wid, nodes=refs, tags=tags))
        members = [("w", 105, "outer"), ("w", 106, "outer")]
        tags = {"type": "boundary", "boundary": "administrative", "admin_level": "8"}
        w.add_relation(Relation(id=201, members=members, tags=tags))
    return path


@pytest.mark.parametrize("sorted_header", [True, False], ids=["pbf-blocks", "whole-file"])
def test_region_strategy_keeps_crossing_and_enclosing_features(tmp_path, sorted_header):
    path = _edge_case_file(tmp_path / "edge.osm.pbf", sorted_header)
    a, b = _both(path, BBox(0.4, 0.4, 0.6, 0.6))
    _assert_same(a, b)
    found = set(zip(b.osm_type, b.osm_id, b.kind, strict=True))
    assert ("w", 101, "line") in found  # crosses, no node inside
    assert ("w", 107, "line") in found  # diagonal, nodes in opposite corners
    assert ("w", 102, "area") in found  # encloses the region
    assert ("r", 201, "area") in found  # encloses it, each member way outside in its own zones
    assert ("n", 7, "point") in found
    assert not {("w", 103, "line"), ("w", 104, "line"), ("n", 18, "point")} & found


def test_unsorted_file_falls_back_to_the_stream_strategy(tmp_path):
    path = _edge_case_file(tmp_path / "unsorted.osm.pbf", sorted_header=False, reverse_nodes=True)
    schema = load_schema()
    a, _ = import_features(path, schema, bbox=BBox(0.4, 0.4, 0.6, 0.6), strategy="stream")
    b, stats = import_features(path, schema, bbox=BBox(0.4, 0.4, 0.6, 0.6), strategy="region")
    assert stats.extra["strategy_region"] == 0.0
    _assert_same(a, b)


def test_region_of_one_tile_of_a_tiled_file_equals_the_original(tmp_path):
    infos = build_tiled_extracts(KOTKA, {4: tmp_path / "kotka_x4.osm.pbf"}, cols=2)
    tiled = infos[4]
    original, _ = import_features(KOTKA, load_schema(), strategy="stream")
    frame, stats = import_features(tiled.path, load_schema(), bbox=tiled.tile_region(0), strategy="region")
    assert stats.extra["nodes_indexed"] == 4 * stats.extra["nodes_in_region"]
    _assert_same(original, frame)


def test_pbf_blocks_by_type_and_by_way_id(tmp_path):
    ranges = pbf_type_ranges(MONACO)
    assert ranges is not None and set(ranges) == {"header", "node", "way", "relation"}
    nodes = write_pbf_part(MONACO, ranges, "node", str(tmp_path / "n.osm.pbf"))
    kinds = {o.type_str() for o in osmium.FileProcessor(nodes)}
    assert kinds == {"n"}
    ways = write_pbf_part(MONACO, ranges, "way relation", str(tmp_path / "w.osm.pbf"))
    count = sum(1 for _ in osmium.FileProcessor(ways, osmium.osm.WAY))
    assert count == sum(1 for _ in osmium.FileProcessor(str(MONACO), osmium.osm.WAY))
    some = [w.id for i, w in enumerate(osmium.FileProcessor(str(MONACO), osmium.osm.WAY)) if i % 997 == 0]
    assert pbf_way_blocks_for(MONACO, ranges["way"], some)
    assert pbf_type_ranges(HELSINKI) is None  # declares no sorting: read whole


def test_auto_strategy_stays_stream_for_small_files():
    _, stats = import_features(MONACO, load_schema(), bbox=BBox(7.41, 43.725, 7.43, 43.74))
    assert stats.extra["strategy_region"] == 0.0
    with pytest.raises(ValueError, match="unknown import strategy"):
        import_features(MONACO, load_schema(), strategy="fast")
