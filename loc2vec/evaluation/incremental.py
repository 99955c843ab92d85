"""Refresh embeddings and the similarity index for the pixels a diff changed, instead of rebuilding them.

A point is re-embedded when its crop (north-up, ``crop_px`` wide, as ``embedders.encode`` cuts it) reaches a
changed pixel of the new mosaic version (``render.incremental.MosaicRefresh.changed``); every other
point's crop is the same pixels as before, so its embedding is too. The grid of ``protocol.grid_points``
keeps only "busy" positions (something drawn within ``window_px``): positions near a change are tested
again, and appear or disappear. Protocol points (locations, POIs) keep their set (the evaluation is not
re-run for a diff); their embeddings are refreshed like the others. Crops are read per render unit of the
points (a window of the unit plus a crop's margin), so memory does not grow with the region or with how far
apart the changes are. The index is updated in place: the
removed and re-embedded ids are removed, the new vectors added (``index.update_ivf``); ids are the
embeddings' ``point_id``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from loc2vec.data.crops import CropReader
from loc2vec.data.samples import busy_mask
from loc2vec.errors import InputDataError
from loc2vec.evaluation.embedders import encode
from loc2vec.evaluation.index import build_ivf, load_index, measure, save_index, update_ivf
from loc2vec.evaluation.stage import EmbeddingsManifest, IndexManifest
from loc2vec.grid import MosaicGrid, Window
from loc2vec.io import write_atomic, write_geoparquet, write_json
from loc2vec.render.mosaic import MosaicManifest
from loc2vec.store.mosaic import open_mosaic
from loc2vec.training.run import ModelManifest

INDEX_COLUMNS = ["point_id", "kind", "split", "lon", "lat", "x", "y", "category", "landuse_class"]


@dataclass(frozen=True)
class EmbeddingsDelta:
    """What a refresh changed: ids removed, and ids whose vectors are new (re-embedded or added)."""

    removed: np.ndarray
    updated: np.ndarray
    added: int
    seconds: float

    @property
    def size(self) -> int:
        return len(self.removed) + len(self.updated)


def _touching(cols: np.ndarray, rows: np.ndarray, half: float, windows: list[Window]) -> np.ndarray:
    """Which positions have a square of half-size ``half`` (pixels) reaching one of ``windows``."""
    hit = np.zeros(len(cols), dtype=bool)
    for w in windows:
        hit |= (cols + half >= w.col0) & (cols - half < w.col1) & (rows + half >= w.row0) & (rows - half < w.row1)
    return hit


def _grid_axes(grid: MosaicGrid, spacing_m: float) -> tuple[float, np.ndarray, np.ndarray]:
    """The regular grid of ``protocol.grid_points``: its step (px) and its column and row positions."""
    step = spacing_m / grid.resolution
    return step, np.arange(step / 2, grid.width, step), np.arange(step / 2, grid.height, step)


def _window_around(cols: np.ndarray, rows: np.ndarray, half: float, grid: MosaicGrid) -> Window:
    c0 = max(0, int(np.floor(cols.min() - half)) - 1)
    r0 = max(0, int(np.floor(rows.min() - half)) - 1)
    c1 = min(grid.width, int(np.ceil(cols.max() + half)) + 2)
    r1 = min(grid.height, int(np.ceil(rows.max() + half)) + 2)
    return Window(r0, r1, c0, c1)


def _readers(mosaic_path: str, grid: MosaicGrid, cols: np.ndarray, rows: np.ndarray, half: float):
    """Yield ``(indices, reader)`` per render unit holding positions, the reader holding the squares of half-size
    ``half`` around them: memory bounded by a unit, however far apart the changes are."""
    n_cols = grid.n_units[1]
    unit = np.floor(rows / grid.unit_px).astype(np.int64) * n_cols + np.floor(cols / grid.unit_px).astype(np.int64)
    for u in np.unique(unit):
        idx = np.flatnonzero(unit == u)
        yield idx, CropReader.from_store(mosaic_path, window=_window_around(cols[idx], rows[idx], half, grid))


def refresh_embedding_table(
    frame: pd.DataFrame,
    encoder,
    crop_px: int,
    mosaic_path: str,
    changed: list[Window],
    grid_spacing_m: float = 100.0,
    window_px: int = 32,
) -> tuple[pd.DataFrame, EmbeddingsDelta]:
    """The embeddings table ``frame`` (``point_id``, ``kind``, ``x``, ``y``, ``embedding``, ...) brought up to
    the mosaic at ``mosaic_path``, whose pixels differ from the one ``frame`` was cut from only inside
    ``changed``. Grid rows come out in the grid's row-major order, as ``build_embeddings`` writes them."""
    started = time.perf_counter()
    grid = open_mosaic(mosaic_path).grid
    frame = frame.reset_index(drop=True)
    none = np.zeros(0, dtype=np.int64)
    if not changed:
        return frame, EmbeddingsDelta(none, none, 0, time.perf_counter() - started)
    cols, rows = grid.xy_to_pixel(frame["x"].to_numpy(), frame["y"].to_numpy())
    crop_half = crop_px / 2 + 1
    busy_half = window_px / 2 + 1
    stale = _touching(cols, rows, crop_half, changed)

    step, axis_c, axis_r = _grid_axes(grid, grid_spacing_m)
    keys: set[int] = set()  # grid positions (row * columns + column) whose busy window reaches a change
    for w in changed:
        js = np.flatnonzero((axis_c + busy_half >= w.col0) & (axis_c - busy_half < w.col1))
        is_ = np.flatnonzero((axis_r + busy_half >= w.row0) & (axis_r - busy_half < w.row1))
        keys.update((is_[:, None] * len(axis_c) + js[None, :]).ravel().tolist())
    cand_key = np.array(sorted(keys), dtype=np.int64)
    ci, ri = cand_key % len(axis_c), cand_key // len(axis_c)
    cand_c, cand_r = axis_c[ci], axis_r[ri]

    is_grid = (frame["kind"] == "grid").to_numpy()
    grid_j = np.rint((cols - step / 2) / step).astype(np.int64)
    grid_i = np.rint((rows - step / 2) / step).astype(np.int64)
    key = np.where(is_grid, grid_i * len(axis_c) + grid_j, -1)

    busy = np.zeros(len(cand_c), dtype=bool)
    for idx, reader in _readers(mosaic_path, grid, cand_c, cand_r, busy_half):
        busy[idx] = busy_mask(reader, cand_c[idx], cand_r[idx], window_px)
    present = set(key[is_grid].tolist())
    gone_keys = set(cand_key[~busy].tolist()) & present
    removed_mask = is_grid & np.isin(key, list(gone_keys))
    new_keys = [k for k, b in zip(cand_key.tolist(), busy.tolist(), strict=True) if b and k not in present]

    out = frame[~removed_mask].copy()
    stale_kept = stale[~removed_mask]
    removed_ids = frame.loc[removed_mask, "point_id"].to_numpy(np.int64)
    if new_keys:
        nk = np.asarray(new_keys, dtype=np.int64)
        nc, nr = axis_c[nk % len(axis_c)], axis_r[nk // len(axis_c)]
        x, y = grid.pixel_to_xy(nc, nr)
        lon, lat = grid.pixel_to_lonlat(nc, nr)
        first = int(frame["point_id"].max()) + 1 if len(frame) else 0
        added = pd.DataFrame(
            {
                "point_id": np.arange(first, first + len(nk)),
                "kind": "grid",
                "split": "",
                "x": x,
                "y": y,
                "lon": lon,
                "lat": lat,
                "category": "",
                "landuse_class": "",
            }
        )
        for column in out.columns:
            if column not in added.columns and column not in ("embedding", "geometry"):
                added[column] = out[column].iloc[0] if len(out) else None
        added["embedding"] = [None] * len(added)
        out = pd.concat([out, added], ignore_index=True)
        stale_kept = np.concatenate([stale_kept, np.ones(len(added), dtype=bool)])
    else:
        out = out.reset_index(drop=True)
    todo = np.flatnonzero(stale_kept)
    updated_ids = np.sort(out.loc[todo, "point_id"].to_numpy(np.int64))
    if len(todo):
        xy = out.loc[todo, ["x", "y"]].to_numpy()
        tc, tr = grid.xy_to_pixel(xy[:, 0], xy[:, 1])
        column = out["embedding"].to_list()
        for idx, reader in _readers(mosaic_path, grid, tc, tr, crop_half):
            for i, v in zip(todo[idx].tolist(), encode(encoder, reader, xy[idx], crop_px), strict=True):
                column[i] = v
        out["embedding"] = column
    # grid rows in the grid's row-major order (other rows first, as written by build_embeddings)
    c2, r2 = grid.xy_to_pixel(out["x"].to_numpy(), out["y"].to_numpy())
    order_key = np.where(
        (out["kind"] == "grid").to_numpy(),
        np.rint((r2 - step / 2) / step) * len(axis_c) + np.rint((c2 - step / 2) / step),
        -1,
    )
    out = out.iloc[np.argsort(order_key, kind="stable")].reset_index(drop=True)
    if "geometry" in out.columns:
        out = gpd.GeoDataFrame(
            out.drop(columns="geometry"), geometry=gpd.points_from_xy(out["lon"], out["lat"]), crs="EPSG:4326"
        )
    return out, EmbeddingsDelta(removed_ids, updated_ids, len(new_keys), time.perf_counter() - started)


def refresh_embeddings(
    model: ModelManifest,
    previous: EmbeddingsManifest,
    mosaic: MosaicManifest,
    changed: list[Window],
    out_dir: str | Path,
    grid_spacing_m: float = 100.0,
) -> tuple[EmbeddingsManifest, EmbeddingsDelta]:
    """The embeddings of ``previous`` brought up to ``mosaic`` (a version made by ``refresh_mosaic``, with
    ``changed`` its changed pixels), re-embedding only what the change reaches; written beside the others
    under the name a full ``build_embeddings`` gives. ``grid_spacing_m`` must be the one ``previous`` used."""
    frame = previous.read()
    if previous.model_version != model.model_version:
        raise InputDataError(
            f"embeddings {previous.path} are of model version {previous.model_version}, not {model.model_version}: "
            "embed again with build_embeddings"
        )
    table, delta = refresh_embedding_table(
        frame, model.load(), model.train_config().crop_px, mosaic.path, changed, grid_spacing_m
    )
    table["mosaic_version"] = mosaic.version
    table["osm_sequence"] = pd.array([mosaic.osm_sequence] * len(table), dtype="Int64")
    name = f"embeddings-v{model.model_version}-{model.run_id[:8]}-{mosaic.version[:8]}.parquet"
    path = write_geoparquet(table, Path(out_dir) / name)
    counts = {k: int(v) for k, v in table["kind"].value_counts().items()}
    manifest = EmbeddingsManifest(
        str(path),
        model.model_version,
        previous.dim,
        counts,
        mosaic_path=mosaic.path,
        mosaic_version=mosaic.version,
        osm_sequence=mosaic.osm_sequence,
        osm_timestamp=mosaic.osm_timestamp,
    )
    return manifest, delta


# --- the similarity index ------------------------------------------------------------------------------


def _write_index(
    index,
    frame: pd.DataFrame,
    vectors: np.ndarray,
    model: dict,
    embeddings: EmbeddingsManifest,
    out_dir: Path,
    build_s: float,
) -> IndexManifest:
    """Versioned index and points files, then ``manifest.json`` (atomically, last): a reader of the manifest
    always gets a matching pair."""
    ids = frame["point_id"].to_numpy(np.int64)
    report = measure(index, vectors, ids=ids, build_seconds=build_s)
    tag = (embeddings.mosaic_version or "none")[:8]
    index_path = save_index(index, out_dir / f"index-{tag}.faiss")
    points = pd.DataFrame(frame[INDEX_COLUMNS])
    ids_path = write_atomic(out_dir / f"points-{tag}.parquet", lambda tmp: points.to_parquet(tmp, index=False))
    manifest = IndexManifest(
        str(index_path),
        str(ids_path),
        embeddings.mosaic_path or model["mosaic_path"],
        model["weights_path"],
        model["config"],
        asdict(report),
        mosaic_version=embeddings.mosaic_version,
        osm_sequence=embeddings.osm_sequence,
    )
    write_json(asdict(manifest), out_dir / "manifest.json")
    for old in [*out_dir.glob("index-*.faiss"), *out_dir.glob("points-*.parquet")]:
        if old not in (index_path, ids_path):
            old.unlink(missing_ok=True)
    return manifest


def build_updatable_index(model: ModelManifest, embeddings: EmbeddingsManifest, out_dir: str | Path) -> IndexManifest:
    """An IVF index (``index.build_ivf``) over every embedding, keyed by ``point_id``, which
    ``refresh_similarity_index`` updates in place."""
    frame = embeddings.read()
    vectors = embeddings.vectors(frame)
    started = time.perf_counter()
    index = build_ivf(vectors, frame["point_id"].to_numpy(np.int64))
    seconds = time.perf_counter() - started
    info = {"mosaic_path": model.mosaic_path, "weights_path": model.weights_path, "config": model.config}
    return _write_index(index, frame, vectors, info, embeddings, Path(out_dir), seconds)


def refresh_similarity_index(
    previous: IndexManifest,
    embeddings: EmbeddingsManifest,
    delta: EmbeddingsDelta,
    out_dir: str | Path,
    min_recall: float = 0.9,
) -> tuple[IndexManifest, bool]:
    """``previous`` (an IVF index by ``build_updatable_index``) updated in place with ``delta``; rebuilt instead
    when it is not an IVF index or its recall@10 after the update is below ``min_recall``. Returns the
    manifest and whether it was rebuilt."""
    import faiss

    frame = embeddings.read()
    vectors = embeddings.vectors(frame)
    ids = frame["point_id"].to_numpy(np.int64)
    info = {
        "mosaic_path": previous.mosaic_path,
        "weights_path": previous.model_weights,
        "config": previous.model_config,
    }
    started = time.perf_counter()
    index = load_index(previous.index_path)
    rebuilt = not isinstance(faiss.downcast_index(index), faiss.IndexIVF)
    if not rebuilt:
        rows = pd.Index(ids).get_indexer(delta.updated)
        update_ivf(index, delta.removed, delta.updated, vectors[rows])
        if index.ntotal != len(frame):
            rebuilt = True  # the delta does not match the table: start again from the table
        else:
            recall = measure(index, vectors, ids=ids, n_queries=200).recall_at_10
            rebuilt = recall < min_recall
    if rebuilt:
        index = build_ivf(vectors, ids)
    manifest = _write_index(index, frame, vectors, info, embeddings, Path(out_dir), time.perf_counter() - started)
    return manifest, rebuilt


# --- following the current mosaic (what the pipeline's embeddings and index assets call) ------------------

LATEST = "LATEST.json"  # <data_dir>/embeddings/LATEST.json: the manifest of the newest embeddings table


def delta_path(embeddings: EmbeddingsManifest) -> Path:
    """Where a refreshed table records what it changed (beside the table)."""
    return Path(embeddings.path).with_suffix(".delta.json")


def _load_embeddings_manifest(path: Path) -> EmbeddingsManifest | None:
    if not path.is_file():
        return None
    import json

    try:
        manifest = EmbeddingsManifest(**json.loads(path.read_text(encoding="utf-8")))
    except (TypeError, ValueError):
        return None
    return manifest if Path(manifest.path).is_file() else None


def refresh_for_mosaic(
    latest: str | Path, model: ModelManifest, mosaic: MosaicManifest, out_dir: str | Path
) -> tuple[EmbeddingsManifest, EmbeddingsDelta] | None:
    """The newest table (``latest``, a manifest) refreshed for ``mosaic`` when that is a new version of the
    mosaic it was cut from, on the same grid and by the same model: only points whose crops reach a pixel
    that differs between the two versions are re-embedded (``changed_windows``: chunks shared by hard link
    are skipped unread). None when the table must be built in full (no table, another model or grid, the
    same mosaic again, or its mosaic pruned). Records the delta beside the new table."""
    from loc2vec.render.incremental import changed_windows

    previous = _load_embeddings_manifest(Path(latest))
    if (
        previous is None
        or previous.model_version != model.model_version
        or previous.mosaic_version == mosaic.version
        or not previous.mosaic_path
        or not Path(previous.mosaic_path).is_dir()
    ):
        return None
    old, new = open_mosaic(previous.mosaic_path), open_mosaic(mosaic.path)
    if old.grid != new.grid:
        return None
    changed = changed_windows(old, new, new.grid.units())
    manifest, delta = refresh_embeddings(model, previous, mosaic, changed, out_dir)
    record = {
        "base": previous.path,
        "base_mosaic_version": previous.mosaic_version,
        "removed": delta.removed.tolist(),
        "updated": delta.updated.tolist(),
        "added": delta.added,
        "seconds": delta.seconds,
    }
    write_json(record, delta_path(manifest))
    return manifest, delta


def refresh_base(embeddings: EmbeddingsManifest) -> str | None:
    """The table ``embeddings`` was refreshed from, if it was."""
    record = _read_delta(embeddings)
    return record["base"] if record else None


def _read_delta(embeddings: EmbeddingsManifest) -> dict | None:
    import json

    path = delta_path(embeddings)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def update_or_build_index(
    model: ModelManifest, embeddings: EmbeddingsManifest, out_dir: str | Path
) -> tuple[IndexManifest, str]:
    """The index in ``out_dir`` updated in place with the delta of a refreshed table, when the index holds
    the table it was refreshed from; else a new IVF index. Returns the manifest and what was done."""
    from loc2vec.evaluation.stage import load_index_manifest

    out = Path(out_dir)
    record = _read_delta(embeddings)
    previous = load_index_manifest(out / "manifest.json") if (out / "manifest.json").is_file() else None
    if (
        record is not None
        and previous is not None
        and previous.mosaic_version == record["base_mosaic_version"]
        and previous.model_weights == model.weights_path
    ):
        delta = EmbeddingsDelta(
            np.asarray(record["removed"], dtype=np.int64),
            np.asarray(record["updated"], dtype=np.int64),
            int(record["added"]),
            float(record["seconds"]),
        )
        manifest, rebuilt = refresh_similarity_index(previous, embeddings, delta, out)
        how = "rebuilt (recall fell)" if rebuilt else f"updated in place (-{len(delta.removed)} +{len(delta.updated)})"
        return manifest, how
    return build_updatable_index(model, embeddings, out), "built"
