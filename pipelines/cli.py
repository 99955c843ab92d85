"""``loc2vec`` command line: run the pipeline on any extract, score external embeddings, query places.

It lives beside the Dagster definitions (not in ``loc2vec/``) because ``run`` and ``evaluate`` execute
the same assets in process (no daemon needed); ``similar`` only uses the domain library.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from loc2vec.errors import Loc2VecError
from pipelines.launch import (
    definitions_on,
    instance_in,
    log,
    region_catalog,
    region_run_settings,
)

if TYPE_CHECKING:
    import pandas as pd

    from loc2vec.data.crops import CropGeometry
    from loc2vec.data.locations import SamplesManifest
    from loc2vec.osm.layers import FeaturesManifest
    from loc2vec.render.mosaic import MosaicManifest


# What to open after a run: (command, what it shows); {lat}/{lon} is an indexed place, {data_dir} the outputs.
MAKE_NEXT = [
    ("make ui", "Dagster UI, http://127.0.0.1:3000: asset graph, runs by job, materializations, checks"),
    ("make mlflow-ui", "MLflow UI, http://127.0.0.1:5000: training runs, registered model versions"),
    ("make maps", "the cluster map and projector, http://127.0.0.1:8765"),
    (".venv/bin/loc2vec similar --lat {lat} --lon {lon} -k 10 --min-km 1", "places that look alike elsewhere"),
]


def _run_next(
    out: Path, pbf: str, bbox: str | None, replication: str | None = None, start: int | None = None
) -> list[tuple[str, str]]:
    """What to open after ``loc2vec run --out OUT``: the same targets pointed at OUT (and its region)."""
    region = f"LOC2VEC_PBF={pbf}" + (f" LOC2VEC_BBOX={bbox}" if bbox else "")
    if replication:
        region += f" LOC2VEC_REPLICATION_URL={replication}"
        region += f" LOC2VEC_REPLICATION_START={start}" if start is not None else ""
    return [
        (f"{region} LOC2VEC_DATA_DIR={out} DAGSTER_HOME={out}/dagster_home make ui", MAKE_NEXT[0][1]),
        (f"LOC2VEC_DATA_DIR={out} make mlflow-ui", MAKE_NEXT[1][1]),
        (f"LOC2VEC_DATA_DIR={out} make maps", MAKE_NEXT[2][1]),
        (f"{MAKE_NEXT[3][0]} --data-dir {out}", MAKE_NEXT[3][1]),
    ]


def _print_summary(pipeline, main, evaluation: dict, next_commands, started: float) -> None:
    from pipelines.console import display
    from pipelines.summary import summarize

    summary = summarize(
        main,
        evaluation,
        pipeline.data_dir,
        pipeline.instance.root_directory if pipeline.instance.is_persistent else None,
        pipeline.log_path,
        next_commands,
        seconds=time.perf_counter() - started,
    )
    display().close()
    summary.render(display().console)


def _apply_region(args: argparse.Namespace) -> None:
    """``run --region``: take the region's extract and settings from the catalog (before any asset loads)."""
    settings = region_run_settings(args)
    os.environ.update(settings)
    if args.region:
        log(f"region {args.region}: {args.pbf}" + (f", bbox {args.bbox}" if args.bbox else "") + f", {settings}")


def _regions_table(catalog) -> str:
    """One line per region: name, extract, area, size, blocks, weight, status."""
    rows = [("region", "extract", "bbox (none: the extract's bounds)", "size km", "blocks", "weight", "status")]
    for entry in catalog:
        region = entry.region
        try:
            extract = str(region.extract.relative_to(catalog.path.parent))
        except ValueError:
            extract = str(region.extract)
        size = entry.size_km()
        blocks = entry.blocks_per_side
        rows.append(
            (
                region.name,
                extract,
                str(region.bbox) if region.bbox else f"({entry.extent})" if entry.extent else "?",
                f"{size[0]:.1f} x {size[1]:.1f}" if size else "?",
                f"{blocks}x{blocks}={blocks * blocks}" if blocks else "-",
                f"{region.weight:g}",
                "ok" if entry.ok else f"FAULT {entry.fault.kind}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows)


def cmd_regions(args: argparse.Namespace) -> int:
    """List the catalog's regions; exit code 1 (each fault on stderr) when a region is unusable."""
    catalog = region_catalog(args.catalog)
    print(f"region catalog {catalog.path}")
    print(_regions_table(catalog))
    faults = catalog.check()
    for fault in faults:
        print(f"loc2vec: {fault}", file=sys.stderr)
    return 1 if faults else 0


def cmd_run(args: argparse.Namespace) -> int:
    """The whole pipeline on ``--pbf``; writes ``OUT/evaluation.json`` (mean ± std with ``--seeds`` or
    ``--split-seeds``: every training seed on every draw of the held-out blocks)."""
    from loc2vec.io import write_json
    from loc2vec.osm.replication import source_url

    _apply_region(args)  # first: the render settings must be in place before the assets load
    from pipelines.runner import Pipeline, main_job_config, preflight, run_sweep

    out = Path(args.out).resolve()
    seeds = [args.seed + i for i in range(args.seeds)]
    split_seeds: list[int | None] = [None] if args.split_seeds == 1 else list(range(args.split_seeds))
    n_models = len(seeds) * len(split_seeds)
    # a URL, or a directory as an absolute file:// URL (the next commands run from other directories)
    replication = source_url(args.replication_url) if args.replication_url else None
    defs = definitions_on(str(Path(args.pbf).resolve()), args.bbox, out, n_models, replication, args.replication_start)
    # a bad file, region, setting or a too small disk fails here, before DIR is created
    first = main_job_config(seeds[0], args.epochs, split_seeds[0], args.steps_per_epoch)
    preflight(defs, {"main_job": first}, n_models=n_models)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with instance_in(out) as instance, Pipeline(defs, instance, log) as pipeline:
        document = run_sweep(pipeline, seeds, split_seeds, args.epochs, args.steps_per_epoch)
        write_json(document, out / "evaluation.json")
        log(f"wrote {out / 'evaluation.json'}" + (" (means over the runs)" if n_models > 1 else ""))
        next_commands = _run_next(out, str(Path(args.pbf).resolve()), args.bbox, replication, args.replication_start)
        _print_summary(pipeline, pipeline.last("main_job"), document, next_commands, started)
    return 0


class Protocol(NamedTuple):
    """The protocol of a region: its points, crop reader and the manifests they came from."""

    points: pd.DataFrame
    reader: CropGeometry
    samples: SamplesManifest
    features: FeaturesManifest
    mosaic: MosaicManifest
    split: str  # "training": the split `loc2vec run` trains on; "evaluation_only": samples.EVALUATION_ONLY


def _split_config(crop_px: int | None, overrides: dict | None = None) -> dict:
    """``main_job`` run config of ``sample_locations`` for crops of ``crop_px`` (None: the default split)."""
    import dagster as dg

    from assets.training import SamplesConfig
    from loc2vec.data.samples import SplitSpec

    values = dict(overrides or {})
    if crop_px is not None and crop_px != SplitSpec().crop_px:
        values["crop_px"] = crop_px
    return {"main_job": dg.RunConfig(ops={"sample_locations": SamplesConfig(**values)})} if values else {}


def _protocol_for(args: argparse.Namespace, crop_px: int | None = None) -> Protocol:
    """Import, render and split ``--pbf`` (in process) for crops of ``crop_px`` (default: the split's), then
    build the protocol's points. A region too small for the training split (a split left empty by its
    leak buffer) is split without validation blocks or training positives instead (``EVALUATION_ONLY``):
    nothing is trained on it here."""
    from loc2vec.data.chunked import open_reader
    from loc2vec.data.samples import EVALUATION_ONLY, SplitTooSmall
    from loc2vec.evaluation.stage import protocol_points
    from pipelines.runner import Pipeline, PipelineFailed, preflight

    work = Path(args.work or Path(args.points_out or args.out or ".").resolve().parent / ".loc2vec-evaluate")
    defs = definitions_on(str(Path(args.pbf).resolve()), args.bbox, work)
    preflight(defs, _split_config(crop_px))  # before the work directory is created
    selection = ["raster_mosaic", "sample_locations"]
    with instance_in(work) as instance, Pipeline(defs, instance, log) as pipeline:
        split = "training"
        try:
            main = pipeline.run_stages(_split_config(crop_px), main_assets=selection)["main_job"]
        except PipelineFailed as exc:
            if exc.cause != SplitTooSmall.__name__:
                raise
            log(
                "warning: the region is too small for the training split (a split is empty after its leak "
                "buffer): scoring on the evaluation-only split (no validation blocks; leak buffer: the crop diagonal)"
            )
            split = "evaluation_only"
            config = _split_config(crop_px, EVALUATION_ONLY)["main_job"]
            try:
                main = pipeline.run_job("main_job", run_config=config, asset_selection=selection)
            except PipelineFailed as again:
                if again.cause != SplitTooSmall.__name__:
                    raise
                raise Loc2VecError(
                    f"the region is too small for the evaluation protocol, even without training: {again}"
                ) from None
        samples = main.output_for_node("sample_locations")
        features = pipeline.last("ingest_job").output_for_node("osm_features")
        mosaic = main.output_for_node("raster_mosaic")
    reader = open_reader(mosaic.path)
    return Protocol(protocol_points(samples, features, reader), reader, samples, features, mosaic, split)


def cmd_evaluate(args: argparse.Namespace) -> int:
    from loc2vec.evaluation.external import match_points, read_external_embeddings
    from loc2vec.evaluation.protocol import to_geoparquet_frame
    from loc2vec.evaluation.region import region_record
    from loc2vec.evaluation.run import evaluate_embeddings
    from loc2vec.evaluation.support import warnings
    from loc2vec.io import write_geoparquet, write_json
    from loc2vec.osm.files import check_complete, check_region, file_sha256
    from loc2vec.training.config import TrainConfig

    if sum(map(bool, (args.points_out, args.embeddings, args.model))) != 1:
        raise Loc2VecError("give either --points-out FILE, --embeddings FILE --out DIR or --model MODEL --out DIR")
    if args.model:
        return cmd_evaluate_model(args)
    if args.embeddings and not args.out:
        raise Loc2VecError("--embeddings needs --out DIR")
    # the inputs are checked before any work, so a bad one leaves nothing behind
    check_complete(args.pbf)
    check_region(args.pbf, args.bbox)
    external = read_external_embeddings(args.embeddings) if args.embeddings else None
    config = TrainConfig.from_json(args.train_config) if args.train_config else None
    protocol = _protocol_for(args, config.crop_px if config else None)
    points, reader, samples = protocol.points, protocol.reader, protocol.samples
    if args.points_out:
        write_geoparquet(to_geoparquet_frame(points), args.points_out)
        log(f"wrote {len(points)} points to {args.points_out}")
        return 0
    vectors = match_points(external, points)
    config = config or TrainConfig(crop_px=samples.spec["crop_px"])
    document = evaluate_embeddings(vectors, points, reader, config, seed=0)
    document["embeddings_file"] = {  # what was scored, so the result can be traced to its input
        "path": str(Path(args.embeddings).resolve()),
        "sha256": file_sha256(args.embeddings),
        "column": external.column,
        "dim": int(vectors.shape[1]),
    }
    document["region"] = region_record(protocol.features, protocol.mosaic.version, samples, protocol.split)
    out = Path(args.out)
    write_json(document, out / "evaluation.json")
    log(f"wrote {out / 'evaluation.json'}")
    print(json.dumps(document["model"], indent=2))
    for line in warnings(document):
        log(line)
    return 0


def _tracking_uri() -> str:
    """The MLflow store the project uses: ``$MLFLOW_TRACKING_URI``, else the data dir's sqlite file (not created)."""
    from resources.paths import default_data_dir

    found = os.environ.get("MLFLOW_TRACKING_URI")
    return found or f"sqlite:///{Path(default_data_dir()).resolve() / 'mlflow' / 'mlflow.db'}"


def cmd_evaluate_model(args: argparse.Namespace) -> int:
    """Embed the region's protocol points with an existing model and score them beside the baselines (no
    training); writes ``OUT/embeddings.parquet`` and ``OUT/evaluation.json``."""
    from loc2vec.evaluation.existing_model import check_compatible, load_existing_model
    from loc2vec.evaluation.region import embed_and_evaluate, embeddings_frame, region_record
    from loc2vec.evaluation.support import warnings
    from loc2vec.io import write_geoparquet, write_json
    from loc2vec.osm.files import check_complete, check_region
    from pipelines.console import display
    from pipelines.summary import RunSummary
    from resources import MapnikRenderer, OsmSource

    if not args.out:
        raise Loc2VecError("--model needs --out DIR")
    # the extract, the region and the model are checked before any work: a bad one leaves nothing behind
    check_complete(args.pbf)
    check_region(args.pbf, args.bbox)
    model = load_existing_model(args.model, _tracking_uri(), args.train_config)
    names = OsmSource(pbf_path=str(Path(args.pbf).resolve()), bbox=args.bbox).schema().names
    check_compatible(model, MapnikRenderer.from_env().resolution_m, list(names))
    protocol = _protocol_for(args, model.config.crop_px)
    document, vectors = embed_and_evaluate(model, protocol.points, protocol.reader)
    document["region"] = region_record(protocol.features, protocol.mosaic.version, protocol.samples, protocol.split)
    out = Path(args.out)
    write_geoparquet(embeddings_frame(protocol.points, vectors), out / "embeddings.parquet")
    write_json(document, out / "evaluation.json")  # last: its presence means the evaluation is complete
    source = model.source
    name = str(source.get("name") or source.get("weights_path"))
    summary = RunSummary(document, name, str(source.get("version", "")), None, [])
    display().close()
    summary.print_table(display().console)
    log(f"wrote {out / 'evaluation.json'} and {out / 'embeddings.parquet'} ({len(vectors)} points)")
    for line in warnings(document):
        log(line)
    return 0


def cmd_train_regions(args: argparse.Namespace) -> int:
    """One model on several catalog regions: each region prepared (imported, rendered, split) as ``run --region``
    does in ``OUT/regions/NAME`` (reused when there), then trained on together and registered in OUT's MLflow."""
    from pipelines.multiregion import parse_regions, train_regions_command

    out = Path(args.out).resolve()
    names = parse_regions(args.regions)
    manifest = train_regions_command(
        names, args.weights, args.catalog, out, args.epochs, args.seed, log, args.crop_px, args.train_config
    )
    shares = ", ".join(f"{r['name']} {r['weight']:g}" for r in manifest.regions or [])
    log(
        f"registered {manifest.model_name} version {manifest.model_version} ({manifest.model_uri}), trained on {shares}"
    )
    log(f"MLflow: {manifest.tracking_uri}; manifest: {out / 'model.json'}")
    return 0


def add_train_regions_parser(sub) -> None:
    """The ``train-regions`` command's arguments."""
    tr = sub.add_parser("train-regions", help="train one model on several catalog regions")
    tr.add_argument("--regions", required=True, help="catalog regions, comma-separated, e.g. monaco,kotka-karhula")
    tr.add_argument(
        "--weights",
        help="each region's share of the anchors, comma-separated in --regions' order (default: the catalog's weights)",
    )
    tr.add_argument("--catalog", help="region catalog TOML (default: $LOC2VEC_CATALOG or regions.toml)")
    tr.add_argument(
        "--out",
        required=True,
        help="output directory: OUT/regions/NAME per region (data dir and Dagster instance), the model, its "
        "MLflow store, model.json",
    )
    tr.add_argument("--epochs", type=int, help="training epochs (default: the training config's)")
    tr.add_argument("--seed", type=int, help="training seed (default: the training config's, 0)")
    tr.add_argument(
        "--crop-px", type=int, help="crop edge of every region's split and of training (default: the split's, 128)"
    )
    tr.add_argument(
        "--train-config",
        help="training config JSON (TrainConfig fields, the others at their defaults; default: the transfer recipe, "
        "loc2vec.training.config.TRANSFER_RECIPE, with RECIPE_STEPS_PER_REGION batches per epoch for each region)",
    )
    tr.set_defaults(func=cmd_train_regions)


def cmd_similar(args: argparse.Namespace) -> int:
    from loc2vec.evaluation.similar import similar_places
    from loc2vec.evaluation.stage import load_index_manifest
    from resources.paths import default_data_dir

    manifest_path = args.index
    if manifest_path is None:
        current = Path(args.data_dir or default_data_dir()) / "index" / "CURRENT"
        if not current.is_file():
            raise Loc2VecError(
                f"no similarity index in {current.parent.parent}: run the pipeline first or pass --index"
            )
        manifest_path = current.read_text().strip()
    manifest = load_index_manifest(manifest_path)
    found = similar_places(manifest, args.lat, args.lon, args.k, args.min_km)
    print(found.to_string(index=False, float_format=lambda v: f"{v:.5f}"))
    if args.map:
        from loc2vec.evaluation.similar import write_similar_map

        write_similar_map(manifest, found, args.lat, args.lon, args.map)
        log(f"wrote {args.map}")
    return 0


def cmd_pipeline(args: argparse.Namespace) -> int:
    from pipelines.definitions import defs
    from pipelines.runner import Pipeline, open_instance, preflight

    preflight(defs)
    started = time.perf_counter()
    with open_instance() as instance, Pipeline(defs, instance, log) as pipeline:
        main = pipeline.run_stages()["main_job"]
        _print_summary(pipeline, main, main.output_for_node("evaluation"), MAKE_NEXT, started)
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="loc2vec", description="Location embeddings from OpenStreetMap.")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the whole pipeline on an extract, in process")
    run.add_argument("--pbf", help=".osm.pbf, .osm or .osm.bz2 extract (or --region)")
    run.add_argument(
        "--region",
        help="a region of the catalog (docs/regions.md): its extract, bbox, replication source, render settings "
        "and blocks per side, in place of --pbf/--bbox",
    )
    run.add_argument("--catalog", help="region catalog TOML (default: $LOC2VEC_CATALOG or regions.toml)")
    run.add_argument("--bbox", help="min_lon,min_lat,max_lon,max_lat (default: the extract's bounds)")
    run.add_argument(
        "--out",
        required=True,
        help="output directory: the run's data dir (in place of $LOC2VEC_DATA_DIR), its MLflow store, its Dagster "
        "instance (OUT/dagster_home, in place of $DAGSTER_HOME) and evaluation.json",
    )
    run.add_argument(
        "--replication-url",
        help="follow this OSM replication source (base URL or a directory of diffs): the run imports its own "
        "copy of the extract brought to the newest sequence (README: Keeping a region up to date)",
    )
    run.add_argument("--replication-start", type=int, help="the sequence the extract is at, if its header records none")
    run.add_argument("--epochs", type=int, help="training epochs (default: the asset's default)")
    run.add_argument(
        "--steps-per-epoch",
        type=int,
        help="training batches per epoch (default: the asset's default; fewer for a quick try)",
    )
    run.add_argument("--seed", type=int, default=0, help="first training seed")
    run.add_argument("--seeds", type=int, default=1, help="train and evaluate N seeds; report mean and std")
    run.add_argument(
        "--split-seeds",
        type=int,
        default=1,
        help="repeat on K draws of the held-out blocks (split seeds 0..K-1); report mean and std over all runs",
    )
    run.set_defaults(func=cmd_run)

    regions = sub.add_parser("regions", help="list the region catalog's regions, their blocks and faults")
    regions.add_argument("--catalog", help="region catalog TOML (default: $LOC2VEC_CATALOG or regions.toml)")
    regions.set_defaults(func=cmd_regions)

    add_train_regions_parser(sub)

    ev = sub.add_parser(
        "evaluate", help="write the protocol's points, or score embeddings made elsewhere or a trained model's"
    )
    ev.add_argument("--pbf", required=True)
    ev.add_argument("--bbox")
    ev.add_argument("--points-out", help="GeoParquet of every point that needs an embedding")
    ev.add_argument("--embeddings", help="GeoParquet: point geometry + one vector column, same rows as the points")
    ev.add_argument("--out", help="directory for evaluation.json")
    ev.add_argument("--work", help="working directory for the import/render/split (default: beside the output)")
    ev.add_argument(
        "--train-config",
        help="a run's config.json (MLflow artifact): score with its radii and untrained-baseline seed, as `run` "
        "did (default: the default training config; with --model: the model's own)",
    )
    ev.add_argument(
        "--model",
        help="embed and score the region with this trained model, no training: a registered version "
        "(models:/NAME/VERSION, models:/NAME@ALIAS, at $MLFLOW_TRACKING_URI, else the data dir's MLflow store) "
        "or a run's weights file / model directory (model.pt)",
    )
    ev.set_defaults(func=cmd_evaluate)

    sim = sub.add_parser("similar", help="nearest places to a location in embedding space")
    sim.add_argument("--lat", type=float, required=True)
    sim.add_argument("--lon", type=float, required=True)
    sim.add_argument("-k", type=int, default=10)
    sim.add_argument(
        "--min-km", type=float, default=0.0, help="only places at least this far away on the ground (default 0)"
    )
    sim.add_argument("--index", help="index manifest.json (default: the data dir's current index)")
    sim.add_argument("--data-dir", help="data directory (default: $LOC2VEC_DATA_DIR or var/)")
    sim.add_argument("--map", help="write an HTML map of the results")
    sim.set_defaults(func=cmd_similar)

    pipe = sub.add_parser("pipeline", help="the main pipeline on the configured extract (what `make run` does)")
    pipe.set_defaults(func=cmd_pipeline)
    return p


def _internal_error(exc: BaseException) -> Path:
    """Write the traceback of an unexpected error to a file; return its path."""
    import tempfile
    import traceback

    fd, path = tempfile.mkstemp(prefix="loc2vec-error-", suffix=".log")
    with os.fdopen(fd, "w") as f:
        traceback.print_exception(exc, file=f)
    return Path(path)


def main(argv: list[str] | None = None) -> int:
    """Every failure ends in one line on stderr and a non-zero exit code (130 when interrupted)."""
    from loc2vec.runtime import configure_process

    configure_process()
    args = parser().parse_args(argv)
    from pipelines.console import quiet_libraries

    quiet_libraries()
    if args.command == "run" and (args.seeds < 1 or args.split_seeds < 1):
        print("loc2vec: error: --seeds and --split-seeds must be >= 1", file=sys.stderr)
        return 2
    from pipelines.runner import PipelineInterrupted

    try:
        return args.func(args)
    except PipelineInterrupted as exc:
        print(f"loc2vec: {exc}", file=sys.stderr)
        return 130
    except Loc2VecError as exc:
        print(f"loc2vec: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("loc2vec: interrupted; run the same command again to resume where it stopped", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: one line here, the traceback in a file
        path = _internal_error(exc)
        print(f"loc2vec: internal error: {type(exc).__name__}: {exc} (traceback in {path})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
