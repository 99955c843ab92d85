"""Real edits of real objects: an edited copy of an extract and the OsmChange that makes it (tests, benchmarks).

``edit_buildings`` picks buildings (closed ways tagged ``building``) lying wholly inside an area, seeded, and
edits each in turn in one of three ways: move one of its nodes about 3 m east, delete the way, or shift the
whole building about 4 m north. The copy keeps the extract's header (its bounding box), as a replication
update does, so the copy's feature layers and mosaic are those of the updated extract.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import osmium

from loc2vec.errors import InputDataError
from loc2vec.geo import BBox
from loc2vec.osm.replication import ChangeCounts, write_change

EDIT_KINDS = ("move_node", "delete_way", "shift_building")
_MOVE_DEG = 4e-5  # ~3 m of longitude at 45°
_SHIFT_DEG = 4e-5  # ~4.5 m of latitude


@dataclass(frozen=True)
class Edits:
    edited: Path  # the edited copy of the extract
    diff: Path  # the OsmChange turning the extract into the copy
    counts: ChangeCounts
    buildings: list[int]  # the edited ways, in edit order
    kinds: list[str]


def edit_buildings(
    extract: str | Path, out_dir: str | Path, within: BBox, n: int, seed: int = 0, kinds: tuple[str, ...] = EDIT_KINDS
) -> Edits:
    """Edit ``n`` buildings inside ``within`` (kinds in turn); write ``edited.osm.pbf`` and ``edits.osc.gz``."""
    src = Path(extract)
    coords: dict[int, tuple[float, float]] = {}
    buildings: list[tuple[int, list[int]]] = []
    for obj in osmium.FileProcessor(str(src), osmium.osm.NODE | osmium.osm.WAY):
        if obj.is_node():
            if obj.location.valid():
                coords[obj.id] = (obj.location.lon, obj.location.lat)
        elif "building" in obj.tags and obj.is_closed():
            refs = [r.ref for r in obj.nodes]
            inside = all(
                r in coords
                and within.min_lon <= coords[r][0] <= within.max_lon
                and within.min_lat <= coords[r][1] <= within.max_lat
                for r in refs
            )
            if inside:
                buildings.append((obj.id, refs))
    if len(buildings) < n:
        raise InputDataError(f"only {len(buildings)} buildings lie inside {within}, {n} wanted")
    rng = np.random.default_rng(seed)
    chosen = [buildings[i] for i in sorted(rng.choice(len(buildings), n, replace=False))]
    moves: dict[int, tuple[float, float]] = {}
    deleted: set[int] = set()
    done: list[str] = []
    for k, (way, refs) in enumerate(chosen):
        kind = kinds[k % len(kinds)]
        done.append(kind)
        if kind == "move_node":
            lon, lat = coords[refs[1]]
            moves[refs[1]] = (lon + _MOVE_DEG, lat)
        elif kind == "delete_way":
            deleted.add(way)
        else:
            for r in set(refs):
                lon, lat = moves.get(r, coords[r])
                moves[r] = (lon, lat + _SHIFT_DEG)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    edited = out / "edited.osm.pbf"
    header = osmium.io.Reader(str(src)).header()
    new_header = osmium.io.Header()
    if header.box().valid():
        new_header.add_box(header.box())
    with osmium.SimpleWriter(str(edited), header=new_header, overwrite=True) as writer:
        for obj in osmium.FileProcessor(str(src)):
            if obj.is_node() and obj.id in moves:
                writer.add_node(obj.replace(location=osmium.osm.Location(*moves[obj.id])))
            elif obj.is_way() and obj.id in deleted:
                continue
            else:
                writer.add(obj)
    diff = out / "edits.osc.gz"
    counts = write_change(src, edited, diff)
    return Edits(edited, diff, counts, [w for w, _ in chosen], done)
