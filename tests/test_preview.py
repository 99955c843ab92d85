"""Pictures of the mosaic: sea told from empty land, labels never cut, max-pooled overviews."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFont

from benchmarks.maps_bench import strip_drawn_full_size
from loc2vec.preview import (
    LABEL_FONT_PX,
    LAND,
    PALETTE,
    WATER,
    _wrap,
    channel_panel,
    channel_strip,
    composite,
    overview,
    resized_composite,
)
from loc2vec.schema import load_schema
from loc2vec.store.mosaic import open_mosaic

NAMES = [c.name for c in load_schema().channels]


def _coast() -> np.ndarray:
    """40 x 40: land west of a coastline (column 20, water channel) cut into blocks by roads; sea east."""
    channels = np.zeros((12, 40, 40), np.uint8)
    channels[NAMES.index("water"), :, 20] = 255
    roads = NAMES.index("roads_minor")
    channels[roads, ::8, :20] = 255
    channels[roads, :, 0:20:8] = 255
    return channels


def test_composite_paints_sea_blue_and_leaves_empty_land_light():
    picture = composite(_coast(), NAMES).astype(int)
    assert (picture[10:30, 22:40] == WATER.astype(int)).all()  # open sea east of the coastline
    assert (picture[3, 3] == LAND.astype(int)).all()  # an empty block between roads is land
    assert (picture[3, 20] == WATER.astype(int)).all()
    # without channel names (no water channel known) nothing is guessed: empty is land everywhere
    assert (composite(_coast())[10:30, 22:40] == LAND.astype(np.uint8)).all()


def test_composite_draws_points_over_land_use():
    channels = np.zeros((12, 4, 4), np.uint8)
    channels[NAMES.index("landuse")] = 255
    channels[NAMES.index("amenities"), 1, 1] = 255
    picture = composite(channels, NAMES)
    assert tuple(picture[1, 1]) == tuple(PALETTE[NAMES.index("amenities")].astype(np.uint8))
    assert tuple(picture[0, 0]) == tuple(PALETTE[NAMES.index("landuse")].astype(np.uint8))


def test_panel_labels_are_whole_names_that_fit_their_tile():
    font = ImageFont.load_default(size=LABEL_FONT_PX)
    for name in [*NAMES, "a_very_long_channel_name_indeed"]:
        lines = _wrap(name, 64, font)
        assert "".join(lines) == name  # nothing cut
        assert all(font.getlength(line) <= 64 or "_" not in line for line in lines)
    crops = np.zeros((2, 12, 16, 16), np.uint8)
    panel = channel_panel(crops, NAMES, cell=48, columns=4)
    one_row = channel_panel(crops, NAMES, cell=48)
    assert panel.shape[1] < one_row.shape[1] and panel.shape[0] > one_row.shape[0]  # 4 columns: a grid
    # labels are drawn (dark text on the white panel) under every tile
    assert (panel.min(axis=2) < 80).sum() > 13 * 20


def test_overview_keeps_thin_lines(monaco_mosaic):
    _, mosaic = monaco_mosaic
    store = open_mosaic(mosaic.path)
    small = overview(store, 256)
    full = store.mosaic[:]
    railways = NAMES.index("railways")
    assert (small[railways] > 0).sum() > 0
    step = -(-max(full.shape[1:]) // 256)
    # max-pooled: every drawn pixel of the mosaic shows in its overview pixel
    rows, cols = np.nonzero(full[railways])
    assert (small[railways][rows // step, cols // step] > 0).all()


def test_strips_and_thumbnails_sampled_first_equal_the_resized_full_pictures(monaco_mosaic):
    _, mosaic = monaco_mosaic
    full = open_mosaic(mosaic.path).mosaic
    rng = np.random.default_rng(0)
    coast = np.pad(_coast(), ((0, 0), (0, 88), (0, 88)))  # open sea reaching the edge, 128 px
    crops = [coast] + [full[:, y : y + 128, x : x + 128] for y, x in rng.integers(0, 400, (6, 2))]
    assert any((composite(c, NAMES) == WATER.astype(np.uint8)).all(axis=-1).any() for c in crops)
    for crop in crops:
        for cell in (24, 48, 64, 96):
            assert np.array_equal(channel_strip(crop, NAMES, cell=cell), strip_drawn_full_size(crop, NAMES, cell))
            resized = Image.fromarray(composite(crop, NAMES)).resize((cell, cell), Image.NEAREST)
            assert np.array_equal(resized_composite(crop, NAMES, cell), np.asarray(resized))
    assert np.array_equal(channel_strip(coast, None, cell=48), strip_drawn_full_size(coast, None, 48))
