"""A large synthetic extract: the Monaco file tiled many times with shifted coordinates and new ids.

Tile ``k`` sits in a grid of ``cols`` columns, shifted by whole multiples of the data extent (plus a
small gap), and every id is offset per type by ``k`` times a stride larger than the largest id of
that type, so ids stay unique and the file stays sorted (all nodes of all tiles, then all ways, then
all relations). The output is cached: a file that exists is reused.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import osmium
from osmium.osm.mutable import Node, Relation, Way

from loc2vec.geo import BBox
from loc2vec.osm.files import header_bounds

GAP_DEG = 0.01


@dataclass(frozen=True)
class TiledExtract:
    path: Path
    tiles: int
    cols: int
    tile_box: BBox  # the source extract's header box
    step: tuple[float, float]

    def tile_region(self, k: int) -> BBox:
        """The header box of the source, shifted onto tile ``k``."""
        row, col = divmod(k, self.cols)
        dx, dy = col * self.step[0], row * self.step[1]
        b = self.tile_box
        return BBox(b.min_lon + dx, b.min_lat + dy, b.max_lon + dx, b.max_lat + dy)

    @property
    def center_tile(self) -> int:
        rows = math.ceil(self.tiles / self.cols)
        return min(self.tiles - 1, (rows // 2) * self.cols + self.cols // 2)


def _meta(o) -> dict:
    return {
        "version": o.version,
        "timestamp": o.timestamp,
        "changeset": o.changeset,
        "uid": o.uid,
        "user": o.user,
        "visible": True,
    }


def _stride(max_id: int) -> int:
    """A round id stride above ``max_id`` (keeps tiles readable: tile k starts at k * stride)."""
    return 10 ** len(str(max_id + 1))


def _read_source(source: Path):
    nodes, ways, rels = [], [], []
    bounds = [180.0, 90.0, -180.0, -90.0]
    for o in osmium.FileProcessor(str(source)):
        if o.is_node():
            loc = o.location
            bounds = [
                min(bounds[0], loc.lon),
                min(bounds[1], loc.lat),
                max(bounds[2], loc.lon),
                max(bounds[3], loc.lat),
            ]
            nodes.append((o.id, loc.x, loc.y, dict(o.tags), _meta(o)))
        elif o.is_way():
            ways.append((o.id, [n.ref for n in o.nodes], dict(o.tags), _meta(o)))
        else:
            members = [(m.type, m.ref, m.role) for m in o.members]
            rels.append((o.id, members, dict(o.tags), _meta(o)))
    return nodes, ways, rels, bounds


def build_tiled_extracts(source: Path, outs: dict[int, Path], cols: int) -> dict[int, TiledExtract]:
    """Write (or reuse) one file per ``{tiles: path}``, all on the same grid of ``cols`` columns.

    The files share their first tiles, so a region on one of those tiles holds the same features in
    every file. They are written in one sweep over the source objects.
    """
    nodes, ways, rels, data = _read_source(source)
    box = header_bounds(source) or BBox(*data)
    # whole extent of the data (complete ways may reach beyond the header box) plus a gap
    step = (
        round(max(data[2], box.max_lon) - min(data[0], box.min_lon) + GAP_DEG, 3),
        round(max(data[3], box.max_lat) - min(data[1], box.min_lat) + GAP_DEG, 3),
    )
    infos = {n: TiledExtract(p, n, cols, box, step) for n, p in outs.items()}
    todo = {n: p for n, p in outs.items() if not p.exists()}
    if not todo:
        return infos
    stride = {
        "n": _stride(max(n[0] for n in nodes)),
        "w": _stride(max(w[0] for w in ways)),
        "r": _stride(max(r[0] for r in rels)),
    }
    writers = {}
    for n, p in todo.items():
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".part.osm.pbf")
        if tmp.exists():
            tmp.unlink()
        header = osmium.io.Header()
        last = infos[n].tile_region(n - 1)
        rows = math.ceil(n / cols)
        top = infos[n].tile_region((rows - 1) * cols)
        header.add_box(
            osmium.osm.Box(
                osmium.osm.Location(box.min_lon, box.min_lat),
                osmium.osm.Location(max(last.max_lon, infos[n].tile_region(min(n, cols) - 1).max_lon), top.max_lat),
            )
        )
        header.set("generator", "loc2vec benchmarks.tiled_pbf")
        header.set("sorting", "Type_then_ID")
        writers[n] = (osmium.SimpleWriter(str(tmp), header=header), tmp, p)
    tiles = max(todo)
    fixed = 10_000_000

    def targets(k):
        return [w for n, (w, _, _) in writers.items() if k < n]

    try:
        for k in range(tiles):
            row, col = divmod(k, cols)
            # shift in the fixed-point grid, so coordinates stay exact 1e-7 degree values
            dx, dy = round(col * step[0] * fixed), round(row * step[1] * fixed)
            off, ws = stride["n"] * k, targets(k)
            for nid, x, y, tags, meta in nodes:
                obj = Node(
                    id=nid + off,
                    location=osmium.osm.Location((x + dx) / fixed, (y + dy) / fixed),
                    tags=tags,
                    **meta,
                )
                for w in ws:
                    w.add_node(obj)
        for k in range(tiles):
            off, noff, ws = stride["w"] * k, stride["n"] * k, targets(k)
            for wid, refs, tags, meta in ways:
                obj = Way(id=wid + off, nodes=[r + noff for r in refs], tags=tags, **meta)
                for w in ws:
                    w.add_way(obj)
        for k in range(tiles):
            offs, ws = {t: stride[t] * k for t in "nwr"}, targets(k)
            for rid, members, tags, meta in rels:
                mem = [(t, ref + offs[t], role) for t, ref, role in members]
                obj = Relation(id=rid + offs["r"], members=mem, tags=tags, **meta)
                for w in ws:
                    w.add_relation(obj)
    finally:
        for w, _, _ in writers.values():
            w.close()
    for _, tmp, p in writers.values():
        os.replace(tmp, p)
    return infos
