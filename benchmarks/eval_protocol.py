"""Can the evaluation protocol tell embedders apart on a region? The baselines on several test-block draws.

Imports and renders ``--pbf`` (plain library calls, no Dagster), then for each split seed draws the
held-out blocks, builds the protocol's points and scores the baselines (``channel_stats``, the untrained
encoder, ``coordinates``, ``random``) exactly as the evaluation stage does. Prints, per metric, mean ± std
over the draws, the smallest ``n`` and whether the metric is ``insufficient`` in some draw, and the paired
gap between the two image embedders in each draw (channel_stats minus untrained): a metric separates
them where that gap keeps its sign and exceeds the noise. Writes every draw's numbers to ``--out`` (JSON).

    .venv/bin/python -m benchmarks.eval_protocol --pbf /work/shared/data/neubrandenburg_josm.osm.bz2 \\
        --work /tmp/nb --split-seeds 3 --out /tmp/nb/protocol.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from benchmarks.common import Clock
from loc2vec.data.crops import CropReader
from loc2vec.data.locations import build_sample_locations
from loc2vec.data.samples import SplitSpec
from loc2vec.evaluation.metrics import METRICS, held_out_triplets, score
from loc2vec.evaluation.protocol import ProtocolSpec, build_points
from loc2vec.evaluation.run import METRIC_THREADS, baseline_embeddings, protocol_radii
from loc2vec.evaluation.support import merge_support, metric_support
from loc2vec.geo import BBox
from loc2vec.osm.layers import build_feature_layers
from loc2vec.render.mosaic import MosaicSpec, render_mosaic
from loc2vec.schema import load_schema
from loc2vec.training.config import TrainConfig

IMAGE_EMBEDDERS = ("channel_stats", "untrained")


def score_draw(reader: CropReader, features, work: Path, split_seed: int, mosaic_version: str) -> dict:
    """One draw of the test blocks: the baselines' metrics and the support of each metric."""
    samples, _ = build_sample_locations(reader, SplitSpec(seed=split_seed), mosaic_version, work / "samples")
    spec = samples.split_spec()
    leak = samples.leak_distance_m
    points = build_points(samples.read(), features.read(), reader, spec.block_m, leak, ProtocolSpec())
    config = TrainConfig(crop_px=spec.crop_px)
    radii = protocol_radii(config, reader.grid.resolution)
    with Clock() as embed_clock:
        embeddings = baseline_embeddings(points, reader, config)
    with Clock() as score_clock, threadpool_limits(limits=METRIC_THREADS):
        scores = {name: score(emb, points, seed=0, **radii) for name, emb in embeddings.items()}
    test_xy = points.loc[(points["kind"] == "location") & (points["split"] == "test"), ["x", "y"]].to_numpy()
    triplets = held_out_triplets(test_xy, radii["r_pos"], radii["r_neg"], 1000, 0)
    counts = points.groupby(["kind", "split"]).size()
    return {
        "split_seed": split_seed,
        "points": {f"{k}/{s}": int(v) for (k, s), v in counts.items()},
        "scores": scores,
        "support": metric_support(points, len(triplets)),
        "seconds": {"embed": round(embed_clock.wall, 1), "score": round(score_clock.wall, 1)},
    }


def _stats(values: list[float]) -> tuple[float, float]:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    return (float(arr.mean()), float(arr.std())) if arr.size else (math.nan, math.nan)


def summary_rows(draws: list[dict]) -> list[list[str]]:
    """Per metric: mean ± std per embedder, the smallest n, insufficient, and the per-draw paired gap."""
    names = list(draws[0]["scores"])
    support = merge_support([d["support"] for d in draws])
    rows = []
    for metric in METRICS:
        cells = ["{:.3f} ± {:.3f}".format(*_stats([d["scores"][n][metric] for d in draws])) for n in names]
        gaps = [d["scores"][IMAGE_EMBEDDERS[0]][metric] - d["scores"][IMAGE_EMBEDDERS[1]][metric] for d in draws]
        flag = "insufficient" if support[metric]["insufficient"] else ""
        rows.append([metric, *cells, str(support[metric]["n"]), flag, " / ".join(f"{g:+.3f}" for g in gaps)])
    return rows


def print_table(draws: list[dict]) -> None:
    names = list(draws[0]["scores"])
    header = ["metric", *names, "n (min)", "", f"{IMAGE_EMBEDDERS[0]} - {IMAGE_EMBEDDERS[1]} per draw"]
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in summary_rows(draws):
        print("| " + " | ".join(row) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbf")
    parser.add_argument("--bbox", help="lon_min,lat_min,lon_max,lat_max (default: the whole extract)")
    parser.add_argument("--work", help="directory for features, mosaic and samples")
    parser.add_argument("--split-seeds", type=int, default=3)
    parser.add_argument("--out", help="JSON with every draw's numbers")
    parser.add_argument("--table-from", help="print the table of a JSON written by --out, and stop")
    args = parser.parse_args(argv)
    if args.table_from:
        print_table(json.loads(Path(args.table_from).read_text())["draws"])
        return 0
    if not (args.pbf and args.work):
        parser.error("--pbf and --work are required (or --table-from)")
    work = Path(args.work)
    bbox = BBox(*map(float, args.bbox.split(","))) if args.bbox else None
    with Clock() as prep:
        features, _ = build_feature_layers(args.pbf, load_schema(), work / "features", bbox=bbox)
        mosaic = render_mosaic(features, MosaicSpec(blocks_per_side=1), work / "mosaic")
    reader = CropReader.from_store(mosaic.path)
    print(f"import + render: {prep.wall:.0f} s; mosaic {reader.width} x {reader.height} px")
    draws = []
    for seed in range(args.split_seeds):
        draws.append(score_draw(reader, features, work, seed, mosaic.version))
        print(f"split seed {seed}: {draws[-1]['points']} {draws[-1]['seconds']}", flush=True)
    print_table(draws)
    if args.out:
        Path(args.out).write_text(json.dumps({"pbf": str(args.pbf), "bbox": args.bbox, "draws": draws}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
