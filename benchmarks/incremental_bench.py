"""Incremental refresh benchmark: an OSM diff inside one block of the default region, refreshed incrementally
(footprint, feature layers, mosaic, embeddings, index) against a full rebuild from the updated extract.

Run ``python -m benchmarks.incremental_bench``. For each diff size (``--edits``, default 1, 10, 100 edited
buildings, seeded) and each layout of the edits (``cluster``: within about 650 x 650 m of Monaco's centre,
like one mapper's changeset; ``block``: anywhere in the spatial block holding Monaco proper, of a 2 x 2
split, 6 x 6 km), both sides start
from the same state: the feature layers, mosaic, grid embeddings and IVF index of the extract *before* the
diff, on disk. The process is pinned to one core (``render_bench.pin_to_one_core``) and both sides are
timed in the same run, the full rebuild right after the incremental refresh of the same diff.

incremental: ``change_footprint`` (reads the pre-change extract and the diff) + ``refresh_feature_layers``
  + ``refresh_mosaic`` (copy-on-write) + load the encoder + ``refresh_embedding_table`` + write the table
  + load the IVF index, ``update_ivf``, save it.
full: ``build_feature_layers`` of the updated extract (the OSM import) + ``render_mosaic`` + load the
  encoder + ``grid_points`` and ``encode`` every grid point + write the table + ``build_ivf``, save it.

Both sides load the encoder from its file (a few ms) and write their outputs; neither includes module
imports or applying the diff to the extract (``replication.update_extract``, the same for both). The
encoder is the default architecture (``small_cnn``, 16-d, 128-px crops) with seeded, untrained weights:
inference costs the same as a trained one's. Embedded points are the regular grid of ``build_embeddings``
(100 m); the protocol points (locations, POIs) are left out on both sides (they need a training run).
Checks, which fail the run: every file of the refreshed mosaic is byte-identical to the full render's
(same version name), and the refreshed embeddings equal the full rebuild's (same points, ``atol`` 1e-5).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks.common import Clock
from benchmarks.render_bench import pin_to_one_core

ROOT = Path(__file__).resolve().parents[1]
PBF = ROOT / "data" / "osm" / "monaco_region_2016.osm.pbf"
MONACO_CENTRE = (7.4246, 43.7384)  # lon, lat
CLUSTER_DEG = (0.004, 0.003)  # half-width and half-height of the "cluster" layout: about 650 x 650 m
SPACING_M = 100.0
BLOCKS_PER_SIDE = 2


def _block_of(grid, lon: float, lat: float) -> tuple[str, list[tuple[int, int]]]:
    from loc2vec.grid import block_keys

    col, row = grid.lonlat_to_pixel(lon, lat)
    unit = (int(row) // grid.unit_px, int(col) // grid.unit_px)
    for key in block_keys(BLOCKS_PER_SIDE):
        units = grid.units_of_block(key, BLOCKS_PER_SIDE)
        if unit in units:
            return key, units
    raise AssertionError("the centre lies outside the grid")


def _block_lonlat(grid, units, shrink: float = 0.05):
    """The lon/lat box of the block's units, shrunk by ``shrink`` of its size on each side (inside the block)."""
    from loc2vec.geo import BBox, from_crs_transformer

    bounds = np.array([grid.window_bounds(grid.unit_window(*u)) for u in units])
    minx, miny = bounds[:, 0].min(), bounds[:, 1].min()
    maxx, maxy = bounds[:, 2].max(), bounds[:, 3].max()
    dx, dy = (maxx - minx) * shrink, (maxy - miny) * shrink
    lon0, lat0, lon1, lat1 = from_crs_transformer(grid.crs).transform_bounds(minx + dx, miny + dy, maxx - dx, maxy - dy)
    return BBox(lon0, lat0, lon1, lat1)


def _grid_table(encoder, mosaic_path: str, crop_px: int):
    from loc2vec.data.crops import CropReader
    from loc2vec.evaluation.embedders import encode
    from loc2vec.evaluation.protocol import grid_points

    reader = CropReader.from_store(mosaic_path)
    table = grid_points(reader, SPACING_M).assign(kind="grid", split="", category="", landuse_class="")
    table["point_id"] = np.arange(len(table))
    table["embedding"] = list(encode(encoder, reader, table[["x", "y"]].to_numpy(), crop_px))
    return table


def _vectors(table) -> np.ndarray:
    return np.stack(table["embedding"].to_numpy()).astype(np.float32)


def _write_table(table, path: Path) -> None:
    import geopandas as gpd

    from loc2vec.io import write_geoparquet

    write_geoparquet(
        gpd.GeoDataFrame(table, geometry=gpd.points_from_xy(table["lon"], table["lat"]), crs="EPSG:4326"), path
    )


def incremental(state: dict, edits, out: Path) -> tuple[dict, dict]:
    import pandas as pd

    from loc2vec.evaluation.incremental import refresh_embedding_table
    from loc2vec.evaluation.index import load_index, save_index, update_ivf
    from loc2vec.models.encoders import load_encoder
    from loc2vec.osm.changes import change_footprint
    from loc2vec.osm.layers import refresh_feature_layers
    from loc2vec.render.incremental import refresh_mosaic

    parts, info = {}, {}
    with Clock() as total:
        with Clock() as c:
            footprint = change_footprint(PBF, [edits.diff], state["grid"], state["schema"])
        parts["footprint"] = c
        with Clock() as c:
            features = refresh_feature_layers(state["features"], footprint.changes, edits.edited, out / "features")
        parts["features"] = c
        with Clock() as c:
            refresh = refresh_mosaic(state["mosaic"], features, state["spec"], footprint.units, out / "mosaic")
        parts["mosaic"] = c
        with Clock() as c:
            encoder = load_encoder(state["weights"])
            table, delta = refresh_embedding_table(
                state["table"], encoder, state["crop_px"], refresh.manifest.path, refresh.changed, SPACING_M
            )
            _write_table(table, out / "embeddings.parquet")
        parts["embeddings"] = c
        with Clock() as c:
            index = load_index(state["index_path"])
            rows = pd.Index(table["point_id"]).get_indexer(delta.updated)
            update_ivf(index, delta.removed, delta.updated, _vectors(table)[rows])
            save_index(index, out / "index.faiss")
        parts["index"] = c
    info.update(
        units=len(footprint.units),
        rendered=len(refresh.rendered_units),
        full_render=refresh.full_render,
        objects=footprint.counts.created + footprint.counts.modified + footprint.counts.deleted,
        reembedded=len(delta.updated),
        removed=len(delta.removed),
        table=table,
        index=index,
        mosaic=refresh.manifest,
    )
    return {"total": total, **parts}, info


def pipeline(state: dict, edits, out: Path) -> tuple[dict, dict]:
    """What the Dagster assets do after a diff: re-import, render inputs, the touched blocks only (the new
    version started from the current one), embeddings refreshed for the changed pixels, index updated."""
    import pandas as pd

    from loc2vec.evaluation.incremental import refresh_embedding_table
    from loc2vec.evaluation.index import load_index, save_index, update_ivf
    from loc2vec.models.encoders import load_encoder
    from loc2vec.osm.layers import build_feature_layers
    from loc2vec.render.incremental import changed_windows, start_version
    from loc2vec.render.mosaic import render_mosaic
    from loc2vec.store.mosaic import open_mosaic

    parts = {}
    with Clock() as total:
        with Clock() as c:
            features, _ = build_feature_layers(edits.edited, state["schema"], out / "features")
        parts["import"] = c
        with Clock() as c:  # render inputs, the new version started, the touched blocks rendered
            start = start_version(features, state["spec"], out / "mosaic", state["mosaic"].path)
            blocks = state["grid"].blocks_of_units(start.changed_units, BLOCKS_PER_SIDE)
            for block in blocks:
                mosaic = render_mosaic(features, state["spec"], out / "mosaic", block=block)
        parts["blocks"] = c
        with Clock() as c:
            old, new = open_mosaic(state["mosaic"].path), open_mosaic(mosaic.path)
            changed = changed_windows(old, new, new.grid.units())
            encoder = load_encoder(state["weights"])
            table, delta = refresh_embedding_table(
                state["table"], encoder, state["crop_px"], mosaic.path, changed, SPACING_M
            )
            _write_table(table, out / "embeddings.parquet")
        parts["embeddings"] = c
        with Clock() as c:
            index = load_index(state["index_path"])
            rows = pd.Index(table["point_id"]).get_indexer(delta.updated)
            update_ivf(index, delta.removed, delta.updated, _vectors(table)[rows])
            save_index(index, out / "index.faiss")
        parts["index"] = c
    mosaic = replace(mosaic, path=str(start.path), block=None)
    info = {"blocks": len(blocks), "rendered": len(start.changed_units), "table": table, "mosaic": mosaic}
    return {"total": total, **parts}, info


def full(state: dict, edits, out: Path) -> tuple[dict, dict]:
    from loc2vec.evaluation.index import build_ivf, save_index
    from loc2vec.models.encoders import load_encoder
    from loc2vec.osm.layers import build_feature_layers
    from loc2vec.render.mosaic import render_mosaic

    parts = {}
    with Clock() as total:
        with Clock() as c:
            features, _ = build_feature_layers(edits.edited, state["schema"], out / "features")
        parts["import"] = c
        with Clock() as c:
            mosaic = render_mosaic(features, state["spec"], out / "mosaic")
        parts["render"] = c
        with Clock() as c:
            encoder = load_encoder(state["weights"])
            table = _grid_table(encoder, mosaic.path, state["crop_px"])
            _write_table(table, out / "embeddings.parquet")
        parts["embeddings"] = c
        with Clock() as c:
            index = build_ivf(_vectors(table), table["point_id"].to_numpy())
            save_index(index, out / "index.faiss")
        parts["index"] = c
    return {"total": total, **parts}, {"table": table, "index": index, "mosaic": mosaic}


def check(inc: dict, ful: dict) -> tuple[bool, bool, float]:
    """Mosaic files byte-identical (and the same version), embeddings equal to float tolerance."""
    from loc2vec.io import file_digests

    same_version = inc["mosaic"].version == ful["mosaic"].version
    same_mosaic = same_version and file_digests(inc["mosaic"].path) == file_digests(ful["mosaic"].path)
    a, b = inc["table"], ful["table"]
    same_points = len(a) == len(b) and np.array_equal(a[["x", "y"]].to_numpy(), b[["x", "y"]].to_numpy())
    diff = float(np.abs(_vectors(a) - _vectors(b)).max()) if same_points else float("inf")
    return same_mosaic, same_points and diff <= 1e-5, diff


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--edits", type=int, nargs="+", default=[1, 10, 100], help="edited buildings per diff")
    ap.add_argument("--layouts", nargs="+", default=["cluster", "block"], choices=["cluster", "block"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cpu = pin_to_one_core()
    import torch

    from loc2vec.evaluation.index import build_ivf, save_index
    from loc2vec.geo import BBox
    from loc2vec.models.encoders import build_encoder, save_encoder
    from loc2vec.osm.edits import edit_buildings
    from loc2vec.osm.layers import build_feature_layers
    from loc2vec.render.mosaic import MosaicSpec, plan_grid, render_mosaic
    from loc2vec.schema import load_schema
    from loc2vec.training.config import TrainConfig

    print(
        f"incremental_bench: pinned to CPU {cpu} of {os.cpu_count()}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="incremental-bench-"))
    failed = False
    rows, pipelines = [], []
    try:
        schema, spec, config = load_schema(), MosaicSpec(blocks_per_side=BLOCKS_PER_SIDE), TrainConfig()
        with Clock() as setup:
            features, _ = build_feature_layers(PBF, schema, tmp / "before" / "features")
            mosaic = render_mosaic(features, spec, tmp / "before" / "mosaic")
            torch.manual_seed(args.seed)
            encoder = build_encoder(config.encoder, config.embedding_dim).eval()
            weights = save_encoder(encoder, tmp / "encoder.pt")
            table = _grid_table(encoder, mosaic.path, config.crop_px)
            index_path = save_index(build_ivf(_vectors(table), table["point_id"].to_numpy()), tmp / "before.faiss")
        grid = plan_grid(features, spec)
        block, units = _block_of(grid, *MONACO_CENTRE)
        within = _block_lonlat(grid, units)
        print(
            f"before the diff ({setup.wall:.1f} s): {PBF.name}, {features.n_features} features, mosaic "
            f"{grid.width}x{grid.height} px = {len(grid.units())} units of {grid.unit_px} px, {len(table)} grid "
            f"points embedded ({config.encoder}, {config.embedding_dim}-d, {config.crop_px} px crops); edits in "
            f"{block} ({len(units)} units, {within})",
            flush=True,
        )
        state = dict(
            schema=schema,
            spec=spec,
            grid=grid,
            features=features,
            mosaic=mosaic,
            weights=weights,
            crop_px=config.crop_px,
            table=table,
            index_path=index_path,
        )
        lon, lat = MONACO_CENTRE
        boxes = {
            "cluster": BBox(lon - CLUSTER_DEG[0], lat - CLUSTER_DEG[1], lon + CLUSTER_DEG[0], lat + CLUSTER_DEG[1]),
            "block": within,
        }
        for layout in args.layouts:
            for n in args.edits:
                work = tmp / f"{layout}-{n}"
                edits = edit_buildings(PBF, work / "osm", boxes[layout], n, seed=args.seed)
                inc_t, inc = incremental(state, edits, work / "incremental")
                pipe_t, pipe = pipeline(state, edits, work / "pipeline")
                full_t, ful = full(state, edits, work / "full")
                same_mosaic, same_embeddings, diff = check(inc, ful)
                pipe_same = check(pipe, ful)[:2]
                failed |= not (same_mosaic and same_embeddings and all(pipe_same))
                rows.append((layout, n, inc_t, inc, full_t, same_mosaic, same_embeddings, diff, len(ful["table"])))
                pipelines.append((layout, n, pipe_t, pipe, full_t, pipe_same))
                print(
                    f"  {layout}, {n} edits: incremental {inc_t['total'].wall:.2f} s, "
                    f"full {full_t['total'].wall:.2f} s; "
                    f"mosaic identical {same_mosaic}, embeddings equal {same_embeddings} (max |diff| {diff:.1e})",
                    flush=True,
                )
                shutil.rmtree(work, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    print(
        "\n| edits | edited buildings | diff objects | units rendered | points re-embedded | incremental s (CPU s) "
        "| full rebuild s (CPU s) | speed-up wall (CPU) | identical |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for layout, n, inc_t, inc, full_t, same_mosaic, same_emb, diff, points in rows:
        ratio, ratio_cpu = full_t["total"].wall / inc_t["total"].wall, full_t["total"].cpu / inc_t["total"].cpu
        print(
            f"| {layout} | {n} | {inc['objects']} | {inc['rendered']} of {len(state['grid'].units())} | "
            f"{inc['reembedded']} (+{inc['removed']} removed) of {points} | {inc_t['total'].wall:.2f} "
            f"({inc_t['total'].cpu:.2f}) | {full_t['total'].wall:.2f} ({full_t['total'].cpu:.2f}) | "
            f"**{ratio:.0f}×** ({ratio_cpu:.0f}×) | mosaic {'yes' if same_mosaic else 'NO'}, embeddings "
            f"{'yes' if same_emb else 'NO'} (max diff {diff:.0e}) |"
        )
    print(
        "\nthe pipeline's path (re-import, render inputs, touched blocks, embeddings refresh, index update):\n"
        "| edits | edited buildings | blocks run | units rendered | pipeline s (CPU s) | full rebuild s (CPU s) "
        "| speed-up wall (CPU) | identical |\n|---|---|---|---|---|---|---|---|"
    )
    for layout, n, pipe_t, pipe, full_t, (same_mosaic, same_emb) in pipelines:
        ratio, ratio_cpu = full_t["total"].wall / pipe_t["total"].wall, full_t["total"].cpu / pipe_t["total"].cpu
        print(
            f"| {layout} | {n} | {pipe['blocks']} of {BLOCKS_PER_SIDE**2} | {pipe['rendered']} of "
            f"{len(state['grid'].units())} | {pipe_t['total'].wall:.2f} ({pipe_t['total'].cpu:.2f}) | "
            f"{full_t['total'].wall:.2f} ({full_t['total'].cpu:.2f}) | **{ratio:.0f}×** ({ratio_cpu:.0f}×) | "
            f"mosaic {'yes' if same_mosaic else 'NO'}, embeddings {'yes' if same_emb else 'NO'} |"
        )
    print("\nparts, wall s (incremental | full):")
    for layout, n, inc_t, _, full_t, *_ in rows:
        a = ", ".join(f"{k} {v.wall:.2f}" for k, v in inc_t.items() if k != "total")
        b = ", ".join(f"{k} {v.wall:.2f}" for k, v in full_t.items() if k != "total")
        print(f"  {layout}, {n} edits: {a} | {b}")
    headline = [r for r in rows if r[1] <= 10]
    if headline:
        worst = min(r[4]["total"].wall / r[2]["total"].wall for r in headline)
        print(
            f"goal: ≥ 5× (aim 20×) for a change of ≤ 10 buildings in one block: {'met' if worst >= 5 else 'NOT met'} "
            f"(worst {worst:.1f}×)"
        )
    if failed:
        print("FAILED: the incremental result differs from the full rebuild", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
