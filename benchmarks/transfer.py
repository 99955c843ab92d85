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

``--own-region`` asks the other question: is the multi-region model worse on a region it trained on? One model
is trained on every region of ``--regions``, and for each region R (or each of ``--held-out``) one on R alone;
both embed R's protocol points and are scored on R's own test blocks (both trained on R's train blocks only;
``min_test_train_m`` records how far R's test points lie from any anchor they trained or validated on). Writes
``OUT/own-region.json``, with ``lead_over_alone``: the model of all regions minus R's own model on the bar's
metrics and its paired bootstrap interval (``--own-region --leads-only`` adds it to an earlier run's file).
``--weights monaco=1,kotka-karhula=0.2,...`` sets the regions' sampling weights of every training (each
training passes those of its regions to ``train-regions --weights``). ``--all-train-config FILE`` trains the
model of all regions with its own config (for example more steps per epoch, so that each region gets as many
anchors as its own model), and ``--alone-from DIR`` takes each region's own model, protocol and scores from an
earlier ``--own-region`` run of the same seed and crop size instead of training them again.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
METRICS = (
    "landuse_recall_at_10",
    "landuse_balanced_recall_at_10",
    "landuse_probe_macro_f1",
    "poi_presence_macro_auc",
    "triplet_accuracy",
)


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    done = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, text=True, capture_output=True)
    if done.returncode:
        print(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}")
    return done


def embed_points(
    model_json: Path, points: Path, mosaic_current: Path, out: Path, adapt: bool = False, untrained: bool = False
) -> Path:
    """The model's place embeddings of the protocol's points, cut from R's mosaic, as a GeoParquet. ``adapt``:
    with batch-norm statistics recomputed on R's train locations (``loc2vec.evaluation.adapt``);
    ``untrained``: the untrained baseline's encoder (the model's architecture, its seeded initial weights)."""
    import geopandas as gpd

    from loc2vec.data.chunked import open_reader
    from loc2vec.evaluation.adapt import adapt_batchnorm
    from loc2vec.evaluation.embedders import encode
    from loc2vec.evaluation.run import untrained_encoder
    from loc2vec.models.encoders import load_encoder
    from loc2vec.training.config import TrainConfig

    model = json.loads(model_json.read_text())
    config = TrainConfig(**model["config"])
    frame = gpd.read_parquet(points)
    reader = open_reader(mosaic_current.read_text().strip())
    encoder = untrained_encoder(config, reader.channels) if untrained else load_encoder(model["weights_path"])
    if adapt:
        train = frame.loc[(frame["split"] == "train") & (frame["kind"] == "location"), ["x", "y"]].to_numpy()
        encoder = adapt_batchnorm(encoder, reader, train, config.crop_px, seed=config.seed)
    return write_embedded(encode(encoder, reader, frame[["x", "y"]].to_numpy(), config.crop_px), frame, out)


def write_embedded(vectors, frame, out: Path) -> Path:
    """``vectors`` of the protocol's points (``frame``, in its order) as the GeoParquet ``evaluate
    --embeddings`` scores."""
    import geopandas as gpd

    embedded = gpd.GeoDataFrame({"vector": [v.tolist() for v in vectors]}, geometry=frame.geometry, crs=frame.crs)
    embedded.to_parquet(out)
    return out


def _number(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def print_table(results: dict) -> None:
    print(f"{'held out':<18}{'embedder':<24}" + "".join(f"{m:>32}" for m in METRICS))
    for held_out, r in results.items():
        if not r["scored"]:
            print(f"{held_out:<18}(not scored: no default protocol on it)")
            continue
        rows = [
            (label, r[key])
            for key, label in (
                ("model", "model"),
                ("model_alone", "model (alone)"),
                ("model_adapted", "model (BN adapted)"),
                ("model_alone_adapted", "alone (BN adapted)"),
                ("untrained_adapted", "untrained (BN adapted)"),
            )
            if key in r
        ]
        for name, metrics in [*rows, *r["baselines"].items()]:
            print(f"{held_out:<18}{name:<24}" + "".join(f"{_number(metrics.get(m)):>32}" for m in METRICS))


def train(names: list[str], args: argparse.Namespace, out: Path, tag: str, train_config: str | None = None) -> Path:
    """``loc2vec train-regions`` on ``names`` (with ``--weights`` of those regions, when given, and
    ``train_config`` or else ``--train-config``); the model's manifest copied to ``OUT/model-<tag>.json``."""
    train_config = train_config or args.train_config
    weights = [args.weights[n] for n in names] if args.weights and len(names) > 1 else []
    done = cli(
        "train-regions", "--regions", ",".join(names), "--catalog", args.catalog, "--out", str(out),
        "--seed", str(args.seed), "--crop-px", str(args.crop_px),
        *(["--weights", ",".join(weights)] if weights else []),
        *(["--epochs", str(args.epochs)] if args.epochs is not None else []),
        *(["--train-config", train_config] if train_config else []),
    )  # fmt: skip
    if done.returncode:
        raise SystemExit(1)
    model_json = out / f"model-{tag}.json"
    model_json.write_text((out / "model.json").read_text())
    return model_json


class Protocol(NamedTuple):
    """R's protocol for a model's config: the ``evaluate`` arguments that build it, its points and work dir."""

    args: list[str]
    points: Path
    work: Path


def region_protocol(catalog, name: str, model_json: Path, out: Path) -> Protocol | None:
    """R's protocol for the model's config (None: R has no protocol)."""
    (out / f"config-{name}.json").write_text(json.dumps(json.loads(model_json.read_text())["config"]))
    protocol = written_protocol(catalog, name, out)
    if cli("evaluate", "--points-out", str(protocol.points), *protocol.args).returncode:
        return None
    return protocol


def written_protocol(catalog, name: str, out: Path) -> Protocol:
    """R's protocol in OUT as ``region_protocol`` lays it out: built for the model config in
    ``OUT/config-R.json`` (crop size, radii), its work dir ``OUT/evaluate/R`` (``loc2vec evaluate``'s own
    import and render of R) and its points in ``OUT/points-R.parquet``."""
    region = catalog.region(name).region
    where = ["--pbf", str(region.extract)] + (
        ["--bbox", ",".join(map(repr, region.bbox.as_tuple()))] if region.bbox else []
    )
    work = out / "evaluate" / name
    args = [*where, "--work", str(work), "--train-config", str(out / f"config-{name}.json")]
    return Protocol(args, out / f"points-{name}.parquet", work)


class HeldOut(NamedTuple):
    """A held-out region R of a run directory: the config R's model trained with, R's protocol, its points,
    the reader of R's mosaic and the manifest of the model trained without R."""

    config: object
    protocol: Protocol
    frame: object
    reader: object
    model: dict


def held_out(run: Path, region: str, catalog_path: str) -> HeldOut:
    """What the analysis benchmarks read of R in a ``transfer.py --out`` directory (``OUT/model-without-R.json``,
    R's protocol as ``written_protocol`` lays it out)."""
    import geopandas as gpd

    from loc2vec.data.chunked import open_reader
    from loc2vec.regions import load_catalog
    from loc2vec.training.config import TrainConfig

    model = json.loads((run / f"model-without-{region}.json").read_text())
    protocol = written_protocol(load_catalog(catalog_path), region, run)
    reader = open_reader((protocol.work / "mosaic" / "CURRENT").read_text().strip())
    return HeldOut(TrainConfig(**model["config"]), protocol, gpd.read_parquet(protocol.points), reader, model)


def score_model(model_json: Path, protocol: Protocol, out: Path, tag: str, adapt: bool = False) -> dict:
    """The evaluation document of the model's embeddings of R's protocol points (baselines beside them);
    with ``adapt`` also ``model_adapted`` and ``untrained_adapted``: the model's and the untrained encoder's
    metrics with batch-norm statistics recomputed on R's train locations."""
    document = _score_embeddings(model_json, protocol, out, tag)
    if adapt:
        for name, untrained in (("model_adapted", False), ("untrained_adapted", True)):
            document[name] = _score_embeddings(
                model_json, protocol, out, f"{tag}-{name}", adapt=True, untrained=untrained
            )["model"]
    return document


def _score_embeddings(model_json: Path, protocol: Protocol, out: Path, tag: str, **embedding) -> dict:
    mosaic = protocol.work / "mosaic" / "CURRENT"
    embedded = embed_points(model_json, protocol.points, mosaic, out / f"embedded-{tag}.parquet", **embedding)
    return score_embedded(protocol, embedded, out / f"eval-{tag}")


def score_embedded(protocol: Protocol, embedded: Path, scored: Path) -> dict:
    """``loc2vec evaluate --embeddings`` of a GeoParquet of R's protocol points: its evaluation document."""
    if cli("evaluate", *protocol.args, "--embeddings", str(embedded), "--out", str(scored)).returncode:
        raise SystemExit(1)
    return json.loads((scored / "evaluation.json").read_text())


def min_test_train_m(points: Path, samples_path: str) -> float:
    """The shortest distance (m) from a protocol test point to an anchor R's model trained or validated on."""
    import geopandas as gpd
    import pandas as pd
    from scipy.spatial import cKDTree

    frame = gpd.read_parquet(points)
    test = frame.loc[frame["split"] == "test", ["x", "y"]].to_numpy()
    anchors = pd.read_parquet(samples_path, columns=["x", "y", "split"])
    seen = anchors.loc[anchors["split"].isin(["train", "val"]), ["x", "y"]].to_numpy()
    return float(cKDTree(seen).query(test)[0].min())


def leave_one_out(names: list[str], held_outs: list[str], catalog, args: argparse.Namespace, out: Path) -> dict:
    results = {}
    for held_out in held_outs:
        others = [n for n in names if n != held_out]
        started = time.perf_counter()
        print(f"== {held_out}: train on {', '.join(others)}", flush=True)
        model_json = train(others, args, out, f"without-{held_out}")
        model = json.loads(model_json.read_text())
        found = region_protocol(catalog, held_out, model_json, out)
        if found is None:
            results[held_out] = {"trained_on": others, "scored": False, "model_version": model["model_version"]}
            continue
        document = score_model(model_json, found, out, held_out, adapt=args.adapt_norm)
        results[held_out] = {
            "trained_on": others,
            "scored": True,
            "model_version": model["model_version"],
            "seconds": round(time.perf_counter() - started),
            "model": document["model"],
            "baselines": document["baselines"],
            **{k: document[k] for k in ("model_adapted", "untrained_adapted") if k in document},
            "n_test_locations": document.get("n_test_locations"),
            "insufficient": document.get("insufficient", []),
            "leads": document.get("leads"),
        }
    return results


def lead_over_alone(out: Path, name: str) -> dict[str, dict[str, float] | None]:
    """The model of all regions minus R's own model on the bar's metrics, each with the paired bootstrap
    interval of ``loc2vec.evaluation.significance`` (both embeddings of R's protocol points, as
    ``own_region`` lays them out in OUT, scored on the same resamples of R's test examples)."""
    import geopandas as gpd
    import numpy as np

    from loc2vec.data.chunked import open_reader
    from loc2vec.evaluation.run import protocol_radii, scored_with_leads
    from loc2vec.training.config import TrainConfig

    config = TrainConfig(**json.loads((out / f"config-{name}.json").read_text()))
    points = gpd.read_parquet(out / f"points-{name}.parquet")
    reader = open_reader((out / "evaluate" / name / "mosaic" / "CURRENT").read_text().strip())
    radii = protocol_radii(config, reader.grid.resolution)
    vectors = {
        tag: np.stack(gpd.read_parquet(out / f"embedded-{tag}-{name}.parquet")["vector"].to_numpy())
        for tag in ("all", "alone")
    }
    everywhere, alone = vectors["all"], {"alone": vectors["alone"]}
    return scored_with_leads(everywhere, alone, points, radii, config.seed, lead_over=("alone",))[2]["alone"]


def own_region(names: list[str], held_outs: list[str], catalog, args: argparse.Namespace, out: Path) -> dict:
    """Each region R's own test blocks: the model trained on every region against one trained on R alone."""
    print(f"== all: train on {', '.join(names)}", flush=True)
    everywhere = train(names, args, out, "all", args.all_train_config)
    results = {}
    for name in held_outs:
        if args.alone_from:
            print(f"== {name}: R alone from {args.alone_from}", flush=True)
            alone, found, alone_document = earlier_alone(Path(args.alone_from).resolve(), name, catalog, out, args)
        else:
            print(f"== {name}: train on {name} alone", flush=True)
            alone = train([name], args, out, f"only-{name}")
            found = region_protocol(catalog, name, alone, out)
            alone_document = None if found is None else score_model(alone, found, out, f"alone-{name}", args.adapt_norm)
        if found is None:
            results[name] = {"scored": False}
            continue
        documents = {
            "all": score_model(everywhere, found, out, f"all-{name}", adapt=args.adapt_norm),
            "alone": alone_document,
        }
        results[name] = {
            "scored": True,
            "trained_on": {"all": names, "alone": [name]},
            "model": documents["all"]["model"],
            "model_alone": documents["alone"]["model"],
            "baselines": documents["all"]["baselines"],
            **{k: documents["all"][k] for k in ("model_adapted", "untrained_adapted") if k in documents["all"]},
            **({"model_alone_adapted": documents["alone"]["model_adapted"]} if args.adapt_norm else {}),
            "n_test_locations": documents["all"].get("n_test_locations"),
            "insufficient": documents["all"].get("insufficient", []),
            # both models trained on R's train blocks only: its test points lie beyond the leak buffer
            "min_test_train_m": min_test_train_m(found.points, json.loads(alone.read_text())["samples_path"]),
            "lead_over_alone": lead_over_alone(out, name),
        }
    return results


def earlier_alone(
    earlier: Path, name: str, catalog, out: Path, args: argparse.Namespace
) -> tuple[Path, Protocol | None, dict | None]:
    """R's own model, protocol and evaluation document copied from an earlier ``--own-region`` run in
    ``earlier`` (which must have trained with this seed and crop size); (model, None, None) when R had no
    protocol there."""
    import shutil

    alone = out / f"model-only-{name}.json"
    config = json.loads((earlier / alone.name).read_text())["config"]
    if (config["seed"], config["crop_px"]) != (args.seed, args.crop_px):  # checked before anything is copied
        raise SystemExit(
            f"--alone-from {earlier}: {name}'s own model trained with seed {config['seed']} and crop "
            f"{config['crop_px']} px, not {args.seed} and {args.crop_px}"
        )
    shutil.copyfile(earlier / alone.name, alone)
    if not (earlier / f"points-{name}.parquet").exists():
        return alone, None, None
    for file in (f"config-{name}.json", f"points-{name}.parquet", f"embedded-alone-{name}.parquet"):
        shutil.copyfile(earlier / file, out / file)
    shutil.copytree(earlier / "evaluate" / name, out / "evaluate" / name, symlinks=True, dirs_exist_ok=True)
    shutil.copytree(earlier / f"eval-alone-{name}", out / f"eval-alone-{name}", dirs_exist_ok=True)
    document = json.loads((out / f"eval-alone-{name}" / "evaluation.json").read_text())
    return alone, written_protocol(catalog, name, out), document


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
    p.add_argument(
        "--all-train-config",
        help="with --own-region: training config JSON for the model of all regions (default: --train-config)",
    )
    p.add_argument(
        "--alone-from",
        help="with --own-region: each region's own model, protocol and scores from this earlier "
        "--own-region run (same seed and crop size) instead of training them again",
    )
    p.add_argument("--held-out", help="comma-separated regions to hold out and score (default: each of --regions)")
    p.add_argument(
        "--weights", help="NAME=WEIGHT,... for every region: the sampling weights of each training (default: catalog's)"
    )
    p.add_argument(
        "--own-region",
        action="store_true",
        help="score each region on its own test blocks with the model of all regions and one of the region alone",
    )
    p.add_argument(
        "--leads-only",
        action="store_true",
        help="with --own-region: add lead_over_alone to OUT/own-region.json of an earlier run, without training",
    )
    p.add_argument(
        "--adapt-norm",
        action="store_true",
        help="also score the model and the untrained encoder with batch-norm statistics recomputed on the "
        "scored region's train locations (AdaBN)",
    )
    args = p.parse_args()

    from loc2vec.regions import load_catalog

    catalog = load_catalog(args.catalog)
    names = [n.strip() for n in args.regions.split(",")]
    out = Path(args.out).resolve()
    held_outs = [n.strip() for n in args.held_out.split(",")] if args.held_out else names
    if args.weights:
        pairs = [part.split("=", 1) for part in args.weights.split(",")]
        args.weights = {name.strip(): value.strip() for name, value in pairs}
        if missing := sorted(set(names) - set(args.weights)):
            p.error(f"--weights gives no weight for {', '.join(missing)}")
    if unknown := sorted(set(held_outs) - set(names)):
        p.error(f"--held-out names regions not in --regions: {', '.join(unknown)}")
    if (args.all_train_config or args.alone_from) and not args.own_region:
        p.error("--all-train-config and --alone-from need --own-region")
    if args.alone_from and args.adapt_norm:
        p.error("--alone-from takes the earlier run's scores, which hold no --adapt-norm scores")
    if args.leads_only:
        if not args.own_region:
            p.error("--leads-only needs --own-region")
        results = json.loads((out / "own-region.json").read_text())
        for name, run in results.items():
            if run.get("scored"):
                run["lead_over_alone"] = lead_over_alone(out, name)
        (out / "own-region.json").write_text(json.dumps(results, indent=2))
        return 0
    results = (own_region if args.own_region else leave_one_out)(names, held_outs, catalog, args, out)
    (out / ("own-region.json" if args.own_region else "transfer.json")).write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
