"""What the commands share to run the pipeline in process: the console log, Definitions on an extract, the
Dagster instance of a data directory, the region catalog and a catalog region's run settings.

``cli.py`` (``loc2vec run``, ``evaluate``, ...) and ``multiregion.py`` (``loc2vec train-regions``) both build on it.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from loc2vec.errors import ConfigError, Loc2VecError


def log(message: str) -> None:
    """One line on the console (``pipelines.console``), as every command reports."""
    from pipelines.console import display

    display().message(message)


def definitions_on(
    pbf: str,
    bbox: str | None,
    data_dir: Path,
    n_models: int = 1,
    replication_url: str | None = None,
    replication_start: int | None = None,
):
    """Definitions on ``pbf`` (followed from ``replication_url`` when given) writing into ``data_dir``,
    keeping at least ``n_models`` versions of each output."""
    from pipelines.definitions import build_definitions
    from resources import OsmSource, ProjectStorage

    storage = ProjectStorage(data_dir=str(data_dir))
    if storage.keep_versions < n_models:
        storage = ProjectStorage(data_dir=str(data_dir), keep_versions=n_models)
    osm = OsmSource(pbf_path=pbf, bbox=bbox, replication_url=replication_url, replication_start=replication_start)
    return build_definitions(osm, storage)


def instance_in(data_dir: Path):
    """The Dagster instance of the data directory ``data_dir`` (``DATA_DIR/dagster_home``)."""
    from pipelines.runner import open_instance

    return open_instance(data_dir / "dagster_home")


# The render settings `run --region` takes from the catalog, passed as `make run` takes them
REGION_ENV = {"resolution_m": "LOC2VEC_RESOLUTION_M", "unit_chunks": "LOC2VEC_UNIT_CHUNKS"}
BLOCKS_ENV = "LOC2VEC_RENDER_BLOCKS"


def region_catalog(path: str | None):
    """The region catalog ``path`` (default ``$LOC2VEC_CATALOG`` or the project's ``regions.toml``), loaded."""
    from loc2vec.regions import load_catalog
    from resources.paths import default_catalog

    return load_catalog(path or default_catalog())


def region_run_settings(args: argparse.Namespace, environ: dict[str, str] | None = None) -> dict[str, str]:
    """For ``run --region NAME``: fill ``args``' extract, bbox and replication source from the catalog and
    return the environment the region's render settings and blocks per side need. Without ``--region``:
    nothing (``--pbf`` is then required). A region with a fault, ``--region`` beside ``--pbf``/``--bbox``/
    ``--replication-*``, or a variable already set to another value than the region's is an error."""
    environ = os.environ if environ is None else environ
    if args.region is None:
        if args.catalog:
            raise Loc2VecError("--catalog needs --region NAME")
        if not args.pbf:
            raise Loc2VecError("give --pbf FILE (and optionally --bbox) or --region NAME (from the region catalog)")
        return {}
    flags = {"--pbf": args.pbf, "--bbox": args.bbox, "--replication-url": args.replication_url}
    given = [flag for flag, value in {**flags, "--replication-start": args.replication_start}.items() if value]
    if given:
        raise Loc2VecError(
            f"--region {args.region} takes the extract, bbox and replication source from the catalog: "
            f"drop {', '.join(given)} (or drop --region)"
        )
    entry = region_catalog(args.catalog).region(args.region)
    region = entry.region
    args.pbf = str(region.extract)
    args.bbox = ",".join(repr(v) for v in region.bbox.as_tuple()) if region.bbox else None
    if region.replication is not None:
        args.replication_url, args.replication_start = region.replication.url, region.replication.start
    settings = {var: str(getattr(region.render, field)) for field, var in REGION_ENV.items()}
    settings[BLOCKS_ENV] = str(entry.blocks_per_side)
    conflicts = [
        f"{var}={environ[var]}" for var, value in settings.items() if not _same_number(environ.get(var), value)
    ]
    if conflicts:
        own = ", ".join(f"{var}={value}" for var, value in settings.items())
        raise ConfigError(
            f"region {region.name!r} sets its own render settings ({own}); "
            f"unset {', '.join(conflicts)} or change the region in the catalog"
        )
    return settings


def _same_number(current: str | None, value: str) -> bool:
    """True when the variable is unset or names the same number as ``value``."""
    if not current:
        return True
    try:
        return float(current) == float(value)
    except ValueError:
        return False
