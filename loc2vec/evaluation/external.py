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


MAX_ABS_VALUE = 1e15  # beyond this, squared distances overflow float32 (the index and metrics compute in it)


def _is_vector(value) -> bool:
    return value is not None and np.ndim(value) == 1


def _rows(mask: np.ndarray | pd.Series, limit: int = 5) -> str:
    """``"rows [3, 7] (2 of 100)"``: which rows (0-based) a fault concerns."""
    idx = np.flatnonzero(np.asarray(mask))
    shown = ", ".join(map(str, idx[:limit])) + (", ..." if len(idx) > limit else "")
    return f"rows [{shown}] ({len(idx)} of {len(mask)})"


def _vector_columns(frame: gpd.GeoDataFrame) -> list[str]:
    """Columns whose non-null values are all 1-d arrays (and that have some)."""
    found = []
    for c in frame.columns:
        if c == frame.geometry.name:
            continue
        values = frame[c].dropna()
        if len(values) and values.map(_is_vector).all():
            found.append(c)
    return found


def check_vectors(vectors: np.ndarray, where: str) -> None:
    """Refuse embeddings that cannot be scored: non-finite, too large for float32 distances, constant."""
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        raise InputDataError(f"{where}: {_rows(~finite)} hold NaN or infinite values")
    big = np.abs(vectors).max(axis=1) > MAX_ABS_VALUE
    if big.any():
        raise InputDataError(
            f"{where}: {_rows(big)} hold values beyond ±{MAX_ABS_VALUE:g} (distances would overflow): rescale them"
        )
    if len(vectors) > 1 and np.ptp(vectors, axis=0).max() == 0:
        kind = "zero" if not vectors.any() else "the same"
        raise InputDataError(f"{where}: every vector is {kind}: constant embeddings cannot tell places apart")


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
    no_geometry = frame.geometry.isna() | frame.geometry.is_empty
    if no_geometry.any():
        raise InputDataError(f"{path}: {_rows(no_geometry)} have no geometry; every row needs a point")
    kinds = frame.geometry.geom_type
    if (kinds != "Point").any():
        raise InputDataError(
            f"{path}: every row needs a point geometry, found {sorted(set(kinds))} in {_rows(kinds != 'Point')}"
        )
    columns = _vector_columns(frame)
    if len(columns) != 1:
        raise InputDataError(
            f"{path}: need exactly one vector column beside the geometry, found {columns or 'none'} "
            f"among the columns {[c for c in frame.columns if c != frame.geometry.name]}"
        )
    column = columns[0]
    missing = frame[column].map(lambda v: not _is_vector(v))
    if missing.any():
        raise InputDataError(f"{path}: {_rows(missing)} have no vector in column {column!r}")
    lengths = frame[column].map(len)
    if lengths.nunique() != 1:
        raise InputDataError(f"{path}: vectors in {column!r} differ in length ({sorted(set(lengths))[:5]})")
    if lengths.iloc[0] < 1:
        raise InputDataError(f"{path}: vectors in {column!r} are empty (length 0)")
    try:
        vectors = np.stack(frame[column].to_numpy()).astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise InputDataError(f"{path}: column {column!r} is not numeric ({exc})") from exc
    check_vectors(vectors, str(path))
    lon, lat = frame.geometry.x.to_numpy(), frame.geometry.y.to_numpy()
    return ExternalEmbeddings(str(path), column, lon, lat, vectors.astype(np.float32))


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
