"""Scale benchmark: a region far larger than memory, from import to training through the chunk cache.

Run ``python -m benchmarks.scale_bench`` (``--tiles 121``: the 206 MiB file of 121 Monaco copies from
``benchmarks/tiled_pbf.py``, built and cached under ``var/bench/`` or ``$LOC2VEC_BENCH_DIR``; ``--tiles``
11, 33, ... for a smaller run). Every stage runs in a fresh child process, which reports its own wall
and CPU seconds and peak RSS (``ru_maxrss``), so the stages' memory is measured apart:

1. Import the whole tiled file as one region (``build_feature_layers``, no bbox).
2. Render through the block partitions: ``render_mosaic(..., block=...)`` for each of ``--blocks``² blocks,
   one child process per partition (as Dagster runs them), ``--jobs`` at a time. Total wall time, the
   mosaic's size on disk against its raw size, chunks written.
3. Sample locations over the whole mosaic with the out-of-core reader (``build_sample_locations``).
4. Training from the mosaic (``loc2vec.training.loop.train``, small_cnn, 128-px crops, batches of 64,
   ``sampler="neighbourhood"``) through a chunk cache of at most a tenth of the mosaic's raw size:
   peak RSS of the process, samples/s and the loop's data-wait share.
5. Crop throughput in the same run, one child process: ``TripletBatches.batch`` (anchor + positive crops,
   rotations, augmentation) per CPU second, with the in-memory ``CropReader`` holding a
   ``--window``-px square window of the mosaic (the in-memory reader cannot hold the whole one) against
   the chunked reader, on the window's anchors and on all train anchors of the whole mosaic, and the
   chunked reader with uniform draws (what the neighbourhood sampler saves). Readers are interleaved
   round by round so that load from other processes hits all of them alike.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path

from benchmarks.common import dir_bytes

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "osm" / "monaco_region_2016.osm.pbf"
BENCH_DIR = Path(os.environ.get("LOC2VEC_BENCH_DIR", ROOT / "var/bench"))
GRID_COLS = 11  # the import benchmark's grid: the files share their first tiles
CROP, BATCH = 128, 64
GOAL_RSS_GIB, GOAL_THROUGHPUT, GOAL_WAIT = 2.0, 0.5, 0.10
MIB = 2**20


def _usage() -> dict:
    own = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_s": own.ru_utime + own.ru_stime, "peak_rss_mib": own.ru_maxrss / 1024}


# --- child stages: each prints one JSON line -----------------------------------------------------------------


def stage_import(pbf: str, out: str) -> dict:
    from loc2vec.osm.layers import build_feature_layers
    from loc2vec.schema import load_schema

    started = time.perf_counter()
    features, _ = build_feature_layers(pbf, load_schema(), Path(out) / "features")
    return {"seconds": time.perf_counter() - started, "features": features.to_dict(), **_usage()}


def stage_render(features_json: str, out: str, block: str, blocks: int) -> dict:
    from loc2vec.osm.layers import FeaturesManifest
    from loc2vec.render.mosaic import MosaicSpec, render_mosaic

    features = FeaturesManifest(**json.loads(Path(features_json).read_text()))
    started = time.perf_counter()
    manifest = render_mosaic(features, MosaicSpec(resolution=3.0, blocks_per_side=blocks), Path(out), block=block)
    return {"seconds": time.perf_counter() - started, "mosaic": manifest.to_dict(), **_usage()}


def stage_samples(mosaic_path: str, version: str, out: str, cache_mib: float) -> dict:
    from loc2vec.data.chunked import ChunkedCropReader
    from loc2vec.data.locations import build_sample_locations
    from loc2vec.data.samples import SplitSpec

    reader = ChunkedCropReader(mosaic_path, int(cache_mib * MIB))
    started = time.perf_counter()
    manifest, report = build_sample_locations(reader, SplitSpec(seed=0), version, Path(out))
    return {
        "seconds": time.perf_counter() - started,
        "samples": asdict(manifest),
        "leakage_violations": report.violations,
        "cache": {"misses": reader.cache.misses, "hits": reader.cache.hits},
        **_usage(),
    }


def stage_train(mosaic_path: str, samples_json: str, out: str, cache_mib: float, epochs: int, steps: int) -> dict:
    import torch

    from loc2vec.data.chunked import open_reader
    from loc2vec.data.locations import SamplesManifest
    from loc2vec.training.config import TrainConfig
    from loc2vec.training.device import select_device
    from loc2vec.training.loop import train

    samples = SamplesManifest(**json.loads(Path(samples_json).read_text()))
    config = TrainConfig(
        epochs=epochs,
        steps_per_epoch=steps,
        batch_size=BATCH,
        crop_px=CROP,
        patience=epochs,
        sampler="neighbourhood",
        crop_reader="chunked",
        cache_mib=cache_mib,
    )
    reader = open_reader(mosaic_path, config.reader_config())
    train_xy, val_xy = samples.xy("train"), samples.xy("val")
    started = time.perf_counter()
    result = train(config, reader, train_xy, val_xy, select_device("cpu"), Path(out) / "checkpoints")
    cache = reader.cache
    return {
        "seconds": time.perf_counter() - started,
        "history": [asdict(h) for h in result.history],
        "n_train": len(train_xy),
        "torch_threads": torch.get_num_threads(),
        "cache": {
            "budget_mib": cache.max_bytes / MIB,
            "held_mib": cache.current_bytes / MIB,
            "chunks": len(cache),
            "hits": cache.hits,
            "misses": cache.misses,
        },
        **_usage(),
    }


def stage_throughput(mosaic_path: str, samples_json: str, cache_mib: float, window: int, batches: int) -> dict:
    import numpy as np

    from loc2vec.data.chunked import ChunkedCropReader
    from loc2vec.data.crops import CropReader
    from loc2vec.data.locations import SamplesManifest
    from loc2vec.data.triplets import TripletBatches, TripletSpec
    from loc2vec.grid import Window

    samples = SamplesManifest(**json.loads(Path(samples_json).read_text()))
    xy = samples.xy("train")
    chunked = ChunkedCropReader(mosaic_path, int(cache_mib * MIB))
    grid = chunked.grid
    cols, rows = grid.xy_to_pixel(xy[:, 0], xy[:, 1])
    # the window: the square of side ``window`` around the train anchors' median (where the data is densest)
    r0 = int(np.clip(np.median(rows) - window / 2, 0, max(0, grid.height - window)))
    c0 = int(np.clip(np.median(cols) - window / 2, 0, max(0, grid.width - window)))
    win = Window(r0, min(r0 + window, grid.height), c0, min(c0 + window, grid.width))
    margin = 200  # anchors whose crops and positives stay inside the window
    inside = (
        (rows >= win.row0 + margin)
        & (rows < win.row1 - margin)
        & (cols >= win.col0 + margin)
        & (cols < win.col1 - margin)
    )
    t = time.perf_counter()
    memory = CropReader.from_store(mosaic_path, window=win)
    load_s = time.perf_counter() - t
    neighbourhood = TripletSpec(crop_px=CROP, batch_size=BATCH, sampler="neighbourhood")
    uniform = TripletSpec(crop_px=CROP, batch_size=BATCH)
    window_xy, rounds = xy[inside], 3
    variants = {
        "in-memory CropReader, window anchors": (memory, window_xy, neighbourhood),
        "chunked, window anchors": (ChunkedCropReader(mosaic_path, int(cache_mib * MIB)), window_xy, neighbourhood),
        "chunked, all train anchors": (chunked, xy, neighbourhood),
        "chunked, all train anchors, uniform draws": (
            ChunkedCropReader(mosaic_path, int(cache_mib * MIB)),
            xy,
            uniform,
        ),
    }
    datasets = {
        name: TripletBatches(reader, anchors, spec, seed=0, epoch=0, steps=batches * rounds)
        for name, (reader, anchors, spec) in variants.items()
    }
    cpu = dict.fromkeys(variants, 0.0)
    wall = dict.fromkeys(variants, 0.0)
    for k in range(rounds):
        for name, data in datasets.items():
            w0, c0_ = time.perf_counter(), time.process_time()
            for step in range(k * batches, (k + 1) * batches):
                data.batch(step)
            wall[name] += time.perf_counter() - w0
            cpu[name] += time.process_time() - c0_
    crops = 2 * BATCH * batches * rounds  # anchors and positives
    caches = {
        name: {"hits": r.cache.hits, "misses": r.cache.misses, "held_mib": r.cache.current_bytes / MIB}
        for name, (r, _, _) in variants.items()
        if isinstance(r, ChunkedCropReader)
    }
    return {
        "window": [win.row0, win.row1, win.col0, win.col1],
        "window_raw_mib": 12 * win.height * win.width / MIB,
        "window_load_s": load_s,
        "anchors": {"window": int(inside.sum()), "all": len(xy)},
        "crops_per_cpu_s": {name: crops / cpu[name] for name in variants},
        "crops_per_wall_s": {name: crops / wall[name] for name in variants},
        "caches": caches,
        **_usage(),
    }


STAGES = {
    "import": stage_import,
    "render": stage_render,
    "samples": stage_samples,
    "train": stage_train,
    "throughput": stage_throughput,
}


def child(stage: str, *args) -> dict:
    """Run ``stage`` in a fresh process (niced like the parent) and return its JSON report."""
    cmd = [sys.executable, "-m", "benchmarks.scale_bench", "--stage", stage, "--", *map(str, args)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"stage {stage} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the parent ---------------------------------------------------------------------------------------------


def tiled_file(tiles: int) -> Path:
    from benchmarks.tiled_pbf import build_tiled_extracts

    path = BENCH_DIR / f"{SOURCE.name.split('.')[0]}_x{tiles}.osm.pbf"
    t = time.perf_counter()
    fresh = not path.exists()
    build_tiled_extracts(SOURCE, {tiles: path}, GRID_COLS)
    if fresh:
        print(f"(built {path.name} in {time.perf_counter() - t:.0f} s)", flush=True)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=int, default=121, help="Monaco copies in the tiled file (11 per row)")
    parser.add_argument("--blocks", type=int, default=4, help="render partitions per side (blocks²)")
    parser.add_argument("--jobs", type=int, default=2, help="render partitions running at once")
    parser.add_argument("--cache-share", type=float, default=0.1, help="chunk cache, share of the raw mosaic")
    parser.add_argument("--cache-max-mib", type=float, default=160.0, help="and at most this many MiB")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps", type=int, default=40, help="training steps per epoch")
    parser.add_argument("--window", type=int, default=4096, help="side (px) of the in-memory reader's window")
    parser.add_argument("--batches", type=int, default=12, help="batches per reader per round (throughput)")
    parser.add_argument("--work", type=Path, default=None, help="work directory (default: under the bench dir)")
    parser.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    parser.add_argument("args", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.stage:
        types = STAGES[args.stage].__annotations__
        values = [
            (float if types[name] == "float" else int if types[name] == "int" else str)(value)
            for name, value in zip(list(types)[: len(args.args)], args.args, strict=True)
        ]
        print(json.dumps(STAGES[args.stage](*values)))
        return 0
    return run(args)


def run(args: argparse.Namespace) -> int:
    from loc2vec.grid import block_keys
    from loc2vec.store.mosaic import open_mosaic

    started = time.perf_counter()
    print(f"scale benchmark: {args.tiles} tiles, {args.blocks}² render partitions, load {os.getloadavg()[0]:.1f}")
    pbf = tiled_file(args.tiles)
    work = args.work or BENCH_DIR / f"scale-x{args.tiles}"
    if work.exists():
        import shutil

        shutil.rmtree(work)
    work.mkdir(parents=True)
    report: dict = {"tiles": args.tiles, "pbf_mib": pbf.stat().st_size / MIB, "blocks_per_side": args.blocks}

    imported = child("import", pbf, work)
    features_json = work / "features.json"
    features_json.write_text(json.dumps(imported["features"]))
    report["import"] = {k: imported[k] for k in ("seconds", "cpu_s", "peak_rss_mib")}
    report["import"]["features"] = imported["features"]["n_features"]
    print(
        f"1. import: {imported['features']['n_features']:,} features in {imported['seconds']:.0f} s, "
        f"peak RSS {imported['peak_rss_mib']:.0f} MiB",
        flush=True,
    )

    t = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        parts = list(
            pool.map(lambda b: child("render", features_json, work / "mosaic", b, args.blocks), block_keys(args.blocks))
        )
    render_wall = time.perf_counter() - t
    mosaic = parts[0]["mosaic"]
    store = open_mosaic(mosaic["path"])
    raw = int(store.mosaic.nbytes)
    on_disk = dir_bytes(Path(mosaic["path"]) / "mosaic")
    report["render"] = {
        "wall_s": render_wall,
        "partition_seconds_sum": sum(p["seconds"] for p in parts),
        "partition_cpu_s_sum": sum(p["cpu_s"] for p in parts),
        "partition_peak_rss_mib_max": max(p["peak_rss_mib"] for p in parts),
        "units": sum(p["mosaic"]["rendered_units"] for p in parts),
        "shape": list(store.mosaic.shape),
        "raw_mib": raw / MIB,
        "store_mib": on_disk / MIB,
        "chunks_written": int(store.mosaic.nchunks_initialized),
        "chunks_total": int(store.mosaic.nchunks),
        "complete": store.is_complete(),
    }
    r = report["render"]
    print(
        f"2. render: {r['units']} units in {render_wall:.0f} s wall ({args.jobs} at a time), "
        f"mosaic {r['shape']} = {r['raw_mib']:,.0f} MiB raw, {r['store_mib']:,.0f} MiB on disk, "
        f"{r['chunks_written']:,}/{r['chunks_total']:,} chunks written",
        flush=True,
    )

    cache_mib = min(args.cache_share * raw / MIB, args.cache_max_mib)
    report["cache_mib"] = cache_mib
    sampled = child("samples", mosaic["path"], mosaic["version"], work / "samples", cache_mib)
    samples_json = work / "samples.json"
    samples_json.write_text(json.dumps(sampled["samples"]))
    report["samples"] = {k: sampled[k] for k in ("seconds", "cpu_s", "peak_rss_mib", "leakage_violations", "cache")}
    report["samples"]["counts"] = sampled["samples"]["counts"]
    print(
        f"3. samples: {sampled['samples']['counts']} in {sampled['seconds']:.0f} s, "
        f"peak RSS {sampled['peak_rss_mib']:.0f} MiB",
        flush=True,
    )

    trained = child("train", mosaic["path"], samples_json, work / "train", cache_mib, args.epochs, args.steps)
    history = trained["history"]
    report["train"] = {k: trained[k] for k in ("seconds", "cpu_s", "peak_rss_mib", "cache", "n_train")}
    report["train"]["epochs"] = [
        {k: h[k] for k in ("seconds", "samples_per_s", "data_wait_share", "train_loss", "val_loss")} for h in history
    ]
    print(
        f"4. train: peak RSS {trained['peak_rss_mib']:.0f} MiB, "
        + ", ".join(
            f"epoch {h['epoch']}: {h['samples_per_s']:.0f} samples/s, wait {h['data_wait_share']:.1%}" for h in history
        ),
        flush=True,
    )

    speed = child("throughput", mosaic["path"], samples_json, cache_mib, args.window, args.batches)
    report["throughput"] = speed
    per_cpu = speed["crops_per_cpu_s"]
    reference = per_cpu["in-memory CropReader, window anchors"]
    for name, rate in per_cpu.items():
        print(
            f"5. {name}: {rate:,.0f} crops/CPU s ({rate / reference:.2f}x), "
            f"{speed['crops_per_wall_s'][name]:,.0f} crops/wall s",
            flush=True,
        )

    rss_gib = trained["peak_rss_mib"] / 1024
    ratio = per_cpu["chunked, all train anchors"] / reference
    wait = max(h["data_wait_share"] for h in history[1:] or history)
    report["goals"] = {
        "peak_rss_gib": rss_gib,
        "peak_rss_met": rss_gib < GOAL_RSS_GIB,
        "throughput_ratio": ratio,
        "throughput_met": ratio >= GOAL_THROUGHPUT,
        "data_wait_share": wait,
        "data_wait_met": wait < GOAL_WAIT,
        "cache_share_of_raw": cache_mib * MIB / raw,
    }
    g = report["goals"]
    print(
        f"goals: peak RSS {rss_gib:.2f} GiB < {GOAL_RSS_GIB} {'met' if g['peak_rss_met'] else 'NOT met'}; "
        f"throughput {ratio:.2f}x >= {GOAL_THROUGHPUT} {'met' if g['throughput_met'] else 'NOT met'}; "
        f"data wait {wait:.1%} < {GOAL_WAIT:.0%} {'met' if g['data_wait_met'] else 'NOT met'} "
        f"(cache {cache_mib:.0f} MiB = {g['cache_share_of_raw']:.1%} of the raw mosaic)"
    )
    report["total_s"] = time.perf_counter() - started
    report["load_average_end"] = os.getloadavg()
    (work / "report.json").write_text(json.dumps(report, indent=2))
    print(f"total {report['total_s']:.0f} s; report in {work / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
