"""Import on real extracts; counts checked against independent pyosmium filter pipelines."""

import osmium
import pytest
import shapely

from loc2vec.errors import ConfigError, InputDataError
from loc2vec.geo import BBox
from loc2vec.osm.files import header_bounds
from loc2vec.osm.importer import import_features
from loc2vec.osm.layers import build_feature_layers
from loc2vec.schema import load_schema
from tests.conftest import HELSINKI, KOTKA, MONACO


class _IndependentCounter(osmium.SimpleHandler):
    """Counts objects with one key by a separate path: SimpleHandler callbacks, WKT, shapely."""

    def __init__(self, wanted, kind, region):
        super().__init__()
        self.wanted, self.kind, self.region = wanted, kind, region
        self.wkt = osmium.geom.WKTFactory()
        self.count = 0

    def _take(self, obj, make):
        if not self.wanted(obj.tags):
            return
        try:
            geom = shapely.from_wkt(make(obj))
        except (osmium.InvalidLocationError, RuntimeError):
            return
        if geom.intersects(self.region):
            self.count += 1

    def node(self, n):
        if self.kind == "point":
            self._take(n, self.wkt.create_point)

    def way(self, w):
        if self.kind == "line" and w.tags.get("area") != "yes":
            self._take(w, self.wkt.create_linestring)

    def area(self, a):
        if self.kind == "area":
            self._take(a, self.wkt.create_multipolygon)


def _independent_count(path, wanted, kind):
    region = shapely.box(*header_bounds(path).as_tuple())
    counter = _IndependentCounter(wanted, kind, region)
    counter.apply_file(str(path), locations=True)
    return counter.count


@pytest.mark.parametrize("path", [MONACO, HELSINKI, KOTKA], ids=["monaco", "helsinki", "kotka"])
def test_counts_match_independent_pyosmium_filters(path):
    schema = load_schema()
    frame, stats = import_features(path, schema)
    per_channel = frame.groupby("channel").size()
    assert stats.features_per_channel["buildings"] == per_channel.get("buildings", 0)
    buildings = _independent_count(path, lambda t: t.get("building", "no") != "no", "area")
    assert per_channel.get("buildings", 0) == buildings
    rail = {"rail", "tram", "light_rail", "subway", "narrow_gauge", "funicular", "monorail", "preserved"}
    assert per_channel.get("railways", 0) == _independent_count(path, lambda t: t.get("railway") in rail, "line")
    not_poi = {"parking", "parking_space", "bicycle_parking", "motorcycle_parking", "bench", "waste_basket"}

    def is_poi(tags):
        amenity = tags.get("amenity")
        return (amenity is not None and amenity not in not_poi) or any(
            k in tags for k in ("shop", "tourism", "office", "craft")
        )

    poi_points = frame[(frame.channel == "amenities") & (frame.kind == "point")]
    assert len(poi_points) == _independent_count(path, is_poi, "point")
    assert len(poi_points) > 0 or path == KOTKA


def test_import_keeps_columns_types_and_clips_to_region():
    schema = load_schema()
    region = BBox(7.41, 43.725, 7.43, 43.74)
    frame, stats = import_features(MONACO, schema, bbox=region)
    assert list(frame.columns) == [
        "channel",
        "channel_index",
        "key",
        "value",
        "kind",
        "osm_type",
        "osm_id",
        "geometry",
    ]
    assert frame.crs.to_epsg() == 4326
    minx, miny, maxx, maxy = frame.total_bounds
    assert minx >= region.min_lon - 1e-9 and maxx <= region.max_lon + 1e-9
    assert miny >= region.min_lat - 1e-9 and maxy <= region.max_lat + 1e-9
    assert set(frame.kind) == {"point", "line", "area"}
    assert stats.bbox == region
    full, _ = import_features(MONACO, schema)
    assert len(frame) < len(full)


def test_bbox_cut_extract_skips_and_counts_incomplete_ways():
    _, stats = import_features(HELSINKI, load_schema())
    assert stats.skipped_missing_nodes > 0


def test_on_disk_node_index_gives_the_same_features(tmp_path):
    schema = load_schema()
    a, _ = import_features(KOTKA, schema, node_index="flex_mem")
    b, stats = import_features(KOTKA, schema, node_index=f"sparse_file_array,{tmp_path / 'n.idx'}")
    assert stats.node_index == "sparse_file_array"
    assert a.equals(b)


def test_osm_xml_and_bz2_are_read(tmp_path):
    import bz2

    schema = load_schema()
    xml = tmp_path / "kotka.osm"
    with osmium.SimpleWriter(str(xml)) as writer:
        for obj in osmium.FileProcessor(str(KOTKA)):
            writer.add(obj)
    compressed = tmp_path / "kotka.osm.bz2"
    compressed.write_bytes(bz2.compress(xml.read_bytes()))
    ref, _ = import_features(KOTKA, schema)
    for path in (xml, compressed):
        frame, _ = import_features(path, schema, bbox=header_bounds(KOTKA))
        assert frame.groupby("channel").size().equals(ref.groupby("channel").size())


# --- bad input: a clear error and nothing written -----------------------------------------------


def _assert_nothing_written(out):
    assert not out.exists() or not any(out.rglob("*"))


def test_missing_file(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match="not found"):
        build_feature_layers(tmp_path / "nope.osm.pbf", load_schema(), out)
    _assert_nothing_written(out)


def test_truncated_pbf(tmp_path):
    bad = tmp_path / "cut.osm.pbf"
    bad.write_bytes(MONACO.read_bytes()[:300_000])
    out = tmp_path / "out"
    with pytest.raises(InputDataError, match=r"cannot read OSM file.*cut\.osm\.pbf"):
        build_feature_layers(bad, load_schema(), out)
    _assert_nothing_written(out)


def test_corrupt_pbf(tmp_path):
    data = bytearray(KOTKA.read_bytes())
    data[200:4000] = b"\x00" * 3800
    bad = tmp_path / "corrupt.osm.pbf"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputDataError, match="cannot read OSM file"):
        build_feature_layers(bad, load_schema(), tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_xml_that_is_not_osm(tmp_path):
    bad = tmp_path / "page.osm"
    bad.write_text("<html><body>not OSM</body></html>")
    with pytest.raises(InputDataError, match="cannot read OSM file"):
        build_feature_layers(bad, load_schema(), tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_unsupported_suffix_and_empty_file(tmp_path):
    txt = tmp_path / "notes.txt"
    txt.write_text("hello")
    with pytest.raises(InputDataError, match="unsupported OSM file type"):
        import_features(txt, load_schema())
    empty = tmp_path / "empty.osm.pbf"
    empty.write_bytes(b"")
    with pytest.raises(InputDataError, match="empty"):
        import_features(empty, load_schema())


def test_region_outside_the_extract(tmp_path):
    with pytest.raises(InputDataError, match="outside the extract"):
        build_feature_layers(MONACO, load_schema(), tmp_path / "out", bbox=BBox(2.2, 48.8, 2.4, 48.9))
    _assert_nothing_written(tmp_path / "out")


def test_region_with_no_features(tmp_path):
    sea = BBox(7.480, 43.712, 7.489, 43.716)
    with pytest.raises(InputDataError, match="holds no features"):
        build_feature_layers(MONACO, load_schema(), tmp_path / "out", bbox=sea)
    _assert_nothing_written(tmp_path / "out")


def test_invalid_bbox_values():
    with pytest.raises(ConfigError, match="invalid bbox"):
        BBox(7.5, 43.7, 7.4, 43.8)
    with pytest.raises(ConfigError, match="four numbers"):
        BBox.parse("a,b,c,d")
