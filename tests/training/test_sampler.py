"""The chunk-aware anchor order: seeded, covering every anchor, local, and the same crops in training."""

from collections import OrderedDict

import numpy as np
import pytest
import torch

from loc2vec.data.chunked import ChunkedCropReader
from loc2vec.data.sampler import neighbourhood_order
from loc2vec.data.triplets import TripletBatches, TripletSpec
from loc2vec.errors import ConfigError
from loc2vec.training.config import TrainConfig
from loc2vec.training.device import select_device
from loc2vec.training.loop import train


def _anchors(n=3000, side=4000.0, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0, side, n), rng.uniform(0, side, n)


def test_order_is_seeded_and_epochs_continue_the_stream():
    cols, rows = _anchors()
    a = neighbourhood_order(cols, rows, 0, 5000, 512, 4, seed=3)
    assert np.array_equal(a, neighbourhood_order(cols, rows, 0, 5000, 512, 4, seed=3))
    assert not np.array_equal(a, neighbourhood_order(cols, rows, 0, 5000, 512, 4, seed=4))
    # epoch e of 1,000 draws is draws e * 1000 ... of the same stream
    epochs = [neighbourhood_order(cols, rows, e * 1000, 1000, 512, 4, seed=3) for e in range(5)]
    assert np.array_equal(np.concatenate(epochs), a)


def test_every_anchor_is_drawn_once_per_pass():
    cols, rows = _anchors()
    n = len(cols)
    stream = neighbourhood_order(cols, rows, 0, 3 * n, 512, 4, seed=0)
    for p in range(3):
        assert sorted(stream[p * n : (p + 1) * n].tolist()) == list(range(n))
    assert not np.array_equal(stream[:n], stream[n : 2 * n])  # each pass is drawn anew


def test_draws_mix_a_few_neighbourhoods_at_a_time():
    cols, rows = _anchors()
    cell = (rows // 512).astype(int) * 100 + (cols // 512).astype(int)
    order = neighbourhood_order(cols, rows, 0, len(cols), 512, 4, seed=0)
    runs = [set(cell[order[k : k + 100]].tolist()) for k in range(0, len(order), 100)]
    assert max(len(r) for r in runs) <= 8  # 100 draws (4 neighbourhoods hold ~190): two groups at most
    assert np.mean([len(r) for r in runs]) > 3  # ... and do mix them
    plain = neighbourhood_order(cols, rows, 0, len(cols), 512, 1, seed=0)  # mix 1: one neighbourhood after another
    assert int((np.diff(cell[plain]) != 0).sum()) + 1 == len(np.unique(cell))


def test_an_lru_of_few_chunks_serves_most_draws():
    """20,000 anchors over 16,000² px (3,900 chunks of 256 px, ~5 anchors each, so at most ~80 % hits): through
    an LRU of 64 chunks, the neighbourhood order (4 neighbourhoods of 2 x 2 chunks at a time) hits for most
    anchors, uniform draws for hardly any."""
    cols, rows = _anchors(n=20000, side=16000.0)
    order = neighbourhood_order(cols, rows, 0, 64 * 100, 512, 4, seed=0)
    uniform = np.random.default_rng(0).integers(0, len(cols), 64 * 100)

    def hit_rate(idx, capacity=64):
        lru, hits = OrderedDict(), 0
        for key in ((rows[idx] // 256) * 1000 + cols[idx] // 256).tolist():
            hits += key in lru
            lru[key] = None
            lru.move_to_end(key)
            if len(lru) > capacity:
                lru.popitem(last=False)
        return hits / len(idx)

    assert hit_rate(order) > 0.7 > 0.05 > hit_rate(uniform)


def test_bad_sampler_config_is_refused():
    with pytest.raises(ConfigError, match="sampler must be one of"):
        TripletSpec(sampler="grid")
    with pytest.raises(ConfigError, match="shuffle_neighbourhoods must be >= 1"):
        TripletSpec(sampler="neighbourhood", shuffle_neighbourhoods=0)
    with pytest.raises(ConfigError, match="no anchors"):
        neighbourhood_order(np.zeros(0), np.zeros(0), 0, 10, 512, 4, seed=0)
    with pytest.raises(ConfigError, match="neighbourhood_px"):
        TrainConfig(neighbourhood_px=0)


def test_neighbourhood_batches_are_reproducible_and_from_train_anchors(monaco_samples):
    reader, manifest = monaco_samples
    train_xy = manifest.xy("train")
    spec = TripletSpec(
        crop_px=64, batch_size=16, sampler="neighbourhood", neighbourhood_px=256, shuffle_neighbourhoods=2
    )
    first = TripletBatches(reader, train_xy, spec, seed=5, epoch=2, steps=6)
    again = TripletBatches(reader, train_xy, spec, seed=5, epoch=2, steps=6)
    for k in (0, 5):
        for x, y in zip(first.batch(k), again.batch(k), strict=True):
            assert np.array_equal(x, y)
    locations = np.concatenate([first.batch(k)[2] for k in range(6)])
    known = {tuple(p) for p in train_xy.astype(np.float32).tolist()}
    assert all(tuple(p) in known for p in locations.tolist())


def test_training_reads_the_same_crops_out_of_core(monaco_samples, monaco_mosaic, tmp_path):
    """One epoch with the neighbourhood sampler: in memory and through a small chunk cache, the same model."""
    reader, manifest = monaco_samples
    _, mosaic = monaco_mosaic
    chunked = ChunkedCropReader(mosaic.path, 16 * 12 * 256 * 256)
    config = TrainConfig(
        crop_px=64,
        batch_size=16,
        steps_per_epoch=4,
        val_triplets=16,
        r_neg_m=300.0,
        epochs=1,
        seed=2,
        sampler="neighbourhood",
        neighbourhood_px=256,
        shuffle_neighbourhoods=2,
    )
    device = select_device("cpu")
    args = (manifest.xy("train"), manifest.xy("val"), device)
    memory_run = train(config, reader, *args, tmp_path / "memory")
    chunked_run = train(config, chunked, *args, tmp_path / "chunked")
    assert memory_run.history[0].train_loss == chunked_run.history[0].train_loss
    for a, b in zip(memory_run.model.state_dict().values(), chunked_run.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
