"""Embeddings made elsewhere, scored on the protocol: read and check a GeoParquet file of vectors.

The file is checked twice: on its own before any work (readable GeoParquet, point geometry, exactly
one numeric vector column of one length, finite values), and against the protocol's points once they
are known (same rows, same order). Every failure is an ``InputDataError`` naming the file and the fault.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from loc2vec.errors import InputDataError


@dataclass(frozen=True)
class ExternalEmbeddings:
    path: str
    column: str
    lon: np.ndarray
    lat: np.ndarray
    vectors: np.ndarray


def _is_vector(value) -> bool:
    return np.ndim(value) == 1


def read_external_embeddings(path: str | Path) -> ExternalEmbeddings:
    """Read a GeoParquet of points with one vector column; refuse anything else with a clear error."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"{path}: embeddings file not found")
    try:
        frame = gpd.read_parquet(path)
    except Exception as exc:  # pyarrow / geopandas raise several types for "not GeoParquet"
        raise InputDataError(f"{path}: not a GeoParquet file ({type(exc).__name__}: {exc})") from exc
    if len(frame) == 0:
        raise InputDataError(f"{path}: holds no rows")
    kinds = set(frame.geometry.geom_type.dropna())
    if kinds != {"Point"} or frame.geometry.isna().any():
        raise InputDataError(f"{path}: every row needs a point geometry, found {sorted(kinds) or 'none'}")
    columns = [c for c in frame.columns if c != frame.geometry.name and frame[c].map(_is_vector).all()]
    if len(columns) != 1:
        raise InputDataError(f"{path}: need exactly one vector column beside the geometry, found {columns}")
    lengths = frame[columns[0]].map(len)
    if lengths.nunique() != 1 or lengths.iloc[0] < 1:
        raise InputDataError(f"{path}: vectors in {columns[0]!r} differ in length ({sorted(set(lengths))[:5]})")
    try:
        vectors = np.stack(frame[columns[0]].to_numpy()).astype(np.float32)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"{path}: column {columns[0]!r} is not numeric ({exc})") from exc
    if not np.isfinite(vectors).all():
        raise InputDataError(f"{path}: embeddings hold non-finite values")
    lon, lat = frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy()
    return ExternalEmbeddings(str(path), columns[0], lon, lat, vectors)


def match_points(external: ExternalEmbeddings, points: pd.DataFrame, atol_deg: float = 1e-6) -> np.ndarray:
    """The vectors, once the file's rows are checked to be ``points`` in the same order."""
    if len(external.vectors) != len(points):
        raise InputDataError(
            f"{external.path}: {len(external.vectors)} rows, but the protocol has {len(points)} points "
            "(write them with --points-out)"
        )
    same = np.allclose(external.lon, points["lon"], atol=atol_deg) and np.allclose(
        external.lat, points["lat"], atol=atol_deg
    )
    if not same:
        raise InputDataError(
            f"{external.path}: rows are not the protocol's points in the same order (write them with --points-out)"
        )
    return external.vectors
