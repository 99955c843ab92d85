"""Shared fixtures: real OSM extracts (ODbL, © OpenStreetMap contributors) and a clean data dir."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MONACO = ROOT / "data" / "osm" / "monaco_region_2016.osm.pbf"
FIXTURES = ROOT / "tests" / "data"
KOTKA = FIXTURES / "kotka_karhula.osm.pbf"
HELSINKI = FIXTURES / "helsinki_center.osm.pbf"
MONACO_2023 = FIXTURES / "monaco_2023.osm.pbf"


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path_factory, monkeypatch):
    """Every test writes under its own data dir, never into the project's var/."""
    data_dir = tmp_path_factory.mktemp("loc2vec-data")
    monkeypatch.setenv("LOC2VEC_DATA_DIR", str(data_dir))
    monkeypatch.delenv("LOC2VEC_PBF", raising=False)
    monkeypatch.delenv("LOC2VEC_BBOX", raising=False)
    monkeypatch.delenv("LOC2VEC_SCHEMA", raising=False)
    os.environ.setdefault("MPLBACKEND", "Agg")
    yield data_dir
