"""Batch-norm statistics recomputed on a region's crops (AdaBN): the region's moments, no weight changed."""

import numpy as np
import pytest
import torch

from loc2vec.data.crops import CropReader
from loc2vec.errors import InputDataError
from loc2vec.evaluation.adapt import MIN_ADAPTATION_CROPS, adapt_batchnorm
from loc2vec.evaluation.embedders import crops_at, encode
from loc2vec.evaluation.protocol import grid_points
from loc2vec.models.encoders import build_encoder


@pytest.fixture(scope="module")
def region(monaco_mosaic):
    _, mosaic = monaco_mosaic
    reader = CropReader.from_store(mosaic.path)
    return reader, grid_points(reader, 150.0)[["x", "y"]].to_numpy()


def _trained_like(channels: int) -> torch.nn.Module:
    """An encoder whose running statistics are someone else's (as after training on other regions)."""
    torch.manual_seed(3)
    model = build_encoder("small_cnn", 8, channels)
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.running_mean.normal_(0.0, 0.5)
        bn.running_var.uniform_(0.5, 4.0)
    return model.eval()


def test_statistics_are_the_regions_and_weights_unchanged(region):
    reader, xy = region
    model = _trained_like(reader.channels)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    adapted = adapt_batchnorm(model, reader, xy[:200], 64, batch=256)  # one batch: the exact moments

    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the original is untouched
    stem_conv, stem_bn = adapted.backbone.features[0][0], adapted.backbone.features[0][1]
    with torch.no_grad():
        x = torch.from_numpy(crops_at(reader, xy[:200], 64)).permute(0, 3, 1, 2).float() / 255.0
        z = stem_conv(x)
    assert torch.allclose(stem_bn.running_mean, z.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(stem_bn.running_var, z.var(dim=(0, 2, 3), unbiased=True), rtol=1e-3, atol=1e-6)
    learnt = {k for k in before if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))}
    assert all(torch.equal(before[k], adapted.state_dict()[k]) for k in learnt)
    assert not adapted.training


def test_adapted_embeddings_are_reproducible_and_differ(region):
    reader, xy = region
    model = _trained_like(reader.channels)
    a = encode(adapt_batchnorm(model, reader, xy, 64, seed=0, batch=64), reader, xy[:50], 64)
    b = encode(adapt_batchnorm(model, reader, xy, 64, seed=0, batch=64), reader, xy[:50], 64)
    assert np.array_equal(a, b)
    assert not np.allclose(a, encode(model, reader, xy[:50], 64), atol=1e-3)


def test_too_few_places_is_a_clear_error(region):
    reader, xy = region
    with pytest.raises(InputDataError, match=f"at least {MIN_ADAPTATION_CROPS}"):
        adapt_batchnorm(_trained_like(reader.channels), reader, xy[:10], 64)
