"""Stream an OSM extract with pyosmium into per-channel feature layers clipped to a region.

Memory is bounded by the region's output: tag pre-filtering happens in C++ (``KeyFilter``), objects
outside the region are dropped batch by batch with vectorised shapely tests, and the node location
index can live on disk for large files.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import geopandas as gpd
import numpy as np
import osmium
import shapely

from loc2vec.errors import InputDataError
from loc2vec.geo import BBox
from loc2vec.osm.files import check_osm_file, extract_bounds
from loc2vec.schema import ChannelSchema

COLUMNS = ["channel", "channel_index", "key", "value", "kind", "osm_type", "osm_id", "geometry"]
_BATCH = 20_000
_FLEX_MEM_LIMIT_BYTES = 64 << 20


@dataclass
class ImportStats:
    """What an import saw and kept."""

    bbox: BBox
    features_per_channel: dict[str, int]
    skipped_missing_nodes: int = 0
    objects_seen: int = 0
    seconds: float = 0.0
    node_index: str = ""
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.features_per_channel.values())


@dataclass
class _Batch:
    """Features collected since the last region test."""

    wkb: list[bytes] = field(default_factory=list)
    rows: list[tuple] = field(default_factory=list)

    def add(self, wkb: bytes, hits: list[tuple[int, str, str]], kind: str, osm_type: str, osm_id: int):
        for channel_index, key, value in hits:
            self.wkb.append(wkb)
            self.rows.append((channel_index, key, value, kind, osm_type, osm_id))


def choose_node_index(path: Path, node_index: str, workdir: str) -> str:
    """``auto``: in memory for small files, a sparse on-disk array for large ones."""
    if node_index != "auto":
        return node_index
    if path.stat().st_size <= _FLEX_MEM_LIMIT_BYTES:
        return "flex_mem"
    return f"sparse_file_array,{os.path.join(workdir, 'node_locations.idx')}"


class _Collector:
    """Region test and clipping per batch; keeps only what intersects the region."""

    def __init__(self, region: BBox) -> None:
        self.region = region
        self.box = shapely.box(*region.as_tuple())
        shapely.prepare(self.box)
        self.geoms: list[np.ndarray] = []
        self.rows: list[tuple] = []

    def flush(self, batch: _Batch) -> None:
        if not batch.wkb:
            return
        geoms = shapely.from_wkb(batch.wkb)
        keep = shapely.intersects(self.box, geoms)
        idx = np.flatnonzero(keep)
        if idx.size:
            clipped = shapely.clip_by_rect(geoms[idx], *self.region.as_tuple())
            nonempty = ~shapely.is_empty(clipped)
            self.geoms.append(clipped[nonempty])
            self.rows.extend(batch.rows[i] for i in idx[nonempty])
        batch.wkb.clear()
        batch.rows.clear()

    def frame(self, schema: ChannelSchema) -> gpd.GeoDataFrame:
        geoms = np.concatenate(self.geoms) if self.geoms else np.array([], dtype=object)
        cols = list(zip(*self.rows, strict=True)) if self.rows else [[]] * 6
        names = schema.names
        frame = gpd.GeoDataFrame(
            {
                "channel": [names[i] for i in cols[0]],
                "channel_index": np.asarray(cols[0], dtype=np.int16),
                "key": list(cols[1]),
                "value": list(cols[2]),
                "kind": list(cols[3]),
                "osm_type": list(cols[4]),
                "osm_id": np.asarray(cols[5], dtype=np.int64),
            },
            geometry=gpd.GeoSeries(geoms, crs="EPSG:4326"),
        )
        return frame[COLUMNS]


def _way_is_area(tags: osmium.osm.TagList) -> bool:
    return tags.get("area") == "yes"


def import_features(
    path: str | Path,
    schema: ChannelSchema,
    bbox: BBox | None = None,
    node_index: str = "auto",
) -> tuple[gpd.GeoDataFrame, ImportStats]:
    """Read ``path`` and return one row per (feature, channel) inside ``bbox`` (default: the extract).

    Ways whose nodes are missing (bbox-cut extracts) are skipped and counted. Raises InputDataError
    for unreadable files, a region outside the extract, or a region with no features.
    """
    started = time.perf_counter()
    p = check_osm_file(path)
    extent = extract_bounds(p)
    if bbox is None:
        region = extent
    elif not bbox.intersects(extent):
        raise InputDataError(f"region {bbox} lies outside the extract {p.name} (bounds {extent})")
    else:
        region = bbox

    factory = osmium.geom.WKBFactory()
    batch, collector = _Batch(), _Collector(region)
    skipped = seen = 0
    with tempfile.TemporaryDirectory(prefix="loc2vec-nodes-") as workdir:
        storage = choose_node_index(p, node_index, workdir)
        processor = (
            osmium.FileProcessor(str(p))
            .with_locations(storage)
            .with_areas(osmium.filter.KeyFilter(*schema.keys_for("area")))
            .with_filter(osmium.filter.KeyFilter(*schema.keys))
        )
        try:
            for obj in processor:
                seen += 1
                try:
                    if obj.is_node():
                        hits = schema.classify(obj.tags, "point")
                        if hits:
                            batch.add(factory.create_point(obj), hits, "point", "n", obj.id)
                    elif obj.is_way():
                        if obj.is_closed() and _way_is_area(obj.tags):
                            continue
                        hits = schema.classify(obj.tags, "line")
                        if hits:
                            batch.add(factory.create_linestring(obj), hits, "line", "w", obj.id)
                    elif obj.is_area():
                        hits = schema.classify(obj.tags, "area")
                        if obj.from_way() and not _way_is_area(obj.tags):
                            line_channels = {h[0] for h in schema.classify(obj.tags, "line")}
                            hits = [h for h in hits if h[0] not in line_channels]
                        if hits:
                            osm_type = "w" if obj.from_way() else "r"
                            batch.add(factory.create_multipolygon(obj), hits, "area", osm_type, obj.orig_id())
                except (osmium.InvalidLocationError, RuntimeError):
                    skipped += 1
                if len(batch.wkb) >= _BATCH:
                    collector.flush(batch)
        except RuntimeError as exc:
            raise InputDataError(f"cannot read OSM file {p}: {exc}") from exc
        collector.flush(batch)

    frame = collector.frame(schema)
    if frame.empty:
        raise InputDataError(f"region {region} of {p.name} holds no features of schema {schema.name!r}")
    counts = frame["channel"].value_counts()
    stats = ImportStats(
        bbox=region,
        features_per_channel={name: int(counts.get(name, 0)) for name in schema.names},
        skipped_missing_nodes=skipped,
        objects_seen=seen,
        seconds=time.perf_counter() - started,
        node_index=storage.split(",")[0],
    )
    return frame, stats
