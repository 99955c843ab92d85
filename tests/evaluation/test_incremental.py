"""Re-embed only what a diff changed and update the similarity index in place (real Kotka edits)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import faiss
import geopandas as gpd
import numpy as np
import pandas as pd
import pytest
import torch

from loc2vec.data.crops import CropReader
from loc2vec.data.samples import busy_mask
from loc2vec.evaluation import incremental
from loc2vec.evaluation.embedders import encode
from loc2vec.evaluation.incremental import (
    build_updatable_index,
    refresh_embedding_table,
    refresh_embeddings,
    refresh_similarity_index,
)
from loc2vec.evaluation.index import build_ivf, measure, update_ivf
from loc2vec.evaluation.protocol import grid_points
from loc2vec.evaluation.similar import similar_places
from loc2vec.evaluation.stage import EmbeddingsManifest, build_similarity_index, load_index_manifest
from loc2vec.grid import Window
from loc2vec.io import write_geoparquet
from loc2vec.models.encoders import build_encoder, save_encoder
from loc2vec.osm.layers import refresh_feature_layers
from loc2vec.render.incremental import refresh_mosaic
from loc2vec.training.config import TrainConfig
from loc2vec.training.run import ModelManifest
from tests.render.incremental_case import SPEC, kotka_case

CROP = 64
SPACING = 50.0


def _table(encoder, mosaic_path: str) -> pd.DataFrame:
    """What ``build_embeddings`` makes of the grid: every busy grid point, embedded."""
    reader = CropReader.from_store(mosaic_path)
    grid = grid_points(reader, SPACING).assign(kind="grid", split="", category="", landuse_class="")
    grid["point_id"] = np.arange(len(grid))
    grid["embedding"] = list(encode(encoder, reader, grid[["x", "y"]].to_numpy(), CROP))
    return grid


def _vectors(frame: pd.DataFrame) -> np.ndarray:
    return np.stack(frame["embedding"].to_numpy()).astype(np.float32)


@pytest.fixture(scope="module")
def refreshed(tmp_path_factory):
    c = kotka_case(tmp_path_factory.mktemp("embed"))
    features = refresh_feature_layers(c.features, c.footprint.changes, c.edits.edited, c.root / "features")
    mosaic = refresh_mosaic(c.mosaic, features, SPEC, c.footprint.units, c.root / "mosaic")
    torch.manual_seed(0)
    encoder = build_encoder("small_cnn", 16).eval()
    before = _table(encoder, c.mosaic.path)
    return c, mosaic, encoder, before


def test_only_points_reaching_a_change_are_reembedded_and_equal_a_full_rebuild(refreshed, monkeypatch) -> None:
    _c, mosaic, encoder, before = refreshed
    embedded = []

    def counting_encode(model, reader, xy, crop_px, batch=256):
        embedded.append(len(xy))
        return encode(model, reader, xy, crop_px, batch)

    monkeypatch.setattr(incremental, "encode", counting_encode)
    after, delta = refresh_embedding_table(before, encoder, CROP, mosaic.manifest.path, mosaic.changed, SPACING)

    assert 0 < len(delta.updated) == sum(embedded) < len(before) / 5
    untouched = ~after["point_id"].isin(delta.updated).to_numpy()
    old = before.set_index("point_id").loc[after.loc[untouched, "point_id"]]
    assert np.array_equal(_vectors(after[untouched]), _vectors(old))  # bit for bit: never recomputed
    assert not np.array_equal(_vectors(after[~untouched]), _vectors(before.set_index("point_id").loc[delta.updated]))
    full = _table(encoder, mosaic.manifest.path)
    assert np.array_equal(after[["x", "y"]].to_numpy(), full[["x", "y"]].to_numpy())
    np.testing.assert_allclose(_vectors(after), _vectors(full), atol=1e-5)


def test_grid_points_appear_and_disappear_where_the_drawing_changes(refreshed) -> None:
    c, _mosaic, encoder, before = refreshed
    grid = c.grid
    gone = before.iloc[len(before) // 2]  # a busy grid point the table lost: it must come back
    lost = before.drop(index=before.index[len(before) // 2])
    col, row = grid.xy_to_pixel(gone["x"], gone["y"])
    reader = CropReader.from_store(c.mosaic.path)
    _, axis_c, axis_r = incremental._grid_axes(grid, SPACING)  # every grid position...
    cc, rr = (a.ravel() for a in np.meshgrid(axis_c, axis_r))
    idle = np.flatnonzero(~busy_mask(reader, cc, rr))[0]  # ...and one with nothing drawn around it
    ex, ey = grid.pixel_to_xy(cc[idle], rr[idle])
    ghost = {**before.iloc[0].to_dict(), "x": float(ex), "y": float(ey), "point_id": 10_000}
    table = pd.concat([lost, pd.DataFrame([ghost])], ignore_index=True)
    changed = [
        Window(int(row), int(row) + 1, int(col), int(col) + 1),
        Window(int(rr[idle]), int(rr[idle]) + 1, int(cc[idle]), int(cc[idle]) + 1),
    ]

    after, delta = refresh_embedding_table(table, encoder, CROP, c.mosaic.path, changed, SPACING)

    assert list(delta.removed) == [10_000] and delta.added == 1
    back = after[(after["x"] == gone["x"]) & (after["y"] == gone["y"])]
    assert len(back) == 1 and back["point_id"].iloc[0] > 10_000 and back["point_id"].iloc[0] in delta.updated
    np.testing.assert_allclose(back["embedding"].iloc[0], gone["embedding"], atol=1e-5)
    assert np.array_equal(after[["x", "y"]].to_numpy(), before[["x", "y"]].to_numpy())


def test_the_index_updated_in_place_answers_like_a_rebuilt_one(refreshed) -> None:
    _, mosaic, encoder, before = refreshed
    after, delta = refresh_embedding_table(before, encoder, CROP, mosaic.manifest.path, mosaic.changed, SPACING)
    index = build_ivf(_vectors(before), before["point_id"].to_numpy())
    trained = faiss.clone_index(index)
    trained.reset()  # the same centroids and nprobe, no vectors

    rows = pd.Index(after["point_id"]).get_indexer(delta.updated)
    update_ivf(index, delta.removed, delta.updated, _vectors(after)[rows])

    ids, vectors = after["point_id"].to_numpy(), _vectors(after)
    assert index.ntotal == len(after)
    assert np.array_equal(np.stack([index.reconstruct(int(i)) for i in ids]), vectors)
    rebuilt = trained
    rebuilt.add_with_ids(vectors, ids)
    queries = vectors[np.random.default_rng(0).choice(len(vectors), 200, replace=False)]
    d_upd, i_upd = index.search(queries, 10)
    d_new, i_new = rebuilt.search(queries, 10)
    np.testing.assert_allclose(d_upd, d_new, rtol=1e-6)
    assert all(set(a) == set(b) for a, b in zip(i_upd, i_new, strict=True))
    assert measure(index, vectors, ids=ids).recall_at_10 >= 0.9


def test_manifests_embeddings_and_index_refresh_and_answer_similar(refreshed, tmp_path: Path) -> None:
    c, mosaic, encoder, before = refreshed
    weights = save_encoder(encoder, tmp_path / "encoder.pt")
    config = asdict(TrainConfig(crop_px=CROP))
    model = ModelManifest(
        str(weights),
        config,
        "loc2vec",
        "3",
        "models:/loc2vec/3",
        "run0123456789",
        "",
        "0",
        c.mosaic.path,
        c.mosaic.version,
        "",
        c.features.osm_sha256,
        0,
        [],
        16,
    )
    table = before.assign(mosaic_version=c.mosaic.version, osm_sequence=pd.array([None] * len(before), "Int64"))
    path = write_geoparquet(
        gpd.GeoDataFrame(table, geometry=gpd.points_from_xy(table["lon"], table["lat"]), crs="EPSG:4326"),
        tmp_path / "embeddings" / "before.parquet",
    )
    previous = EmbeddingsManifest(str(path), "3", 16, {"grid": len(table)}, c.mosaic.path, c.mosaic.version)
    index = build_updatable_index(model, previous, tmp_path / "index")

    embeddings, delta = refresh_embeddings(
        model, previous, mosaic.manifest, mosaic.changed, tmp_path / "embeddings", SPACING
    )
    updated, rebuilt = refresh_similarity_index(index, embeddings, delta, tmp_path / "index")

    assert not rebuilt and updated.mosaic_version == mosaic.manifest.version
    assert Path(embeddings.path).name == f"embeddings-v3-run01234-{mosaic.manifest.version[:8]}.parquet"
    assert (embeddings.read()["mosaic_version"] == mosaic.manifest.version).all()
    current = load_index_manifest(tmp_path / "index" / "manifest.json")
    assert current == updated and not Path(index.index_path).exists()  # the superseded files are gone
    assert updated.report["n_vectors"] == len(embeddings.read()) and updated.report["recall_at_10"] >= 0.9
    lon, lat = embeddings.read()[["lon", "lat"]].iloc[0]
    found = similar_places(current, lat, lon, k=5)
    assert len(found) == 5 and (found["kind"] == "grid").all()
    # an HNSW index (ids = row positions = point_id) answers through the same lookup
    hnsw = build_similarity_index(model, previous, tmp_path / "hnsw")
    old = similar_places(hnsw, lat, lon, k=5)
    exact = np.argsort(((_vectors(before) - _vectors(before)[0]) ** 2).sum(axis=1))[:5]
    assert old["lat"].tolist() == pytest.approx(before["lat"].to_numpy()[exact].tolist())
