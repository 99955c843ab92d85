"""Multi-region batches read out of core: uniform anchor draws against the neighbourhood sampler.

Run ``python -m benchmarks.multiregion_sampler`` (``--regions monaco,neubrandenburg``, the default). Each
catalog region is imported, rendered and split as ``loc2vec train-regions`` prepares it (cached under
``var/bench/multiregion`` or ``--out``; a second run reuses it). Then, in this process, each region's mosaic
is read through its own ``ChunkedCropReader`` with a cache of ``--cache-mib`` (far below the mosaics' raw
size) and ``MultiRegionBatches`` cuts the same number of batches (anchor and positive crops, rotations,
augmentation) with uniform anchor draws and with ``sampler="neighbourhood"``. The two are interleaved
round by round so that load from other processes hits both alike; printed: crops per CPU second, the
chunk cache's hit rate and chunks read per batch, and the ratio neighbourhood / uniform.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

from benchmarks.common import Clock

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(os.environ.get("LOC2VEC_BENCH_DIR", ROOT / "var/bench"))
MIB = 2**20


def prepared(names: list[str], out: Path, crop_px: int):
    """The regions' training inputs, prepared as ``train-regions`` prepares them (reused when present)."""
    from pipelines.multiregion import prepare_regions

    regions, _ = prepare_regions(names, [1.0] * len(names), None, out, lambda m: print(m, flush=True), crop_px=crop_px)
    return regions


def measure(regions, cache_mib: float, batches: int, rounds: int, batch_size: int, crop_px: int, seed: int) -> dict:
    import numpy as np

    from loc2vec.data.chunked import ChunkedCropReader
    from loc2vec.data.multiregion import MultiRegionBatches, RegionTriplets
    from loc2vec.training.config import TrainConfig

    def data():
        return [
            RegionTriplets(
                r.name,
                1.0,
                ChunkedCropReader(r.mosaic_path, int(cache_mib * MIB)),
                r.samples.xy("train"),
                np.zeros((0, 2)),
            )
            for r in regions
        ]

    base = {"crop_px": crop_px, "batch_size": batch_size, "seed": seed}
    specs = {
        "uniform": TrainConfig(**base).triplet_spec(),
        "neighbourhood": TrainConfig(**base, sampler="neighbourhood").triplet_spec(),
    }
    sets = {name: data() for name in specs}
    streams = {
        name: MultiRegionBatches(sets[name], spec, seed, epoch=0, steps=batches * rounds)
        for name, spec in specs.items()
    }
    cpu, wall = dict.fromkeys(specs, 0.0), dict.fromkeys(specs, 0.0)
    for k in range(rounds):
        for name, stream in streams.items():
            with Clock() as clock:
                for step in range(k * batches, (k + 1) * batches):
                    stream.batch(step)
            cpu[name] += clock.cpu
            wall[name] += clock.wall
    crops = 2 * batch_size * batches * rounds
    report = {}
    for name in specs:
        hits = sum(d.reader.cache.hits for d in sets[name])
        misses = sum(d.reader.cache.misses for d in sets[name])
        report[name] = {
            "crops_per_cpu_s": crops / cpu[name],
            "crops_per_wall_s": crops / wall[name],
            "cache_hit_rate": hits / max(1, hits + misses),
            "chunks_read_per_batch": misses / (batches * rounds),
        }
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regions", default="monaco,neubrandenburg")
    p.add_argument("--out", default=str(BENCH_DIR / "multiregion"))
    p.add_argument("--cache-mib", type=float, default=48.0, help="chunk cache per region's reader")
    p.add_argument("--batches", type=int, default=20, help="batches per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--crop-px", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    names = [n.strip() for n in args.regions.split(",") if n.strip()]
    started = time.perf_counter()
    regions = prepared(names, Path(args.out), args.crop_px)
    print(f"prepared {', '.join(names)} in {time.perf_counter() - started:.0f} s", flush=True)
    import math

    from loc2vec.store.mosaic import open_mosaic

    raw = {r.name: math.prod(open_mosaic(r.mosaic_path).mosaic.shape) / MIB for r in regions}
    report = measure(regions, args.cache_mib, args.batches, args.rounds, args.batch_size, args.crop_px, args.seed)
    print(
        f"mosaics' raw size: {', '.join(f'{n} {v:.0f} MiB' for n, v in raw.items())}; cache {args.cache_mib:g} MiB each"
    )
    print(f"{'sampler':<16}{'crops/CPU s':>14}{'crops/wall s':>14}{'cache hits':>12}{'chunks/batch':>14}")
    for name, r in report.items():
        print(
            f"{name:<16}{r['crops_per_cpu_s']:>14.0f}{r['crops_per_wall_s']:>14.0f}"
            f"{r['cache_hit_rate']:>12.1%}{r['chunks_read_per_batch']:>14.1f}"
        )
    u, n = report["uniform"], report["neighbourhood"]
    print(
        f"neighbourhood / uniform: {n['crops_per_cpu_s'] / u['crops_per_cpu_s']:.2f}x crops per CPU s, "
        f"{u['chunks_read_per_batch'] / max(n['chunks_read_per_batch'], 1e-9):.1f}x fewer chunk reads"
    )
    print(json.dumps({"regions": names, "raw_mib": raw, "cache_mib": args.cache_mib, "report": report}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
