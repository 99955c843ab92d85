"""Render inputs: the units a change touches, found by comparing what each unit draws, and a new mosaic
version started from the current one that the touched render partitions alone complete."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loc2vec.io import file_digests
from loc2vec.osm.layers import build_feature_layers
from loc2vec.render.incremental import start_version
from loc2vec.render.inputs import compute_render_inputs, render_inputs
from loc2vec.render.mosaic import plan_grid, render_mosaic
from loc2vec.render.styles import style_hash
from loc2vec.schema import load_schema
from loc2vec.store.mosaic import open_mosaic
from tests.render.incremental_case import SPEC, kotka_case

BLOCKS = 3  # 6 x 6 units: 2 x 2 units per block


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    c = kotka_case(tmp_path_factory.mktemp("inputs"))
    new_features, _ = build_feature_layers(c.edits.edited, load_schema(), c.root / "new" / "features")
    full = render_mosaic(new_features, SPEC, c.root / "full" / "mosaic")
    styles = style_hash(load_schema(), c.grid.resolution, f"epsg:{c.grid.crs_epsg}")
    return c, new_features, full, styles


def test_changed_inputs_are_the_units_whose_pixels_can_change(case) -> None:
    c, new_features, full, styles = case
    before = render_inputs(c.features, c.grid, styles)
    after = render_inputs(new_features, c.grid, styles)
    changed = after.changed_units(before.units)
    assert 0 < len(changed) < len(c.grid.units())
    assert set(changed) <= set(c.footprint.units)  # exact, within the diff's conservative footprint
    old, new = open_mosaic(c.mosaic.path), open_mosaic(full.path)
    for unit in set(c.grid.units()) - set(changed):  # an unchanged input renders the same pixels
        w = c.grid.unit_window(*unit)
        assert np.array_equal(
            old.mosaic[:, w.row0 : w.row1, w.col0 : w.col1], new.mosaic[:, w.row0 : w.row1, w.col0 : w.col1]
        )
    assert any(  # and the changed ones hold the edits
        not np.array_equal(
            old.mosaic[:, w.row0 : w.row1, w.col0 : w.col1], new.mosaic[:, w.row0 : w.row1, w.col0 : w.col1]
        )
        for w in (c.grid.unit_window(*u) for u in changed)
    )
    # a block's digest changes exactly when one of its units changed
    touched = set(c.grid.blocks_of_units(changed, BLOCKS))
    old_blocks, new_blocks = before.block_digests(BLOCKS), after.block_digests(BLOCKS)
    assert {b for b in new_blocks if new_blocks[b] != old_blocks[b]} == touched
    # read in batches: the same digests whatever the batch size
    assert compute_render_inputs(new_features, c.grid, styles, batch_rows=997) == after
    # cached beside the feature layers, and equal when read back
    assert render_inputs(new_features, c.grid, styles) == after
    assert list(Path(new_features.path).parent.glob("render_inputs-*.json"))
    assert open_mosaic(full.path).attrs["render_inputs"] == after.units


def test_a_version_started_from_the_current_one_is_completed_by_the_touched_blocks(case, tmp_path: Path) -> None:
    c, new_features, full, _ = case
    previous_bytes = file_digests(c.mosaic.path)
    start = start_version(new_features, SPEC, tmp_path / "mosaic", c.mosaic.path)
    assert start.created and start.shared_from == c.mosaic.path
    touched = c.grid.blocks_of_units(start.changed_units, BLOCKS)
    assert 0 < len(touched) < BLOCKS * BLOCKS
    spec = type(SPEC)(**{**SPEC.__dict__, "blocks_per_side": BLOCKS})
    rendered = sum(render_mosaic(new_features, spec, tmp_path / "mosaic", block=b).rendered_units for b in touched)
    assert rendered == len(start.changed_units)
    assert file_digests(start.path) == file_digests(full.path)  # every file, as a full render writes it
    assert file_digests(c.mosaic.path) == previous_bytes  # the current version untouched
    again = start_version(new_features, SPEC, tmp_path / "mosaic", c.mosaic.path)
    assert not again.created and again.path == start.path


def test_without_a_usable_current_version_the_new_one_starts_empty(case, tmp_path: Path) -> None:
    c, new_features, _, _ = case
    start = start_version(new_features, SPEC, tmp_path / "mosaic", None)
    assert start.shared_from is None and start.changed_units == c.grid.units() and not start.path.exists()
    other = type(SPEC)(**{**SPEC.__dict__, "resolution": 6.0})  # another grid: nothing to share
    start = start_version(new_features, other, tmp_path / "mosaic", c.mosaic.path)
    assert start.shared_from is None and len(start.changed_units) == len(plan_grid(new_features, other).units())
