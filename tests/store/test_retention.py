"""Old output versions are pruned to a number, never the current one or what the current index uses."""

import json
import os

import pytest

from loc2vec.errors import ConfigError
from loc2vec.store.retention import prune_versions


def _version(root, name, age_s, kind="dir"):
    path = root / name
    if kind == "dir":
        (path / "data").mkdir(parents=True)
        (path / "data" / "x").write_text(name)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
    os.utime(path, (1e9 - age_s, 1e9 - age_s))
    return path


def test_the_newest_versions_are_kept(tmp_path):
    root = tmp_path / "models"
    paths = [_version(root, f"m{i}", age_s=i * 10) for i in range(5)]  # m0 newest
    artifacts = _version(root, "mlruns", age_s=1000)  # MLflow's artifact store, not a version
    removed = prune_versions(tmp_path, "models", keep=2)
    assert artifacts.exists()
    assert sorted(p.name for p in removed) == ["m2", "m3", "m4"]
    assert [p.exists() for p in paths] == [True, True, False, False, False]
    assert not list(root.glob(".pruning-*"))


def test_the_current_version_counts_as_newest_and_in_use_paths_survive(tmp_path):
    mosaics = tmp_path / "mosaic"
    old = _version(mosaics, "a.zarr", age_s=100)
    (mosaics / "a_overview.png").write_text("png")
    used = _version(mosaics, "b.zarr", age_s=90)
    newer = [_version(mosaics, f"{c}.zarr", age_s=10) for c in "cd"]
    index = tmp_path / "index" / "v3-abc"
    index.mkdir(parents=True)
    (index / "manifest.json").write_text(json.dumps({"mosaic_path": str(used), "model_weights": "/nowhere/model.pt"}))
    (tmp_path / "index" / "CURRENT").write_text(str(index / "manifest.json"))
    removed = prune_versions(tmp_path, "mosaic", keep=1, protect=[old])  # "old" is the one this run uses
    assert old.exists() and used.exists()  # current (touched) and in use by the current index
    assert sorted(p.name for p in removed) == ["c.zarr", "d.zarr"] and not any(p.exists() for p in newer)
    assert (mosaics / "a_overview.png").exists()


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="keep_versions must be >= 1"):
        prune_versions(tmp_path, "models", keep=0)
    with pytest.raises(ConfigError, match="unknown output kind"):
        prune_versions(tmp_path, "everything", keep=1)
