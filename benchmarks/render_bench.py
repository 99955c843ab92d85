"""Rasterization benchmarks: rasterize once and crop versus per-sample tile rendering, crop throughput, store size.

Run ``python -m benchmarks.render_bench``. Every ratio is against a baseline measured in the same run,
interleaved with our code (round by round), on one pinned core, so load from other processes hits both
sides alike. Throughput is reported per wall second and per CPU second of this process (the latter is
what one dedicated core would deliver).

1. End to end for ``--samples`` locations (random, seeded) on the embedded Monaco extract:
   ours = render the whole mosaic once (``render_mosaic``, ``MosaicSpec()`` defaults) + load it into a
   ``CropReader`` + cut one rotated 128x128 crop per location (batches of 64);
   baseline = what a tile server does: one 12-layer 128x128 Mapnik tile per location (``ChannelRenderer``
   on a ``Window`` centred there, 12 render calls), north-up. The baseline is timed on
   ``--baseline-samples`` of the locations and extrapolated linearly. Both sides include reading the
   feature layer and building the Mapnik datasources; the OSM import (identical for both) is excluded.
2. Crop throughput at random locations and angles, batches of 64, one core: ``CropReader.crops_px``
   against reading each crop straight from the Zarr array, and against that plus ``scipy.ndimage.rotate``.
3. Store size: bytes on disk versus raw uint8, chunks written versus total.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import Clock, dir_bytes

ROOT = Path(__file__).resolve().parents[1]
PBF = ROOT / "data" / "osm" / "monaco_region_2016.osm.pbf"
CROP = 128
BATCH = 64


def pin_to_one_core() -> int:
    """Pin every thread of this process (and threads started later) to one allowed core."""
    cpu = min(os.sched_getaffinity(0))
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(OSError):
            os.sched_setaffinity(int(tid), {cpu})
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass
    return cpu


# --- 1. rasterize once and crop vs per-sample tiles ----------------------------------------------------


def sample_locations(grid, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Integer pixel centres where a rotated CROP fits inside the mosaic, and angles in [0, 2pi)."""
    rng = np.random.default_rng(seed)
    margin = math.ceil(CROP / math.sqrt(2)) + 1
    cols = rng.integers(margin, grid.width - margin, n)
    rows = rng.integers(margin, grid.height - margin, n)
    return cols, rows, rng.uniform(0.0, 2 * math.pi, n)


def run_ours(features, out_root: Path, cols, rows, angles) -> tuple[float, float, dict]:
    from loc2vec.data.crops import CropReader
    from loc2vec.render.mosaic import MosaicSpec, render_mosaic

    parts = {}
    with Clock() as total:
        with Clock() as c:
            manifest = render_mosaic(features, MosaicSpec(), out_root)
        parts["render"] = c.wall
        with Clock() as c:
            reader = CropReader.from_store(manifest.path)
        parts["load"] = c.wall
        with Clock() as c:
            checksum = 0
            for start in range(0, len(cols), BATCH):
                s = slice(start, start + BATCH)
                batch, _ = reader.crops_px(cols[s], rows[s], CROP, angles[s])
                checksum += int(batch[:, 0, 0, 0].sum())
        parts["crops"] = c.wall
    parts["path"] = manifest.path
    return total.wall, total.cpu, parts


def baseline_setup(features, grid):
    import geopandas as gpd

    from loc2vec.render.renderer import ChannelRenderer

    frame = gpd.read_parquet(features.path).to_crs(grid.crs)
    return ChannelRenderer(frame, features.schema(), grid)


def tile_window(col: int, row: int):
    from loc2vec.grid import Window

    r0, c0 = int(row) - CROP // 2, int(col) - CROP // 2
    return Window(r0, r0 + CROP, c0, c0 + CROP)


def bench_end_to_end(features, grid, tmp: Path, n: int, n_base: int, rounds: int, seed: int) -> dict:
    cols, rows, angles = sample_locations(grid, n, seed)
    subsets = np.array_split(np.arange(n_base), rounds)  # baseline: the first n_base locations
    ours_wall, ours_cpu, parts = [], [], []
    base_setup_wall, base_setup_cpu = [], []
    tile_wall = tile_cpu = 0.0
    kept_tiles = []
    for k in range(rounds):
        out_root = tmp / f"mosaic-{k}"
        wall, cpu, p = run_ours(features, out_root, cols, rows, angles)
        ours_wall.append(wall)
        ours_cpu.append(cpu)
        parts.append(p)
        with Clock() as c:
            renderer = baseline_setup(features, grid)
        base_setup_wall.append(c.wall)
        base_setup_cpu.append(c.cpu)
        with Clock() as c:
            for i in subsets[k]:
                tile = renderer.render(tile_window(cols[i], rows[i]))
                if k == 0 and len(kept_tiles) < 50:
                    kept_tiles.append((i, tile))
        tile_wall += c.wall
        tile_cpu += c.cpu
        print(
            f"  round {k + 1}/{rounds}: ours {wall:.2f} s (render {p['render']:.2f}, load {p['load']:.2f}, "
            f"{n} crops {p['crops']:.2f}); baseline setup {base_setup_wall[-1]:.2f} s + "
            f"{len(subsets[k])} tiles {c.wall:.2f} s",
            flush=True,
        )
    # the two approaches draw the same pixels: baseline tiles vs unrotated crops of our mosaic
    from loc2vec.data.crops import CropReader

    reader = CropReader.from_store(parts[-1]["path"])
    same = total = 0
    max_diff = 0
    for i, tile in kept_tiles:
        crop, _ = reader.crops_px([cols[i]], [rows[i]], CROP)
        mine = crop[0].transpose(2, 0, 1)
        diff = np.abs(mine.astype(np.int16) - tile.astype(np.int16))
        same += int((diff == 0).sum())
        total += diff.size
        max_diff = max(max_diff, int(diff.max()))
    per_tile_wall, per_tile_cpu = tile_wall / n_base, tile_cpu / n_base
    base_wall = float(np.median(base_setup_wall)) + per_tile_wall * n
    base_cpu = float(np.median(base_setup_cpu)) + per_tile_cpu * n
    return {
        "n": n,
        "n_base": n_base,
        "rounds": rounds,
        "ours_wall": float(np.median(ours_wall)),
        "ours_cpu": float(np.median(ours_cpu)),
        "render": float(np.median([p["render"] for p in parts])),
        "load": float(np.median([p["load"] for p in parts])),
        "crops": float(np.median([p["crops"] for p in parts])),
        "per_tile_ms": per_tile_wall * 1e3,
        "base_setup": float(np.median(base_setup_wall)),
        "base_wall": base_wall,
        "base_cpu": base_cpu,
        "identical_px": same / max(total, 1),
        "checked_tiles": len(kept_tiles),
        "max_diff": max_diff,
        "store": parts[-1]["path"],
    }


# --- 2. crop throughput --------------------------------------------------------------------------------


def bench_crops(store_path: str, seconds: float, rounds: int, seed: int) -> dict:
    from scipy import ndimage

    from loc2vec.data.crops import CropReader
    from loc2vec.store.mosaic import open_mosaic

    store = open_mosaic(store_path)
    arr = store.mosaic
    reader = CropReader.from_store(store_path)
    grid = store.grid
    rng = np.random.default_rng(seed)
    margin = math.ceil(CROP / math.sqrt(2)) + 1
    half = CROP // 2
    big = 2 * margin  # window that holds the rotated crop

    def batch():
        cols = rng.uniform(margin, grid.width - margin, BATCH)
        rows = rng.uniform(margin, grid.height - margin, BATCH)
        return cols, rows, rng.uniform(0.0, 2 * math.pi, BATCH)

    def ours_rotated():
        cols, rows, angles = batch()
        return reader.crops_px(cols, rows, CROP, angles)[0]

    def ours_north_up():
        cols, rows, _ = batch()
        return reader.crops_px(cols, rows, CROP)[0]

    def zarr_slices():
        cols, rows, _ = batch()
        out = np.empty((BATCH, grid_channels, CROP, CROP), np.uint8)
        for k, (c, r) in enumerate(zip(cols.astype(int), rows.astype(int), strict=True)):
            out[k] = arr[:, r - half : r + half, c - half : c + half]
        return out

    def zarr_scipy_rotate():
        cols, rows, angles = batch()
        out = np.empty((BATCH, grid_channels, CROP, CROP), np.uint8)
        for k, (c, r, a) in enumerate(zip(cols.astype(int), rows.astype(int), angles, strict=True)):
            window = arr[:, r - margin : r - margin + big, c - margin : c - margin + big]
            rotated = ndimage.rotate(window, math.degrees(a), axes=(2, 1), reshape=False, order=0)
            o = margin - half
            out[k] = rotated[:, o : o + CROP, o : o + CROP]
        return out

    grid_channels = arr.shape[0]
    methods = {
        "ours, rotated": ours_rotated,
        "ours, north-up": ours_north_up,
        "naive: Zarr slice per crop, no rotation": zarr_slices,
        "naive: Zarr window + scipy.ndimage.rotate": zarr_scipy_rotate,
    }
    budget = {name: seconds for name in methods}
    budget["naive: Zarr window + scipy.ndimage.rotate"] = seconds / 2
    counts = {name: [0, 0.0, 0.0] for name in methods}
    for fn in methods.values():
        fn()  # warm up
    for _ in range(rounds):
        for name, fn in methods.items():
            n = 0
            with Clock() as c:
                end = time.perf_counter() + budget[name] / rounds
                while time.perf_counter() < end:
                    fn()
                    n += BATCH
            counts[name][0] += n
            counts[name][1] += c.wall
            counts[name][2] += c.cpu
    return {name: (n / wall, n / cpu) for name, (n, wall, cpu) in counts.items()}


# --- 3. store size -------------------------------------------------------------------------------------


def store_size(store_path: str) -> dict:
    from loc2vec.store.mosaic import open_mosaic

    store = open_mosaic(store_path)
    arr = store.mosaic
    raw = int(np.prod(arr.shape))  # uint8
    disk = dir_bytes(Path(store_path) / "mosaic")
    return {
        "shape": tuple(arr.shape),
        "raw": raw,
        "disk": disk,
        "disk_all": dir_bytes(Path(store_path)),
        "written": int(arr.nchunks_initialized),
        "total": int(np.prod(arr.cdata_shape)),
    }


# --- main ----------------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=10_000)
    ap.add_argument("--baseline-samples", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--crop-seconds", type=float, default=6.0, help="time per crop method (split in rounds)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    cpu = pin_to_one_core()
    import mapnik
    import zarr

    from loc2vec.osm.layers import build_feature_layers
    from loc2vec.render.mosaic import MosaicSpec, plan_grid
    from loc2vec.schema import load_schema

    print(
        f"render_bench: pinned to CPU {cpu} of {os.cpu_count()}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}; mapnik {mapnik.version_string()}, "
        f"zarr {zarr.__version__}, numpy {np.__version__}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="render-bench-"))
    try:
        with Clock() as imp:
            features, _ = build_feature_layers(PBF, load_schema(), tmp / "features")
        grid = plan_grid(features, MosaicSpec())
        print(
            f"import {PBF.name}: {features.n_features} features in {imp.wall:.2f} s (excluded from both "
            f"sides); mosaic {grid.width}x{grid.height} px at {grid.resolution:g} m/px",
            flush=True,
        )

        print(
            f"\n1. {args.samples} samples: rasterize once + crop vs one Mapnik tile per sample "
            f"({args.rounds} interleaved rounds; baseline timed on {args.baseline_samples} samples "
            "and extrapolated linearly)",
            flush=True,
        )
        e2e = bench_end_to_end(features, grid, tmp, args.samples, args.baseline_samples, args.rounds, args.seed)

        print(f"\n2. crop throughput, {CROP}x{CROP}x12, batches of {BATCH}, one core", flush=True)
        crops = bench_crops(e2e["store"], args.crop_seconds, args.rounds, args.seed + 1)
        size = store_size(e2e["store"])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    speedup = e2e["base_wall"] / e2e["ours_wall"]
    speedup_cpu = e2e["base_cpu"] / e2e["ours_cpu"]
    with_import = (e2e["base_wall"] + imp.wall) / (e2e["ours_wall"] + imp.wall)
    ours_rate = crops["ours, rotated"]
    print("\n| measurement | ours | baseline | ratio |")
    print("|---|---|---|---|")
    print(
        f"| {e2e['n']:,} samples end to end, wall s (median of {e2e['rounds']}) | {e2e['ours_wall']:.2f} "
        f"| {e2e['base_wall']:.1f} (extrapolated from {e2e['n_base']}) | {speedup:.0f}× |"
    )
    print(f"| same, process CPU s | {e2e['ours_cpu']:.2f} | {e2e['base_cpu']:.1f} | {speedup_cpu:.0f}× |")
    print(
        f"| same, incl. the OSM import on both sides ({imp.wall:.2f} s) | {e2e['ours_wall'] + imp.wall:.2f} "
        f"| {e2e['base_wall'] + imp.wall:.1f} | {with_import:.0f}× |"
    )
    print(
        f"| ours split: render {e2e['render']:.2f} s, load {e2e['load']:.2f} s, crops {e2e['crops']:.2f} s; "
        f"baseline: setup {e2e['base_setup']:.2f} s + {e2e['per_tile_ms']:.2f} ms per tile | | | |"
    )
    for name, (wall, cpu_rate) in crops.items():
        if name.startswith("ours"):
            continue
        print(
            f"| rotated crops/s (ours) vs {name}, wall | {ours_rate[0]:,.0f} | {wall:,.0f} "
            f"| {ours_rate[0] / wall:.0f}× |"
        )
        print(f"| same, per CPU second | {ours_rate[1]:,.0f} | {cpu_rate:,.0f} | {ours_rate[1] / cpu_rate:.0f}× |")
    nu = crops["ours, north-up"]
    print(f"| north-up crops/s (ours), wall / per CPU s | {nu[0]:,.0f} / {nu[1]:,.0f} | | |")
    print(
        f"| store bytes on disk vs raw uint8 {size['shape']} | {size['disk'] / 2**20:.1f} MiB "
        f"| {size['raw'] / 2**20:.1f} MiB | {size['raw'] / size['disk']:.0f}× smaller |"
    )
    print(
        f"| chunks written / total (empty chunks not written) | {size['written']} | {size['total']} "
        f"| {size['written'] / size['total']:.0%} |"
    )
    print(
        f"\nsame pixels: {e2e['identical_px']:.4%} of {e2e['checked_tiles']} baseline tiles equal our "
        f"north-up crops (max difference {e2e['max_diff']})"
    )
    print(
        f"goals: end-to-end speed-up ≥ 80×: {'met' if speedup >= 80 else 'NOT met'} ({speedup:.0f}×); "
        f"rotated crops ≥ 5,000/s per core: {'met' if ours_rate[1] >= 5000 else 'NOT met'} "
        f"({ours_rate[1]:,.0f} per CPU second, {ours_rate[0]:,.0f} per wall second)"
    )


if __name__ == "__main__":
    main()
