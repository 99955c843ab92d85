"""The analysis benchmarks' helpers: the label's share of its disc, scores per band of it, weight-space blends, and
embeddings assembled from parts of two encoders."""

from __future__ import annotations

import geopandas as gpd
import numpy as np
import pytest
import shapely
import torch

from benchmarks.label_purity import BANDS, banded, banded_recall, label_purity
from benchmarks.weight_blend import blended
from loc2vec.models.encoders import build_encoder

CRS = "EPSG:32632"


def _areas() -> gpd.GeoDataFrame:
    """Forest west of x = 0, a meadow square far away, and a road (not a land-use area)."""
    return gpd.GeoDataFrame(
        {"kind": ["area", "area", "line"], "key": ["landuse", "landuse", "highway"],
         "value": ["forest", "meadow", "residential"]},
        geometry=[shapely.box(-500, -500, 0, 500), shapely.box(900, 900, 1000, 1000),
                  shapely.LineString([(-500, 0), (500, 0)])],
        crs=CRS,
    )  # fmt: skip


def test_label_purity_is_the_share_of_the_disc_its_class_covers():
    xy = np.array([[-200.0, 0.0], [0.0, 0.0], [25.0, 0.0], [950.0, 950.0], [300.0, 300.0]])
    labels = np.array(["landuse=forest"] * 3 + ["landuse=meadow", "none"], dtype=object)
    share = label_purity(_areas(), xy, labels, CRS, radius_m=50.0)
    assert share[0] == pytest.approx(1.0)  # inside the forest
    assert share[1] == pytest.approx(0.5, abs=0.01)  # on its edge
    assert 0.1 < share[2] < 0.4  # mostly outside
    assert share[3] == pytest.approx(1.0)
    assert np.isnan(share[4])  # unlabelled: no share


def test_banded_scores_every_band_and_then_all():
    purity = np.array([0.2, 0.4, 0.6, 0.95, 1.0])
    rows = banded(purity, lambda inside: inside.sum())
    assert [n for n, _ in rows] == [2, 1, 2, 5]
    assert len(rows) == len(BANDS) + 1
    assert np.isnan(banded(np.array([0.95]), lambda inside: 1.0)[0][1])  # an empty band scores NaN


def test_banded_recall_averages_classes_within_each_band():
    agreement = np.array([1.0, 0.0, 1.0, 1.0])
    labels = np.array(["a", "a", "b", "b"])
    purity = np.array([0.1, 0.2, 0.1, 0.95])
    low, _mid, high, everything = banded_recall(agreement, labels, purity)
    assert low == (3, pytest.approx((0.5 + 1.0) / 2))  # class a: 1 of 2; class b: 1 of 1
    assert high == (1, 1.0)
    assert everything == (4, pytest.approx((0.5 + 1.0) / 2))


def test_a_blend_is_the_initial_encoder_at_zero_the_trained_at_one_and_between_them_inside():
    torch.manual_seed(0)
    initial = build_encoder("small_cnn", 16, 12)
    torch.manual_seed(1)
    trained = build_encoder("small_cnn", 16, 12)
    trained.backbone.stem[1].running_mean.fill_(2.0)
    for alpha, expected in ((0.0, initial), (1.0, trained)):
        state = blended(trained, initial, alpha).state_dict()
        for key, value in expected.state_dict().items():
            assert torch.equal(state[key], value), key
    half = blended(trained, initial, 0.5).state_dict()
    assert torch.allclose(half["backbone.features.0.1.running_mean"], torch.full((32,), 1.0))
    weight = "backbone.features.0.0.weight"
    mean = (initial.state_dict()[weight] + trained.state_dict()[weight]) / 2
    assert torch.allclose(half[weight], mean)
    assert not blended(trained, initial, 0.5).training  # ready to embed


def test_a_parts_embedding_is_the_model_s_own_at_context_weight_1_and_weighs_the_context_down_below():
    from benchmarks.embedding_parts import PartsEmbedding

    torch.manual_seed(0)
    model = build_encoder("small_cnn", 8, 12).eval()
    untrained = build_encoder("small_cnn", 8, 12).eval()
    x = (torch.rand(3, 12, 64, 64) * 255).to(torch.uint8)
    with torch.no_grad():
        assert torch.equal(PartsEmbedding(model, untrained, "MMMM----").embed(x.clone()), model.embed(x.clone()))
        assert torch.equal(PartsEmbedding(model, untrained, "----UUUU").embed(x.clone()), untrained.embed(x.clone()))
        half = PartsEmbedding(model, untrained, "MMMM----", context_weight=0.5).embed(x.clone())
    context = model.context_dim
    assert torch.allclose(half[:, :context].norm(dim=1), torch.full((3,), 0.25))  # 0.5 / sqrt(4 parts)
    assert torch.allclose(half[:, context:].norm(dim=1), torch.full((3,), 0.75**0.5))  # three parts of 1 / sqrt(4)
    with pytest.raises(SystemExit, match="4 of M/- then 4 of U/-"):
        PartsEmbedding(model, untrained, "MMMU----")
