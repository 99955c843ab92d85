"""The region catalog file: TOML parsed into typed, frozen region declarations (no file is opened but the
catalog itself; the extracts are checked by ``loc2vec.regions.catalog``)."""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loc2vec.errors import CatalogError, ConfigError
from loc2vec.geo import BBox

# A region's name is a Dagster partition key and a directory name: lower-case letters, digits, '_' and
# '-', starting with a letter, at most 63 characters (no '|', the region × block key's delimiter).
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_-]{0,62}")
REGION_KEYS = {"name", "title", "extract", "bbox", "weight", "render", "replication"}
RENDER_KEYS = {"resolution_m", "unit_chunks"}
REPLICATION_KEYS = {"url", "start"}


@dataclass(frozen=True)
class RenderSettings:
    """How a region is rasterized (the defaults are ``resources.MapnikRenderer``'s)."""

    resolution_m: float = 3.0
    unit_chunks: int = 4
    chunk: int = 256  # not configurable per region: every mosaic uses the store's chunk edge


@dataclass(frozen=True)
class Replication:
    """An OSM replication source the region's extract is kept current with (``resources.OsmSource``)."""

    url: str  # base URL, or a local directory of that layout (resolved against the catalog's directory)
    start: int | None = None  # the sequence the extract corresponds to, when its header records none


@dataclass(frozen=True)
class Region:
    """One region as the catalog declares it."""

    name: str
    extract: Path  # absolute
    bbox: BBox | None = None  # None: the extract's bounds
    title: str = ""
    weight: float = 1.0  # share of this region in multi-region training
    render: RenderSettings = field(default_factory=RenderSettings)
    replication: Replication | None = None


def check_name(name: object, where: str = "region") -> str:
    """``name`` if it is a valid region name, else CatalogError."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise CatalogError(
            f"{where}: name {name!r} is not a valid region name: use 1 to 63 lower-case letters, digits, '_' "
            "or '-', starting with a letter (it becomes a partition key and a directory name)"
        )
    return name


def parse_catalog(path: str | Path) -> tuple[Region, ...]:
    """The regions declared in the TOML file ``path``, in file order. Raises CatalogError naming the file,
    the region and the fault for a file that is missing or not TOML, unknown keys, wrong types or values.
    Relative paths are resolved against the file's directory. (Duplicate names and overlapping regions are
    faults of the regions concerned: ``loc2vec.regions.catalog``.)"""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CatalogError(f"region catalog not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogError(f"cannot read region catalog {p}: {exc}") from None
    return parse_catalog_text(text, p.resolve().parent, str(p))


def parse_catalog_text(text: str, base: Path, source: str = "<catalog>") -> tuple[Region, ...]:
    """Like ``parse_catalog`` for TOML ``text``, with relative paths resolved against ``base``."""
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CatalogError(f"region catalog {source} is not valid TOML: {exc}") from None
    _unknown(document, {"region"}, f"region catalog {source}")
    entries = document.get("region", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CatalogError(f"region catalog {source}: 'region' must be an array of tables ([[region]])")
    if not entries:
        raise CatalogError(f"region catalog {source} declares no region (add a [[region]] table)")
    return tuple(_region(entry, i, base, source) for i, entry in enumerate(entries, 1))


def _region(entry: dict[str, Any], index: int, base: Path, source: str) -> Region:
    where = f"region catalog {source}, region #{index}"
    if "name" not in entry:
        raise CatalogError(f"{where}: missing key 'name'")
    name = check_name(entry["name"], where)
    where = f"region catalog {source}, region {name!r}"
    _unknown(entry, REGION_KEYS, where)
    if "extract" not in entry:
        raise CatalogError(f"{where}: missing key 'extract' (the path of its OSM extract)")
    extract = _path(_string(entry["extract"], "extract", where), base)
    bbox = _bbox(entry["bbox"], where) if "bbox" in entry else None
    title = _string(entry.get("title", ""), "title", where, empty=True)
    weight = _number(entry.get("weight", 1.0), "weight", where)
    render = _render(entry.get("render", {}), where)
    replication = _replication(entry["replication"], base, where) if "replication" in entry else None
    return Region(name, extract, bbox, title, weight, render, replication)


def _unknown(table: dict[str, Any], known: set[str], where: str) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise CatalogError(f"{where}: unknown key(s) {', '.join(map(repr, extra))}; known: {', '.join(sorted(known))}")


def _string(value: object, key: str, where: str, empty: bool = False) -> str:
    if not isinstance(value, str) or not (empty or value.strip()):
        raise CatalogError(f"{where}: '{key}' must be a{'' if empty else ' non-empty'} string, got {value!r}")
    return value


def _number(value: object, key: str, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not (math.isfinite(value) and value > 0):
        raise CatalogError(f"{where}: '{key}' must be a positive number, got {value!r}")
    return float(value)


def _path(text: str, base: Path) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else (base / p).resolve()


def _bbox(value: object, where: str) -> BBox:
    try:
        if isinstance(value, str):
            return BBox.parse(value)
        if isinstance(value, list) and len(value) == 4 and all(isinstance(v, int | float) for v in value):
            return BBox(*(float(v) for v in value))
    except ConfigError as exc:
        raise CatalogError(f"{where}: bad 'bbox': {exc}") from None
    raise CatalogError(
        f"{where}: 'bbox' must be 'min_lon,min_lat,max_lon,max_lat' or an array of four numbers, got {value!r}"
    )


def _render(value: object, where: str) -> RenderSettings:
    if not isinstance(value, dict):
        raise CatalogError(f"{where}: 'render' must be a table ([region.render])")
    _unknown(value, RENDER_KEYS, f"{where}, render")
    defaults = RenderSettings()
    resolution = _number(value.get("resolution_m", defaults.resolution_m), "render.resolution_m", where)
    unit_chunks = value.get("unit_chunks", defaults.unit_chunks)
    if isinstance(unit_chunks, bool) or not isinstance(unit_chunks, int) or unit_chunks < 1:
        raise CatalogError(f"{where}: 'render.unit_chunks' must be a positive integer, got {unit_chunks!r}")
    return RenderSettings(resolution_m=resolution, unit_chunks=unit_chunks)


def _replication(value: object, base: Path, where: str) -> Replication:
    if not isinstance(value, dict):
        raise CatalogError(f"{where}: 'replication' must be a table ([region.replication])")
    _unknown(value, REPLICATION_KEYS, f"{where}, replication")
    if "url" not in value:
        raise CatalogError(f"{where}: 'replication' needs 'url' (a base URL or a local directory of diffs)")
    url = _string(value["url"], "replication.url", where)
    if "://" not in url:  # a local directory, like the extract relative to the catalog
        url = str(_path(url, base))
    start = value.get("start")
    if start is not None and (isinstance(start, bool) or not isinstance(start, int) or start < 0):
        raise CatalogError(f"{where}: 'replication.start' must be a sequence number (integer >= 0), got {start!r}")
    return Replication(url, start)
