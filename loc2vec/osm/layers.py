"""The feature-layer stage: import an extract and write versioned GeoParquet plus its schema."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import geopandas as gpd
import numpy as np

from loc2vec.errors import NoFeaturesError
from loc2vec.geo import BBox
from loc2vec.io import write_geoparquet, write_json
from loc2vec.osm.changes import ObjectChanges
from loc2vec.osm.files import file_sha256
from loc2vec.osm.importer import ImportStats, import_features
from loc2vec.osm.replication import extract_state
from loc2vec.schema import ChannelSchema, load_schema


@dataclass(frozen=True)
class FeaturesManifest:
    """Where a feature layer lives and what it was made from (passed between pipeline stages)."""

    path: str
    schema_path: str
    bbox: tuple[float, float, float, float]
    osm_path: str
    osm_sha256: str
    schema_name: str
    schema_digest: str
    version: str
    n_features: int
    features_per_channel: dict[str, int]
    osm_sequence: int | None = None  # the extract's replication state, when its header records one
    osm_timestamp: str | None = None

    @property
    def region(self) -> BBox:
        return BBox(*self.bbox)

    def read(self) -> gpd.GeoDataFrame:
        return gpd.read_parquet(self.path)

    def schema(self) -> ChannelSchema:
        return load_schema(self.schema_path)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self) -> Path:
        """Write the manifest beside its layers (``manifest.json``), for stages that find it by path."""
        return write_json(self.to_dict(), Path(self.path).parent / "manifest.json")

    @classmethod
    def load(cls, path: str | Path) -> FeaturesManifest:
        values = json.loads(Path(path).read_text(encoding="utf-8"))
        return cls(**{**values, "bbox": tuple(values["bbox"])})


def layers_version(osm_sha256: str, schema: ChannelSchema, bbox: BBox) -> str:
    text = f"{osm_sha256}|{schema.digest()}|{bbox}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_feature_layers(
    pbf_path: str | Path,
    schema: ChannelSchema,
    out_root: str | Path,
    bbox: BBox | None = None,
    node_index: str = "auto",
) -> tuple[FeaturesManifest, ImportStats]:
    """Import ``pbf_path`` and write ``<out_root>/<version>/features.parquet`` (atomically)."""
    frame, stats = import_features(pbf_path, schema, bbox=bbox, node_index=node_index)
    sha = file_sha256(pbf_path)
    state = extract_state(pbf_path)
    version = layers_version(sha, schema, stats.bbox)
    out_dir = Path(out_root) / version
    schema_path = write_json(schema.source, out_dir / "channels.json")
    path = write_geoparquet(frame, out_dir / "features.parquet")
    manifest = FeaturesManifest(
        path=str(path),
        schema_path=str(schema_path),
        bbox=stats.bbox.as_tuple(),
        osm_path=str(Path(pbf_path).resolve()),
        osm_sha256=sha,
        schema_name=schema.name,
        schema_digest=schema.digest(),
        version=version,
        n_features=stats.total,
        features_per_channel=stats.features_per_channel,
        osm_sequence=state.sequence if state else None,
        osm_timestamp=state.timestamp.isoformat() if state else None,
    )
    return manifest, stats


def refresh_feature_layers(
    features: FeaturesManifest, changes: ObjectChanges, new_extract: str | Path, out_root: str | Path
) -> FeaturesManifest:
    """The feature layers of ``new_extract`` made from ``features`` (those of the extract before the diff)
    without re-importing: the rows of the affected objects are dropped and rebuilt from the changed
    objects alone (``ObjectChanges.write_new_objects``, read by the importer's own pass), in the importer's
    canonical order. Equal to ``build_feature_layers(new_extract, ...)`` row for row, with the same version."""
    import tempfile

    import osmium
    import pandas as pd

    from loc2vec.osm.importer import _Batch, _Collector, _stream

    schema = features.schema()
    region = features.region
    with tempfile.TemporaryDirectory(prefix="loc2vec-changed-") as work:
        small = changes.write_new_objects(Path(work) / "changed.osm.pbf")
        batch, collector = _Batch(), _Collector(region)
        _stream(small, schema, "flex_mem", batch, collector, osmium.geom.WKBFactory(), Path(new_extract))
    rebuilt = collector.frame(schema)
    frame = features.read()
    drop = np.zeros(len(frame), dtype=bool)
    for kind, ids in (("n", changes.nodes), ("w", changes.ways), ("r", changes.relations)):
        drop |= (frame["osm_type"] == kind).to_numpy() & frame["osm_id"].isin(list(ids)).to_numpy()
    merged = pd.concat([frame[~drop], rebuilt], ignore_index=True)
    order = np.lexsort(
        (
            merged["channel_index"].to_numpy(),
            merged["kind"].map({"point": 0, "line": 1, "area": 2}).to_numpy(),
            merged["osm_id"].to_numpy(),
            merged["osm_type"].map({"n": 0, "w": 1, "r": 2}).to_numpy(),
        )
    )
    merged = merged.iloc[order].reset_index(drop=True)
    if merged.empty:
        raise NoFeaturesError(f"after the diff, region {region} holds no features of schema {schema.name!r}")
    sha = file_sha256(new_extract)
    state = extract_state(new_extract)
    version = layers_version(sha, schema, region)
    out_dir = Path(out_root) / version
    schema_path = write_json(schema.source, out_dir / "channels.json")
    path = write_geoparquet(merged, out_dir / "features.parquet")
    counts = merged["channel"].value_counts()
    return FeaturesManifest(
        path=str(path),
        schema_path=str(schema_path),
        bbox=region.as_tuple(),
        osm_path=str(Path(new_extract).resolve()),
        osm_sha256=sha,
        schema_name=schema.name,
        schema_digest=schema.digest(),
        version=version,
        n_features=len(merged),
        features_per_channel={name: int(counts.get(name, 0)) for name in schema.names},
        osm_sequence=state.sequence if state else None,
        osm_timestamp=state.timestamp.isoformat() if state else None,
    )
