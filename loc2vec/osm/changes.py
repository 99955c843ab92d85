"""What changed on the ground: the objects an OsmChange diff touches, their old and new shapes, the render
units those shapes reach, and the changed objects rebuilt as a small extract for the feature layers.

One diff (or several, merged with pyosmium's ``MergeInputReader``, newest version of each object) is read
against the *pre-change* extract. pyosmium's ``IdTracker`` finds, in C++, the ways that use a changed node
and the relations that use a changed node or way (``complete_forward_references``), then the nodes and
member ways those need (``complete_backward_references``); two filtered passes read just those objects.
An object is *affected* when the diff changes it, when it is a way one of whose nodes moved or was
deleted, or when it is a multipolygon/boundary relation one of whose members is affected: exactly the
objects whose rows in the feature layers can differ after the diff.

Shapes are conservative: a point for a node, the line of an open way, the convex hull of a closed way (it
covers the fill) and of a relation's member ways, each in its old and its new geometry.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import osmium
import shapely
from osmium.osm import mutable

from loc2vec.errors import InputDataError
from loc2vec.geo import to_crs_transformer
from loc2vec.grid import MosaicGrid
from loc2vec.osm.files import check_osm_file
from loc2vec.schema import ChannelSchema

AREA_RELATION_TYPES = ("multipolygon", "boundary")  # the relations libosmium assembles into areas
Member = tuple[str, int, str]  # (type, ref, role)


def snapshot_extract(extract: str | Path, dst: str | Path) -> Path:
    """Keep the extract as it is now at ``dst``: a hard link (a copy where links are impossible). Take it before
    ``replication.update_extract``, whose atomic swap replaces the name and not the file, to have the
    pre-change extract ``change_footprint`` needs."""
    src, target = check_osm_file(extract), Path(dst)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.unlink(missing_ok=True)
    try:
        os.link(src, target)
    except OSError:
        shutil.copyfile(src, target)
    return target


class ForeignDiffError(InputDataError):
    """A diff none of whose objects lies in the extract or its region: it was made for another region."""


@dataclass
class _Objects:
    """OSM objects by id: node locations (lon, lat) and tags, way refs and tags, relation members and tags.
    ``None`` marks a deletion (in a diff)."""

    nodes: dict[int, tuple[tuple[float, float] | None, dict[str, str]] | None] = field(default_factory=dict)
    ways: dict[int, tuple[tuple[int, ...], dict[str, str]] | None] = field(default_factory=dict)
    relations: dict[int, tuple[tuple[Member, ...], dict[str, str]] | None] = field(default_factory=dict)


class _Collect(osmium.SimpleHandler):
    """Copy every object handed to it into an ``_Objects`` (deleted ones as None)."""

    def __init__(self, into: _Objects) -> None:
        super().__init__()
        self.into = into

    def node(self, n: Any) -> None:
        loc = n.location
        where = (loc.lon, loc.lat) if loc.valid() else None
        self.into.nodes[n.id] = (where, dict(n.tags)) if n.visible else None

    def way(self, w: Any) -> None:
        self.into.ways[w.id] = (tuple(r.ref for r in w.nodes), dict(w.tags)) if w.visible else None

    def relation(self, r: Any) -> None:
        members = tuple((m.type, m.ref, m.role) for m in r.members)
        self.into.relations[r.id] = (members, dict(r.tags)) if r.visible else None


def read_diffs(diffs: Sequence[str | Path]) -> _Objects:
    """The newest version of every object in the OsmChange files ``diffs`` (in sequence order)."""
    if not diffs:
        raise InputDataError("no diff given")
    reader = osmium.MergeInputReader()
    for path in diffs:
        p = Path(path)
        if not p.is_file():
            raise InputDataError(f"OSM diff not found: {p}")
        if not p.name.lower().endswith((".osc", ".osc.gz", ".osc.bz2")):
            raise InputDataError(f"{p.name!r} is not an OsmChange file (.osc, .osc.gz, .osc.bz2)")
        try:
            reader.add_file(str(p))
        except RuntimeError as exc:
            raise InputDataError(f"OSM diff {p} is not a readable OsmChange file: {exc}") from exc
    diff = _Objects()
    try:
        reader.apply(_Collect(diff), simplify=True)
    except RuntimeError as exc:
        names = ", ".join(Path(p).name for p in diffs)
        raise InputDataError(f"OSM diff {names} is not a readable OsmChange file: {exc}") from exc
    return diff


@dataclass(frozen=True)
class ChangeCounts:
    created: int
    modified: int
    deleted: int
    ways_with_moved_nodes: int  # ways the diff leaves alone whose nodes it moves or deletes
    relations_with_changed_members: int  # area relations the diff leaves alone whose members it changes


@dataclass
class ObjectChanges:
    """The objects a diff affects, with the pre-change and post-change data their shapes need."""

    nodes: set[int]  # diff nodes: their rows in the feature layers are rebuilt
    ways: set[int]
    relations: set[int]
    counts: ChangeCounts
    old: _Objects  # pre-change data of affected objects and of what they reference
    new: _Objects  # post-change data of the same
    member_ways: set[int]  # unaffected member ways of affected relations (geometry only, no rows of theirs)
    in_extract: int  # diff objects the pre-change extract holds

    def shapes(self) -> tuple[np.ndarray, np.ndarray]:
        """Old and new shapes (lon/lat shapely geometries) of every affected object."""
        return _shapes(self, self.old), _shapes(self, self.new)

    def write_new_objects(self, path: str | Path) -> Path:
        """The post-change affected objects as a sorted extract: affected nodes, ways and relations with their
        tags, plus the nodes and member ways their geometries need *without* tags (so that reading it yields
        the rows of exactly the affected objects)."""
        new = self.new
        ways = {i: new.ways[i] for i in sorted(self.ways | self.member_ways) if new.ways.get(i) is not None}
        relations = {i: new.relations[i] for i in sorted(self.relations) if new.relations.get(i) is not None}
        node_ids = {i for i in self.nodes if new.nodes.get(i) is not None}
        for refs, _ in ways.values():
            node_ids.update(refs)
        for members, _ in relations.values():
            node_ids.update(ref for t, ref, _ in members if t == "n")
        with osmium.SimpleWriter(str(path), overwrite=True) as writer:
            for i in sorted(node_ids):
                entry = new.nodes.get(i)
                if entry is None or entry[0] is None:
                    continue  # missing from the data: the importer skips what uses it, as a full import does
                tags = entry[1] if i in self.nodes else {}
                writer.add_node(mutable.Node(id=i, version=1, location=osmium.osm.Location(*entry[0]), tags=tags))
            for i, (refs, tags) in ways.items():
                writer.add_way(mutable.Way(id=i, version=1, nodes=list(refs), tags=tags if i in self.ways else {}))
            for i, (members, tags) in relations.items():
                writer.add_relation(mutable.Relation(id=i, version=1, members=list(members), tags=tags))
        return Path(path)


def _line_or_hull(coords: list[tuple[float, float]], closed: bool) -> Any:
    if not coords:
        return None
    if len(coords) == 1:
        return shapely.points(coords[0])
    if closed:
        return shapely.convex_hull(shapely.multipoints(coords))
    return shapely.linestrings(coords)


def _way_coords(data: _Objects, way: int) -> tuple[list[tuple[float, float]], bool]:
    entry = data.ways.get(way)
    if entry is None:
        return [], False
    refs = entry[0]
    coords = [loc for r in refs if (n := data.nodes.get(r)) is not None and (loc := n[0]) is not None]
    return coords, len(refs) > 3 and refs[0] == refs[-1]


def _shapes(changes: ObjectChanges, data: _Objects) -> np.ndarray:
    out = []
    for i in changes.nodes:
        entry = data.nodes.get(i)
        if entry is not None and entry[0] is not None:
            out.append(shapely.points(entry[0]))
    for i in changes.ways:
        coords, closed = _way_coords(data, i)
        out.append(_line_or_hull(coords, closed))
    for i in changes.relations:
        entry = data.relations.get(i)
        if entry is None:
            continue
        coords = []
        for t, ref, _ in entry[0]:
            if t == "w":
                coords += _way_coords(data, ref)[0]
            elif t == "n" and (n := data.nodes.get(ref)) is not None and n[0] is not None:
                coords.append(n[0])
        out.append(_line_or_hull(coords, True))
    return np.array([g for g in out if g is not None], dtype=object)


def _read(extract: Path, types: Any, tracker: osmium.IdTracker, into: _Objects) -> None:
    try:
        for obj in osmium.FileProcessor(str(extract), types).with_filter(tracker.id_filter()):
            kind = obj.type_str()
            if kind == "n":
                loc = obj.location
                into.nodes[obj.id] = ((loc.lon, loc.lat) if loc.valid() else None, dict(obj.tags))
            elif kind == "w":
                into.ways[obj.id] = (tuple(r.ref for r in obj.nodes), dict(obj.tags))
            else:
                into.relations[obj.id] = (tuple((m.type, m.ref, m.role) for m in obj.members), dict(obj.tags))
    except RuntimeError as exc:
        raise InputDataError(f"cannot read OSM file {extract}: {exc}") from exc


def scan_changes(old_extract: str | Path, diffs: Sequence[str | Path]) -> ObjectChanges:
    """The objects ``diffs`` affect in ``old_extract`` (the extract *before* the diffs were applied)."""
    extract = check_osm_file(old_extract)
    diff = read_diffs(diffs)
    forward = osmium.IdTracker()  # the diff's objects -> the ways and relations that use them
    for i in diff.nodes:
        forward.add_node(i)
    for i in diff.ways:
        forward.add_way(i)
    for i in diff.relations:
        forward.add_relation(i)
    try:
        forward.complete_forward_references(str(extract), relation_depth=0)
    except RuntimeError as exc:
        raise InputDataError(f"cannot read OSM file {extract}: {exc}") from exc
    old = _Objects()
    _read(extract, osmium.osm.WAY | osmium.osm.RELATION, forward, old)  # candidates, and diff objects present

    backward = osmium.IdTracker()  # what the candidates' old and new geometries need
    for i in diff.nodes:
        backward.add_node(i)
    refs_of: Iterable[tuple[tuple[int, ...], dict] | None] = [*old.ways.values(), *diff.ways.values()]
    for entry in refs_of:
        for ref in entry[0] if entry else ():
            backward.add_node(ref)
    for entry in [*old.relations.values(), *diff.relations.values()]:
        for t, ref, _ in entry[0] if entry else ():
            if t == "w":
                backward.add_way(ref)
            elif t == "n":
                backward.add_node(ref)
    try:
        backward.complete_backward_references(str(extract), relation_depth=0)
    except RuntimeError as exc:
        raise InputDataError(f"cannot read OSM file {extract}: {exc}") from exc
    known_ways = set(old.ways)
    _read(extract, osmium.osm.NODE | osmium.osm.WAY, backward, old)
    present_ways = {i for i in diff.ways if i in old.ways}
    present_nodes = {i for i in diff.nodes if i in old.nodes}
    present_relations = {i for i in diff.relations if i in old.relations}

    new = _Objects(dict(old.nodes), dict(old.ways), dict(old.relations))
    for table, changes in ((new.nodes, diff.nodes), (new.ways, diff.ways), (new.relations, diff.relations)):
        for i, entry in changes.items():
            table[i] = entry  # type: ignore[assignment]

    def where(data: _Objects, i: int) -> tuple[float, float] | None:
        entry = data.nodes.get(i)
        return None if entry is None else entry[0]

    moved = {i for i in diff.nodes if where(old, i) != where(new, i)}
    ways = set(diff.ways) | {i for i in known_ways if i in old.ways and not moved.isdisjoint(old.ways[i][0])}

    def is_area(entry: tuple[tuple[Member, ...], dict] | None) -> bool:
        return entry is not None and entry[1].get("type") in AREA_RELATION_TYPES

    relations = set(diff.relations)
    for i, entry in old.relations.items():
        uses = any((t == "w" and ref in ways) or (t == "n" and ref in moved) for t, ref, _ in entry[0])
        if i not in relations and is_area(entry) and uses:
            relations.add(i)
    member_ways = {
        ref
        for i in relations
        for data in (old, new)
        if (entry := data.relations.get(i)) is not None
        for t, ref, _ in entry[0]
        if t == "w" and ref not in ways
    }
    created = sum(
        1
        for table, present in (
            (diff.nodes, present_nodes),
            (diff.ways, present_ways),
            (diff.relations, present_relations),
        )
        for i, entry in table.items()
        if entry is not None and i not in present
    )
    deleted = sum(1 for table in (diff.nodes, diff.ways, diff.relations) for entry in table.values() if entry is None)
    total = len(diff.nodes) + len(diff.ways) + len(diff.relations)
    in_extract = len(present_nodes) + len(present_ways) + len(present_relations)
    counts = ChangeCounts(
        created=created,
        modified=total - created - deleted,
        deleted=deleted,
        ways_with_moved_nodes=len(ways - set(diff.ways)),
        relations_with_changed_members=len(relations - set(diff.relations)),
    )
    return ObjectChanges(set(diff.nodes), ways, relations, counts, old, new, member_ways, in_extract)


# --- footprint on the mosaic ---------------------------------------------------------------------------


def style_margin_m(schema: ChannelSchema, resolution: float) -> float:
    """How far (metres) drawing reaches beyond a feature's geometry, from the styles of
    ``loc2vec.render.styles``: half the widest stroke (strokes are at least 1 px; round caps and joins reach
    half a width past the ends), the widest point disc, plus 2 px of antialiasing. The styles draw no text,
    so there are no label halos to add."""
    reach = 0.0
    for channel in schema.channels:
        widths = [*channel.width_m.values(), channel.line_width_m("*")]
        stroke_px = max(max(w / resolution, 1.0) for w in widths)
        reach = max(reach, stroke_px * resolution / 2, channel.point_radius_m)
    return reach + 2 * resolution


@dataclass(frozen=True)
class ChangeFootprint:
    """Where a diff can change the mosaic: the render units it touches, and the area (grid CRS) it covers."""

    units: list[tuple[int, int]]
    area: Any  # shapely geometry in the grid's CRS: old and new shapes, buffered by ``margin_m``
    margin_m: float
    counts: ChangeCounts
    changes: ObjectChanges = field(repr=False)

    @property
    def bounds(self) -> tuple[float, float, float, float] | None:
        return None if self.area.is_empty else tuple(shapely.bounds(self.area))


def units_touched(area: Any, grid: MosaicGrid) -> list[tuple[int, int]]:
    """The render units of ``grid`` that ``area`` (grid CRS) intersects, in row-major order."""
    units = grid.units()
    if area.is_empty:
        return []
    boxes = [shapely.box(*grid.window_bounds(grid.unit_window(*u))) for u in units]
    hits = shapely.STRtree(boxes).query(area, predicate="intersects")
    return [units[i] for i in sorted(int(h) for h in np.atleast_1d(hits))]


def change_footprint(
    old_extract: str | Path, diffs: Sequence[str | Path], grid: MosaicGrid, schema: ChannelSchema
) -> ChangeFootprint:
    """The footprint of ``diffs`` (applied to ``old_extract``) on ``grid``: every affected object's old and new
    shape, buffered by the widest style, and the render units it touches.

    Raises ForeignDiffError when the diff has objects but none of them is in the extract or on the grid."""
    changes = scan_changes(old_extract, diffs)
    old, new = changes.shapes()
    shapes = np.concatenate([old, new])
    margin = style_margin_m(schema, grid.resolution)
    if len(shapes):
        transformer = to_crs_transformer(grid.crs)
        projected = shapely.transform(shapes, lambda xy: np.column_stack(transformer.transform(xy[:, 0], xy[:, 1])))
        area = shapely.union_all(shapely.buffer(projected, margin, quad_segs=4))
    else:
        area = shapely.Polygon()
    extent = shapely.box(
        grid.x0, grid.y0 - grid.height * grid.resolution, grid.x0 + grid.width * grid.resolution, grid.y0
    )
    area = area.intersection(extent)
    n_objects = changes.counts.created + changes.counts.modified + changes.counts.deleted
    if n_objects and not changes.in_extract and area.is_empty:
        raise ForeignDiffError(
            f"none of the {n_objects} objects of the diff {', '.join(Path(d).name for d in diffs)} is in "
            f"{Path(old_extract).name} or inside its mosaic: the diff is for another region"
        )
    return ChangeFootprint(units_touched(area, grid), area, margin, changes.counts, changes)
