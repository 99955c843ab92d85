"""Follow OSM as it changes: apply replication diffs to an extract, kept to its region.

A source is an OSM replication endpoint (``state.txt`` and ``AAA/BBB/CCC.osc.gz`` diffs with their
``AAA/BBB/CCC.state.txt``) given by URL, or a local directory of that layout. Both go through pyosmium's
``ReplicationServer`` (URLs, sessions, retries, state parsing, ``MergeInputReader``); a local directory
is served to its ``requests`` session by a small ``file://`` transport adapter, so a missing diff on disk
is a 404 exactly as over HTTP. See ``docs/replication.md``.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import unquote, urlparse

import osmium
import requests
from osmium.replication.server import ReplicationServer
from osmium.replication.utils import get_replication_header
from requests.adapters import BaseAdapter

from loc2vec.errors import ConfigError, InputDataError, Loc2VecError
from loc2vec.geo import BBox
from loc2vec.io import atomic_path, write_atomic
from loc2vec.osm.files import check_complete, check_osm_file, file_sha256

__all__ = [
    "ChangeCounts",
    "ReplicationError",
    "ReplicationState",
    "SourceUnreachableError",
    "UpdateResult",
    "extract_state",
    "fetch_diffs",
    "publish_diff",
    "source_state",
    "source_url",
    "update_extract",
    "write_change",
]

HEADER_SEQUENCE = "osmosis_replication_sequence_number"
HEADER_TIMESTAMP = "osmosis_replication_timestamp"
HEADER_URL = "osmosis_replication_base_url"
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_FORMATS = {".osm.pbf": "pbf", ".pbf": "pbf", ".osm": "osm", ".osm.gz": "osm.gz", ".osm.bz2": "osm.bz2"}


class ReplicationError(Loc2VecError):
    """A replication source or diff is unusable (missing, malformed, out of order, inconsistent)."""


class SourceUnreachableError(ReplicationError):
    """The replication source cannot be reached now (connection refused, timeout, HTTP 5xx): retry later."""


@dataclass(frozen=True)
class ReplicationState:
    """A replication sequence number and the time (UTC) up to which it holds the changes."""

    sequence: int
    timestamp: datetime

    def __post_init__(self) -> None:
        if isinstance(self.sequence, bool) or not isinstance(self.sequence, int) or self.sequence < 0:
            raise ConfigError(f"replication sequence must be an integer >= 0, got {self.sequence!r}")
        if self.timestamp.tzinfo is None:
            raise ConfigError(f"replication timestamp must be timezone-aware, got {self.timestamp!r}")
        object.__setattr__(self, "timestamp", self.timestamp.astimezone(UTC))


@dataclass(frozen=True)
class UpdateResult:
    """What one ``update_extract`` call did."""

    previous: ReplicationState
    current: ReplicationState
    source: ReplicationState  # the source's latest state when the update ran
    diffs_applied: int
    objects_in_diffs: int  # distinct objects (newest version each) in the applied diffs
    objects_kept: int  # of those, the ones applied to the extract (the rest lie outside the region)
    sha256: str  # of the updated extract
    changed_bbox: BBox | None  # lon/lat extent (old and new) of the kept changes; None when none was kept
    changed_area_wkt: str | None = None  # union of each kept change's padded box (old and new), lon/lat WKT

    @property
    def remaining(self) -> int:
        """Diffs the source holds beyond ``current`` (left for the next call by ``max_diffs``)."""
        return self.source.sequence - self.current.sequence


class ChangeCounts(NamedTuple):
    created: int
    modified: int
    deleted: int


# --- sources ----------------------------------------------------------------------------------------


def source_url(source: str | Path) -> str:
    """The base URL of a source (``http(s)://`` or ``file://`` URL, or a local directory), ending in ``/``."""
    text = str(source)
    if "://" in text:
        scheme = urlparse(text).scheme
        if scheme not in ("http", "https", "file"):
            raise ConfigError(f"replication source {text!r}: unsupported scheme {scheme!r} (http, https, file)")
        return text.rstrip("/") + "/"
    directory = Path(text).expanduser().resolve()
    if not directory.is_dir():
        raise ConfigError(f"replication source {text!r} is neither a URL nor an existing directory")
    return directory.as_uri() + "/"


class _FileAdapter(BaseAdapter):
    """Serve ``file://`` URLs from the local disk to a ``requests`` session (404 for a missing file)."""

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        response = requests.Response()
        response.url = request.url or ""
        response.request = request
        path = Path(unquote(urlparse(response.url).path))
        try:
            data = path.read_bytes()
            response.status_code, response.reason = 200, "OK"
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            data = b""
            response.status_code, response.reason = 404, "Not Found"
        except PermissionError:
            data = b""
            response.status_code, response.reason = 403, "Forbidden"
        response.raw = io.BytesIO(data)
        return response

    def close(self) -> None:
        pass


class _Server(ReplicationServer):
    """pyosmium's ReplicationServer that also serves ``file://`` and remembers the last fetch's outcome
    (``get_state_info`` returns None for every fault; this tells them apart)."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.last: requests.Response | Exception | None = None

    def __enter__(self) -> _Server:
        super().__enter__()
        assert self.session is not None
        self.session.mount("file://", _FileAdapter())
        return self

    def open_url(self, url: Any) -> Any:
        self.last = None
        try:
            response = super().open_url(url)
        except requests.RequestException as exc:
            self.last = exc
            raise
        if isinstance(response, requests.Response):
            response.content  # noqa: B018 - buffer the body so a fault can quote it
            self.last = response
        return response

    def fault(self, what: str, url: str) -> ReplicationError:
        """The error naming why the last fetch of ``what`` at ``url`` failed."""
        last = self.last
        if isinstance(last, requests.ConnectionError | requests.Timeout):
            return SourceUnreachableError(f"replication source {self.baseurl} is unreachable ({what}): {last}")
        if isinstance(last, Exception):
            return ReplicationError(f"cannot fetch {what} at {url}: {last}")
        if isinstance(last, requests.Response) and last.status_code >= 400:
            cls = SourceUnreachableError if last.status_code >= 500 else ReplicationError
            return cls(f"{what} at {url}: HTTP {last.status_code} {last.reason}")
        body = last.content[:120] if isinstance(last, requests.Response) else b""
        return ReplicationError(
            f"{what} at {url} is not a replication state (needs sequenceNumber= and timestamp= lines); "
            f"it starts with {body!r}"
        )

    def state(self, seq: int | None = None) -> ReplicationState:
        """The source's latest state, or the state of sequence ``seq``; raise naming the fault."""
        what = "state.txt" if seq is None else f"the state of sequence {seq}"
        url = self.get_state_url(seq)
        try:
            info = self.get_state_info(seq)
        except ValueError:  # a non-numeric sequenceNumber escapes pyosmium's parser
            info = None
        if info is None:
            raise self.fault(what, url)
        if seq is not None and info.sequence != seq:
            raise ReplicationError(f"{what} at {url} names sequence {info.sequence}")
        return ReplicationState(info.sequence, info.timestamp)

    def diff(self, seq: int, newest: int) -> bytes:
        """The raw bytes of diff ``seq``; a missing diff below the latest sequence is a gap."""
        url = self.get_diff_url(seq)
        try:
            data = self.get_diff_block(seq)
        except requests.RequestException:
            last = self.last
            if isinstance(last, requests.Response) and last.status_code == 404:
                raise ReplicationError(
                    f"replication diff {seq} is missing at {url} (HTTP 404) although the source's state.txt "
                    f"is at sequence {newest}: the source has a gap"
                ) from None
            raise self.fault(f"replication diff {seq}", url) from None
        return bytes(data)


def fetch_diffs(url: str | Path, first: int, last: int, out_dir: str | Path) -> list[Path]:
    """Save diffs ``first`` to ``last`` of a source as ``<out_dir>/<sequence>.<type>`` (e.g. ``000000042.osc.gz``)
    and return their paths in order: the diffs an ``UpdateResult`` applied are ``previous.sequence + 1`` to
    ``current.sequence``, which ``changes.change_footprint`` reads against the extract before the update."""
    if first > last:
        return []
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    with _Server(source_url(url)) as server:
        for seq in range(first, last + 1):
            path = out / f"{seq:09d}.{server.diff_type}"
            data = server.diff(seq, last)
            write_atomic(path, lambda tmp, data=data: tmp.write_bytes(data))
            paths.append(path)
    return paths


def source_state(url: str | Path) -> ReplicationState:
    """The latest state (``state.txt``) of a replication source."""
    with _Server(source_url(url)) as server:
        return server.state()


# --- the extract's header ---------------------------------------------------------------------------


def _header(extract: Path) -> tuple[str | None, ReplicationState | None]:
    try:
        head = get_replication_header(str(extract))
    except RuntimeError as exc:
        raise InputDataError(f"cannot read the header of OSM file {extract}: {exc}") from exc
    if head.sequence is None:
        return head.url, None
    if head.timestamp is None:
        raise InputDataError(f"OSM file {extract} has a replication sequence ({head.sequence}) but no valid timestamp")
    return head.url, ReplicationState(head.sequence, head.timestamp)


def extract_state(pbf: str | Path) -> ReplicationState | None:
    """The replication state recorded in an extract's header (as pyosmium-up-to-date writes it), if any."""
    return _header(check_osm_file(pbf))[1]


# --- updating an extract ----------------------------------------------------------------------------

# each changed object's box is padded by this much (degrees, ~10 m) in the footprint the ledger records
FOOTPRINT_PAD_DEG = 1e-4


class _Extent:
    """A running lon/lat bounding box; with ``pieces``, also each object's own box (its footprint)."""

    def __init__(self, pieces: bool = False) -> None:
        self.box = [math.inf, math.inf, -math.inf, -math.inf]
        self.pieces: list[tuple[float, float, float, float]] | None = [] if pieces else None

    def add(self, lon: float, lat: float) -> None:
        self._grow(lon, lat, lon, lat)

    def add_box(self, other: list[float] | None) -> None:
        if other and other[0] <= other[2]:
            self._grow(*other)

    def _grow(self, min_lon: float, min_lat: float, max_lon: float, max_lat: float) -> None:
        b = self.box
        b[0], b[1], b[2], b[3] = min(b[0], min_lon), min(b[1], min_lat), max(b[2], max_lon), max(b[3], max_lat)
        if self.pieces is not None:
            self.pieces.append((min_lon, min_lat, max_lon, max_lat))

    def add_extent(self, other: _Extent) -> None:
        """Another extent's box, and its pieces where it kept them."""
        if other.pieces is None or self.pieces is None:
            self.add_box(other.box)
            return
        for piece in other.pieces:
            self.add_box(list(piece))

    def area_wkt(self) -> str | None:
        """The union of the pieces, each padded by ``FOOTPRINT_PAD_DEG``, as WKT (None when empty)."""
        if not self.pieces:
            return None
        from shapely import wkt
        from shapely.geometry import box
        from shapely.ops import unary_union

        pad = FOOTPRINT_PAD_DEG
        area = unary_union([box(a - pad, b - pad, c + pad, d + pad) for a, b, c, d in self.pieces])
        return wkt.dumps(area, rounding_precision=6)

    def bbox(self) -> BBox | None:
        b = self.box
        if b[0] > b[2]:
            return None
        pad = 1e-6  # a BBox needs some extent: a change at one point gets a 0.1 m box
        return BBox(
            max(-180.0, b[0] - pad * (b[0] == b[2])),
            max(-90.0, b[1] - pad * (b[1] == b[3])),
            min(180.0, b[2] + pad * (b[0] == b[2])),
            min(90.0, b[3] + pad * (b[1] == b[3])),
        )


class _DiffIndex(osmium.SimpleHandler):
    """The newest version of every object in the merged diffs: visibility, location, refs, members."""

    def __init__(self) -> None:
        super().__init__()
        self.nodes: dict[int, tuple[float, float] | None] = {}  # None: deleted
        self.ways: dict[int, tuple[int, ...] | None] = {}
        self.relations: dict[int, tuple[tuple[str, int], ...] | None] = {}

    def node(self, n: Any) -> None:
        loc = n.location
        self.nodes[n.id] = (loc.lon, loc.lat) if n.visible and loc.valid() else None

    def way(self, w: Any) -> None:
        self.ways[w.id] = tuple(r.ref for r in w.nodes) if w.visible else None

    def relation(self, r: Any) -> None:
        self.relations[r.id] = tuple((m.type, m.ref) for m in r.members) if r.visible else None


class _Scan:
    """What the extract holds of the objects a diff touches: one pass with node locations."""

    def __init__(self, diff: _DiffIndex) -> None:
        self.diff = diff
        self.way_refs = {r for refs in diff.ways.values() if refs for r in refs}
        members = [m for ms in diff.relations.values() if ms for m in ms]
        self.member_ids = {kind: {ref for t, ref in members if t == kind} for kind in "nwr"}
        self.deleted_nodes = {i for i, loc in diff.nodes.items() if loc is None}
        self.present: dict[str, set[int]] = {"n": set(), "w": set(), "r": set()}
        self.locations: dict[int, tuple[float, float]] = {}  # extract locations of nodes the diff needs
        self.old_extent = _Extent(pieces=True)  # where extract objects the diff changes were
        self.way_boxes: dict[int, list[float]] = {}  # extents of extract ways that diff relations use
        self.used_by_staying: set[int] = set()  # diff nodes that unchanged extract ways use
        self.conflicts: list[tuple[int, int]] = []  # (way, node): an unchanged way uses a deleted node

    def run(self, extract: Path) -> None:
        last = (-1, False, 0)
        kinds = {"n": 0, "w": 1, "r": 2}
        try:
            for obj in osmium.FileProcessor(str(extract)).with_locations():
                kind = obj.type_str()
                key = (kinds[kind], obj.id > 0, abs(obj.id))
                if key <= last:
                    raise InputDataError(
                        f"OSM file {extract} is not sorted by type and id (at {kind}{obj.id}); "
                        "sort it (osmium sort) before applying diffs"
                    )
                last = key
                getattr(self, "_" + kind)(obj)
        except RuntimeError as exc:
            raise InputDataError(f"cannot read OSM file {extract}: {exc}") from exc

    def _n(self, n: Any) -> None:
        i = n.id
        if i in self.diff.nodes or i in self.way_refs or i in self.member_ids["n"]:
            loc = n.location
            if loc.valid():
                self.locations[i] = (loc.lon, loc.lat)
            if i in self.diff.nodes:
                self.present["n"].add(i)
                if loc.valid():
                    self.old_extent.add(loc.lon, loc.lat)
            if i in self.member_ids["n"]:
                self.present["n"].add(i)

    def _w(self, w: Any) -> None:
        i = w.id
        changed = i in self.diff.ways
        if changed or i in self.member_ids["w"]:
            box = _Extent()
            for r in w.nodes:
                if r.location.valid():
                    box.add(r.location.lon, r.location.lat)
            self.present["w"].add(i)
            if changed:
                self.old_extent.add_box(box.box)
            if i in self.member_ids["w"]:
                self.way_boxes[i] = box.box
        if not changed:
            for r in w.nodes:
                ref = r.ref
                if ref in self.diff.nodes:
                    self.used_by_staying.add(ref)
                    if ref in self.deleted_nodes:
                        self.conflicts.append((i, ref))

    def _r(self, r: Any) -> None:
        if r.id in self.diff.relations or r.id in self.member_ids["r"]:
            self.present["r"].add(r.id)


@dataclass
class _Selection:
    nodes: set[int]
    ways: set[int]
    relations: set[int]
    extent: BBox | None
    footprint_wkt: str | None  # union of the changed objects' padded boxes (lon/lat)

    @property
    def count(self) -> int:
        return len(self.nodes) + len(self.ways) + len(self.relations)


def _select(diff: _DiffIndex, scan: _Scan, region: BBox) -> _Selection:
    """The diff objects to apply: those the extract holds, and new ones in the region with what they need."""

    def inside(loc: tuple[float, float] | None) -> bool:
        return (
            loc is not None
            and region.min_lon <= loc[0] <= region.max_lon
            and region.min_lat <= loc[1] <= region.max_lat
        )

    def location(ref: int) -> tuple[float, float] | None:
        return diff.nodes[ref] if ref in diff.nodes else scan.locations.get(ref)

    present = scan.present
    nodes = {i for i, loc in diff.nodes.items() if i in present["n"] or i in scan.used_by_staying or inside(loc)}
    ways = {
        i for i, refs in diff.ways.items() if i in present["w"] or (refs and any(inside(location(r)) for r in refs))
    }
    conflicts = list(scan.conflicts)
    extent = _Extent(pieces=True)
    extent.add_extent(scan.old_extent)
    for i in ways:
        way = _Extent()
        for ref in diff.ways[i] or ():
            if ref in diff.nodes:
                nodes.add(ref)
                if diff.nodes[ref] is None:
                    conflicts.append((i, ref))
            loc = location(ref)
            if loc is not None:
                way.add(*loc)
        extent.add_box(way.box)
    if conflicts:
        way, node = conflicts[0]
        raise ReplicationError(
            f"the diffs delete node {node} but way {way}, which stays in the extract, still uses it "
            f"({len(conflicts)} such reference(s)): the diffs are inconsistent with the extract"
        )
    for i in nodes:
        if diff.nodes[i] is not None:
            extent.add(*diff.nodes[i])

    def in_result(kind: str, ref: int) -> bool:
        table = {"n": (diff.nodes, nodes), "w": (diff.ways, ways), "r": (diff.relations, relations)}[kind]
        changes, kept = table
        if ref in changes:
            return ref in kept and changes[ref] is not None
        return ref in present[kind]

    relations = {i for i in diff.relations if i in present["r"]}
    grown = True
    while grown:  # a new relation is kept when a member is; members may be new relations too
        new = {
            i
            for i, members in diff.relations.items()
            if i not in relations and members and any(in_result(t, ref) for t, ref in members)
        }
        relations |= new
        grown = bool(new)
    for i in relations:
        for t, ref in diff.relations[i] or ():
            if t == "n":
                loc = location(ref)
                if loc is not None:
                    extent.add(*loc)
            elif t == "w" and ref not in diff.ways:
                extent.add_box(scan.way_boxes.get(ref))
    return _Selection(nodes, ways, relations, extent.bbox(), extent.area_wkt())


class _Keep(osmium.SimpleHandler):
    """Write the selected diff objects (deletions included) to an OsmChange file."""

    def __init__(self, writer: osmium.SimpleWriter, selection: _Selection) -> None:
        super().__init__()
        self.writer, self.selection = writer, selection

    def node(self, n: Any) -> None:
        if n.id in self.selection.nodes:
            self.writer.add_node(n)

    def way(self, w: Any) -> None:
        if w.id in self.selection.ways:
            self.writer.add_way(w)

    def relation(self, r: Any) -> None:
        if r.id in self.selection.relations:
            self.writer.add_relation(r)


def _format_of(path: Path) -> str:
    name = path.name.lower()
    for suffix, fmt in _FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise InputDataError(f"cannot write OSM file type {path.name!r}; expected one of {tuple(_FORMATS)}")


def _merge_reader(diffs: Iterable[tuple[int, str, bytes]], diff_type: str) -> osmium.MergeInputReader:
    reader = osmium.MergeInputReader()
    for seq, url, data in diffs:
        try:
            reader.add_buffer(data, diff_type)
        except RuntimeError as exc:
            raise ReplicationError(f"replication diff {seq} at {url} is not a readable OsmChange: {exc}") from exc
    return reader


def update_extract(
    extract: str | Path,
    url: str | Path,
    region: BBox,
    *,
    start: ReplicationState | None = None,
    max_diffs: int = 1440,
) -> UpdateResult | None:
    """Apply the source's pending diffs to ``extract``, kept to ``region``; None when already up to date.

    Starts after the sequence in the extract's header, else after ``start``. Applies at most ``max_diffs``
    diffs (``UpdateResult.remaining`` tells what is left). The new file is written beside the extract and
    swapped in atomically; on any error the extract is left byte-identical.
    """
    path = check_complete(extract)
    fmt = _format_of(path)
    if max_diffs < 1:
        raise ConfigError(f"max_diffs must be >= 1, got {max_diffs}")
    base = source_url(url)
    header_url, previous = _header(path)
    if previous is None:
        if start is None:
            raise InputDataError(
                f"OSM file {path} records no replication state in its header: pass start= (the state it is at)"
            )
        previous = start
    elif header_url is not None and header_url.rstrip("/") + "/" != base:
        raise ReplicationError(
            f"OSM file {path} follows replication source {header_url}, not {base}: "
            "sequence numbers of different sources do not match"
        )

    with _Server(base) as server:
        newest = server.state()
        if newest.sequence < previous.sequence:
            raise ReplicationError(
                f"replication source {base} is at sequence {newest.sequence}, older than the extract's "
                f"{previous.sequence} ({previous.timestamp:%Y-%m-%d %H:%M}Z): wrong source, or it was reset"
            )
        if newest.sequence == previous.sequence:
            return None
        last = min(newest.sequence, previous.sequence + max_diffs)
        diffs = [
            (s, server.get_diff_url(s), server.diff(s, newest.sequence)) for s in range(previous.sequence + 1, last + 1)
        ]
        current = newest if last == newest.sequence else server.state(last)
        diff_type = server.diff_type

    index = _DiffIndex()
    _merge_reader(diffs, diff_type).apply(index, simplify=True)
    scan = _Scan(index)
    scan.run(path)
    selection = _select(index, scan, region)

    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as work:
        kept = Path(work) / "kept.osc"
        with osmium.SimpleWriter(str(kept)) as writer:
            _merge_reader(diffs, diff_type).apply(_Keep(writer, selection), simplify=True)
        merge = osmium.MergeInputReader()
        merge.add_file(str(kept))
        with atomic_path(path) as tmp:
            reader = osmium.io.Reader(str(path))
            try:
                old = reader.header()
                header = osmium.io.Header()
                if old.box().valid():
                    header.add_box(old.box())
                if old.get("sorting"):
                    header.set("sorting", old.get("sorting"))
                header.set("generator", "loc2vec replication")
                header.set(HEADER_URL, base)
                header.set(HEADER_SEQUENCE, str(current.sequence))
                header.set(HEADER_TIMESTAMP, current.timestamp.strftime(_TIME_FORMAT))
                writer = osmium.io.Writer(osmium.io.File(str(tmp), fmt), header, overwrite=True)
                try:
                    merge.apply_to_reader(reader, writer, False)
                finally:
                    writer.close()
            finally:
                reader.close()
            sha = file_sha256(tmp)
    return UpdateResult(
        previous=previous,
        current=current,
        source=newest,
        diffs_applied=len(diffs),
        objects_in_diffs=len(index.nodes) + len(index.ways) + len(index.relations),
        objects_kept=selection.count,
        sha256=sha,
        changed_bbox=selection.extent,
        changed_area_wkt=selection.footprint_wkt,
    )


# --- making diffs and replication directories -------------------------------------------------------


def _state_text(state: ReplicationState) -> str:
    ts = state.timestamp
    return f"#{ts:%a %b %d %H:%M:%S UTC %Y}\nsequenceNumber={state.sequence}\ntimestamp={ts:%Y-%m-%dT%H\\:%M\\:%SZ}\n"


def _sequence_path(directory: Path, seq: int, suffix: str) -> Path:
    return directory / f"{seq // 1_000_000:03d}" / f"{seq // 1000 % 1000:03d}" / f"{seq % 1000:03d}{suffix}"


def publish_diff(
    directory: str | Path, osc_path: str | Path, timestamp: datetime, *, first: int = 1
) -> ReplicationState:
    """Append an OsmChange file as the next sequence of a replication directory and return its state.

    Writes ``AAA/BBB/CCC.osc.gz``, ``AAA/BBB/CCC.state.txt`` and then the top-level ``state.txt`` (each
    atomically; ``state.txt`` last, so readers never see a sequence without its diff). An empty directory
    gets sequence ``first``: an extract taken before this diff is at sequence ``first - 1``.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    osc = Path(osc_path)
    name = osc.name.lower()
    if not osc.is_file() or not name.endswith((".osc", ".osc.gz")):
        raise InputDataError(f"not an OsmChange file (.osc or .osc.gz): {osc}")
    try:
        osmium.MergeInputReader().add_file(str(osc))
    except RuntimeError as exc:
        raise InputDataError(f"OsmChange file {osc} is unreadable: {exc}") from exc
    data = osc.read_bytes()
    if not name.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
    latest = source_state(root) if (root / "state.txt").exists() else None
    if timestamp.tzinfo is None:
        raise ConfigError(f"diff timestamp must be timezone-aware, got {timestamp!r}")
    if latest is not None and timestamp < latest.timestamp:
        raise ConfigError(f"diff timestamp {timestamp} is before the directory's latest state {latest.timestamp}")
    state = ReplicationState(latest.sequence + 1 if latest else first, timestamp)
    text = _state_text(state)
    write_atomic(_sequence_path(root, state.sequence, ".osc.gz"), lambda tmp: tmp.write_bytes(data))
    write_atomic(_sequence_path(root, state.sequence, ".state.txt"), lambda tmp: tmp.write_text(text))
    write_atomic(root / "state.txt", lambda tmp: tmp.write_text(text))
    return state


def _content(obj: Any) -> tuple:
    tags = tuple(sorted((t.k, t.v) for t in obj.tags))
    kind = obj.type_str()
    if kind == "n":
        loc = obj.location
        return (tags, (loc.x, loc.y) if loc.valid() else None)
    if kind == "w":
        return (tags, tuple(r.ref for r in obj.nodes))
    return (tags, tuple((m.type, m.ref, m.role) for m in obj.members))


def _sorted_objects(path: Path) -> Iterator[tuple[tuple[int, bool, int], Any]]:
    kinds = {"n": 0, "w": 1, "r": 2}
    last = (-1, False, 0)
    try:
        for obj in osmium.FileProcessor(str(path)):
            key = (kinds[obj.type_str()], obj.id > 0, abs(obj.id))
            if key <= last:
                raise InputDataError(f"OSM file {path} is not sorted by type and id (at {obj.type_str()}{obj.id})")
            last = key
            yield key, obj
    except RuntimeError as exc:
        raise InputDataError(f"cannot read OSM file {path}: {exc}") from exc


def write_change(old: str | Path, new: str | Path, out_osc: str | Path) -> ChangeCounts:
    """Write the OsmChange (``.osc`` or ``.osc.gz``) that turns extract ``old`` into extract ``new``.

    Both must be sorted by type and id. Objects only in ``new`` are created, objects whose tags, location,
    nodes or members differ (or whose version does) are modified, objects only in ``old`` are deleted.
    Versions are raised where needed so that every change is newer than the object in ``old``.
    """
    old_path, new_path, out = check_osm_file(old), check_osm_file(new), Path(out_osc)
    if not out.name.lower().endswith((".osc", ".osc.gz")):
        raise InputDataError(f"output must be an .osc or .osc.gz file, got {out.name!r}")
    fmt = "osc.gz" if out.name.lower().endswith(".gz") else "osc"
    created = modified = deleted = 0
    with atomic_path(out) as tmp, osmium.SimpleWriter(osmium.io.File(str(tmp), fmt), overwrite=True) as writer:
        add = {"n": writer.add_node, "w": writer.add_way, "r": writer.add_relation}
        olds, news = _sorted_objects(old_path), _sorted_objects(new_path)
        a, b = next(olds, None), next(news, None)
        while a is not None or b is not None:
            if b is None or (a is not None and a[0] < b[0]):
                obj = a[1]
                add[obj.type_str()](obj.replace(visible=False, version=obj.version + 1))
                deleted += 1
                a = next(olds, None)
            elif a is None or b[0] < a[0]:
                obj = b[1]
                add[obj.type_str()](obj.replace(version=max(obj.version, 1)))
                created += 1
                b = next(news, None)
            else:
                before, after = a[1], b[1]
                if before.version != after.version or _content(before) != _content(after):
                    add[after.type_str()](after.replace(version=max(after.version, before.version + 1)))
                    modified += 1
                a, b = next(olds, None), next(news, None)
    return ChangeCounts(created, modified, deleted)


# --- a project's copy of an extract, followed over time ----------------------------------------------


def source_state_at(url: str | Path, sequence: int) -> ReplicationState:
    """The state (sequence, timestamp) of one sequence of the source."""
    with _Server(source_url(url)) as server:
        return server.state(sequence)


def ledger_path(extract: str | Path) -> Path:
    """The JSON-lines record of every update applied to ``extract`` (beside it)."""
    path = Path(extract)
    return path.with_name(f"{path.name}.updates.jsonl")


def remove_leftovers(extract: str | Path) -> list[Path]:
    """Delete the temporary files and directories an update killed midway left beside ``extract``
    (``.<name>.*``). Only call it while holding the lock that serialises updates of ``extract``."""
    path = Path(extract)
    removed = []
    for leftover in path.parent.glob(f".{path.name}.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
        removed.append(leftover)
    return removed


def sync_extract(
    source: str | Path, copy: str | Path, url: str | Path, region: BBox, start_sequence: int | None = None
) -> UpdateResult | None:
    """Bring ``copy`` (created from ``source`` if missing) up to date with ``url``, kept to ``region``, and
    record the update in its ledger. ``start_sequence``: the sequence ``source`` is at when its header
    records none."""
    copy = Path(copy)
    if not copy.exists():
        copy.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(copy) as tmp:
            shutil.copyfile(check_complete(source), tmp)
    start = None
    if extract_state(copy) is None and start_sequence is not None:
        try:
            start = source_state_at(url, start_sequence)
        except ReplicationError:  # not published (a source begun after the extract): the next one's time
            start = ReplicationState(start_sequence, source_state_at(url, start_sequence + 1).timestamp)
    result = update_extract(copy, url, region, start=start)
    if result is not None:
        record = {
            "sequence": result.current.sequence,
            "timestamp": result.current.timestamp.isoformat(),
            "previous_sequence": result.previous.sequence,
            "diffs_applied": result.diffs_applied,
            "objects_in_diffs": result.objects_in_diffs,
            "objects_kept": result.objects_kept,
            "changed_bbox": list(result.changed_bbox.as_tuple()) if result.changed_bbox else None,
            "changed_area": result.changed_area_wkt,
            "sha256": result.sha256,
        }
        with ledger_path(copy).open("a") as ledger:
            ledger.write(json.dumps(record) + "\n")
    return result


def changed_share(extract: str | Path, since_sequence: int | None, region: BBox) -> float:
    """Share of ``region``'s area covered by the changes applied to ``extract`` after ``since_sequence``
    (the union of the changed objects' padded boxes; all recorded changes when None). Ledger lines
    written before footprints were recorded count with their whole bounding box."""
    from shapely import wkt
    from shapely.geometry import box
    from shapely.ops import unary_union

    ledger = ledger_path(extract)
    if not ledger.exists():
        return 0.0
    areas = []
    for line in ledger.read_text().splitlines():
        record = json.loads(line)
        if since_sequence is not None and record["sequence"] <= since_sequence:
            continue
        if record.get("changed_area"):
            areas.append(wkt.loads(record["changed_area"]))
        elif record["changed_bbox"]:
            areas.append(box(*record["changed_bbox"]))
    area = box(*region.as_tuple())
    return float(unary_union(areas).intersection(area).area / area.area) if areas else 0.0


def osm_data_version(state: ReplicationState | None, sha256: str) -> str:
    """An extract's data version: its replication sequence and timestamp (if it records them) and its hash."""
    if state is None:
        return sha256
    return f"seq {state.sequence} @ {state.timestamp:%Y-%m-%dT%H:%M:%SZ} sha256 {sha256[:16]}"
