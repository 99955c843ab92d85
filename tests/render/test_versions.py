"""Versions are functions of content and configuration only: the same in every process."""

import json
import subprocess
import sys

from tests.conftest import ROOT

PRINT_VERSIONS = """
import json
from loc2vec.data.samples import SplitSpec
from loc2vec.geo import BBox
from loc2vec.osm.layers import layers_version
from loc2vec.grid import MosaicGrid
from loc2vec.render.mosaic import mosaic_version
from loc2vec.render.styles import style_hash
from loc2vec.schema import load_schema
from loc2vec.training.config import TrainConfig
from loc2vec.training.loop import anchors_digest
import numpy as np

schema = load_schema(None)
region = BBox(7.405, 43.722, 7.445, 43.752)
grid = MosaicGrid.from_region(region, 3.0)
styles = style_hash(schema, 3.0, f"epsg:{grid.crs_epsg}")


class Features:
    version = layers_version("0" * 64, schema, region)


xy = np.arange(12.0).reshape(6, 2)
print(json.dumps({
    "style": styles,
    "features": Features.version,
    "mosaic": mosaic_version(Features, grid, styles),
    "split": SplitSpec().digest(),
    "train": TrainConfig().digest(),
    "anchors": anchors_digest(xy, xy[:2]),
}))
"""


def _versions_in_a_new_process() -> dict:
    out = subprocess.run([sys.executable, "-c", PRINT_VERSIONS], cwd=ROOT, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_versions_are_the_same_in_separate_processes():
    first, second = _versions_in_a_new_process(), _versions_in_a_new_process()
    assert first == second
    assert all(len(v) >= 12 for v in first.values())


def test_the_style_hash_holds_the_mapnik_version_not_an_object_address():
    from loc2vec.render.styles import mapnik_version

    assert mapnik_version()[0].isdigit() and " at 0x" not in mapnik_version()
