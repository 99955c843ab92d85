import json

import pytest

from loc2vec.errors import ConfigError
from loc2vec.schema import load_schema, parse_schema


def test_default_schema_has_twelve_named_channels():
    schema = load_schema()
    assert len(schema.channels) == 12
    assert schema.names[:5] == ["roads_major", "roads_minor", "paths", "railways", "buildings"]
    assert "building" in schema.keys_for("area") and "building" not in schema.keys_for("line")


def test_classify_sends_a_feature_to_every_matching_channel():
    schema = load_schema()
    hits = schema.classify({"building": "yes", "amenity": "school"}, "area")
    assert [schema.names[h[0]] for h in hits] == ["buildings", "landuse", "amenities"]
    assert schema.classify({"building": "no"}, "area") == []
    assert schema.classify({"highway": "primary"}, "area") == []


def _default_raw():
    return json.loads(load_schema().to_json())


def test_unknown_channel_field_is_refused():
    raw = _default_raw()
    raw["channels"][3]["colour"] = "red"
    with pytest.raises(ConfigError, match=r"unknown channel-schema entry \['colour'\].*railways"):
        parse_schema(raw)


def test_unknown_geometry_kind_is_refused():
    raw = _default_raw()
    raw["channels"][0]["rules"][0]["geometry"] = ["polyline"]
    with pytest.raises(ConfigError, match="unknown geometry kind"):
        parse_schema(raw)


def test_schema_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "s.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_schema(bad)
    with pytest.raises(ConfigError, match="not found"):
        load_schema(tmp_path / "missing.json")


def test_digest_changes_with_content():
    raw = _default_raw()
    a = parse_schema(raw).digest()
    raw["channels"][0]["width_m"]["motorway"] = 30
    assert parse_schema(raw).digest() != a
