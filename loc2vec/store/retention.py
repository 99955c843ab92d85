"""Old versions of the data directory's outputs, pruned to a configurable number.

Every version (features, mosaic, samples, model directory, embeddings, index, maps) is a directory or a
file under ``<data_dir>/<kind>/`` named by its content version. Pruning keeps the ``keep`` newest of a
kind (by modification time) and never removes a protected path: the version just written, and whatever
the current similarity index (``index/CURRENT``, what ``loc2vec similar`` answers from) refers to.
A directory is first renamed aside, then deleted, so a crash mid-delete never leaves a half version
under a valid name.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path

from loc2vec.errors import ConfigError

# kind -> the entries of ``<data_dir>/<kind>`` that are versions
VERSIONED = {
    "features": "*",
    "mosaic": "*.zarr",
    "samples": "*.parquet",
    "models": "*",
    "embeddings": "*.parquet",
    "evaluation": "*.json",
    "index": "v*",
    "maps": "v*",
}


NOT_VERSIONS = {"mlruns", "CURRENT"}  # MLflow's artifact store lives in models/; index/CURRENT is a pointer


def in_use(data_dir: str | Path) -> set[Path]:
    """Paths the current similarity index needs (its directory, mosaic, model weights' directory)."""
    current = Path(data_dir) / "index" / "CURRENT"
    try:
        manifest = Path(current.read_text().strip())
        values = json.loads(manifest.read_text())
    except (OSError, ValueError):
        return set()
    keep = {manifest.parent}  # a version is protected when it is, or holds, one of these paths
    if isinstance(values, dict):
        keep.update(Path(values[key]) for key in ("mosaic_path", "model_weights") if values.get(key))
    return {p.resolve() for p in keep}


def _remove(path: Path) -> None:
    aside = path.with_name(f".pruning-{path.name}")
    os.replace(path, aside)
    if aside.is_dir():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink(missing_ok=True)


def prune_versions(data_dir: str | Path, kind: str, keep: int, protect: Iterable[str | Path] = ()) -> list[Path]:
    """Remove all but the ``keep`` newest versions of ``kind``; returns what was removed."""
    if keep < 1:
        raise ConfigError(f"keep_versions must be >= 1, got {keep}")
    root = Path(data_dir) / kind
    if kind not in VERSIONED:
        raise ConfigError(f"unknown output kind {kind!r}; one of {sorted(VERSIONED)}")
    if not root.is_dir():
        return []
    current = {Path(p).resolve() for p in protect}
    for path in current:
        if path.exists() and path.parent == root.resolve():
            os.utime(path)  # "newest" means most recently used, not first made
    protected = current | in_use(data_dir)
    entries = [p for p in root.glob(VERSIONED[kind]) if not p.name.startswith(".") and p.name not in NOT_VERSIONS]
    entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
    removed = []
    for path in entries[keep:]:
        resolved = path.resolve()
        if resolved in protected or any(resolved in q.parents for q in protected):
            continue
        _remove(path)
        removed.append(path)
        for companion in root.glob(f"{path.stem}_*.png"):  # a mosaic's overview picture
            companion.unlink(missing_ok=True)
    for leftover in root.glob(".pruning-*"):  # of a prune that was interrupted
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    return removed
