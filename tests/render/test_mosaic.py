"""Rasterization: georeferencing, channel separation, determinism, resume, partitions, bad config."""

from pathlib import Path

import numpy as np
import pytest
import shapely
import zarr

from loc2vec.errors import ConfigError
from loc2vec.geo import BBox
from loc2vec.grid import MosaicGrid, block_keys
from loc2vec.io import write_geoparquet
from loc2vec.osm.layers import build_feature_layers
from loc2vec.render.mosaic import MosaicSpec, render_mosaic
from loc2vec.schema import load_schema
from loc2vec.store.mosaic import inspect_mosaic, open_mosaic
from tests.conftest import MONACO

REGION = BBox(7.415, 43.728, 7.430, 43.738)  # central Monaco, ~1.2 x 1.1 km
SPEC = MosaicSpec(resolution=2.0, unit_chunks=1, blocks_per_side=2)  # 256-px units: several per block


@pytest.fixture(scope="module")
def features(tmp_path_factory):
    out = tmp_path_factory.mktemp("features")
    manifest, _ = build_feature_layers(MONACO, load_schema(), out, bbox=REGION)
    return manifest


def _render(features, root: Path, spec=SPEC, **kwargs):
    return render_mosaic(features, spec, root, **kwargs)


def test_mosaic_layout_and_attributes(features, tmp_path):
    manifest = _render(features, tmp_path)
    store = open_mosaic(manifest.path)
    grid = store.grid
    assert store.mosaic.shape == (12, grid.height, grid.width)
    assert store.mosaic.chunks == (12, 256, 256)
    attrs = store.attrs
    assert attrs["channel_names"] == load_schema().names
    assert attrs["crs"] == "EPSG:32632"
    assert attrs["transform"] == [grid.x0, 2.0, 0.0, grid.y0, 0.0, -2.0]
    assert attrs["osm_sha256"] == features.osm_sha256 and attrs["style_hash"] and attrs["code_version"]
    report = inspect_mosaic(store)
    assert report.complete and report.max_value == 255
    assert 0 < report.chunks_written <= report.chunks_total


def _rasterize_centres(grid: MosaicGrid, polygon) -> np.ndarray:
    rows, cols = np.mgrid[0 : grid.height, 0 : grid.width]
    x, y = grid.pixel_to_xy(cols + 0.5, rows + 0.5)
    return shapely.contains_xy(polygon, x, y)


def test_a_building_lands_on_its_pixels_within_one_pixel(features, tmp_path):
    frame = features.read()
    manifest = _render(features, tmp_path)
    store = open_mosaic(manifest.path)
    grid = store.grid
    buildings = frame[frame.channel == "buildings"].to_crs(grid.crs)
    # a large building: its interior (shrunk by 1 px) must be fully drawn, its surroundings not
    big = buildings.iloc[int(np.argmax(buildings.geometry.area.to_numpy()))].geometry
    channel = store.mosaic[4]
    inner = _rasterize_centres(grid, big.buffer(-1.0 * grid.resolution))
    assert inner.sum() > 50
    assert (channel[inner] == 255).all()
    others = shapely.union_all(buildings.geometry.to_numpy())
    ring = _rasterize_centres(grid, big.buffer(2.0 * grid.resolution).difference(others.buffer(1.5 * grid.resolution)))
    assert ring.sum() > 10
    assert (channel[ring] == 0).all()


def test_channel_separation_a_building_only_in_the_buildings_channel(features, tmp_path):
    frame = features.read()
    one = frame[(frame.channel == "buildings")].iloc[[10]]
    lone = tmp_path / "lone" / "features.parquet"
    write_geoparquet(one, lone)
    from dataclasses import replace

    manifest = _render(replace(features, path=str(lone), version="lone"), tmp_path / "m")
    data = open_mosaic(manifest.path).read()
    per_channel = data.reshape(12, -1).max(axis=1)
    assert per_channel[4] == 255
    assert (np.delete(per_channel, 4) == 0).all()


def test_two_renders_are_byte_identical(features, tmp_path):
    a = _render(features, tmp_path / "a")
    b = _render(features, tmp_path / "b")
    assert np.array_equal(open_mosaic(a.path).read(), open_mosaic(b.path).read())
    files_a = sorted(p.relative_to(a.path) for p in Path(a.path).rglob("c/*/*/*") if p.is_file())
    files_b = sorted(p.relative_to(b.path) for p in Path(b.path).rglob("c/*/*/*") if p.is_file())
    assert files_a == files_b and files_a
    for rel in files_a:
        assert (Path(a.path) / rel).read_bytes() == (Path(b.path) / rel).read_bytes()


def test_resume_after_a_crash_mid_partition(features, tmp_path):
    reference = open_mosaic(_render(features, tmp_path / "ref").path).read()
    block = block_keys(2)[0]
    calls = []

    def crash_after_first_unit(unit):
        calls.append(unit)
        raise KeyboardInterrupt("simulated crash")

    with pytest.raises(KeyboardInterrupt):
        _render(features, tmp_path / "run", block=block, on_unit=crash_after_first_unit)
    partial = open_mosaic(next((tmp_path / "run").glob("*.zarr")))
    assert partial.done_mask().sum() == 1  # one unit written and recorded, nothing else
    resumed = _render(features, tmp_path / "run", block=block)
    assert resumed.skipped_units == 1 and resumed.rendered_units >= 1
    for key in block_keys(2)[1:]:
        _render(features, tmp_path / "run", block=key)
    assert np.array_equal(open_mosaic(resumed.path).read(), reference)


def test_partitioned_render_equals_single_run(features, tmp_path):
    single = open_mosaic(_render(features, tmp_path / "single").path)
    for key in block_keys(2):
        manifest = _render(features, tmp_path / "blocks", block=key)
    blocks = open_mosaic(manifest.path)
    assert blocks.is_complete()
    assert np.array_equal(blocks.read(), single.read())
    again = _render(features, tmp_path / "blocks", block=block_keys(2)[0])
    assert again.rendered_units == 0  # re-run skips complete units


def test_bad_config_fails_clearly(features, tmp_path):
    with pytest.raises(ConfigError, match="resolution"):
        MosaicSpec(resolution=0)
    with pytest.raises(ConfigError, match="resolution"):
        MosaicSpec(resolution=-2.5)
    with pytest.raises(ConfigError, match="outside the features"):
        _render(features, tmp_path, spec=MosaicSpec(region=BBox(2.2, 48.8, 2.4, 48.9)))
    with pytest.raises(ConfigError, match="block"):
        _render(features, tmp_path, block="block-7-7")
    assert not any(tmp_path.glob("*.zarr/mosaic/c/*"))


def test_store_written_with_zarr_v3_and_empty_chunks_unwritten(features, tmp_path):
    manifest = _render(features, tmp_path)
    group = zarr.open_group(manifest.path, mode="r")
    assert group.metadata.zarr_format == 3
    report = inspect_mosaic(open_mosaic(manifest.path))
    assert report.chunks_written < report.chunks_total or report.chunks_total == 1
