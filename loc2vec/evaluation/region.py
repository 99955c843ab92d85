"""A region scored with an existing model, without training: the model embeds the region's protocol points
(its place embedding, as the ``embeddings`` asset computes it) and they are scored beside the baselines
computed on the same points, as ``loc2vec run`` scores its own model."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from loc2vec.data.crops import CropGeometry
from loc2vec.data.locations import SamplesManifest
from loc2vec.evaluation.embedders import encode
from loc2vec.evaluation.existing_model import ExistingModel
from loc2vec.evaluation.protocol import to_geoparquet_frame
from loc2vec.evaluation.run import evaluate_embeddings
from loc2vec.osm.layers import FeaturesManifest


def embed_and_evaluate(model: ExistingModel, points: pd.DataFrame, reader: CropGeometry) -> tuple[dict, np.ndarray]:
    """The evaluation document of ``model`` on ``points`` (``model_source`` names the model) and its
    embeddings of the points, in their order."""
    vectors = encode(model.encoder, reader, points[["x", "y"]].to_numpy(), model.config.crop_px)
    document = evaluate_embeddings(vectors, points, reader, model.config, seed=0)
    document["model_source"] = model.source
    return document, vectors


def embeddings_frame(points: pd.DataFrame, vectors: np.ndarray) -> gpd.GeoDataFrame:
    """The points with their vectors (column ``embedding``): the GeoParquet ``evaluate --embeddings`` reads."""
    return to_geoparquet_frame(points).assign(embedding=list(np.asarray(vectors, dtype=np.float32)))


def region_record(
    features: FeaturesManifest, mosaic_version: str, samples: SamplesManifest, split: str
) -> dict[str, object]:
    """The scored region and its data versions: extract, bbox, OSM state, mosaic, samples and which split
    (``training``: the split ``loc2vec run`` trains and tests on; ``evaluation_only``: ``EVALUATION_ONLY``)."""
    return {
        "extract": features.osm_path,
        "osm_sha256": features.osm_sha256,
        "bbox": list(features.bbox),
        "osm_sequence": features.osm_sequence,
        "osm_timestamp": features.osm_timestamp,
        "features_version": features.version,
        "mosaic_version": mosaic_version,
        "samples_version": Path(samples.path).stem,
        "split": split,
        "split_spec": dict(samples.spec),
        "leak_distance_m": samples.leak_distance_m,
        "anchors": dict(samples.counts),
    }
