"""Embedding and evaluation read the mosaic tile by tile through the chunk cache: the same numbers."""

import numpy as np
import torch

from loc2vec.data.chunked import ChunkedCropReader
from loc2vec.data.crops import CropReader
from loc2vec.evaluation.embedders import channel_stats, encode
from loc2vec.evaluation.protocol import grid_points
from loc2vec.models.encoders import build_encoder


def test_grid_embeddings_out_of_core_equal_in_memory(monaco_mosaic):
    _, mosaic = monaco_mosaic
    memory = CropReader.from_store(mosaic.path)
    chunked = ChunkedCropReader(mosaic.path, 6 * 12 * 256 * 256)  # far less than the mosaic
    grid = grid_points(memory, 150.0)
    assert grid.equals(grid_points(chunked, 150.0))
    xy = grid[["x", "y"]].to_numpy()[::-1].copy()  # not in row order: the reader's order must be undone
    assert np.array_equal(channel_stats(memory, xy, 64), channel_stats(chunked, xy, 64))
    torch.manual_seed(0)
    model = build_encoder("small_cnn", 8, memory.channels)
    a, b = encode(model, memory, xy[:300], 64, batch=64), encode(model, chunked, xy[:300], 64, batch=64)
    assert a.shape == b.shape and np.allclose(a, b, atol=1e-5)
    assert chunked.cache.current_bytes <= chunked.cache.max_bytes
