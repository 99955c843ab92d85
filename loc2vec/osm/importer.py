"""Stream an OSM extract with pyosmium into per-channel feature layers clipped to a region.

Two strategies give the same features (see ``docs/benchmarks.md``):

``stream``
    One pass over the file: tag pre-filtering in C++ (``KeyFilter``), every tagged object becomes a
    geometry, and objects outside the region are dropped batch by batch with vectorised shapely tests.
    Best when the region covers most of the file.
``region``
    For a small region of a large file, the work outside the region stays in C++. Pass 1 reads only
    the node blocks of the PBF, keeps every location in an on-disk index (``sparse_file_array``) and
    hands only tagged nodes to Python. numpy puts every node into one of nine zones around the region
    (inside, or one of eight outside) and writes a copy of the index in which every outside node sits
    on its zone's point. In pass 2, over the way blocks only, pyosmium's ``GeoInterfaceFilter`` drops
    in C++ every way that collapses to one point: a way confined to one outside zone, which cannot
    touch the region because each zone is convex (a worker process takes half of the blocks). The
    ways left, the multipolygon and boundary relations using one of them, and those relations' other
    member ways (read from the few blocks that can hold them) make a small extract, which the
    ``stream`` pass reads with locations from the on-disk index. Memory follows the region, not the
    file, and the features are the same.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import osmium
import shapely
from osmium.osm.mutable import Relation

from loc2vec.errors import InputDataError, Loc2VecError, NoFeaturesError
from loc2vec.geo import BBox
from loc2vec.osm.files import (
    check_osm_file,
    extract_bounds,
    pbf_type_ranges,
    pbf_way_blocks_for,
    require_overlap,
    write_pbf_part,
)
from loc2vec.schema import GEOMETRY_KINDS, ChannelSchema

if TYPE_CHECKING:
    import geopandas as gpd

COLUMNS = ["channel", "channel_index", "key", "value", "kind", "osm_type", "osm_id", "geometry"]
_BATCH = 20_000
_FLEX_MEM_LIMIT_BYTES = 64 << 20
# region strategy: for files over this size whose region covers at most this share of the extent
_REGION_MIN_BYTES = 64 << 20
_REGION_MAX_SHARE = 0.25
_FIX = 10_000_000  # osmium's fixed-point coordinate precision (1e-7 degree)
_UNDEFINED = 2**31 - 1  # osmium's undefined coordinate
_INDEX_DTYPE = np.dtype([("id", "<u8"), ("x", "<i4"), ("y", "<i4")])  # sparse_file_array entries
_CHUNK = 1 << 18
# libosmium buffers up to 20 decoded blocks per reader queue; our passes consume slower than it decodes,
# so full queues would only hold memory
_QUEUES = {f"OSMIUM_MAX_{name}_QUEUE_SIZE": "4" for name in ("INPUT", "OSMDATA", "OUTPUT")}
_MIN_BLOCKS_TO_SPLIT = 64  # way blocks (8000 ways each) worth a second process
STRATEGIES = ("auto", "stream", "region")


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
        """The collected rows in a canonical order: by OSM type and id, kind, then channel.

        The order does not depend on when pyosmium flushes assembled areas, so both strategies give
        the same frame.
        """
        import geopandas as gpd  # imported here: the way-selection worker process does not need it

        geoms = np.concatenate(self.geoms) if self.geoms else np.array([], dtype=object)
        type_rank = {"n": 0, "w": 1, "r": 2}
        kind_rank = {"point": 0, "line": 1, "area": 2}
        order = sorted(
            range(len(self.rows)),
            key=lambda i: (
                type_rank[self.rows[i][4]],
                self.rows[i][5],
                kind_rank[self.rows[i][3]],
                self.rows[i][0],
            ),
        )
        geoms = geoms[order] if len(order) else geoms
        rows = [self.rows[i] for i in order]
        cols = list(zip(*rows, strict=True)) if rows else [[]] * 6
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


def _way_is_area(tags) -> bool:
    return tags.get("area") == "yes"


class _Classifier:
    """``ChannelSchema.classify`` on a plain dict, looking up only the keys an object has.

    Same result as the schema's method (the first matching rule of every channel, channels in order),
    several times faster than asking pyosmium's tag list for every rule key.
    """

    def __init__(self, schema: ChannelSchema) -> None:
        self.tables: dict[str, dict[str, list]] = {}
        for kind in GEOMETRY_KINDS:
            table: dict[str, list] = {}
            for ci, channel in enumerate(schema.channels):
                for pos, rule in enumerate(channel.rules):
                    if kind in rule.geometry:
                        table.setdefault(rule.key, []).append((ci, pos, rule))
            self.tables[kind] = table
        self.keys = sorted({*schema.keys, "area"})

    def tags(self, tags: osmium.osm.TagList) -> dict[str, str]:
        """The tags the schema looks at (and ``area``): a few lookups beat copying the whole list."""
        return {k: v for k in self.keys if (v := tags.get(k)) is not None}

    def __call__(self, tags: dict[str, str], kind: str) -> list[tuple[int, str, str]]:
        table = self.tables[kind]
        best: dict[int, tuple[int, str, str]] = {}
        for key, value in tags.items():
            for ci, pos, rule in table.get(key, ()):
                if rule.matches(value, kind) and (ci not in best or pos < best[ci][0]):
                    best[ci] = (pos, key, value)
        return [(ci, best[ci][1], best[ci][2]) for ci in sorted(best)]


def import_features(
    path: str | Path,
    schema: ChannelSchema,
    bbox: BBox | None = None,
    node_index: str = "auto",
    strategy: str = "auto",
) -> tuple[gpd.GeoDataFrame, ImportStats]:
    """Read ``path`` and return one row per (feature, channel) inside ``bbox`` (default: the extract).

    Ways whose nodes are missing (bbox-cut extracts) are skipped and counted. ``strategy`` is
    ``stream``, ``region`` or ``auto`` (``region`` for a ``bbox`` covering at most a quarter of a file
    over 64 MiB, unless ``node_index`` is set); both give the same features, in the same order.
    ``node_index`` applies to ``stream``; ``region`` always keeps its index on disk.

    Raises InputDataError for unreadable files, a region outside the extract, or a region with no
    features.
    """
    started = time.perf_counter()
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown import strategy {strategy!r}; use one of {STRATEGIES}")
    p = check_osm_file(path)
    extent = extract_bounds(p)
    if bbox is not None:
        require_overlap(bbox, extent, p)
    region = extent if bbox is None else bbox
    if strategy == "auto":
        small = _area(region) <= _REGION_MAX_SHARE * _area(extent)
        large = p.stat().st_size > _REGION_MIN_BYTES
        strategy = "region" if bbox is not None and small and large and node_index == "auto" else "stream"

    extra: dict[str, float] = {}
    factory = osmium.geom.WKBFactory()
    batch, collector = _Batch(), _Collector(region)
    with tempfile.TemporaryDirectory(prefix="loc2vec-nodes-") as workdir:
        if strategy == "region":
            storage = "sparse_file_array"
            try:
                with _short_reader_queues():
                    skipped, seen, extra = _import_region(p, schema, region, workdir, batch, collector, factory)
            except _Unsorted:
                strategy = "stream"  # the on-disk index needs sorted ids: read the whole file instead
                batch, collector = _Batch(), _Collector(region)
            except RuntimeError as exc:
                raise InputDataError(f"cannot read OSM file {p}: {exc}") from exc
        if strategy == "stream":
            storage = choose_node_index(p, node_index, workdir)
            skipped, seen = _stream(p, schema, storage, batch, collector, factory, p)

    frame = collector.frame(schema)
    if frame.empty:
        raise NoFeaturesError(f"region {region} of {p.name} holds no features of schema {schema.name!r}")
    counts = frame["channel"].value_counts()
    extra["strategy_region"] = float(strategy == "region")
    stats = ImportStats(
        bbox=region,
        features_per_channel={name: int(counts.get(name, 0)) for name in schema.names},
        skipped_missing_nodes=skipped,
        objects_seen=seen,
        seconds=time.perf_counter() - started,
        node_index=storage.split(",")[0],
        extra=extra,
    )
    return frame, stats


def _area(b: BBox) -> float:
    return max(b.max_lon - b.min_lon, 0.0) * max(b.max_lat - b.min_lat, 0.0)


def _stream(
    p: Path,
    schema: ChannelSchema,
    storage: str | osmium.index.LocationTable,
    batch: _Batch,
    collector: _Collector,
    factory: osmium.geom.WKBFactory,
    source: Path,
) -> tuple[int, int]:
    """The ``stream`` pass: every tagged object of ``p`` becomes a geometry, tested against the region."""
    skipped = seen = 0
    processor = (
        osmium.FileProcessor(str(p))
        .with_locations(storage)
        .with_areas(osmium.filter.KeyFilter(*schema.keys_for("area")))
        .with_filter(osmium.filter.KeyFilter(*schema.keys))
    )
    classify = _Classifier(schema)
    try:
        for obj in processor:
            seen += 1
            try:
                if obj.is_node():
                    _add_point(obj, classify, batch, factory)
                elif obj.is_way():
                    tags = classify.tags(obj.tags)
                    if _way_is_area(tags) and obj.is_closed():
                        continue
                    hits = classify(tags, "line")
                    if hits:
                        batch.add(factory.create_linestring(obj), hits, "line", "w", obj.id)
                elif obj.is_area():
                    tags = classify.tags(obj.tags)
                    hits = classify(tags, "area")
                    if obj.from_way() and not _way_is_area(tags):
                        line_channels = {h[0] for h in classify(tags, "line")}
                        hits = [h for h in hits if h[0] not in line_channels]
                    if hits:
                        osm_type = "w" if obj.from_way() else "r"
                        batch.add(factory.create_multipolygon(obj), hits, "area", osm_type, obj.orig_id())
            except (osmium.InvalidLocationError, RuntimeError):
                skipped += 1
            if len(batch.wkb) >= _BATCH:
                collector.flush(batch)
    except RuntimeError as exc:
        raise InputDataError(f"cannot read OSM file {source}: {exc}") from exc
    collector.flush(batch)
    return skipped, seen


def _add_point(node, classify: _Classifier, batch: _Batch, factory: osmium.geom.WKBFactory) -> None:
    hits = classify(classify.tags(node.tags), "point")
    if hits:
        batch.add(factory.create_point(node), hits, "point", "n", node.id)


# --- the region strategy --------------------------------------------------------------------------


def _fixed_box(region: BBox) -> tuple[int, int, int, int]:
    """The region in osmium's fixed-point grid, widened by one unit (any box holding it works)."""
    return (
        math.floor(region.min_lon * _FIX) - 1,
        math.floor(region.min_lat * _FIX) - 1,
        math.ceil(region.max_lon * _FIX) + 1,
        math.ceil(region.max_lat * _FIX) + 1,
    )


def _zone_points(box: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One point per zone (index ``3 * (cy + 1) + (cx + 1)``), each inside its own zone."""
    x0, y0, x1, y1 = box
    lim_x, lim_y = 180 * _FIX, 90 * _FIX
    xs = [max(x0 - 1, -lim_x), x0, min(x1 + 1, lim_x)]
    ys = [max(y0 - 1, -lim_y), y0, min(y1 + 1, lim_y)]
    return (
        np.array([xs[i % 3] for i in range(9)], dtype=np.int32),
        np.array([ys[i // 3] for i in range(9)], dtype=np.int32),
    )


def _write_zoned_index(real: np.ndarray, path: str, box: tuple[int, int, int, int]) -> tuple[int, bool]:
    """Copy the node index, moving each node outside ``box`` onto its zone's point.

    Returns the number of nodes inside ``box`` and whether the ids are sorted (the index needs it).
    """
    x0, y0, x1, y1 = box
    zx, zy = _zone_points(box)
    inside = 0
    last = -1
    ordered = True
    with open(path, "wb") as out:
        for start in range(0, len(real), _CHUNK):
            part = np.array(real[start : start + _CHUNK])
            ids = part["id"]
            if ids.size and (int(ids[0]) <= last or bool(np.any(ids[1:] <= ids[:-1]))):
                ordered = False
            last = int(ids[-1]) if ids.size else last
            x, y = part["x"], part["y"]
            defined = (x != _UNDEFINED) & (y != _UNDEFINED)
            cx = (x > x1).astype(np.int8) - (x < x0).astype(np.int8)
            cy = (y > y1).astype(np.int8) - (y < y0).astype(np.int8)
            outside = defined & ((cx != 0) | (cy != 0))
            inside += int(np.count_nonzero(defined & ~outside))
            zone = 3 * (cy[outside] + 1) + (cx[outside] + 1)
            part["x"][outside] = zx[zone]
            part["y"][outside] = zy[zone]
            part.tofile(out)
    return inside, ordered


class _Unsorted(Exception):
    """The file is not sorted by id: the region strategy cannot use its on-disk index."""


class ImportWorkerFailed(Loc2VecError):
    """The importer's helper process died (killed, out of memory): the file itself may be fine."""


@contextlib.contextmanager
def _short_reader_queues():
    """Shorter libosmium reader queues (read from the environment when a reader opens), unless set."""
    added = {k: v for k, v in _QUEUES.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def _select_ways(
    ways_file: str, zoned_path: str, out: str, area_keys: list[str]
) -> tuple[set[int], list[tuple[int, list[tuple[str, int, str]], dict[str, str]]], int]:
    """Write to ``out`` the ways of ``ways_file`` not confined to one zone; return their ids, the area
    relations of the file and the number of ways dropped for missing nodes.

    With every outside node on its zone's point, a way confined to one outside zone has one distinct
    location, so ``GeoInterfaceFilter`` cannot build its line and drops it, in C++.
    """
    zoned = osmium.index.create_map(f"sparse_file_array,{zoned_path}")
    locations = osmium.NodeLocationsForWays(zoned)
    locations.ignore_errors()
    span = osmium.filter.GeoInterfaceFilter(True, ["\x00"])
    span.enable_for(osmium.osm.WAY)
    area_relations = (
        osmium.filter.KeyFilter(*area_keys) if area_keys else osmium.filter.EntityFilter(osmium.osm.NOTHING)
    )
    area_relations.enable_for(osmium.osm.RELATION)
    candidates: set[int] = set()
    relations = []
    failed = 0
    with (
        osmium.SimpleWriter(out) as writer,
        osmium.io.Reader(ways_file, osmium.osm.WAY | osmium.osm.RELATION) as reader,
    ):
        it = osmium.OsmFileIterator(reader, locations, span, area_relations)
        while True:
            try:
                obj = next(it)
            except StopIteration:
                break
            except osmium.InvalidLocationError:
                failed += 1  # a way with nodes missing from the file: the stream pass skips it too
                continue
            if obj.is_way():
                candidates.add(obj.id)
                writer.add_way(obj)
            elif obj.tags.get("type") in ("multipolygon", "boundary"):
                members = [(m.type, m.ref, m.role) for m in obj.members]
                relations.append((obj.id, members, dict(obj.tags)))
        del it
    return candidates, relations, failed


def _worker(argv: list[str]) -> None:
    """Entry point of the way-selection worker process: ``WAYS_FILE ZONED_INDEX OUT``."""
    _, _, failed = _select_ways(argv[0], argv[1], argv[2], [])
    print(failed)


def _import_region(
    p: Path,
    schema: ChannelSchema,
    region: BBox,
    workdir: str,
    batch: _Batch,
    collector: _Collector,
    factory: osmium.geom.WKBFactory,
) -> tuple[int, int, dict[str, float]]:
    """The ``region`` strategy (see the module docstring); falls back to ``stream`` for unsorted files."""
    t0 = time.perf_counter()
    ranges = pbf_type_ranges(p)
    if ranges is not None:
        nodes_file = write_pbf_part(p, ranges, "node", os.path.join(workdir, "nodes.osm.pbf"))
        ways_file = write_pbf_part(p, ranges, "way relation", os.path.join(workdir, "ways.osm.pbf"))
    else:
        nodes_file = ways_file = str(p)
    box = _fixed_box(region)
    x0, y0, x1, y1 = box
    index_path = os.path.join(workdir, "node_locations.idx")
    t1 = time.perf_counter()

    # pass 1: every node location into the on-disk index (C++); tagged nodes in the region to Python
    index = osmium.index.create_map(f"sparse_file_array,{index_path}")
    classify = _Classifier(schema)
    seen = 0
    # OsmFileIterator does not keep its handlers alive: hold them in variables
    store = osmium.NodeLocationsForWays(index)
    tagged = osmium.filter.KeyFilter(*schema.keys)
    with osmium.io.Reader(nodes_file, osmium.osm.NODE) as reader:
        for node in osmium.OsmFileIterator(reader, store, tagged):
            seen += 1
            loc = node.location
            if loc.valid() and x0 <= loc.x <= x1 and y0 <= loc.y <= y1:
                _add_point(node, classify, batch, factory)
    n_nodes = index.used_memory() // _INDEX_DTYPE.itemsize
    t2 = time.perf_counter()

    # the zoned copy of the index
    zoned_path = index_path + ".zoned"
    inside, ordered = 0, True
    if n_nodes:
        real = np.memmap(index_path, dtype=_INDEX_DTYPE, mode="r", shape=(n_nodes,))
        inside, ordered = _write_zoned_index(real, zoned_path, box)
        del real
    else:
        open(zoned_path, "wb").close()
    if not ordered:
        raise _Unsorted(p)
    t3 = time.perf_counter()

    # pass 2: ways whose nodes span more than one zone (or touch the region), and area relations;
    # on a machine with several cores a worker process takes half of the way blocks
    picked = [os.path.join(workdir, "candidates.osm.pbf")]
    worker = None
    own_file = ways_file
    if ranges is not None and (os.cpu_count() or 1) > 1 and len(ranges["way"]) >= _MIN_BLOCKS_TO_SPLIT:
        blocks = ranges["way"]
        half = len(blocks) // 2
        theirs = write_pbf_part(p, {**ranges, "way": blocks[half:]}, "way", os.path.join(workdir, "ways_b.osm.pbf"))
        own = {**ranges, "way": blocks[:half]}
        own_file = write_pbf_part(p, own, "way relation", os.path.join(workdir, "ways_a.osm.pbf"))
        picked.append(os.path.join(workdir, "candidates_b.osm.pbf"))
        code = "import sys; from loc2vec.osm.importer import _worker; _worker(sys.argv[1:])"
        worker = subprocess.Popen(
            [sys.executable, "-c", code, theirs, zoned_path, picked[1]],
            stdout=subprocess.PIPE,
            text=True,
            env={**_QUEUES, **os.environ},
        )
    try:
        candidates, relations, failed = _select_ways(own_file, zoned_path, picked[0], schema.keys_for("area"))
        if worker is not None:
            out, _ = worker.communicate()
            if worker.returncode != 0:  # a crash of ours, not a fault of the file: not reported as one
                raise ImportWorkerFailed(
                    f"the way-selection worker process for {p} ended with exit code {worker.returncode}"
                )
            failed += int(out.split()[-1])
            candidates.update(w.id for w in osmium.FileProcessor(picked[1], osmium.osm.WAY))
    finally:
        if worker is not None and worker.poll() is None:
            worker.kill()
            worker.wait()
    t4 = time.perf_counter()

    # relations with a candidate member way can reach the region: keep them with all member ways
    kept, missing = [], set()
    for rid, members, tags in relations:
        way_refs = [ref for t, ref, _ in members if t == "w"]
        if any(ref in candidates for ref in way_refs):
            kept.append((rid, members, tags))
            missing.update(ref for ref in way_refs if ref not in candidates)
    added = os.path.join(workdir, "members.osm.pbf")
    with osmium.SimpleWriter(added) as writer:
        if missing:
            # only the blocks that can hold the missing ways (most are absent from a cut extract)
            source = ways_file
            if ranges is not None:
                blocks = pbf_way_blocks_for(p, ranges["way"], missing)
                part = {"header": ranges["header"], "way": blocks}
                source = write_pbf_part(p, part, "way", os.path.join(workdir, "members_src.osm.pbf"))
            by_id = osmium.filter.IdFilter(sorted(missing))
            with osmium.io.Reader(source, osmium.osm.WAY) as reader:
                for way in osmium.OsmFileIterator(reader, by_id):
                    writer.add_way(way)
        for rid, members, tags in kept:
            writer.add_relation(Relation(id=rid, members=members, tags=tags))
    # one sorted extract (area assembly needs sorted ids)
    sub = os.path.join(workdir, "region.osm.pbf")
    merge = osmium.MergeInputReader()
    for name in (*picked, added):
        merge.add_file(name)
    out = osmium.WriteHandler(sub)
    merge.apply(out)
    out.close()
    t5 = time.perf_counter()

    # the stream pass over the small extract, with node locations from the on-disk index
    skipped, seen_sub = _stream(Path(sub), schema, index, batch, collector, factory, p)
    t6 = time.perf_counter()
    extra = {
        "nodes_indexed": float(n_nodes),
        "nodes_in_region": float(inside),
        "ways_kept": float(len(candidates)),
        "relations_kept": float(len(kept)),
        "member_ways_fetched": float(len(missing)),
        "seconds_split_blocks": t1 - t0,
        "seconds_index_nodes": t2 - t1,
        "seconds_zone_index": t3 - t2,
        "seconds_select_ways": t4 - t3,
        "seconds_member_ways": t5 - t4,
        "seconds_stream_extract": t6 - t5,
    }
    return skipped + failed, seen + seen_sub, extra
