"""Where the project lives and where its outputs go by default."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PBF = PROJECT_ROOT / "data" / "osm" / "monaco_region_2016.osm.pbf"


def default_data_dir() -> str:
    """``$LOC2VEC_DATA_DIR`` or ``<project>/var``."""
    return os.environ.get("LOC2VEC_DATA_DIR", str(PROJECT_ROOT / "var"))
