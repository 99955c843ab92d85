"""Leave-one-region-out transfer: a model trained without region R embeds R, scored on R's protocol beside
the baselines computed on R.

For each region R of ``--regions``: ``loc2vec train-regions`` on the others (their splits, weights from the
catalog), then ``loc2vec evaluate --points-out`` on R (R's protocol: its own split and test blocks, for the
model's crop size and radii), the model embeds those points from R's mosaic, and ``loc2vec evaluate
--embeddings`` scores them with the same training config (radii, crop, untrained-baseline seed). The training
runs share ``OUT/regions/NAME`` (each region prepared once) and ``OUT``'s MLflow store; ``evaluate`` builds
R's protocol in ``OUT/evaluate/R``. Prints a table and writes ``OUT/transfer.json``. Not part of the test suite:

    .venv/bin/python benchmarks/transfer.py --regions helsinki-centre,kotka-karhula,monaco --out /tmp/transfer \\
        [--epochs N] [--seed 0] [--crop-px 64] [--train-config FILE] [--held-out NAME,...]

Without ``--train-config`` the models train with ``train-regions``' default, the transfer recipe
(``loc2vec.training.config.TRANSFER_RECIPE``); ``--train-config`` with ``{}`` trains with the plain defaults.
A region whose protocol cannot be built (too small for its leak buffer) is trained on, not scored.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
METRICS = ("landuse_recall_at_10", "landuse_balanced_recall_at_10", "poi_presence_macro_auc", "triplet_accuracy")


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, text=True, capture_output=True)
    if done.returncode:
        print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return done


def embed_points(model_json: Path, points: Path, mosaic_current: Path, out: Path) -> Path:
    """The model's place embeddings of the protocol's points, cut from R's mosaic, as a GeoParquet."""
    import geopandas as gpd

    from loc2vec.data.chunked import open_reader
    from loc2vec.evaluation.embedders import encode
    from loc2vec.models.encoders import load_encoder

    model = json.loads(model_json.read_text())
    frame = gpd.read_parquet(points)
    reader = open_reader(mosaic_current.read_text().strip())
    vectors = encode(
        load_encoder(model["weights_path"]), reader, frame[["x", "y"]].to_numpy(), model["config"]["crop_px"]
    )
    embedded = gpd.GeoDataFrame({"vector": [v.tolist() for v in vectors]}, geometry=frame.geometry, crs=frame.crs)
    embedded.to_parquet(out)
    return out


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_table(results: dict) -> None:
    print(f"{'held out':<18}{'embedder':<16}" + "".join(f"{m:>32}" for m in METRICS))
    for held_out, r in results.items():
        if not r["scored"]:
            print(f"{held_out:<18}(not scored: no default protocol on it)")
            continue
        for name, metrics in [("model", r["model"]), *r["baselines"].items()]:
            print(f"{held_out:<18}{name:<16}" + "".join(f"{_number(metrics.get(m)):>32}" for m in METRICS))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regions", default="helsinki-centre,kotka-karhula,monaco")
    p.add_argument("--out", required=True)
    p.add_argument("--catalog", default=str(ROOT / "regions.toml"))
    p.add_argument("--epochs", type=int, help="training epochs (default: the training config's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--crop-px", type=int, default=64)
    p.add_argument(
        "--train-config", help="training config JSON for train-regions (default: the transfer recipe; flags win)"
    )
    p.add_argument("--held-out", help="comma-separated regions to hold out and score (default: each of --regions)")
    args = p.parse_args()

    from loc2vec.regions import load_catalog

    catalog = load_catalog(args.catalog)
    names = [n.strip() for n in args.regions.split(",")]
    out = Path(args.out).resolve()
    results = {}
    held_outs = [n.strip() for n in args.held_out.split(",")] if args.held_out else names
    if unknown := sorted(set(held_outs) - set(names)):
        p.error(f"--held-out names regions not in --regions: {', '.join(unknown)}")
    for held_out in held_outs:
        others = [n for n in names if n != held_out]
        started = time.perf_counter()
        print(f"== {held_out}: train on {', '.join(others)}", flush=True)
        done = cli(
            "train-regions", "--regions", ",".join(others), "--catalog", args.catalog, "--out", str(out),
            "--seed", str(args.seed), "--crop-px", str(args.crop_px),
            *(["--epochs", str(args.epochs)] if args.epochs is not None else []),
            *(["--train-config", args.train_config] if args.train_config else []),
        )  # fmt: skip
        if done.returncode:
            return 1
        model_json = out / f"model-without-{held_out}.json"
        model_json.write_text((out / "model.json").read_text())
        model = json.loads(model_json.read_text())
        config = out / f"config-without-{held_out}.json"
        config.write_text(json.dumps(model["config"]))
        region = catalog.region(held_out).region
        where = ["--pbf", str(region.extract)] + (
            ["--bbox", ",".join(map(repr, region.bbox.as_tuple()))] if region.bbox else []
        )
        work = out / "evaluate" / held_out  # R's protocol as `loc2vec evaluate` builds it (its own import and render)
        points = out / f"points-{held_out}.parquet"
        # the points of the protocol the scoring below builds: the model's config (crop size, radii)
        protocol = ["--work", str(work), "--train-config", str(config)]
        if cli("evaluate", *where, "--points-out", str(points), *protocol).returncode:
            results[held_out] = {"trained_on": others, "scored": False, "model_version": model["model_version"]}
            continue
        embedded = embed_points(model_json, points, work / "mosaic" / "CURRENT", out / f"embedded-{held_out}.parquet")
        scored = out / f"eval-{held_out}"
        if cli("evaluate", *where, "--embeddings", str(embedded), "--out", str(scored), *protocol).returncode:
            return 1
        document = json.loads((scored / "evaluation.json").read_text())
        results[held_out] = {
            "trained_on": others,
            "scored": True,
            "model_version": model["model_version"],
            "seconds": round(time.perf_counter() - started),
            "model": document["model"],
            "baselines": document["baselines"],
            "n_test_locations": document.get("n_test_locations"),
        }
    (out / "transfer.json").write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
