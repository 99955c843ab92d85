"""Shared fixtures: real OSM extracts (ODbL, © OpenStreetMap contributors) and a clean data dir."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
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
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    os.environ.setdefault("MPLBACKEND", "Agg")
    yield data_dir
    # mlflow.set_tracking_uri exports the URI to the environment: keep it from leaking into later tests
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRAIN_REGION = (7.405, 43.722, 7.445, 43.752)  # Monaco proper, ~3.2 x 3.3 km
# the training of ``monaco_run`` (and of the runs compared with it): a short one, the workflow is under test
RUN_TRAINING = ("--epochs", "1", "--steps-per-epoch", "10")


@pytest.fixture(scope="session")
def monaco_mosaic(tmp_path_factory):
    """Features and a 3 m/px mosaic of central Monaco, built once per test session."""
    from loc2vec.geo import BBox
    from loc2vec.osm.layers import build_feature_layers
    from loc2vec.render.mosaic import MosaicSpec, render_mosaic
    from loc2vec.schema import load_schema

    root = tmp_path_factory.mktemp("monaco-mosaic")
    features, _ = build_feature_layers(MONACO, load_schema(), root / "features", bbox=BBox(*TRAIN_REGION))
    mosaic = render_mosaic(features, MosaicSpec(resolution=3.0), root / "mosaic")
    return features, mosaic


@pytest.fixture(scope="session")
def monaco_samples(monaco_mosaic, tmp_path_factory):
    from loc2vec.data.crops import CropReader
    from loc2vec.data.locations import build_sample_locations
    from loc2vec.data.samples import SplitSpec

    _, mosaic = monaco_mosaic
    reader = CropReader.from_store(mosaic.path)
    spec = SplitSpec(spacing_m=40.0, block_m=700.0, crop_px=64, seed=0)
    manifest, _ = build_sample_locations(reader, spec, mosaic.version, tmp_path_factory.mktemp("samples"))
    return reader, manifest


@pytest.fixture(scope="session")
def monaco_run(tmp_path_factory):
    """``loc2vec run`` on Monaco proper, 1 epoch of 10 batches, 2 training seeds: a real output directory (slow); its
    console output is kept in ``console.txt``."""
    from pipelines.cli import main

    out = tmp_path_factory.mktemp("run")
    bbox = ",".join(map(str, TRAIN_REGION))
    args = ["run", "--pbf", str(MONACO), "--bbox", bbox, "--out", str(out), *RUN_TRAINING, "--seeds", "2"]
    console = io.StringIO()  # what the user sees, for the tests of the closing summary
    # the UIs' addresses the links in Dagster and MLflow will point to (tests/server/test_ui_after_a_run.py)
    ports = {name: free_port() for name in ("dagster", "mlflow", "maps")}
    (out / "ui_ports.json").write_text(json.dumps(ports))
    with pytest.MonkeyPatch.context() as env:  # session fixtures run before the per-test isolation above
        env.delenv("MLFLOW_TRACKING_URI", raising=False)
        env.setenv("LOC2VEC_DAGSTER_UI", f"http://127.0.0.1:{ports['dagster']}")
        env.setenv("LOC2VEC_MLFLOW_UI", f"http://127.0.0.1:{ports['mlflow']}")
        env.setenv("LOC2VEC_MAPS_URL", f"http://127.0.0.1:{ports['maps']}")
        with contextlib.redirect_stdout(console):
            assert main(args) == 0
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    (out / "console.txt").write_text(console.getvalue())
    return out


# The fixtures one expensive result is shared through: every test using one runs on the same xdist worker.
SHARED_SESSION_FIXTURES = ("monaco_run",)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Under ``pytest -n N --dist loadgroup`` (``make test``), keep what a fixture shares on one worker: a
    module with module-scoped fixtures is one group (``monaco_run``'s when one of its tests uses it); in the
    other modules each test using ``monaco_run`` joins that fixture's group and the rest are spread one by one
    (a long test beside the shared ones need not wait on their worker)."""
    if not config.pluginmanager.hasplugin("xdist"):  # ``-p no:xdist``: one process, no groups
        return

    def fixture_defs(item: pytest.Item) -> list:
        return [d for defs in item._fixtureinfo.name2fixturedefs.values() for d in defs]

    def shared_by(item: pytest.Item) -> list[str]:
        return sorted({d.argname for d in fixture_defs(item) if d.argname in SHARED_SESSION_FIXTURES})

    by_module: dict[str, list[pytest.Item]] = {}
    for item in items:
        by_module.setdefault(item.nodeid.split("::")[0], []).append(item)
    for module, members in by_module.items():
        if any(d.scope == "module" for item in members for d in fixture_defs(item)):
            shared = sorted({name for item in members for name in shared_by(item)})
            for item in members:
                item.add_marker(pytest.mark.xdist_group(shared[0] if shared else module))
            continue
        for item in members:
            if shared := shared_by(item):
                item.add_marker(pytest.mark.xdist_group(shared[0]))
