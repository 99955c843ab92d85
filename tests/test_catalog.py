"""The region catalog: parsing, defaults, checks against real extracts, blocks from size, partition keys,
every bad input (the error names the region and the fault; the other regions stay usable), and the CLI."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from loc2vec.errors import CatalogError, ConfigError, RegionError
from loc2vec.geo import BBox
from loc2vec.grid import MAX_BLOCKS_PER_SIDE, MosaicGrid
from loc2vec.regions import (
    DEFAULT_CATALOG,
    TARGET_UNITS_PER_BLOCK,
    blocks_per_side_for,
    build_region_features,
    check_features,
    load_catalog,
    parse_catalog,
    parse_partition_key,
    partition_key,
    region_partition_keys,
)
from tests.conftest import HELSINKI, KOTKA, MONACO, ROOT

NEUBRANDENBURG = ROOT / "data" / "osm" / "neubrandenburg_josm.osm.bz2"
KOTKA_CORNER = "26.9301,60.5201,26.9305,60.5203"  # inside the Kotka extract, no feature there


def write_catalog(directory: Path, *regions: str, name: str = "regions.toml") -> Path:
    path = directory / name
    path.write_text("\n".join(f"[[region]]\n{body.strip()}\n" for body in regions))
    return path


def region(name: str, extract: Path | str, bbox: str | None = None, extra: str = "") -> str:
    return f'name = "{name}"\nextract = "{extract}"\n' + (f'bbox = "{bbox}"\n' if bbox else "") + extra


# --- parsing ---------------------------------------------------------------------------------------


def test_parse_defaults_and_relative_paths(tmp_path):
    (tmp_path / "osm").mkdir()
    path = write_catalog(
        tmp_path,
        region("kotka", "osm/kotka.osm.pbf"),
        region(
            "helsinki",
            HELSINKI,
            extra='title = "Helsinki"\nbbox = [24.94, 60.165, 24.95, 60.175]\nweight = 2\n'
            "render = {resolution_m = 2.5, unit_chunks = 2}\n"
            'replication = {url = "diffs", start = 42}\n',
        ),
        region("remote", KOTKA, extra='replication = {url = "https://example.org/replication/minute"}\n'),
    )
    kotka, helsinki, remote = parse_catalog(path)
    assert kotka.extract == tmp_path / "osm" / "kotka.osm.pbf"  # against the catalog's directory
    assert (kotka.bbox, kotka.weight, kotka.replication, kotka.title) == (None, 1.0, None, "")
    assert (kotka.render.resolution_m, kotka.render.unit_chunks) == (3.0, 4)  # MapnikRenderer's defaults
    assert helsinki.extract == HELSINKI
    assert helsinki.bbox == BBox(24.94, 60.165, 24.95, 60.175)
    assert (helsinki.weight, helsinki.title) == (2.0, "Helsinki")
    assert (helsinki.render.resolution_m, helsinki.render.unit_chunks) == (2.5, 2)
    assert (helsinki.replication.url, helsinki.replication.start) == (str(tmp_path / "diffs"), 42)
    assert remote.replication.url == "https://example.org/replication/minute"
    assert remote.replication.start is None
    with pytest.raises(AttributeError):
        kotka.name = "other"  # frozen


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('name = "kotka"\nextract = "k.pbf"\nbogus = 1\n', "region 'kotka': unknown key(s) 'bogus'"),
        ('name = "kotka"\nextract = "k.pbf"\nrender = {dpi = 3}\n', "region 'kotka', render: unknown key(s) 'dpi'"),
        ('name = "kotka"\nextract = "k.pbf"\nbbox = "1,2,3"\n', "region 'kotka': bad 'bbox'"),
        ('name = "kotka"\nextract = "k.pbf"\nbbox = "5,60,4,61"\n', "region 'kotka': bad 'bbox'"),
        ('name = "kotka"\nextract = "k.pbf"\nweight = 0\n', "region 'kotka': 'weight' must be a positive number"),
        ('name = "kotka"\nextract = "k.pbf"\nrender = {unit_chunks = 1.5}\n', "'render.unit_chunks' must be"),
        ('name = "kotka"\nextract = "k.pbf"\nreplication = {start = 3}\n', "region 'kotka': 'replication' needs"),
        ('name = "kotka"\n', "region 'kotka': missing key 'extract'"),
        ('extract = "k.pbf"\n', "region #1: missing key 'name'"),
        ('name = "Kotka Karhula"\nextract = "k.pbf"\n', "name 'Kotka Karhula' is not a valid region name"),
        ('name = "a|b"\nextract = "k.pbf"\n', "name 'a|b' is not a valid region name"),
    ],
)
def test_bad_region_declaration_names_region_and_fault(tmp_path, body, message):
    path = write_catalog(tmp_path, body)
    with pytest.raises(CatalogError) as caught:
        parse_catalog(path)
    assert message in str(caught.value)
    assert str(path) in str(caught.value)


def test_bad_catalog_files(tmp_path):
    with pytest.raises(CatalogError, match="region catalog not found"):
        parse_catalog(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text('[[region]]\nname = "kotka\n')
    with pytest.raises(CatalogError, match="is not valid TOML"):
        parse_catalog(bad)
    bad.write_text('regions = []\n[[region]]\nname = "a"\nextract = "a.pbf"\n')
    with pytest.raises(CatalogError, match="unknown key\\(s\\) 'regions'"):
        parse_catalog(bad)
    bad.write_text("# nothing\n")
    with pytest.raises(CatalogError, match="declares no region"):
        parse_catalog(bad)


def test_a_name_declared_twice_is_a_fault_of_that_name_only(tmp_path):
    path = write_catalog(tmp_path, region("kotka", KOTKA), region("helsinki", HELSINKI), region("kotka", MONACO))
    catalog = load_catalog(path)
    assert [(f.region, f.kind) for f in catalog.check()] == [("kotka", "duplicate_name")] * 2
    with pytest.raises(RegionError, match=r"region 'kotka': the name is declared 2 times \(regions #1, #3\)"):
        catalog.region("kotka")
    assert catalog.region_keys() == ["helsinki"]
    assert catalog.partition_keys() == ["helsinki|block-0-0"]


# --- checks against the extracts --------------------------------------------------------------------


def test_catalog_of_real_extracts(tmp_path):
    catalog = load_catalog(write_catalog(tmp_path, region("kotka", KOTKA), region("helsinki", HELSINKI)))
    assert catalog.names() == ["kotka", "helsinki"]
    assert catalog.check() == []
    kotka = catalog.region("kotka")
    assert kotka.area == kotka.extent  # no bbox: the extract's bounds
    assert kotka.extent.as_tuple() == pytest.approx((26.93, 60.52, 26.97, 60.54))
    assert kotka.blocks_per_side == 1
    assert catalog.partition_keys() == ["kotka|block-0-0", "helsinki|block-0-0"]
    assert catalog.region_keys() == ["kotka", "helsinki"]


def _faulty_catalog(tmp_path: Path, name: str, extract: Path | str, bbox: str | None = None):
    """A catalog of a good region (Helsinki) and the faulty one, loaded."""
    catalog = load_catalog(write_catalog(tmp_path, region("helsinki", HELSINKI), region(name, extract, bbox)))
    assert [f.region for f in catalog.check()] == [name]
    good = catalog.region("helsinki")  # unaffected
    assert good.ok and good.partition_keys() == ["helsinki|block-0-0"]
    assert catalog.partition_keys() == ["helsinki|block-0-0"]
    with pytest.raises(RegionError) as caught:
        catalog.region(name)
    assert caught.value.region == name
    assert f"region {name!r}" in str(caught.value)
    return catalog.check()[0], caught.value


def test_missing_extract(tmp_path):
    fault, error = _faulty_catalog(tmp_path, "ghost", tmp_path / "ghost.osm.pbf")
    assert fault.kind == error.fault == "missing_extract"
    assert "extract not found" in str(error) and "ghost.osm.pbf" in str(error)


@pytest.mark.parametrize(
    ("name", "make"),
    [
        ("truncated-pbf", lambda p: p.write_bytes(KOTKA.read_bytes()[: KOTKA.stat().st_size // 2]) or p),
        ("not-osm", lambda p: p.write_bytes(b"<html>not found</html>\n" * 100) or p),
        ("empty", lambda p: p.write_bytes(b"") or p),
    ],
)
def test_corrupt_extract(tmp_path, name, make):
    path = tmp_path / f"{name}.osm.pbf"
    make(path)
    fault, error = _faulty_catalog(tmp_path, name, path)
    assert fault.kind == error.fault == "corrupt_extract"
    assert str(path) in str(error)


def test_truncated_bz2_extract(tmp_path):
    path = tmp_path / "cut.osm.bz2"
    path.write_bytes(NEUBRANDENBURG.read_bytes()[:200_000])
    fault, error = _faulty_catalog(tmp_path, "cut", path)
    assert fault.kind == "corrupt_extract" and "truncated" in str(error)


def test_bbox_outside_its_extract(tmp_path):
    fault, error = _faulty_catalog(tmp_path, "kotka", KOTKA, bbox="7.40,43.72,7.44,43.75")  # Monaco
    assert fault.kind == error.fault == "bbox_outside"
    assert "lies outside its extract kotka_karhula.osm.pbf" in str(error)


def test_bbox_partly_outside_its_extract(tmp_path):
    fault, error = _faulty_catalog(tmp_path, "kotka", KOTKA, bbox="26.95,60.53,26.99,60.55")
    assert fault.kind == "bbox_outside" and "partly outside" in str(error)


def test_overlapping_regions_are_faults_of_those_regions_only(tmp_path):
    path = write_catalog(
        tmp_path,
        region("monaco", MONACO),
        region("kotka", KOTKA),
        region("monaco-centre", MONACO, "7.405,43.722,7.445,43.752"),
    )
    catalog = load_catalog(path)
    assert [(f.region, f.kind) for f in catalog.check()] == [("monaco", "overlap"), ("monaco-centre", "overlap")]
    with pytest.raises(RegionError, match=r"region 'monaco': its area .* overlaps 'monaco-centre'"):
        catalog.region("monaco")
    with pytest.raises(RegionError, match=r"region 'monaco-centre': its area .* overlaps 'monaco'"):
        catalog.region("monaco-centre")
    assert catalog.region_keys() == ["kotka"]
    # a bbox overlapping another region's extract bounds also counts (a missing extract is the first fault)
    path = write_catalog(tmp_path, region("kotka", KOTKA), region("ghost", tmp_path / "x.pbf", "26.96,60.53,27.0,60.6"))
    faults = {f.region: f.kind for f in load_catalog(path).check()}
    assert faults == {"kotka": "overlap", "ghost": "missing_extract"}


def test_regions_of_one_extract_side_by_side(tmp_path):
    catalog = load_catalog(
        write_catalog(
            tmp_path,
            region("monaco-west", MONACO, "7.38,43.72,7.42,43.76"),
            region("monaco-east", MONACO, "7.42,43.72,7.46,43.76"),  # shares an edge only
        )
    )
    assert catalog.check() == []
    assert catalog.region("monaco-east").area == BBox(7.42, 43.72, 7.46, 43.76)


def test_region_with_no_features(tmp_path):
    catalog = load_catalog(write_catalog(tmp_path, region("empty", KOTKA, KOTKA_CORNER)))
    entry = catalog.region("empty")  # known only after import
    out = tmp_path / "features"
    from loc2vec.schema import load_schema

    with pytest.raises(RegionError) as caught:
        build_region_features(entry, load_schema(), out)
    assert caught.value.region == "empty" and caught.value.fault == "no_features"
    assert "region 'empty'" in str(caught.value) and "holds no features" in str(caught.value)
    assert not out.exists() or not any(out.rglob("*"))  # nothing half-written


def test_check_features_names_the_region():
    from loc2vec.osm.layers import FeaturesManifest

    manifest = FeaturesManifest(
        "f.parquet", "c.json", (26.93, 60.52, 26.97, 60.54), "k.pbf", "0" * 64, "s", "d", "v", 0, {"roads": 0}
    )
    with pytest.raises(RegionError, match="region 'kotka': no features of schema 's'"):
        check_features("kotka", manifest)


# --- blocks from size and partition keys ---------------------------------------------------------------


def _grid(rows: int, cols: int) -> MosaicGrid:
    return MosaicGrid(32632, 0.0, 0.0, 3.0, cols * 1024, rows * 1024)


@pytest.mark.parametrize(
    ("rows", "cols", "blocks"),
    [(1, 1, 1), (2, 2, 1), (3, 4, 2), (7, 7, 4), (9, 9, 5), (2, 9, 2), (1, 40, 1), (200, 200, 16)],
)
def test_blocks_per_side_from_size(rows, cols, blocks):
    grid = _grid(rows, cols)
    assert blocks_per_side_for(grid) == blocks
    if blocks < min(rows, cols, MAX_BLOCKS_PER_SIDE):
        assert grid.largest_block_units(blocks) <= TARGET_UNITS_PER_BLOCK
    assert blocks == 1 or grid.largest_block_units(blocks - 1) > TARGET_UNITS_PER_BLOCK
    parts = [grid.units_of_block(parse_partition_key(k)[1], blocks) for k in region_partition_keys("r", blocks)]
    assert all(parts)  # no block is empty
    assert sorted(u for part in parts for u in part) == grid.units()  # the blocks tile the region
    assert blocks_per_side_for(grid, target_units=1) >= blocks


def test_partition_keys_round_trip(tmp_path):
    assert partition_key("monaco", "block-0-1") == "monaco|block-0-1"
    assert parse_partition_key("monaco|block-0-1") == ("monaco", "block-0-1")
    for key in region_partition_keys("kotka-karhula", 3):
        assert partition_key(*parse_partition_key(key)) == key
    for bad in ("monaco", "monaco|block-0", "Monaco|block-0-0", "monaco|block-0-0|x", "|block-0-0"):
        with pytest.raises(CatalogError):
            parse_partition_key(bad)
    catalog = load_catalog(write_catalog(tmp_path, region("monaco", MONACO)))
    entry, block = catalog.parse_partition_key("monaco|block-1-1")
    assert (entry.name, block, entry.blocks_per_side) == ("monaco", "block-1-1", 2)
    with pytest.raises(RegionError, match="outside a 2x2 split"):
        catalog.parse_partition_key("monaco|block-2-0")
    with pytest.raises(CatalogError, match="no region 'kotka'"):
        catalog.parse_partition_key("kotka|block-0-0")


# --- the default catalog --------------------------------------------------------------------------------


def test_default_catalog_regions_validate_against_their_extracts():
    catalog = load_catalog(DEFAULT_CATALOG)
    assert catalog.check() == []
    assert catalog.names() == ["monaco", "helsinki-centre", "kotka-karhula", "neubrandenburg", "liechtenstein"]
    for entry in catalog:
        assert entry.region.extract.is_relative_to(ROOT / "data" / "osm")
        assert entry.area is not None and entry.grid is not None
    monaco = catalog.region("monaco")
    assert monaco.region.extract == MONACO  # the single-extract default
    assert monaco.blocks_per_side == 2  # as LOC2VEC_RENDER_BLOCKS' default
    neubrandenburg = catalog.region("neubrandenburg")
    width, height = neubrandenburg.size_km()
    assert 19 < width < 21 and 19 < height < 21
    assert neubrandenburg.blocks_per_side == 4
    assert catalog.region("liechtenstein").blocks_per_side == 5  # 5 x 9 units: no more blocks than the shorter side
    assert len(catalog.partition_keys()) == 4 + 1 + 1 + 16 + 25


@pytest.mark.slow
def test_bz2_region_imports(tmp_path):
    """The importer reads the .osm.bz2 extract of the catalog (a 2 x 1 km part of it)."""
    from loc2vec.regions import Region, check_region
    from loc2vec.schema import load_schema

    part = check_region(Region("nb-part", NEUBRANDENBURG, BBox(13.25, 53.55, 13.27, 53.56)))
    assert part.ok and part.blocks_per_side == 1
    manifest, stats = build_region_features(part, load_schema(), tmp_path)
    assert manifest.n_features == stats.total > 500


# --- the command line -----------------------------------------------------------------------------------


def _run_args(*argv: str):
    from pipelines.cli import parser

    return parser().parse_args(["run", "--out", "/nonexistent-out", *argv])


def test_run_region_takes_extract_and_settings_from_the_catalog(tmp_path):
    from pipelines.launch import region_run_settings

    args = _run_args("--region", "monaco")
    assert region_run_settings(args, environ={}) == {
        "LOC2VEC_RESOLUTION_M": "3.0",
        "LOC2VEC_UNIT_CHUNKS": "4",
        "LOC2VEC_RENDER_BLOCKS": "2",
    }
    assert (args.pbf, args.bbox, args.replication_url) == (str(MONACO), None, None)
    catalog = write_catalog(
        tmp_path,
        region(
            "kotka",
            KOTKA,
            "26.93,60.52,26.95,60.54",
            extra='render = {resolution_m = 2, unit_chunks = 2}\nreplication = {url = "diffs", start = 7}\n',
        ),
    )
    args = _run_args("--region", "kotka", "--catalog", str(catalog))
    settings = region_run_settings(args, environ={"LOC2VEC_RESOLUTION_M": "2"})  # the same value: fine
    assert settings["LOC2VEC_RESOLUTION_M"] == "2.0" and settings["LOC2VEC_UNIT_CHUNKS"] == "2"
    assert BBox.parse(args.bbox) == BBox(26.93, 60.52, 26.95, 60.54)
    assert (args.replication_url, args.replication_start) == (str(tmp_path / "diffs"), 7)
    with pytest.raises(ConfigError, match="unset LOC2VEC_RENDER_BLOCKS=3"):
        region_run_settings(_run_args("--region", "monaco"), environ={"LOC2VEC_RENDER_BLOCKS": "3"})
    plain = _run_args("--pbf", str(KOTKA))
    assert region_run_settings(plain, environ={}) == {} and plain.pbf == str(KOTKA)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--region", "monaco", "--pbf", str(KOTKA)], "--region monaco takes the extract"),
        (["--region", "monaco", "--bbox", "7.4,43.72,7.44,43.75"], "drop --bbox"),
        (["--region", "atlantis"], "no region 'atlantis'"),
        ([], "give --pbf FILE"),
        (["--pbf", str(KOTKA), "--catalog", "regions.toml"], "--catalog needs --region"),
    ],
)
def test_run_region_argument_errors(capsys, argv, message):
    from pipelines.cli import main

    assert main(["run", "--out", "/nonexistent-out", *argv]) == 1
    assert message in capsys.readouterr().err
    assert not Path("/nonexistent-out").exists()


def test_run_faulty_region_and_regions_listing(tmp_path, capsys):
    from pipelines.cli import main

    shutil.copy(KOTKA, tmp_path / "kotka.osm.pbf")
    catalog = write_catalog(tmp_path, region("kotka", "kotka.osm.pbf"), region("ghost", "ghost.osm.pbf"))
    assert main(["run", "--out", str(tmp_path / "out"), "--region", "ghost", "--catalog", str(catalog)]) == 1
    assert "region 'ghost': extract not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["regions", "--catalog", str(catalog)]) == 1
    out, err = capsys.readouterr()
    assert "kotka.osm.pbf" in out and "FAULT missing_extract" in out and "1x1=1" in out
    assert "region 'ghost': extract not found" in err
    assert main(["regions"]) == 0
    assert "neubrandenburg" in capsys.readouterr().out
