"""The sample-locations stage: anchors with splits, written as GeoParquet with a manifest."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd

from loc2vec.data.crops import CropGeometry
from loc2vec.data.samples import LeakageReport, SplitSpec, leakage_report, sample_locations
from loc2vec.io import write_geoparquet


@dataclass(frozen=True)
class SamplesManifest:
    path: str
    mosaic_version: str
    spec: dict
    counts: dict[str, int]
    leak_distance_m: float
    min_test_train_m: float

    def read(self) -> gpd.GeoDataFrame:
        return gpd.read_parquet(self.path)

    def xy(self, split: str) -> np.ndarray:
        """CRS coordinates of the ``split``'s anchors (reads three columns, not the geometries)."""
        frame = pd.read_parquet(self.path, columns=["x", "y", "split"])
        return frame.loc[frame["split"] == split, ["x", "y"]].to_numpy()

    def split_spec(self) -> SplitSpec:
        values = dict(self.spec)
        if "r_pos_m" in values:  # the name of max_positive_m in manifests written before it was renamed
            values["max_positive_m"] = values.pop("r_pos_m")
        return SplitSpec(**values)


def build_sample_locations(
    reader: CropGeometry, spec: SplitSpec, mosaic_version: str, out_dir: str | Path
) -> tuple[SamplesManifest, LeakageReport]:
    spec = spec.resolved(reader.grid.width * reader.grid.resolution, reader.grid.height * reader.grid.resolution)
    frame = sample_locations(reader, spec)
    leak = spec.leak_distance_m(reader.grid.resolution)
    report = leakage_report(frame, leak)
    geo = gpd.GeoDataFrame(frame, geometry=gpd.points_from_xy(frame["lon"], frame["lat"]), crs="EPSG:4326")
    path = write_geoparquet(geo, Path(out_dir) / f"{mosaic_version}-s{spec.seed}-{spec.digest()}.parquet")
    counts = {k: int(v) for k, v in frame["split"].value_counts().items()}
    return (
        SamplesManifest(str(path), mosaic_version, asdict(spec), counts, leak, report.min_test_train_m),
        report,
    )


def split_table(frame: pd.DataFrame) -> list[tuple[str, int, int]]:
    """(split, anchors, blocks) rows."""
    return [
        (name, int((frame["split"] == name).sum()), int(frame.loc[frame["split"] == name, "block"].nunique()))
        for name in ("train", "val", "test", "buffer")
    ]
