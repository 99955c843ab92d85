"""Fixtures of the evaluation tests."""

import pytest

from loc2vec.evaluation.protocol import build_points


@pytest.fixture(scope="session")
def monaco_points(monaco_mosaic, monaco_samples):
    """The protocol's points on central Monaco: (points, crop reader, crop size)."""
    features, _ = monaco_mosaic
    reader, samples = monaco_samples
    spec = samples.split_spec()
    points = build_points(samples.read(), features.read(), reader, spec.block_m, samples.leak_distance_m)
    return points, reader, spec.crop_px
