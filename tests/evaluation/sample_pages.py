"""Small seeded inputs for the evaluation pages: points around Monaco, embeddings, labels and previews."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from loc2vec.preview import composite, png_bytes

MONACO_LON, MONACO_LAT = 7.42, 43.73


@dataclass
class Sample:
    lon: np.ndarray
    lat: np.ndarray
    clusters: np.ndarray
    embeddings: np.ndarray
    labels: list[str]
    previews: list[bytes]


def make_sample(n: int = 60, k: int = 3, dim: int = 16, size: int = 24, seed: int = 0) -> Sample:
    """``n`` points in ``k`` clusters: embeddings around ``k`` centres, a 12-channel 24x24 picture each."""
    rng = np.random.default_rng(seed)
    clusters = np.arange(n) % k
    rng.shuffle(clusters)
    centres = rng.normal(0.0, 4.0, size=(k, dim))
    embeddings = (centres[clusters] + rng.normal(0.0, 1.0, size=(n, dim))).astype(np.float32)
    lon = MONACO_LON + rng.normal(0.0, 0.006, n)
    lat = MONACO_LAT + rng.normal(0.0, 0.004, n)
    previews = []
    for i in range(n):
        channels = np.zeros((12, size, size), np.uint8)
        channels[clusters[i] * 4 : clusters[i] * 4 + 4] = rng.integers(0, 256, size=(4, size, size), dtype=np.uint8)
        channels[:, i % size, :] = 255  # a line that makes every picture different
        previews.append(png_bytes(composite(channels)))
    labels = [f"cluster {c}" for c in clusters]
    return Sample(lon, lat, clusters, embeddings, labels, previews)
