"""OSM input files: supported formats, content hashes, declared bounds."""

from __future__ import annotations

import hashlib
import os
import zlib
from pathlib import Path

import osmium

from loc2vec.errors import InputDataError
from loc2vec.geo import BBox

SUPPORTED_SUFFIXES = (".osm.pbf", ".pbf", ".osm", ".osm.bz2", ".osm.gz", ".osc", ".osc.gz")
EXTRACT_SUFFIXES = (".osm.pbf", ".pbf", ".osm", ".osm.bz2", ".osm.gz")


def check_osm_file(path: str | Path) -> Path:
    """Return ``path`` if it is an existing, non-empty extract in a supported format, else raise."""
    p = Path(path)
    if not p.exists():
        raise InputDataError(f"OSM file not found: {p}")
    if not p.is_file():
        raise InputDataError(f"OSM path is not a file: {p}")
    if not p.name.lower().endswith(EXTRACT_SUFFIXES):
        raise InputDataError(f"unsupported OSM file type {p.name!r}; expected one of {EXTRACT_SUFFIXES}")
    if p.stat().st_size == 0:
        raise InputDataError(f"OSM file is empty: {p}")
    return p


def check_complete(path: str | Path) -> Path:
    """Refuse an extract that ends early (an interrupted download or copy), reading as little as the format
    allows: a PBF's blob headers (its blobs must tile the file), a bzip2 file's end-of-stream marker, an
    XML file's closing tag; a gzip file is decompressed through once."""
    p = check_osm_file(path)
    name = p.name.lower()
    if name.endswith(".pbf"):
        try:
            pbf_blobs(p, strict=True)
        except ValueError as exc:
            raise InputDataError(f"OSM file {p} is damaged or truncated: {exc}") from exc
    elif name.endswith(".bz2"):
        if not _bz2_ends_whole(p):
            raise InputDataError(f"OSM file {p} is truncated: no bzip2 end-of-stream marker at its end")
    elif name.endswith(".gz"):
        import gzip

        try:
            with gzip.open(p, "rb") as f:
                while f.read(1 << 22):
                    pass
        except (OSError, EOFError) as exc:
            raise InputDataError(f"OSM file {p} is damaged or truncated: {exc}") from exc
    elif name.endswith(".osm"):
        with open(p, "rb") as f:
            f.seek(max(0, p.stat().st_size - 4096))
            tail = f.read().rstrip()
        if not tail.endswith(b"</osm>"):
            raise InputDataError(f"OSM file {p} is truncated: it does not end with </osm>")
    return p


_BZ2_END_OF_STREAM = 0x177245385090  # 48-bit magic, then a 32-bit CRC, then padding to a whole byte


def _bz2_ends_whole(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 11))
        tail = int.from_bytes(f.read(), "big")
    return any((tail >> (32 + pad)) & ((1 << 48) - 1) == _BZ2_END_OF_STREAM for pad in range(8))


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    """Content hash of a file (the data version of an OSM source)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def header_bounds(path: str | Path) -> BBox | None:
    """The bounding box the file's header declares, or None when it declares none."""
    p = check_osm_file(path)
    try:
        with osmium.io.Reader(str(p), osmium.osm.NOTHING) as reader:
            box = reader.header().box()
    except RuntimeError as exc:
        raise InputDataError(f"cannot read OSM file {p}: {exc}") from exc
    if not box.valid():
        return None
    return BBox(box.bottom_left.lon, box.bottom_left.lat, box.top_right.lon, box.top_right.lat)


def data_bounds(path: str | Path) -> BBox:
    """Bounds of every node location in the file (used when the header declares none)."""
    p = check_osm_file(path)
    lons: list[float] = []
    lats: list[float] = []
    bounds = [180.0, 90.0, -180.0, -90.0]
    try:
        for node in osmium.FileProcessor(str(p), osmium.osm.NODE):
            loc = node.location
            if loc.valid():
                lons.append(loc.lon)
                lats.append(loc.lat)
            if len(lons) >= 100_000:
                bounds = _merge(bounds, lons, lats)
    except RuntimeError as exc:
        raise InputDataError(f"cannot read OSM file {p}: {exc}") from exc
    bounds = _merge(bounds, lons, lats)
    if bounds[0] > bounds[2]:
        raise InputDataError(f"OSM file {p} holds no nodes: is it OSM data?")
    if bounds[0] == bounds[2] or bounds[1] == bounds[3]:
        pad = 1e-4
        bounds = [bounds[0] - pad, bounds[1] - pad, bounds[2] + pad, bounds[3] + pad]
    return BBox(*bounds)


def _merge(bounds: list[float], lons: list[float], lats: list[float]) -> list[float]:
    """Fold a block of coordinates into running bounds and clear the block."""
    if lons:
        bounds = [min(bounds[0], *lons), min(bounds[1], *lats), max(bounds[2], *lons), max(bounds[3], *lats)]
        lons.clear()
        lats.clear()
    return bounds


def extract_bounds(path: str | Path) -> BBox:
    """The header's bounds, else the bounds of the data."""
    return header_bounds(path) or data_bounds(path)


def require_overlap(region: BBox, extent: BBox, path: str | Path) -> None:
    """Refuse a region that lies outside the extract's bounds."""
    if not region.intersects(extent):
        raise InputDataError(f"region {region} lies outside the extract {Path(path).name} (bounds {extent})")


def check_region(path: str | Path, bbox: str | None) -> BBox | None:
    """Refuse, before any work, a region that is malformed or that the file's header puts outside the
    extract (files without header bounds are checked by the importer, which reads their data)."""
    region = BBox.parse(bbox) if bbox else None
    extent = header_bounds(path)
    if region is not None and extent is not None:
        require_overlap(region, extent, path)
    return region


# --- PBF blocks -------------------------------------------------------------------------------------
#
# A PBF file is a sequence of blobs (a length-prefixed BlobHeader, then the zlib-compressed block). In a
# file sorted by type then id every block holds one type, nodes first, then ways, then relations, so a
# pass that needs only some types can read only their blocks: libosmium decompresses every block of a
# file, even of types it then skips. Finding the boundaries takes a binary search over the blocks.

_NODE, _WAY, _RELATION = 0, 1, 2
_GROUP_KINDS = {1: _NODE, 2: _NODE, 3: _WAY, 4: _RELATION}  # PrimitiveGroup fields


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        b = buf[i]
        i += 1
        value |= (b & 0x7F) << shift
        shift += 7
        if b < 0x80:
            return value, i


def _fields(buf: bytes):
    """``(field number, wire type, value)`` of a protobuf message (values of wire type 2 as bytes)."""
    i = 0
    while i < len(buf):
        key, i = _varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _varint(buf, i)
        elif wire == 2:
            size, i = _varint(buf, i)
            value, i = buf[i : i + size], i + size
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield number, wire, value


_MAX_BLOB_HEADER = 64 * 1024  # limits of the PBF format
_MAX_BLOB = 32 * 1024 * 1024


def pbf_blobs(path: str | Path, strict: bool = False) -> list[tuple[bytes, int, int]]:
    """``(type, offset, size)`` of every blob (``OSMHeader`` or ``OSMData``), reading only their headers.

    ``strict``: also refuse sizes beyond the format's limits and blobs that run past the end of the file.
    """
    blobs = []
    file_size = Path(path).stat().st_size
    with open(path, "rb") as f:
        offset = 0
        while head := f.read(4):
            if len(head) < 4:
                raise ValueError(f"truncated PBF blob header at byte {offset}")
            size = int.from_bytes(head, "big")
            if strict and size > _MAX_BLOB_HEADER:
                raise ValueError(f"PBF blob header of {size} bytes at byte {offset} (not a PBF file?)")
            header = f.read(size)
            if len(header) < size:
                raise ValueError(f"truncated PBF blob header at byte {offset}")
            kind, data_size = b"", None
            try:
                for number, _, value in _fields(header):
                    if number == 1:
                        kind = value
                    elif number == 3:
                        data_size = value
            except IndexError as exc:
                raise ValueError(f"malformed PBF blob header at byte {offset}") from exc
            if data_size is None:
                raise ValueError("PBF blob header without a data size")
            if strict and (data_size > _MAX_BLOB or kind not in (b"OSMHeader", b"OSMData")):
                raise ValueError(f"malformed PBF blob at byte {offset}")
            total = 4 + size + data_size
            if strict and offset + total > file_size:
                raise ValueError(f"the last block ends at byte {offset + total}, the file at byte {file_size}")
            blobs.append((kind, offset, total))
            offset += total
            f.seek(offset)
    if strict and not blobs:
        raise ValueError("no PBF blocks")
    return blobs


def _blob_data(path: str | Path, offset: int, total: int) -> bytes:
    """The uncompressed content of one blob."""
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read(total)
    size = int.from_bytes(raw[:4], "big")
    data = None
    for number, _, value in _fields(raw[4 + size :]):
        if number == 1:
            data = value
        elif number == 3:
            data = zlib.decompress(value)
        elif number > 3:
            raise ValueError("PBF blob compression other than zlib")
    if data is None:
        raise ValueError("empty PBF blob")
    return data


def _block_kinds(path: str | Path, offset: int, total: int) -> tuple[int, int]:
    """The lowest and highest object type (node 0, way 1, relation 2) in one data blob."""
    data = _blob_data(path, offset, total)
    kinds = set()
    for number, _, group in _fields(data):
        if number == 2:
            kinds.update(_GROUP_KINDS[n] for n, _, _ in _fields(group) if n in _GROUP_KINDS)
    if not kinds:
        return (3, 3)
    return min(kinds), max(kinds)


def pbf_type_ranges(path: str | Path) -> dict[str, list[tuple[int, int]]] | None:
    """Byte ranges ``(offset, size)`` of the header and of the blocks holding nodes, ways and relations.

    None when the file is not a PBF declaring ``Sort.Type_then_ID`` (blocks may then mix types in any
    order) or uses a compression other than zlib.
    """
    p = Path(path)
    if not p.name.lower().endswith(".pbf"):
        return None
    try:
        with osmium.io.Reader(str(p), osmium.osm.NOTHING) as reader:
            sorting = reader.header().get("sorting")
        if sorting != "Type_then_ID":
            return None
        blobs = pbf_blobs(p)
        headers = [(o, s) for kind, o, s in blobs if kind == b"OSMHeader"]
        data = [(o, s) for kind, o, s in blobs if kind == b"OSMData"]
        if len(headers) != 1 or blobs[0][0] != b"OSMHeader":
            return None
        cache: dict[int, tuple[int, int]] = {}

        def kinds(i: int) -> tuple[int, int]:
            if i not in cache:
                cache[i] = _block_kinds(p, *data[i])
            return cache[i]

        def first(pred) -> int:
            lo, hi = 0, len(data)
            while lo < hi:
                mid = (lo + hi) // 2
                if pred(kinds(mid)):
                    hi = mid
                else:
                    lo = mid + 1
            return lo

        way_start = first(lambda k: k[1] >= _WAY)  # first block holding ways or relations
        node_end = first(lambda k: k[0] >= _WAY)  # first block without nodes
        rel_start = first(lambda k: k[1] >= _RELATION)
        way_end = first(lambda k: k[0] >= _RELATION)
    except (ValueError, IndexError, zlib.error, OSError, RuntimeError):
        return None

    def span(a: int, b: int) -> list[tuple[int, int]]:
        return [data[i] for i in range(a, b)]

    return {
        "header": headers,
        "node": span(0, node_end),
        "way": span(way_start, way_end),
        "relation": span(rel_start, len(data)),
    }


def write_pbf_part(path: str | Path, ranges: dict[str, list[tuple[int, int]]], types: str, out: str) -> str:
    """Copy the header and the blocks of ``types`` (e.g. ``"way relation"``) into a new PBF ``out``."""
    wanted = ranges["header"] + sorted({r for t in types.split() for r in ranges[t]})
    with open(path, "rb") as src, open(out, "wb") as dst:
        for offset, size in wanted:
            done = 0
            while done < size:
                n = os.copy_file_range(src.fileno(), dst.fileno(), size - done, offset + done)
                if n == 0:
                    raise OSError(f"short read copying PBF blocks from {path}")
                done += n
    return out


def _first_way_id(path: str | Path, offset: int, total: int) -> int | None:
    """The id of the first way in one data blob (ways are stored with their plain id first)."""
    data = _blob_data(path, offset, total)
    for number, _, group in _fields(data):
        if number == 2:
            for n, _, way in _fields(group):
                if n == 3:
                    for field, _, value in _fields(way):
                        if field == 1:
                            return value
    return None


def pbf_way_blocks_for(path: str | Path, blocks: list[tuple[int, int]], ids) -> list[tuple[int, int]]:
    """The way blocks (of a file sorted by id) that can hold any of ``ids``: a binary search per id."""
    firsts: dict[int, int | None] = {}

    def first(i: int) -> int:
        if i not in firsts:
            firsts[i] = _first_way_id(path, *blocks[i])
        value = firsts[i]
        return -1 if value is None else value

    found = set()
    for wanted in sorted(ids):
        lo, hi = 0, len(blocks)
        while lo < hi:  # the last block whose first id is <= wanted
            mid = (lo + hi) // 2
            if first(mid) <= wanted:
                lo = mid + 1
            else:
                hi = mid
        if lo:
            found.add(lo - 1)
    return [blocks[i] for i in sorted(found)]
