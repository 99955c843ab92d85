"""Nearest places to a lat/lon: render its crop from the mosaic, embed it, search the index."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from loc2vec.data.chunked import open_reader
from loc2vec.errors import ConfigError
from loc2vec.evaluation.embedders import encode
from loc2vec.evaluation.index import load_index
from loc2vec.evaluation.stage import IndexManifest
from loc2vec.models.encoders import load_encoder
from loc2vec.training.config import TrainConfig


def similar_places(manifest: IndexManifest, lat: float, lon: float, k: int = 10, min_km: float = 0.0) -> pd.DataFrame:
    """The ``k`` indexed places whose embeddings are nearest to the embedding at (lat, lon), among those
    at least ``min_km`` away on the ground (``min_km`` > 0: look-alike places elsewhere, not the
    query's own surroundings, which share its pixels)."""
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    if not min_km >= 0:
        raise ConfigError(f"min_km must be >= 0, got {min_km}")
    config = TrainConfig(**manifest.model_config)
    reader = open_reader(manifest.mosaic_path, config.reader_config())
    col, row = reader.grid.lonlat_to_pixel(lon, lat)
    if not (0 <= col < reader.width and 0 <= row < reader.height):
        raise ConfigError(f"({lat}, {lon}) lies outside the mosaic's region")
    x, y = reader.grid.pixel_to_xy(col, row)
    query = encode(load_encoder(manifest.model_weights), reader, np.array([[x, y]]), config.crop_px)
    index = load_index(manifest.index_path)
    points = pd.read_parquet(manifest.ids_path)
    points = points.set_index(points["point_id"].to_numpy())  # the index's ids (row positions for HNSW)
    wanted = k
    while True:  # widen the search until k results lie beyond min_km (or the index is exhausted)
        distances, ids = index.search(query.astype(np.float32), min(wanted, index.ntotal))
        keep = ids[0] >= 0
        found = points.loc[ids[0][keep]].reset_index(drop=True)
        found["embedding_distance"] = np.sqrt(np.maximum(distances[0][keep], 0))
        found["ground_km"] = np.hypot(found["x"] - x, found["y"] - y) / 1000.0
        found = found[found["ground_km"] >= min_km].head(k).reset_index(drop=True)
        if len(found) == k or wanted >= index.ntotal:
            break
        wanted *= 4
    found.insert(0, "rank", np.arange(1, len(found) + 1))
    return found[["rank", "lat", "lon", "kind", "landuse_class", "embedding_distance", "ground_km"]]


def write_similar_map(manifest: IndexManifest, found: pd.DataFrame, lat: float, lon: float, out_path) -> Path:
    """A map of the query and its ranked nearest places (embedding and ground distances) over the
    region's composite, each with its labelled channels (:func:`loc2vec.evaluation.maps.similar_map`)."""
    from loc2vec.evaluation.maps import region_base_layer, similar_map
    from loc2vec.evaluation.stage import previews

    reader = open_reader(manifest.mosaic_path, TrainConfig(**manifest.model_config).reader_config())
    lons = np.concatenate([[lon], found["lon"].to_numpy()])
    lats = np.concatenate([[lat], found["lat"].to_numpy()])
    cols, rows = reader.grid.lonlat_to_pixel(lons, lats)
    xy = np.column_stack(reader.grid.pixel_to_xy(cols, rows))
    crop_px = TrainConfig(**manifest.model_config).crop_px
    return similar_map(
        (lat, lon),
        found,
        previews(reader, xy, crop_px),
        out_path,
        title=f"Places most like ({lat:.5f}, {lon:.5f})",
        channel_names=reader.channel_names,
        base_layer=region_base_layer(manifest.mosaic_path),
    )
