"""Outputs appear whole or not at all, with the mode the process's umask gives (not mkstemp's 0600)."""

import os
import stat

import geopandas as gpd
import pytest
import torch
from shapely.geometry import Point

from loc2vec.io import atomic_path, write_geoparquet, write_json
from loc2vec.training.checkpoint import save_checkpoint


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_get_the_mode_of_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        written = [
            write_json({"a": 1}, tmp_path / "doc.json"),
            write_geoparquet(
                gpd.GeoDataFrame({"v": [1]}, geometry=[Point(0, 0)], crs="EPSG:4326"), tmp_path / "f.parquet"
            ),
        ]
        save_checkpoint({"w": torch.zeros(2)}, tmp_path / "ckpt.pt")
        written.append(tmp_path / "ckpt.pt")
    finally:
        os.umask(old)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "doc.json"
    write_json({"v": 1}, target)
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk gone")
    assert target.read_text().strip().startswith("{") and '"v": 1' in target.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["doc.json"]
