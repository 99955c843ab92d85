"""External embeddings files: what is accepted, and a clear error (before any work) for the rest."""

import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
from shapely.geometry import Point, box

from loc2vec.errors import InputDataError
from loc2vec.evaluation.external import match_points, read_external_embeddings
from pipelines.cli import main
from tests.conftest import MONACO

LON = np.array([7.41, 7.42, 7.43])
LAT = np.array([43.73, 43.74, 43.75])
VARIED = np.array([[0.0, 1.0], [1.0, 0.0], [0.5, 0.5]])


def _write(tmp_path, columns: dict, geometry=None, name="emb.parquet"):
    geometry = gpd.points_from_xy(LON, LAT) if geometry is None else geometry
    path = tmp_path / name
    gpd.GeoDataFrame(columns, geometry=geometry, crs="EPSG:4326").to_parquet(path)
    return path


def _points(lon=LON, lat=LAT):
    return pd.DataFrame({"lon": lon, "lat": lat})


def test_a_geoparquet_of_points_and_one_vector_column_is_read(tmp_path):
    vectors = np.arange(12, dtype=np.float32).reshape(3, 4)
    path = _write(tmp_path, {"vector": list(vectors), "name": ["a", "b", "c"]})
    external = read_external_embeddings(path)
    assert external.column == "vector" and external.vectors.shape == (3, 4)
    np.testing.assert_array_equal(match_points(external, _points()), vectors)


@pytest.mark.parametrize(
    ("columns", "geometry", "message"),
    [
        ({"name": ["a", "b", "c"]}, None, "exactly one vector column"),
        ({"v": list(np.ones((3, 2))), "w": list(np.ones((3, 2)))}, None, "exactly one vector column"),
        ({"v": [np.ones(2), np.ones(3), np.ones(2)]}, None, "differ in length"),
        ({"v": [np.array(["a", "b"])] * 3}, None, "not numeric"),
        ({"v": [np.ones(2), np.array([1.0, np.nan]), np.ones(2)]}, None, r"rows \[1\] \(1 of 3\) hold NaN"),
        ({"v": list(VARIED)}, [box(0, 0, 1, 1)] * 3, "point geometry"),
        ({"v": list(VARIED)}, [Point(7.41, 43.73), None, Point(7.43, 43.75)], r"rows \[1\] .* no geometry"),
        ({"v": [VARIED[0], None, VARIED[2]]}, None, r"rows \[1\] \(1 of 3\) have no vector in column 'v'"),
        ({"v": [np.zeros(0)] * 3}, None, "are empty"),
        ({"v": list(np.zeros((3, 4)))}, None, "every vector is zero"),
        ({"v": list(np.ones((3, 4)))}, None, "every vector is the same"),
        ({"v": list(VARIED * 1e38)}, None, "distances would overflow"),
    ],
)
def test_bad_embeddings_files_are_refused_with_the_fault_named(tmp_path, columns, geometry, message):
    with pytest.raises(InputDataError, match=message):
        read_external_embeddings(_write(tmp_path, columns, geometry))


def test_files_that_are_not_geoparquet_are_refused(tmp_path):
    csv = tmp_path / "emb.csv"
    csv.write_text("lon,lat,v\n7.4,43.7,1\n")
    with pytest.raises(InputDataError, match="not a GeoParquet file"):
        read_external_embeddings(csv)
    plain = tmp_path / "plain.parquet"
    pd.DataFrame({"v": list(np.ones((3, 2)))}).to_parquet(plain)
    with pytest.raises(InputDataError, match="not a GeoParquet file"):
        read_external_embeddings(plain)
    with pytest.raises(InputDataError, match="not found"):
        read_external_embeddings(tmp_path / "missing.parquet")


def test_rows_must_be_the_protocol_points_in_order(tmp_path):
    external = read_external_embeddings(_write(tmp_path, {"v": list(VARIED)}))
    with pytest.raises(InputDataError, match="3 rows, but the protocol has 2 points"):
        match_points(external, _points(LON[:2], LAT[:2]))
    with pytest.raises(InputDataError, match="same order"):
        match_points(external, _points(LON[::-1], LAT[::-1]))


def test_cli_refuses_a_bad_file_before_any_work_and_writes_nothing(tmp_path, capsys):
    bad = _write(tmp_path, {"v": [Point(0, 0).wkt] * 3})
    work, out = tmp_path / "work", tmp_path / "out"
    args = ["evaluate", "--pbf", str(MONACO), "--work", str(work), "--embeddings", str(bad), "--out", str(out)]
    assert main(args) == 1
    assert "exactly one vector column" in capsys.readouterr().err
    assert not work.exists() and not out.exists()
