"""Where the project lives and where its outputs go by default."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PBF = PROJECT_ROOT / "data" / "osm" / "monaco_region_2016.osm.pbf"
DEFAULT_CATALOG = PROJECT_ROOT / "regions.toml"


def env_fields(names: dict[str, str]) -> dict[str, dg.EnvVar]:
    """``{field: dg.EnvVar(variable)}`` for the variables of ``names`` that are set in the environment."""
    return {field: dg.EnvVar(var) for field, var in names.items() if os.environ.get(var)}


def default_data_dir() -> str:
    """``$LOC2VEC_DATA_DIR`` or ``<project>/var``."""
    return os.environ.get("LOC2VEC_DATA_DIR", str(PROJECT_ROOT / "var"))


def default_catalog() -> str:
    """``$LOC2VEC_CATALOG`` or ``<project>/regions.toml`` (the region catalog, docs/regions.md)."""
    return os.environ.get("LOC2VEC_CATALOG") or str(DEFAULT_CATALOG)
