"""Evaluation stages as plain functions: embeddings table, evaluation document, similarity index."""

from __future__ import annotations

import json
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from loc2vec.data.chunked import ReaderConfig, open_reader
from loc2vec.data.crops import CropGeometry
from loc2vec.data.locations import SamplesManifest
from loc2vec.errors import InputDataError
from loc2vec.evaluation.embedders import encode
from loc2vec.evaluation.index import build_hnsw, measure, save_index
from loc2vec.evaluation.protocol import ProtocolSpec, build_points, grid_points
from loc2vec.evaluation.run import evaluate_embeddings
from loc2vec.io import write_atomic, write_geoparquet, write_json
from loc2vec.osm.layers import FeaturesManifest
from loc2vec.render.mosaic import MosaicManifest
from loc2vec.training.run import ModelManifest


@dataclass(frozen=True)
class EmbeddingsManifest:
    path: str
    model_version: str
    dim: int
    counts: dict[str, int]
    # the mosaic the crops were cut from and the extract's replication state (lineage); None: the model's
    mosaic_path: str | None = None
    mosaic_version: str | None = None
    osm_sequence: int | None = None
    osm_timestamp: str | None = None

    def read(self) -> gpd.GeoDataFrame:
        return gpd.read_parquet(self.path)

    def vectors(self, frame: pd.DataFrame | None = None) -> np.ndarray:
        frame = self.read() if frame is None else frame
        return np.stack(frame["embedding"].to_numpy()).astype(np.float32)


def protocol_points(samples: SamplesManifest, features: FeaturesManifest, reader: CropGeometry) -> pd.DataFrame:
    spec = samples.split_spec()
    return build_points(samples.read(), features.read(), reader, spec.block_m, samples.leak_distance_m, ProtocolSpec())


def build_embeddings(
    model: ModelManifest,
    samples: SamplesManifest,
    features: FeaturesManifest,
    out_dir: str | Path,
    grid_spacing_m: float = 100.0,
    mosaic: MosaicManifest | None = None,
    reader_config: ReaderConfig | None = None,
) -> EmbeddingsManifest:
    """Embed every protocol point and a regular grid over the region, cut from ``mosaic`` (the current one;
    default: the model's); write GeoParquet whose rows name the mosaic version and OSM sequence.

    Crops are read as ``reader_config`` says (default: the model's training config); out of core, the
    points are visited tile by tile (:func:`loc2vec.evaluation.embedders.in_locality_order`)."""
    mosaic_path = mosaic.path if mosaic is not None else model.mosaic_path
    mosaic_version = mosaic.version if mosaic is not None else model.mosaic_version
    osm_sequence = mosaic.osm_sequence if mosaic is not None else None
    reader = open_model_reader(model, reader_config, mosaic_path)
    points = protocol_points(samples, features, reader)
    grid = grid_points(reader, grid_spacing_m).assign(
        kind="grid", split="", category="", landuse_class="", pois_nearby=""
    )
    grid["point_id"] = np.arange(len(grid)) + len(points)
    frame = pd.concat([points, grid[points.columns]], ignore_index=True)
    encoder = model.load()
    crop_px = model.train_config().crop_px
    vectors = encode(encoder, reader, frame[["x", "y"]].to_numpy(), crop_px)
    frame["embedding"] = list(vectors)
    frame["mosaic_version"] = mosaic_version
    frame["osm_sequence"] = pd.array([osm_sequence] * len(frame), dtype="Int64")
    geo = gpd.GeoDataFrame(frame, geometry=gpd.points_from_xy(frame["lon"], frame["lat"]), crs="EPSG:4326")
    name = f"embeddings-v{model.model_version}-{model.run_id[:8]}-{mosaic_version[:8]}.parquet"
    path = write_geoparquet(geo, Path(out_dir) / name)
    counts = {k: int(v) for k, v in frame["kind"].value_counts().items()}
    return EmbeddingsManifest(
        str(path),
        model.model_version,
        int(vectors.shape[1]),
        counts,
        mosaic_path=mosaic_path,
        mosaic_version=mosaic_version,
        osm_sequence=osm_sequence,
        osm_timestamp=mosaic.osm_timestamp if mosaic is not None else None,
    )


def open_model_reader(
    model: ModelManifest, reader_config: ReaderConfig | None = None, mosaic_path: str | None = None
) -> CropGeometry:
    """A crop reader of ``mosaic_path`` (default: the model's mosaic), as ``reader_config`` says (default: as
    the model's training config says)."""
    config = reader_config if reader_config is not None else model.train_config().reader_config()
    return open_reader(mosaic_path or model.mosaic_path, config)


def evaluate_stage(
    model: ModelManifest,
    embeddings: EmbeddingsManifest,
    out_path: str | Path,
    reader_config: ReaderConfig | None = None,
) -> dict:
    """Metrics of the model's embeddings and of the baselines on the protocol points; writes JSON."""
    frame = embeddings.read()
    points = frame[frame["kind"] != "grid"].reset_index(drop=True)
    reader = open_model_reader(model, reader_config)
    result = evaluate_embeddings(embeddings.vectors(points), points, reader, model.train_config(), seed=0)
    result["model_version"] = model.model_version
    write_json(result, out_path)
    return result


@dataclass(frozen=True)
class IndexManifest:
    index_path: str
    ids_path: str
    mosaic_path: str
    model_weights: str
    model_config: dict
    report: dict
    mosaic_version: str | None = None  # lineage: the mosaic the embeddings were cut from, its OSM sequence
    osm_sequence: int | None = None


def build_similarity_index(model: ModelManifest, embeddings: EmbeddingsManifest, out_dir: str | Path) -> IndexManifest:
    frame = embeddings.read()
    vectors = embeddings.vectors(frame)
    started = time.perf_counter()
    index = build_hnsw(vectors)
    report = measure(index, vectors, build_seconds=time.perf_counter() - started)
    out = Path(out_dir)
    index_path = save_index(index, out / "index.faiss")
    ids = pd.DataFrame(frame[["point_id", "kind", "split", "lon", "lat", "x", "y", "category", "landuse_class"]])
    ids_path = write_atomic(out / "points.parquet", lambda tmp: ids.to_parquet(tmp, index=False))
    manifest = IndexManifest(
        str(index_path),
        str(ids_path),
        embeddings.mosaic_path or model.mosaic_path,
        model.weights_path,
        model.config,
        asdict(report),
        mosaic_version=embeddings.mosaic_version,
        osm_sequence=embeddings.osm_sequence,
    )
    write_json(asdict(manifest), out / "manifest.json")
    return manifest


def load_index_manifest(path: str | Path) -> IndexManifest:
    """Read an index's ``manifest.json``; any other file is refused with an error naming the fault."""
    path = Path(path)
    if not path.is_file():
        raise InputDataError(f"similarity index manifest not found: {path}")
    try:
        values = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputDataError(f"{path} is not a similarity index manifest (binary, not JSON text)") from None
    except ValueError as exc:
        raise InputDataError(f"{path} is not a similarity index manifest (not JSON: {exc})") from None
    expected = {f.name for f in fields(IndexManifest)}
    required = {f.name for f in fields(IndexManifest) if f.default is MISSING}
    if not isinstance(values, dict) or not required <= set(values) <= expected:
        found = sorted(values) if isinstance(values, dict) else type(values).__name__
        raise InputDataError(
            f"{path} is not a similarity index manifest: expected the keys {sorted(expected)}, found {found}"
        )
    missing = [values[k] for k in ("index_path", "ids_path", "model_weights") if not Path(values[k]).is_file()]
    if missing:
        raise InputDataError(f"similarity index {path} refers to files that are gone: {missing}")
    return IndexManifest(**values)


@dataclass(frozen=True)
class MapsManifest:
    embedding_map: str
    projector: str
    n_map_points: int
    n_projector_points: int
    clusters: int


def previews(reader: CropGeometry, xy: np.ndarray, crop_px: int, cell: int = 48) -> list[bytes]:
    """Each location's channel strip (:func:`loc2vec.preview.channel_strip`) as PNG, for map popups."""
    from loc2vec.evaluation.embedders import crops_at
    from loc2vec.preview import channel_strip, png_bytes

    out = []
    for start in range(0, len(xy), 256):
        crops = crops_at(reader, xy[start : start + 256], crop_px).transpose(0, 3, 1, 2)
        out += [png_bytes(channel_strip(c, reader.channel_names, cell=cell), optimize=False) for c in crops]
    return out


def _thumbnails(reader: CropGeometry, xy: np.ndarray, crop_px: int, size: int = 64) -> list[bytes]:
    from loc2vec.evaluation.embedders import crops_at
    from loc2vec.preview import png_bytes, resized_composite

    crops = crops_at(reader, xy, crop_px).transpose(0, 3, 1, 2)
    return [png_bytes(resized_composite(c, reader.channel_names, size), optimize=False) for c in crops]


def build_maps(
    model: ModelManifest,
    embeddings: EmbeddingsManifest,
    out_dir: str | Path,
    clusters: int = 8,
    max_map_points: int = 1200,
    max_projector_points: int = 500,
    seed: int = 0,
    reader_config: ReaderConfig | None = None,
) -> MapsManifest:
    """The cluster map of the grid over the region's composite (click: labelled channels) and the
    projector of test locations."""
    from sklearn.cluster import KMeans

    from loc2vec.evaluation.maps import embedding_map, projector, region_base_layer

    reader = open_model_reader(model, reader_config)
    crop_px = model.train_config().crop_px
    frame = embeddings.read()
    rng = np.random.default_rng(seed)
    grid = frame[frame["kind"] == "grid"]
    grid = grid.iloc[np.sort(rng.permutation(len(grid))[:max_map_points])]
    vectors = embeddings.vectors(grid)
    labels = KMeans(n_clusters=min(clusters, len(grid)), n_init=4, random_state=seed).fit_predict(vectors)
    out = Path(out_dir)
    map_path = embedding_map(
        grid["lon"].to_numpy(),
        grid["lat"].to_numpy(),
        labels,
        previews(reader, grid[["x", "y"]].to_numpy(), crop_px),
        out / "embedding_map.html",
        title=f"loc2vec v{model.model_version}: k-means clusters of the embedding",
        channel_names=reader.channel_names,
        base_layer=region_base_layer(model.mosaic_path),
    )
    test = frame[(frame["kind"] == "location") & (frame["split"] == "test")]
    test = test.iloc[np.sort(rng.permutation(len(test))[:max_projector_points])]
    proj_path = projector(
        embeddings.vectors(test),
        test["landuse_class"].astype(str).tolist(),
        _thumbnails(reader, test[["x", "y"]].to_numpy(), crop_px),
        out / "projector.html",
        title=f"loc2vec v{model.model_version}: test locations by land-use class",
        seed=seed,
    )
    return MapsManifest(str(map_path), str(proj_path), len(grid), len(test), int(labels.max() + 1))
