"""Atomic file writes: outputs appear whole or not at all."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import geopandas as gpd


def current_umask() -> int:
    """The process's umask, read without changing it (Linux), else by setting and restoring it."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    The file gets the mode a plain ``open(path, "w")`` would give (0666 minus the umask), not the 0600
    of the temporary file, so other readers of a shared volume can read the outputs.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: str | Path, writer: Callable[[Path], Any]) -> Path:
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_geoparquet(frame: gpd.GeoDataFrame, path: str | Path) -> Path:
    return write_atomic(path, lambda tmp: frame.to_parquet(tmp, index=False, write_covering_bbox=True))


def _finite(obj: Any) -> Any:
    """NaN/inf become null: strict JSON has no such numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """Strict JSON (NaN/inf as null), indented, keys sorted."""
    return json.dumps(_finite(obj), indent=2, sort_keys=True, allow_nan=False)


def write_json(obj: Any, path: str | Path) -> Path:
    text = json_text(obj)
    return write_atomic(path, lambda tmp: tmp.write_text(text))


def file_digests(root: str | Path) -> dict[str, str]:
    """SHA-256 of every file under ``root`` by its relative path: a directory tree's content, to compare."""
    base = Path(root)
    files = (f for f in base.rglob("*") if f.is_file())
    return {str(f.relative_to(base)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
