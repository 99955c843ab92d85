"""Copy-on-write mosaic refresh: only the touched units are rendered, the result equals a full render."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loc2vec.errors import InputDataError
from loc2vec.grid import block_keys
from loc2vec.io import file_digests
from loc2vec.osm.changes import change_footprint
from loc2vec.osm.layers import build_feature_layers, refresh_feature_layers
from loc2vec.render.incremental import refresh_mosaic
from loc2vec.render.mosaic import MosaicManifest, render_mosaic
from loc2vec.schema import load_schema
from loc2vec.store.mosaic import open_mosaic
from loc2vec.store.retention import prune_versions
from tests.conftest import KOTKA, ROOT
from tests.render.incremental_case import SPEC, kotka_case


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    c = kotka_case(tmp_path_factory.mktemp("incremental"))
    features = refresh_feature_layers(c.features, c.footprint.changes, c.edits.edited, c.root / "features")
    full_features, _ = build_feature_layers(c.edits.edited, load_schema(), c.root / "full" / "features")
    full = render_mosaic(full_features, SPEC, c.root / "full" / "mosaic")
    return c, features, full


def _previous_in(tmp_path: Path, mosaic: MosaicManifest) -> MosaicManifest:
    """A private copy of the previous version under ``tmp_path/mosaic``."""
    target = tmp_path / "mosaic" / Path(mosaic.path).name
    shutil.copytree(mosaic.path, target)
    return MosaicManifest(**{**mosaic.to_dict(), "path": str(target)})


def test_only_touched_units_are_rendered_and_the_result_equals_a_full_render(case, tmp_path: Path) -> None:
    c, features, full = case
    previous = _previous_in(tmp_path, c.mosaic)
    before = file_digests(previous.path)
    units = c.footprint.units
    assert 0 < len(units) < len(c.grid.units())

    refresh = refresh_mosaic(previous, features, SPEC, units, tmp_path / "mosaic")

    assert not refresh.full_render and refresh.rendered_units == sorted(units)
    assert refresh.manifest.rendered_units == len(units)
    assert refresh.shared_units == len(c.grid.units()) - len(units)
    assert refresh.manifest.version == full.version != c.mosaic.version
    # every chunk and metadata file, byte for byte
    assert file_digests(refresh.manifest.path) == file_digests(full.path)
    assert file_digests(previous.path) == before  # the previous version is untouched and readable
    assert open_mosaic(previous.path).is_complete()
    # the changed pixels lie in the rendered units, and they really differ
    old, new = open_mosaic(previous.path), open_mosaic(refresh.manifest.path)
    assert refresh.changed
    for w in refresh.changed:
        assert any(c.grid.unit_window(*u).row0 <= w.row0 < c.grid.unit_window(*u).row1 for u in units)
        a = old.mosaic[:, w.row0 : w.row1, w.col0 : w.col1]
        b = new.mosaic[:, w.row0 : w.row1, w.col0 : w.col1]
        assert (a != b).any()
    # shared chunks are hard links, not copies
    chunk = next(p for p in Path(previous.path, "mosaic").rglob("*") if p.is_file() and p.parent.name != "mosaic")
    twin = Path(refresh.manifest.path, chunk.relative_to(previous.path))
    assert twin.stat().st_ino == chunk.stat().st_ino or twin.read_bytes() == chunk.read_bytes()
    # idempotent: asked again, the version in place is returned
    again = refresh_mosaic(previous, features, SPEC, units, tmp_path / "mosaic")
    assert again.manifest.path == refresh.manifest.path and again.changed == refresh.changed


def test_pruning_the_previous_version_leaves_the_new_one_whole(case, tmp_path: Path) -> None:
    c, features, full = case
    previous = _previous_in(tmp_path, c.mosaic)
    refresh = refresh_mosaic(previous, features, SPEC, c.footprint.units, tmp_path / "mosaic")
    removed = prune_versions(tmp_path, "mosaic", keep=1, protect=[refresh.manifest.path])
    assert [p.name for p in removed] == [Path(previous.path).name] and not Path(previous.path).exists()
    assert file_digests(refresh.manifest.path) == file_digests(full.path)


def test_a_diff_touching_every_unit_degrades_to_a_full_render(case, tmp_path: Path) -> None:
    c, features, full = case
    previous = _previous_in(tmp_path, c.mosaic)
    refresh = refresh_mosaic(previous, features, SPEC, c.grid.units(), tmp_path / "mosaic")
    assert refresh.full_render and refresh.shared_units == 0
    assert refresh.rendered_units == c.grid.units() and refresh.manifest.rendered_units == len(c.grid.units())
    assert file_digests(refresh.manifest.path) == file_digests(full.path)


def test_bad_input_leaves_the_current_version_intact(case, tmp_path: Path) -> None:
    c, _, _ = case
    previous = _previous_in(tmp_path, c.mosaic)
    before = file_digests(tmp_path)
    bad = tmp_path / "bad.osc.gz"
    bad.write_bytes(gzip.compress(b"<osmChange><create><way id='1'><nd ref=")[:-4])
    with pytest.raises(InputDataError, match=r"bad\.osc\.gz"):
        change_footprint(KOTKA, [bad], c.grid, load_schema())
    assert file_digests(tmp_path) == {**before, "bad.osc.gz": hashlib.sha256(bad.read_bytes()).hexdigest()}
    assert open_mosaic(previous.path).is_complete()


KILLED_REFRESH = """
import json, pathlib, sys, time
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.render.incremental import refresh_mosaic
from loc2vec.render.mosaic import MosaicManifest
from loc2vec.render.renderer import ChannelRenderer
from tests.render.incremental_case import SPEC

args = json.loads(sys.argv[1])
real, calls = ChannelRenderer.render, []

def render(self, window):
    calls.append(window)
    if len(calls) == 2:  # the first unit is written: wait here to be killed
        pathlib.Path(args["flag"]).write_text("rendering")
        time.sleep(120)
    return real(self, window)

ChannelRenderer.render = render
refresh_mosaic(
    MosaicManifest(**args["previous"]), FeaturesManifest(**args["features"]), SPEC,
    [tuple(u) for u in args["units"]], args["root"],
)
"""


def test_a_refresh_killed_by_sigkill_midway_completes_on_the_next_run(case, tmp_path: Path) -> None:
    c, features, full = case
    previous = _previous_in(tmp_path, c.mosaic)
    before = file_digests(previous.path)
    flag = tmp_path / "rendering"
    args = {
        "previous": previous.to_dict(),
        "features": features.to_dict(),
        "units": c.footprint.units,
        "root": str(tmp_path / "mosaic"),
        "flag": str(flag),
    }
    child = subprocess.Popen([sys.executable, "-c", KILLED_REFRESH, json.dumps(args)], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while not flag.exists() and child.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert flag.exists(), "the refresh never reached its second unit"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert child.returncode == -signal.SIGKILL
    assert file_digests(previous.path) == before

    refresh = refresh_mosaic(previous, features, SPEC, c.footprint.units, tmp_path / "mosaic")
    assert refresh.manifest.rendered_units == len(c.footprint.units) - 1
    assert file_digests(refresh.manifest.path) == file_digests(full.path)


@pytest.mark.parametrize("blocks_per_side", [1, 2, 3, 4])
def test_the_blocks_a_change_touches_are_those_holding_its_units(case, blocks_per_side: int) -> None:
    c, _, _ = case
    for key in block_keys(blocks_per_side):
        units = c.grid.units_of_block(key, blocks_per_side)
        assert c.grid.blocks_of_units(units, blocks_per_side) == ([key] if units else [])
    touched = c.grid.blocks_of_units(c.footprint.units, blocks_per_side)
    expected = [
        k
        for k in block_keys(blocks_per_side)
        if set(c.grid.units_of_block(k, blocks_per_side)) & set(c.footprint.units)
    ]
    assert touched == expected
