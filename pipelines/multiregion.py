"""``loc2vec train-regions``: prepare catalog regions with the in-process runner, then train one model on them.

Each region is imported, rendered and split as ``loc2vec run --region NAME`` does (ingest, its render
blocks, then ``raster_mosaic`` and ``sample_locations`` with the blocking leakage check), in its own data
directory ``OUT/regions/NAME`` (its own Dagster instance and lock); a second call reuses what is there
(versions are content hashes: the same inputs give the same versions, rendered units are skipped). A
region's blocks per side are fixed when ``assets.raster`` is imported, so regions are prepared in a fresh
process, one per set of regions with the same render settings.
Then one model is trained over the regions (``loc2vec.training.multi``) and registered in OUT's MLflow store.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from loc2vec.errors import ConfigError, Loc2VecError
from loc2vec.training.multi import RegionInput
from pipelines.launch import definitions_on, instance_in, log, region_catalog, region_run_settings

PREPARED_ASSETS = ["raster_mosaic", "sample_locations"]


def parse_weights(text: str | None, names: list[str]) -> list[float | None]:
    """``--weights 3,1`` (one positive number per region, in order); None: the catalog's weights."""
    if text is None:
        return [None] * len(names)
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != len(names):
        raise ConfigError(f"--weights has {len(parts)} values for {len(names)} regions ({', '.join(names)})")
    weights = []
    for name, part in zip(names, parts, strict=True):
        try:
            value = float(part)
        except ValueError:
            raise ConfigError(f"region {name!r}: weight {part!r} is not a number") from None
        if not (value > 0 and value != float("inf")):
            raise ConfigError(f"region {name!r}: weight must be a positive number, got {part}")
        weights.append(value)
    return weights


def parse_regions(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise ConfigError("--regions names no region")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ConfigError(f"--regions names {', '.join(twice)} more than once")
    return names


def prepare_region(
    name: str, weight: float, catalog: str | None, data_dir: str, crop_px: int | None = None
) -> tuple[RegionInput, str]:
    """In a fresh process: import, render and split the catalog region ``name`` into ``data_dir``; returns the
    region's training inputs and the channel schema (JSON) it was imported with. ``crop_px``: the split's crop
    edge (its leak buffer grows with it; default: ``SplitSpec``'s)."""
    from loc2vec.runtime import configure_process

    configure_process()
    from pipelines.runner import Pipeline, PipelineInterrupted, preflight

    args = argparse.Namespace(
        region=name, catalog=catalog, pbf=None, bbox=None, replication_url=None, replication_start=None
    )
    try:
        os.environ.update(region_run_settings(args))  # before the assets load: blocks per side, resolution
        replication = args.replication_url
        if replication:
            from loc2vec.osm.replication import source_url

            replication = source_url(replication)
        out = Path(data_dir)
        defs = definitions_on(str(Path(args.pbf).resolve()), args.bbox, out, 1, replication, args.replication_start)
        config = {"main_job": _split_config(crop_px)}
        preflight(defs, config)
        out.mkdir(parents=True, exist_ok=True)
        with instance_in(out) as instance, Pipeline(defs, instance, log) as pipeline:
            runs = pipeline.run_stages(config, main_assets=PREPARED_ASSETS)
    except PipelineInterrupted as exc:
        raise PipelineInterrupted(f"region {name!r}: {exc}") from None
    except Loc2VecError as exc:  # re-raised as a plain error naming the region (it crosses a process boundary)
        raise Loc2VecError(f"region {name!r}: {exc}") from None
    features = runs["ingest_job"].output_for_node("osm_features")
    mosaic = runs["main_job"].output_for_node("raster_mosaic")
    samples = runs["main_job"].output_for_node("sample_locations")
    region = RegionInput(
        name=name,
        weight=weight,
        samples=samples,
        mosaic_path=mosaic.path,
        mosaic_version=mosaic.version,
        features_version=features.version,
        osm_sha256=features.osm_sha256,
        osm_bbox=",".join(f"{v:g}" for v in features.bbox),
        osm_sequence=features.osm_sequence,
        osm_timestamp=features.osm_timestamp,
    )
    return region, features.schema().to_json()


def _split_config(crop_px: int | None):
    """``main_job``'s run config for the split (the default one, or with crop edge ``crop_px``)."""
    import dagster as dg

    from assets.training import SamplesConfig

    return dg.RunConfig(ops={} if crop_px is None else {"sample_locations": SamplesConfig(crop_px=crop_px)})


def prepare_group(
    jobs: list[tuple[str, float, str]], catalog: str | None, crop_px: int | None
) -> list[tuple[RegionInput, str]]:
    """In one fresh process: ``prepare_region`` for each (name, weight, data dir), regions of the same render
    settings (blocks per side, resolution, unit edge)."""
    prepared = []
    for name, weight, data_dir in jobs:
        log(f"region {name}: import, render, split in {data_dir}")
        started = time.perf_counter()
        region, schema = prepare_region(name, weight, catalog, data_dir, crop_px)
        counts = {str(k): int(v) for k, v in region.samples.counts.items() if k in ("train", "val", "test")}
        log(f"region {name}: mosaic {region.mosaic_version}, split {counts} ({time.perf_counter() - started:.0f} s)")
        prepared.append((region, schema))
    return prepared


def render_settings(name: str, catalog: str | None) -> tuple[tuple[str, str], ...]:
    """The environment ``run --region NAME`` sets (blocks per side, resolution, unit edge), as a sortable key."""
    args = argparse.Namespace(
        region=name, catalog=catalog, pbf=None, bbox=None, replication_url=None, replication_start=None
    )
    return tuple(sorted(region_run_settings(args, environ={}).items()))


def prepare_regions(
    names: list[str],
    weights: list[float],
    catalog: str | None,
    out: Path,
    log: Callable[[str], None],
    crop_px: int | None = None,
) -> tuple[list[RegionInput], str]:
    """Every region prepared in ``OUT/regions/NAME``: one fresh process per set of regions with the same render
    settings (``assets.raster`` fixes the blocks per side when it is imported). Returns the regions in the order
    of ``names`` and the channel schema (JSON) of the first (every mosaic's channels are compared before training)."""
    groups: dict[tuple, list[tuple[str, float, str]]] = {}
    for name, weight in zip(names, weights, strict=True):
        groups.setdefault(render_settings(name, catalog), []).append((name, weight, str(out / "regions" / name)))
    found: dict[str, tuple[RegionInput, str]] = {}
    for settings, jobs in groups.items():
        log(f"preparing {', '.join(j[0] for j in jobs)} ({', '.join(f'{k}={v}' for k, v in settings)})")
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            for region, schema in pool.submit(prepare_group, jobs, catalog, crop_px).result():
                found[region.name] = (region, schema)
    return [found[name][0] for name in names], found[names[0]][1]


def train_regions_command(
    names: list[str],
    weights_text: str | None,
    catalog_path: str | None,
    out: Path,
    epochs: int | None,
    seed: int | None,
    log: Callable[[str], None],
    crop_px: int | None = None,
    train_config: str | None = None,
):
    """Check the regions and weights, prepare every region, train and register one model; returns its manifest
    (also written to ``OUT/model.json``). ``train_config``: a ``TrainConfig`` JSON file (default: the transfer
    recipe with its batches per epoch for each region; ``epochs``/``seed`` override it; the crop edge is the
    split's)."""
    from loc2vec import tracking
    from loc2vec.io import write_json
    from loc2vec.lock import DataDirLock
    from loc2vec.training.config import TrainConfig, transfer_recipe
    from loc2vec.training.multi import model_dir_name, train_and_register_regions
    from resources import MlflowTracking, TorchDevice
    from resources.paths import PROJECT_ROOT

    weights = parse_weights(weights_text, names)
    catalog = region_catalog(catalog_path)
    entries = [catalog.region(name) for name in names]  # an unknown or unusable region fails here, before any work
    weights = [w if w is not None else e.region.weight for w, e in zip(weights, entries, strict=True)]
    base = TrainConfig.from_json(train_config) if train_config else transfer_recipe(len(names))
    given = {"seed": seed, "epochs": epochs, "crop_px": crop_px}
    config = TrainConfig(**{**base.to_dict(), **{k: v for k, v in given.items() if v is not None}})  # fails now
    out.mkdir(parents=True, exist_ok=True)
    regions, schema_json = prepare_regions(names, weights, str(catalog.path), out, log, crop_px)
    config = TrainConfig(**{**config.to_dict(), "crop_px": regions[0].samples.spec["crop_px"]})
    mlflow_tracking = MlflowTracking.from_env().process_config_and_initialize()
    uri = mlflow_tracking.uri(str(out))
    device = TorchDevice().process_config_and_initialize().spec()
    with DataDirLock(out, log=log):
        for run_id in tracking.fail_orphaned_runs(uri, mlflow_tracking.experiment):
            log(f"marked MLflow run {run_id[:8]} failed: the process that ran it is gone")
        manifest = train_and_register_regions(
            config,
            regions,
            schema_json,
            device,
            out / "models" / model_dir_name(config.digest(), regions),
            uri,
            lineage_tags={"git_commit": tracking.git_commit(PROJECT_ROOT)},
            model_name=mlflow_tracking.model_name,
            experiment=mlflow_tracking.experiment,
            log=log,
        )
        write_json(asdict(manifest), out / "model.json")
    return manifest
