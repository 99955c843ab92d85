"""Replication diffs on real data: edits to real Kotka objects, real worldwide minutely diffs, faults."""

from __future__ import annotations

import contextlib
import functools
import gzip
import http.server
import os
import shutil
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import osmium
import pytest
import shapely.geometry
import shapely.wkt
from osmium.osm import mutable

from loc2vec.errors import ConfigError, InputDataError
from loc2vec.geo import BBox
from loc2vec.osm.files import file_sha256, header_bounds
from loc2vec.osm.replication import (
    ReplicationError,
    ReplicationState,
    SourceUnreachableError,
    changed_share,
    extract_state,
    publish_diff,
    source_state,
    source_url,
    sync_extract,
    update_extract,
    write_change,
)
from tests.conftest import HELSINKI, KOTKA, ROOT, free_port

SHARED = Path("/work/shared/data")
MINUTELY_2013 = SHARED / "minutely_2013-08-04_000466354_osm2pgsql.osc.gz"
MINUTELY_2017 = SHARED / "minutely_2017-11-10_osmdiff.osc"
REGION = header_bounds(KOTKA)  # 26.93,60.52,26.97,60.54
T0 = datetime(2024, 1, 1, tzinfo=UTC)  # the state the unreplicated test extract is taken to be at
START = ReplicationState(0, T0)


def _when(day: int) -> datetime:
    return datetime(2024, 1, day, tzinfo=UTC)


def _contents(path: Path) -> dict[tuple[str, int], tuple]:
    """Every object of a file by (type, id): tags and location, node refs or members."""
    out: dict[tuple[str, int], tuple] = {}
    for obj in osmium.FileProcessor(str(path)):
        tags = tuple(sorted((t.k, t.v) for t in obj.tags))
        kind = obj.type_str()
        if kind == "n":
            shape: Any = (obj.location.x, obj.location.y)
        elif kind == "w":
            shape = tuple(r.ref for r in obj.nodes)
        else:
            shape = tuple((m.type, m.ref, m.role) for m in obj.members)
        out[(kind, obj.id)] = (tags, shape)
    return out


def _helsinki_building() -> tuple[dict, list[tuple[float, float]]]:
    """Tags and node locations of a real building in central Helsinki (outside the Kotka region)."""
    for obj in osmium.FileProcessor(str(HELSINKI)).with_locations():
        if obj.type_str() == "w" and "building" in obj.tags and len(obj.nodes) >= 5:
            return dict(obj.tags), [(r.lon, r.lat) for r in obj.nodes]
    raise AssertionError(f"no building in {HELSINKI}")


def _edit_kotka(dst: Path, *, with_outside: bool = False, orphan_node: bool = False) -> dict[str, Any]:
    """Write an edited copy of the Kotka extract: real edits to real objects (retagged buildings, moved
    nodes, a deleted building with its nodes, a new building in the region). ``with_outside`` adds a real
    Helsinki building and a relation using it (both outside the region), a footway from a Kotka node to a
    new node east of the region, and a relation with the new building as member. ``orphan_node`` deletes a
    node of a building that stays (an inconsistent edit)."""
    buildings: list[tuple[int, list[int]]] = []
    users: dict[int, int] = {}
    relation_ways: set[int] = set()
    max_node = max_way = max_rel = 0
    for obj in osmium.FileProcessor(str(KOTKA)):
        kind = obj.type_str()
        if kind == "n":
            max_node = max(max_node, obj.id)
        elif kind == "w":
            max_way = max(max_way, obj.id)
            refs = [r.ref for r in obj.nodes]
            for ref in set(refs):
                users[ref] = users.get(ref, 0) + 1
            if "building" in obj.tags:
                buildings.append((obj.id, refs))
        else:
            max_rel = max(max_rel, obj.id)
            relation_ways.update(m.ref for m in obj.members if m.type == "w")
    retag = {w for w, _ in buildings[:3]}
    moved = {buildings[3][1][1], buildings[4][1][1]}
    deleted_way, deleted_nodes = next(
        (w, set(refs))
        for w, refs in buildings[5:]
        if w not in relation_ways and all(users[r] == 1 for r in refs) and not moved & set(refs)
    )
    orphan = buildings[6][1][1] if orphan_node else None
    lon, lat = (REGION.min_lon + REGION.max_lon) / 2, (REGION.min_lat + REGION.max_lat) / 2
    square = [(lon, lat), (lon + 2e-4, lat), (lon + 2e-4, lat + 1e-4), (lon, lat + 1e-4)]
    new_nodes = [mutable.Node(id=max_node + 1 + i, version=1, location=loc, tags={}) for i, loc in enumerate(square)]
    new_way = max_way + 1
    new_ways = [
        mutable.Way(
            id=new_way,
            version=1,
            nodes=[n.id for n in new_nodes] + [max_node + 1],
            tags={"building": "yes", "note": "loc2vec test"},
        )
    ]
    new_relations: list[Any] = []
    outside: set[tuple[str, int]] = set()
    if with_outside:
        tags, locs = _helsinki_building()
        first = max_node + 10
        helsinki = [mutable.Node(id=first + i, version=1, location=loc, tags={}) for i, loc in enumerate(locs[:-1])]
        east = mutable.Node(id=first + 100, version=1, location=(REGION.max_lon + 0.01, lat), tags={})
        new_nodes += [*helsinki, east]
        new_ways.append(mutable.Way(id=new_way + 1, version=1, nodes=[n.id for n in helsinki] + [first], tags=tags))
        new_ways.append(
            mutable.Way(id=new_way + 2, version=1, nodes=[buildings[3][1][0], east.id], tags={"highway": "footway"})
        )
        new_relations = [
            mutable.Relation(id=max_rel + 1, version=1, members=[("w", new_way, "")], tags={"type": "site"}),
            mutable.Relation(
                id=max_rel + 2,
                version=1,
                members=[("w", new_way + 1, "outer")],
                tags={"type": "multipolygon", "building": "yes"},
            ),
        ]
        outside = {("w", new_way + 1), ("r", max_rel + 2)} | {("n", n.id) for n in helsinki}
    extra = {"n": new_nodes, "w": new_ways, "r": new_relations}
    with osmium.SimpleWriter(str(dst)) as writer:
        add = {"n": writer.add_node, "w": writer.add_way, "r": writer.add_relation}
        order = "nwr"
        done = -1

        def flush(upto: int) -> None:
            nonlocal done
            while done < upto:
                done += 1
                for obj in extra[order[done]]:
                    add[order[done]](obj)

        for obj in osmium.FileProcessor(str(KOTKA)):
            kind = obj.type_str()
            flush(order.index(kind) - 1)
            if obj.id == orphan and kind == "n":
                continue
            if kind == "w" and obj.id in retag:
                obj = obj.replace(tags={**dict(obj.tags), "building": "house", "roof:shape": "flat"})
            elif kind == "n" and obj.id in moved:
                obj = obj.replace(location=(obj.location.lon + 5e-5, obj.location.lat))
            elif (kind == "w" and obj.id == deleted_way) or (kind == "n" and obj.id in deleted_nodes):
                continue
            add[kind](obj)
        flush(2)
    return {
        "created": sum(len(v) for v in extra.values()),
        "modified": len(retag) + len(moved),
        "deleted": 1 + len(deleted_nodes) + (orphan is not None),
        "outside": outside,
        "square": square,
        "footway": new_way + 2,
    }


@pytest.fixture
def extract(tmp_path: Path) -> Path:
    path = tmp_path / "region" / "kotka.osm.pbf"
    path.parent.mkdir()
    shutil.copy(KOTKA, path)
    return path


def _leftovers(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p != path)


def _diff_of_edits(tmp_path: Path, **options: bool) -> tuple[Path, Path, dict[str, Any]]:
    edited = tmp_path / "edited.osm.pbf"
    edits = _edit_kotka(edited, **options)
    osc = tmp_path / "edits.osc.gz"
    counts = write_change(KOTKA, edited, osc)
    assert counts == (edits["created"], edits["modified"], edits["deleted"])
    return edited, osc, edits


def test_kotka_edits_applied_exactly_and_restart_continues(tmp_path: Path, extract: Path) -> None:
    edited, osc, edits = _diff_of_edits(tmp_path)
    repl = tmp_path / "repl"
    state = publish_diff(repl, osc, _when(2))
    assert state == ReplicationState(1, _when(2)) == source_state(repl)
    assert extract_state(extract) is None

    result = update_extract(extract, repl, REGION, start=START)

    assert result is not None
    assert _contents(extract) == _contents(edited)
    changes = edits["created"] + edits["modified"] + edits["deleted"]
    assert (result.diffs_applied, result.objects_in_diffs, result.objects_kept) == (1, changes, changes)
    assert (result.previous, result.current, result.source, result.remaining) == (START, state, state, 0)
    assert result.sha256 == file_sha256(extract)
    box = result.changed_bbox
    assert box is not None and REGION.intersection(box) == box
    for lon, lat in edits["square"]:
        assert box.min_lon <= lon <= box.max_lon and box.min_lat <= lat <= box.max_lat
    assert extract_state(extract) == state
    assert osmium.io.Reader(str(extract)).header().get("osmosis_replication_base_url") == source_url(repl)
    assert header_bounds(extract) == REGION
    assert _leftovers(extract) == []

    sha = file_sha256(extract)
    assert update_extract(extract, repl, REGION) is None  # up to date: the header says where it is
    assert file_sha256(extract) == sha
    publish_diff(repl, MINUTELY_2013, _when(3))
    again = update_extract(extract, repl, REGION)
    assert again is not None and again.previous == state and again.current.sequence == 2
    assert again.diffs_applied == 1 and again.objects_kept == 0 and again.changed_bbox is None
    assert _contents(extract) == _contents(edited)


def test_worldwide_minutely_diffs_leave_the_region_unchanged(tmp_path: Path, extract: Path) -> None:
    repl = tmp_path / "repl"
    publish_diff(repl, MINUTELY_2013, datetime(2013, 8, 4, 0, 1, tzinfo=UTC), first=466354)
    publish_diff(repl, MINUTELY_2017, datetime(2017, 11, 10, 12, 0, tzinfo=UTC))
    publish_diff(repl, MINUTELY_2013, datetime(2017, 11, 10, 12, 1, tzinfo=UTC))  # a third, for max_diffs
    before = _contents(extract)
    start = ReplicationState(466353, datetime(2013, 8, 4, tzinfo=UTC))

    first = update_extract(extract, repl, REGION, start=start, max_diffs=2)

    assert first is not None and first.current.sequence == 466355 and first.remaining == 1
    assert first.current.timestamp == datetime(2017, 11, 10, 12, 0, tzinfo=UTC)
    assert first.objects_in_diffs > 1000 and first.objects_kept == 0 and first.changed_bbox is None
    assert _contents(extract) == before
    second = update_extract(extract, repl, REGION, max_diffs=2)
    assert second is not None and second.current.sequence == 466356 and second.remaining == 0
    assert _contents(extract) == before
    assert extract_state(extract) == second.current


def test_new_objects_outside_the_region_are_not_added(tmp_path: Path, extract: Path) -> None:
    edited, osc, edits = _diff_of_edits(tmp_path, with_outside=True)
    repl = tmp_path / "repl"
    publish_diff(repl, osc, _when(2))

    result = update_extract(extract, repl, REGION, start=START)

    expected = {key: value for key, value in _contents(edited).items() if key not in edits["outside"]}
    got = _contents(extract)
    assert got == expected
    east = got[("w", edits["footway"])][1][1]
    assert ("n", east) in got and got[("n", east)][1][0] / 1e7 > REGION.max_lon  # complete ways
    assert result is not None and result.objects_kept == result.objects_in_diffs - len(edits["outside"])
    assert result.changed_bbox is not None and result.changed_bbox.max_lon > REGION.max_lon


def test_write_change_of_identical_files_is_empty(tmp_path: Path) -> None:
    out = tmp_path / "none.osc"
    assert write_change(KOTKA, KOTKA, out) == (0, 0, 0)
    assert "<osmChange" in out.read_text() and "<node" not in out.read_text()


def test_publish_diff_refuses_bad_input(tmp_path: Path) -> None:
    repl = tmp_path / "repl"
    bad = tmp_path / "bad.osc.gz"
    bad.write_bytes(gzip.compress(b"this is not xml"))
    with pytest.raises(InputDataError, match="unreadable"):
        publish_diff(repl, bad, _when(2))
    assert not (repl / "state.txt").exists()
    publish_diff(repl, MINUTELY_2013, _when(2))
    with pytest.raises(ConfigError, match="before the directory's latest state"):
        publish_diff(repl, MINUTELY_2013, _when(1))
    assert source_state(repl) == ReplicationState(1, _when(2))


def test_update_needs_a_start_and_the_same_source(tmp_path: Path, extract: Path) -> None:
    repl, other = tmp_path / "repl", tmp_path / "other"
    publish_diff(repl, MINUTELY_2013, _when(2))
    publish_diff(other, MINUTELY_2013, _when(2))
    with pytest.raises(InputDataError, match="no replication state"):
        update_extract(extract, repl, REGION)
    update_extract(extract, repl, REGION, start=START)
    sha = file_sha256(extract)
    with pytest.raises(ReplicationError, match="follows replication source"):
        update_extract(extract, other, REGION)
    assert file_sha256(extract) == sha


# --- faults: each leaves the extract byte-identical ------------------------------------------------


def _gap(repl: Path) -> None:
    (repl / "000/000/002.osc.gz").unlink()


def _garbage_state(repl: Path) -> None:
    (repl / "state.txt").write_text("<html>502 Bad Gateway</html>\n")


def _corrupt_diff(repl: Path) -> None:
    path = repl / "000/000/002.osc.gz"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _older_source(repl: Path) -> None:
    (repl / "state.txt").write_text((repl / "000/000/001.state.txt").read_text())


FAULTS = {
    "sequence gap": (_gap, "diff 2 is missing .*HTTP 404.*gap"),
    "garbage state.txt": (_garbage_state, "not a replication state.*Bad Gateway"),
    "corrupt osc.gz": (_corrupt_diff, "diff 2 .* not a readable OsmChange"),
    "source older than extract": (_older_source, "at sequence 1, older than the extract's 2"),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_faults_leave_the_extract_untouched(tmp_path: Path, extract: Path, fault: str) -> None:
    _, osc, _ = _diff_of_edits(tmp_path)
    repl = tmp_path / "repl"
    publish_diff(repl, MINUTELY_2013, _when(2))
    publish_diff(repl, osc, _when(3))
    publish_diff(repl, MINUTELY_2017, _when(4))
    start = START
    if fault == "source older than extract":
        update_extract(extract, repl, REGION, start=start, max_diffs=2)
        start = None
    mutate, message = FAULTS[fault]
    mutate(repl)
    sha = file_sha256(extract)
    with pytest.raises(ReplicationError, match=message):
        update_extract(extract, repl, REGION, start=start)
    assert file_sha256(extract) == sha
    assert _leftovers(extract) == []


def test_deleting_a_node_a_staying_way_uses_is_refused(tmp_path: Path, extract: Path) -> None:
    _, osc, _ = _diff_of_edits(tmp_path, orphan_node=True)
    repl = tmp_path / "repl"
    publish_diff(repl, osc, _when(2))
    sha = file_sha256(extract)
    with pytest.raises(ReplicationError, match=r"delete node \d+ but way \d+, which stays in the extract"):
        update_extract(extract, repl, REGION, start=START)
    assert file_sha256(extract) == sha
    assert _leftovers(extract) == []


def test_server_down_is_named(extract: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/replication/minute"
    sha = file_sha256(extract)
    with pytest.raises(SourceUnreachableError, match=r"unreachable.*Connection refused"):
        update_extract(extract, url, REGION, start=START)
    assert file_sha256(extract) == sha
    assert _leftovers(extract) == []


# --- over HTTP ----------------------------------------------------------------------------------------


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve(directory: Path) -> tuple[http.server.ThreadingHTTPServer, threading.Thread, str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), functools.partial(_Quiet, directory=directory))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server, thread, f"http://127.0.0.1:{server.server_address[1]}/replication/"


def test_update_over_http(tmp_path: Path, extract: Path) -> None:
    edited, osc, _ = _diff_of_edits(tmp_path)
    site = tmp_path / "site"
    repl = site / "replication"
    publish_diff(repl, osc, _when(2))
    publish_diff(repl, MINUTELY_2013, _when(3))
    server, thread, url = _serve(site)
    try:
        assert source_state(url) == ReplicationState(2, _when(3))
        result = update_extract(extract, url, REGION, start=START)
        assert result is not None and result.diffs_applied == 2 and result.current.sequence == 2
        assert _contents(extract) == _contents(edited)
        assert osmium.io.Reader(str(extract)).header().get("osmosis_replication_base_url") == url

        publish_diff(repl, MINUTELY_2017, _when(4))
        publish_diff(repl, MINUTELY_2013, _when(5))
        (repl / "000/000/003.osc.gz").unlink()  # the server answers 404 for the next diff
        sha = file_sha256(extract)
        with pytest.raises(ReplicationError, match=r"diff 3 is missing at http.*HTTP 404"):
            update_extract(extract, url, REGION)
        assert file_sha256(extract) == sha and _leftovers(extract) == []
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_source_url_forms(tmp_path: Path) -> None:
    assert source_url(tmp_path) == tmp_path.as_uri() + "/"
    assert source_url("https://planet.osm.org/replication/minute") == "https://planet.osm.org/replication/minute/"
    with pytest.raises(ConfigError, match="unsupported scheme"):
        source_url("ftp://example.org/replication")
    with pytest.raises(ConfigError, match="neither a URL nor an existing directory"):
        source_url(tmp_path / "missing")
    assert isinstance(REGION, BBox)


def _writing(directory: Path) -> bool:
    """Whether a non-empty temporary file (the new extract being written) is in ``directory``."""
    for entry in os.scandir(directory):
        with contextlib.suppress(FileNotFoundError):  # swapped in meanwhile
            if entry.name.endswith(".tmp") and entry.stat().st_size:
                return True
    return False


def test_a_kill_while_writing_leaves_the_extract_as_it_was(tmp_path: Path) -> None:
    """SIGKILL the update once its new file is being written: the extract is still the old one."""
    extract = tmp_path / "region" / "helsinki.osm.pbf"
    extract.parent.mkdir()
    shutil.copy(HELSINKI, extract)
    repl = tmp_path / "repl"
    publish_diff(repl, MINUTELY_2013, _when(2))
    sha = file_sha256(extract)
    code = (
        "from datetime import UTC, datetime\n"
        "from loc2vec.osm.files import header_bounds\n"
        "from loc2vec.osm.replication import ReplicationState, update_extract\n"
        f"update_extract({str(extract)!r}, {str(repl)!r}, header_bounds({str(extract)!r}),\n"
        "               start=ReplicationState(0, datetime(2024, 1, 1, tzinfo=UTC)))\n"
    )
    for _ in range(3):  # the write lasts long enough to be seen; retry should one be missed
        proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
        try:
            while proc.poll() is None:
                if _writing(extract.parent):
                    proc.kill()
                    break
        finally:
            proc.kill()
            proc.wait()
        if proc.returncode == -signal.SIGKILL:
            break
        assert proc.returncode == 0
        shutil.copy(HELSINKI, extract)
    assert proc.returncode == -signal.SIGKILL
    assert file_sha256(extract) == sha and extract_state(extract) is None
    result = update_extract(extract, repl, header_bounds(extract) or REGION, start=START)  # a rerun works
    assert result is not None and extract_state(extract) == result.current


def test_changed_share_counts_the_changed_objects_not_the_box_around_them(tmp_path: Path) -> None:
    """Five buildings retagged far apart: the ledger's footprint is five small areas, so the share the
    retraining policy reads stays small, where the box spanning them would cover most of the region."""
    edited = tmp_path / "retagged.osm.pbf"
    changed: list[tuple[float, float, float, float]] = []
    with osmium.SimpleWriter(str(edited)) as writer:
        for obj in osmium.FileProcessor(str(KOTKA)).with_locations():
            if obj.type_str() == "w" and "building" in obj.tags and obj.id % 97 == 0 and len(changed) < 5:
                if not all(n.location.valid() for n in obj.nodes):
                    writer.add(obj)
                    continue
                lons = [n.location.lon for n in obj.nodes if n.location.valid()]
                lats = [n.location.lat for n in obj.nodes if n.location.valid()]
                changed.append((min(lons), min(lats), max(lons), max(lats)))
                obj = obj.replace(tags={t.k: t.v for t in obj.tags} | {"shop": "bakery"}, version=obj.version + 1)
            writer.add(obj)
    osc = tmp_path / "retag.osc.gz"
    assert write_change(KOTKA, edited, osc) == (0, 5, 0)
    repl = tmp_path / "repl"
    publish_diff(repl, osc, _when(2))
    copy = tmp_path / "copy" / "kotka.osm.pbf"

    result = sync_extract(KOTKA, copy, repl, REGION, start_sequence=0)

    assert result is not None and result.changed_area_wkt is not None
    footprint = shapely.wkt.loads(result.changed_area_wkt)
    for piece in changed:  # every changed building lies in the footprint
        assert footprint.covers(shapely.geometry.box(*piece))
    region = shapely.geometry.box(*REGION.as_tuple())
    spanning = shapely.geometry.box(*result.changed_bbox.as_tuple()).intersection(region).area / region.area
    share = changed_share(copy, 0, REGION)
    assert share == pytest.approx(footprint.intersection(region).area / region.area)
    assert 0 < share < 0.05 < spanning
    assert changed_share(copy, 1, REGION) == 0.0  # nothing changed since sequence 1
