"""Settings, arguments and disk are checked before any heavy work: one clear line, a non-zero exit code,
nothing created."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from loc2vec.errors import ConfigError
from loc2vec.grid import check_blocks_per_side
from pipelines.cli import main
from resources import MapnikRenderer
from tests.conftest import MONACO, ROOT, TRAIN_REGION

BBOX = ",".join(map(str, TRAIN_REGION))


def _truncated(tmp_path):
    data = MONACO.read_bytes()
    path = tmp_path / "cut.osm.pbf"
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--bbox", BBOX, "--epochs", "0"], "epochs must be >= 1"),
        (["--bbox", BBOX, "--steps-per-epoch", "0"], "steps_per_epoch must be >= 1"),
        (["--bbox=-180,-85,180,85"], "more than the limit of 4e9 px"),
        (["--bbox", "7.42,43.73,7.4201,43.7301"], "is too small: it must be at least 768 m on each side"),
        (["--bbox", BBOX, "--pbf", "TRUNCATED"], "is damaged or truncated"),
    ],
)
def test_run_refuses_bad_settings_in_one_line_before_creating_anything(tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    if "TRUNCATED" in extra:
        extra = [str(_truncated(tmp_path)) if a == "TRUNCATED" else a for a in extra]
    args = ["run", "--pbf", str(MONACO), "--out", str(out), *extra]
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("loc2vec: error:") and message in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("abc", "must be an integer from 1 to 16, got 'abc'"),
        ("0", "must be from 1 to 16"),
        ("-1", "must be from 1 to 16"),
        ("1000", "at most 256 render partitions), got 1000"),
    ],
)
def test_render_blocks_setting_is_validated(value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_blocks_per_side(value)


@pytest.mark.slow
@pytest.mark.parametrize("value", ["abc", "1000"])
def test_make_run_with_a_bad_blocks_setting_ends_in_one_line(tmp_path, value):
    """``make run`` is ``python -m pipelines.cli pipeline``: a bad setting fails at once, without a traceback."""
    env = {**os.environ, "LOC2VEC_RENDER_BLOCKS": value, "LOC2VEC_DATA_DIR": str(tmp_path / "data")}
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("loc2vec: error: LOC2VEC_RENDER_BLOCKS must")
    assert not (tmp_path / "data").exists()


@pytest.fixture
def small_volume(tmp_path):
    """A 30 MiB tmpfs (needs root, as in CI); skipped where it cannot be mounted."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_too_small_disk_is_refused_before_anything_is_written(small_volume, capsys):
    out = small_volume / "out"
    assert main(["run", "--pbf", str(MONACO), "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert "not enough free disk" in err and "MiB free" in err
    assert not out.exists()  # no MLflow registry, no Dagster instance, nothing half-written
    assert not list(small_volume.iterdir())


def test_similar_refuses_files_that_are_not_an_index_manifest(tmp_path, capsys):
    binary, text, wrong = tmp_path / "index.faiss", tmp_path / "notes.txt", tmp_path / "other.json"
    binary.write_bytes(bytes(range(256)) * 4)
    text.write_text("not json at all")
    wrong.write_text('{"index_path": "x"}')
    base = ["similar", "--lat", "43.74", "--lon", "7.42", "--index"]
    for path, message in [(binary, "binary, not JSON"), (text, "not JSON"), (wrong, "expected the keys")]:
        assert main([*base, str(path)]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and str(path) in err[0]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"LOC2VEC_RESOLUTION_M": "abc"}, "LOC2VEC_RESOLUTION_M must be a number, got 'abc'"),
        ({"LOC2VEC_UNIT_CHUNKS": "1.5"}, "LOC2VEC_UNIT_CHUNKS must be an integer, got '1.5'"),
        ({"LOC2VEC_UNIT_CHUNKS": "0"}, "LOC2VEC_UNIT_CHUNKS must be > 0"),
    ],
)
def test_render_settings_from_the_environment_are_validated(monkeypatch, env, message):
    for var, value in env.items():
        monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError, match=message):
        MapnikRenderer.from_env()


def test_render_settings_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("LOC2VEC_RESOLUTION_M", "2.5")
    monkeypatch.setenv("LOC2VEC_UNIT_CHUNKS", "1")
    spec = MapnikRenderer.from_env().spec(2)
    assert (spec.resolution, spec.unit_chunks, spec.chunk, spec.blocks_per_side) == (2.5, 1, 256, 2)
