"""The crop reader: geometry of rotations, edges, CRS coordinates."""

import numpy as np
import pytest

from loc2vec.data.crops import CropReader
from loc2vec.errors import ConfigError
from loc2vec.grid import MosaicGrid


@pytest.fixture
def reader():
    rng = np.random.default_rng(0)
    mosaic = rng.integers(0, 256, size=(12, 300, 400), dtype=np.uint8)
    grid = MosaicGrid(32632, 1000.0, 5000.0, 2.0, 400, 300)
    return CropReader(mosaic, grid), mosaic


def test_unrotated_crop_is_the_window(reader):
    r, mosaic = reader
    crop = r.crop(*r.grid.pixel_to_xy(200, 150), size=64)
    assert crop.shape == (12, 64, 64)
    assert np.array_equal(crop, mosaic[:, 118:182, 168:232])


def test_quarter_turns_match_rot90(reader):
    r, mosaic = reader
    window = mosaic[:, 118:182, 168:232]
    batch, valid = r.crops_px([200.0] * 4, [150.0] * 4, 64, np.array([0, 0.5, 1.0, 1.5]) * np.pi)
    assert valid.tolist() == [1.0] * 4
    for k in range(4):
        expected = np.rot90(window, k=k, axes=(1, 2))
        assert np.array_equal(batch[k].transpose(2, 0, 1), expected)


def test_zero_padding_outside_and_valid_fraction(reader):
    r, mosaic = reader
    batch, valid = r.crops_px([0.0], [0.0], 64)
    assert valid[0] == pytest.approx(0.25)
    assert (batch[0, :32, :, :] == 0).all() and (batch[0, :, :32, :] == 0).all()
    assert np.array_equal(batch[0, 32:, 32:].transpose(2, 0, 1), mosaic[:, :32, :32])


@pytest.mark.filterwarnings("error::RuntimeWarning")  # no undefined float-to-int cast on the way
@pytest.mark.parametrize("angle", [None, 0.3])
def test_non_finite_and_far_centres_give_empty_crops(reader, angle):
    r, _ = reader
    cols = [np.nan, np.inf, -np.inf, 1e12, 200.0]
    rows = [150.0, 150.0, 150.0, np.nan, 150.0]
    batch, valid = r.crops_px(cols, rows, 16, None if angle is None else np.full(5, angle))
    assert valid.tolist() == [0.0] * 4 + [1.0]
    alone, _ = r.crops_px([200.0], [150.0], 16, None if angle is None else [angle])
    assert not batch[:4].any() and np.array_equal(batch[4], alone[0])


def test_edge_raise_refuses_crops_that_leave(reader):
    _, mosaic = reader
    strict = CropReader(mosaic, MosaicGrid(32632, 0.0, 0.0, 1.0, 400, 300), edge="raise")
    with pytest.raises(ConfigError, match="leaves the mosaic"):
        strict.crops_px([10.0], [10.0], 64)
    with pytest.raises(ConfigError, match="edge must be"):
        CropReader(mosaic, strict.grid, edge="wrap")
