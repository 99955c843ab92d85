"""OSM input files: supported formats, content hashes, declared bounds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import osmium

from loc2vec.errors import InputDataError
from loc2vec.geo import BBox

SUPPORTED_SUFFIXES = (".osm.pbf", ".pbf", ".osm", ".osm.bz2", ".osm.gz", ".osc", ".osc.gz")
EXTRACT_SUFFIXES = (".osm.pbf", ".pbf", ".osm", ".osm.bz2", ".osm.gz")


def check_osm_file(path: str | Path) -> Path:
    """Return ``path`` if it is an existing, non-empty extract in a supported format, else raise."""
    p = Path(path)
    if not p.exists():
        raise InputDataError(f"OSM file not found: {p}")
    if not p.is_file():
        raise InputDataError(f"OSM path is not a file: {p}")
    if not p.name.lower().endswith(EXTRACT_SUFFIXES):
        raise InputDataError(f"unsupported OSM file type {p.name!r}; expected one of {EXTRACT_SUFFIXES}")
    if p.stat().st_size == 0:
        raise InputDataError(f"OSM file is empty: {p}")
    return p


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file (the data version of an OSM source)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def header_bounds(path: str | Path) -> BBox | None:
    """The bounding box the file's header declares, or None when it declares none."""
    p = check_osm_file(path)
    try:
        with osmium.io.Reader(str(p), osmium.osm.NOTHING) as reader:
            box = reader.header().box()
    except RuntimeError as exc:
        raise InputDataError(f"cannot read OSM file {p}: {exc}") from exc
    if not box.valid():
        return None
    return BBox(box.bottom_left.lon, box.bottom_left.lat, box.top_right.lon, box.top_right.lat)


def data_bounds(path: str | Path) -> BBox:
    """Bounds of every node location in the file (used when the header declares none)."""
    p = check_osm_file(path)
    lons: list[float] = []
    lats: list[float] = []
    bounds = [180.0, 90.0, -180.0, -90.0]
    try:
        for node in osmium.FileProcessor(str(p), osmium.osm.NODE):
            loc = node.location
            if loc.valid():
                lons.append(loc.lon)
                lats.append(loc.lat)
            if len(lons) >= 100_000:
                bounds = _merge(bounds, lons, lats)
    except RuntimeError as exc:
        raise InputDataError(f"cannot read OSM file {p}: {exc}") from exc
    bounds = _merge(bounds, lons, lats)
    if bounds[0] > bounds[2]:
        raise InputDataError(f"OSM file {p} holds no nodes: is it OSM data?")
    if bounds[0] == bounds[2] or bounds[1] == bounds[3]:
        pad = 1e-4
        bounds = [bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad]
    return BBox(*bounds)


def _merge(bounds: list[float], lons: list[float], lats: list[float]) -> list[float]:
    """Fold a block of coordinates into running bounds and clear the block."""
    if lons:
        bounds = [min(bounds[0], *lons), min(bounds[1], *lats), max(bounds[2], *lons), max(bounds[3], *lats)]
        lons.clear()
        lats.clear()
    return bounds


def extract_bounds(path: str | Path) -> BBox:
    """The header's bounds, else the bounds of the data."""
    return header_bounds(path) or data_bounds(path)
