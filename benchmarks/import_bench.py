"""OSM import benchmark: our importer against pyrosm and quackosm, and on large tiled files.

    .venv/bin/python -m benchmarks.import_bench [--pbf PATH] [--no-large] [--no-stream-baseline] [--repeats N]

Every measurement runs in a fresh subprocess (``--child``); the parent samples the memory of the child
and its descendants every 20 ms from /proc (resident and anonymous) and reads the child's ``ru_maxrss``.
Seconds (wall) and CPU seconds (user + system, worker processes included) cover the import call alone
(module imports excluded); the machine may be shared, so CPU seconds are the steadier measure. Peers
need the ``bench`` extra (``pip install -e '.[dev,bench]'``); a peer that cannot run here is reported
with the reason.

Part 1 imports the same extract (default: the embedded Monaco file) with every tool, for the tag keys
of our channel schema. Part 2 tiles the extract into large synthetic files (cached under
``var/bench/``, or ``$LOC2VEC_BENCH_DIR``) and imports a region of one original tile from them: memory
should stay flat in the file size. Ratios are against baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PBF = ROOT / "data/osm/monaco_region_2016.osm.pbf"
BENCH_DIR = Path(os.environ.get("LOC2VEC_BENCH_DIR", ROOT / "var/bench"))  # cache of the tiled files
LARGE_TILES = 121  # ~216 MB
SMALL_TILES = 30  # ~54 MB
GRID_COLS = 11
REGION_TILE = 16  # row 1, col 5: present in both files, so both regions hold the same features
GOAL_SECONDS = 15.0


# --- children -----------------------------------------------------------------------------------------


def _cpu() -> float:
    """CPU seconds of this process and its waited-for children (our importer's worker process)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _digest(frame) -> str:
    """A content hash of our feature frame (rows in their canonical order, geometry as WKB)."""
    h = hashlib.sha256()
    cols = frame.drop(columns="geometry").astype(str).agg("|".join, axis=1)
    for row, wkb in zip(cols, frame.geometry.to_wkb(), strict=True):
        h.update(row.encode())
        h.update(wkb)
    return h.hexdigest()[:16]


def _child_ours(path: str, bbox: str | None, strategy: str) -> dict:
    import geopandas  # noqa: F401  (imported before the clock starts, like the peers' modules)

    from loc2vec.geo import BBox
    from loc2vec.osm.importer import import_features
    from loc2vec.schema import load_schema

    schema = load_schema()
    region = BBox.parse(bbox) if bbox else None
    started, cpu = time.perf_counter(), _cpu()
    frame, stats = import_features(path, schema, bbox=region, strategy=strategy)
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    objects = len(set(zip(frame.osm_type, frame.osm_id, strict=True)))
    return {
        "seconds": seconds,
        "cpu": cpu,
        "features": len(frame),
        "objects": objects,
        "digest": _digest(frame),
        "strategy": "region" if stats.extra.get("strategy_region") else "stream",
        "extra": {k: round(v, 3) for k, v in stats.extra.items()},
    }


def _child_pyrosm(path: str, bbox: str | None) -> dict:
    import pyrosm

    from loc2vec.schema import load_schema

    keys = load_schema().keys
    started, cpu = time.perf_counter(), _cpu()
    box = [float(v) for v in bbox.split(",")] if bbox else None
    osm = pyrosm.OSM(path, bounding_box=box)
    gdf = osm.get_data_by_custom_criteria(
        custom_filter={k: True for k in keys},
        filter_type="keep",
        keep_nodes=True,
        keep_ways=True,
        keep_relations=True,
    )
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    return {"seconds": seconds, "cpu": cpu, "features": 0 if gdf is None else len(gdf)}


def install_duckdb_spatial() -> str:
    """Install DuckDB's spatial extension from the ``duckdb-extension-spatial`` wheel (offline).

    The wheel ships ``duckdb_extension_spatial/extensions/v<duckdb version>/spatial.duckdb_extension``;
    ``INSTALL '<that file>'`` copies it into ``~/.duckdb/extensions``, where ``LOAD spatial`` finds it.
    """
    import duckdb
    import duckdb_extension_spatial

    base = Path(duckdb_extension_spatial.__file__).parent / "extensions"
    found = sorted(glob.glob(str(base / "*" / "spatial.duckdb_extension")))
    if not found:
        raise RuntimeError(f"no spatial.duckdb_extension under {base}")
    con = duckdb.connect()
    con.install_extension(found[-1])
    con.load_extension("spatial")
    con.close()
    return found[-1]


def _child_quackosm(path: str, bbox: str | None, workdir: str) -> dict:
    import quackosm
    import shapely

    from loc2vec.schema import load_schema

    install_duckdb_spatial()
    keys = load_schema().keys
    geometry = shapely.box(*[float(v) for v in bbox.split(",")]) if bbox else None
    started, cpu = time.perf_counter(), _cpu()
    gdf = quackosm.convert_pbf_to_geodataframe(
        path,
        tags_filter={k: True for k in keys},
        geometry_filter=geometry,
        working_directory=workdir,
        ignore_cache=True,
        verbosity_mode="silent",
    )
    seconds, cpu = time.perf_counter() - started, _cpu() - cpu
    return {"seconds": seconds, "cpu": cpu, "features": len(gdf)}


def _child_idle() -> dict:
    """The interpreter with our importer's modules loaded: the floor under every Python tool."""
    import geopandas  # noqa: F401

    import loc2vec.osm.importer  # noqa: F401

    return {"seconds": 0.0, "cpu": 0.0, "features": 0}


def child_main(args: list[str]) -> None:
    tool, rest = args[0], args[1:]
    if tool == "ours":
        result = _child_ours(rest[0], rest[1] or None, rest[2])
    elif tool == "pyrosm":
        result = _child_pyrosm(rest[0], rest[1] or None)
    elif tool == "quackosm":
        result = _child_quackosm(rest[0], rest[1] or None, rest[2])
    elif tool == "idle":
        result = _child_idle()
    else:
        raise SystemExit(f"unknown tool {tool}")
    print("RESULT " + json.dumps(result), flush=True)


# --- parent: run a child and watch its memory -----------------------------------------------------------


def _tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (from /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in glob.glob(f"/proc/{p}/task/*/children"):
            with contextlib.suppress(OSError):
                todo.extend(int(c) for c in Path(task).read_text().split())
    return out


def _status_kib(pid: int) -> tuple[int, int]:
    rss = anon = 0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            elif line.startswith("RssAnon:"):
                anon = int(line.split()[1])
    except OSError:
        pass
    return rss, anon


def measure(args: list[str], timeout: float = 600.0) -> dict:
    """Run ``python -m benchmarks.import_bench --child ARGS`` and measure it."""
    cmd = [sys.executable, "-m", "benchmarks.import_bench", "--child", *args]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"rss": 0, "anon": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            rss = anon = 0
            for pid in _tree(proc.pid):
                r, a = _status_kib(pid)
                rss, anon = rss + r, anon + a
            peak["rss"], peak["anon"] = max(peak["rss"], rss), max(peak["anon"], anon)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out_chunks: list[str] = []
    err_chunks: list[str] = []
    readers = [
        threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True),
        threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True),
    ]
    for r in readers:
        r.start()
    deadline = time.monotonic() + timeout
    status = usage = None
    while status is None:
        pid, st, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            status, usage = st, ru
        elif time.monotonic() > deadline:
            proc.kill()
        else:
            time.sleep(0.01)
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    sampler.join()
    for r in readers:
        r.join()
    stdout, stderr = "".join(out_chunks), "".join(err_chunks)
    result_lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    if proc.returncode != 0 or not result_lines:
        tail = (stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:300]}"}
    result = json.loads(result_lines[-1][len("RESULT ") :])
    result["maxrss_mib"] = usage.ru_maxrss / 1024
    result["peak_rss_mib"] = peak["rss"] / 1024
    result["peak_anon_mib"] = peak["anon"] / 1024
    return result


# --- report -------------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def print_table(title: str, rows: list[tuple[str, dict]], base: str) -> None:
    print(f"\n### {title}\n")
    print("| tool | seconds | CPU s | features | peak RSS MiB | peak anon MiB | time vs ours | anon vs ours |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    ref = dict(rows).get(base, {})
    for name, r in rows:
        if "error" in r:
            print(f"| {name} | – | – | – | – | – | – | – |  (not run: {r['error']})")
            continue
        features = str(r["features"])
        if "objects" in r:
            features += f" rows ({r['objects']} objects)"
        print(
            f"| {name} | {_fmt(r['seconds'], 2)} | {_fmt(r['cpu'], 2)} | {features} | {_fmt(r['peak_rss_mib'])} | "
            f"{_fmt(r['peak_anon_mib'])} | {_ratio(r['seconds'], ref.get('seconds'))} | "
            f"{_ratio(r['peak_anon_mib'], ref.get('peak_anon_mib'))} |"
        )


def _median(values: list[float]) -> float:
    v = sorted(values)
    return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2


def summarize(runs: list[dict]) -> dict:
    """Several runs of one measurement: median and best wall time, median CPU, worst memory."""
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[0]
    out = dict(ok[len(ok) // 2])
    out["seconds"] = _median([r["seconds"] for r in ok])
    out["best"] = min(r["seconds"] for r in ok)
    out["cpu"] = _median([r["cpu"] for r in ok])
    for key in ("peak_rss_mib", "peak_anon_mib", "maxrss_mib"):
        out[key] = max(r[key] for r in ok)
    out["runs"] = len(ok)
    out["digests"] = {r["digest"] for r in ok}
    return out


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    system = f"{platform.system()} {platform.release()}, Python {platform.python_version()}"
    return f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB RAM, {system}"


def peer_versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in ("osmium", "pyrosm", "quackosm", "duckdb"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            parts.append(f"{pkg} not installed")
    return ", ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pbf", default=str(DEFAULT_PBF), help="extract for part 1 (and the tile source)")
    parser.add_argument("--no-large", action="store_true", help="skip part 2 (large tiled files)")
    parser.add_argument("--no-stream-baseline", action="store_true", help="part 2 without the stream-strategy baseline")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each region import in part 2")
    args = parser.parse_args()
    started = time.perf_counter()
    pbf = str(Path(args.pbf).resolve())
    print(f"# OSM import benchmark\n\nmachine: {machine()}\nversions: {peer_versions()}\nfile: {pbf}")
    print("load average at start: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    qdir = BENCH_DIR / "quackosm"
    qdir.mkdir(parents=True, exist_ok=True)

    idle = measure(["idle"])
    rows = [
        ("loc2vec (ours)", measure(["ours", pbf, "", "auto"])),
        ("pyrosm 0.25", measure(["pyrosm", pbf, ""])),
        ("quackosm 0.19", measure(["quackosm", pbf, "", str(qdir)])),
    ]
    print_table(f"Same extract, same tag keys ({Path(pbf).name})", rows, "loc2vec (ours)")
    if "error" not in idle:
        print(
            f"\n(interpreter + our modules, idle: RSS {idle['peak_rss_mib']:.0f} MiB, "
            f"anon {idle['peak_anon_mib']:.0f} MiB)"
        )

    if not args.no_large:
        large_part(Path(pbf), not args.no_stream_baseline, max(1, args.repeats))
    print("\nload average at end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
    print(f"total benchmark time {time.perf_counter() - started:.0f} s")


def large_part(source: Path, stream_baseline: bool, repeats: int) -> None:
    from benchmarks.tiled_pbf import build_tiled_extracts

    stem = source.name.split(".")[0]
    outs = {n: BENCH_DIR / f"{stem}_x{n}.osm.pbf" for n in (SMALL_TILES, LARGE_TILES)}
    t = time.perf_counter()
    fresh = not all(p.exists() for p in outs.values())
    infos = build_tiled_extracts(source, outs, GRID_COLS)
    if fresh:
        print(f"\n(built the tiled files in {time.perf_counter() - t:.0f} s; cached under {BENCH_DIR})")
    region = infos[LARGE_TILES].tile_region(REGION_TILE)
    bbox = f"{region.min_lon},{region.min_lat},{region.max_lon},{region.max_lat}"
    results: dict[tuple[str, int], dict] = {}
    for tiles in (SMALL_TILES, LARGE_TILES):
        path = str(infos[tiles].path)
        results["region", tiles] = summarize([measure(["ours", path, bbox, "region"]) for _ in range(repeats)])
        if stream_baseline:
            results["stream", tiles] = summarize([measure(["ours", path, bbox, "stream"])])
    digests = set().union(*(r.get("digests", set()) for r in results.values()))
    print(f"\n### Large files: a region of one original tile ({bbox})\n")
    print(
        f"Region strategy: median of {repeats} runs (best in brackets); stream strategy: one run. "
        f"Same output in every run: {'yes' if len(digests) == 1 else 'NO'} ({len(digests)} digest(s)).\n"
    )
    print("| strategy | file | seconds | CPU s | features | peak RSS MiB | peak anon MiB | ru_maxrss MiB |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for (strategy, tiles), r in results.items():
        mib = infos[tiles].path.stat().st_size / 2**20
        name = f"| {strategy} | {mib:.0f} MiB ({tiles} tiles) |"
        if "error" in r:
            print(f"{name} – | – | – | – | – | – |  (failed: {r['error']})")
            continue
        best = f" ({r['best']:.2f})" if r.get("runs", 1) > 1 else ""
        print(
            f"{name} {r['seconds']:.2f}{best} | {r['cpu']:.2f} | {r['features']} | {r['peak_rss_mib']:.0f} | "
            f"{r['peak_anon_mib']:.0f} | {r['maxrss_mib']:.0f} |"
        )
    print()
    for tiles in (SMALL_TILES, LARGE_TILES):
        reg, st = results.get(("region", tiles), {}), results.get(("stream", tiles), {})
        if "seconds" in reg and "seconds" in st:
            print(
                f"- {tiles} tiles: region strategy {st['seconds'] / reg['seconds']:.1f}× faster (wall), "
                f"{st['cpu'] / reg['cpu']:.1f}× less CPU, peak anon {reg['peak_anon_mib'] / st['peak_anon_mib']:.2f}× "
                "of the stream strategy"
            )
    small, large = results.get(("region", SMALL_TILES), {}), results.get(("region", LARGE_TILES), {})
    if "seconds" in small and "seconds" in large:
        print(
            f"- region strategy, {LARGE_TILES} vs {SMALL_TILES} tiles: file {LARGE_TILES / SMALL_TILES:.1f}× larger, "
            f"time {large['seconds'] / small['seconds']:.2f}×, CPU {large['cpu'] / small['cpu']:.2f}×, "
            f"peak anon {large['peak_anon_mib'] / small['peak_anon_mib']:.2f}×"
        )
        stages = large.get("extra", {})
        print(
            "- region strategy stages on the large file (s, one run): "
            + ", ".join(f"{k.removeprefix('seconds_')} {v}" for k, v in stages.items() if k.startswith("seconds_"))
        )
        goal = "met" if large["seconds"] <= GOAL_SECONDS else "not met"
        print(f"- goal: small region of the large file in <= {GOAL_SECONDS:.0f} s: {goal} ({large['seconds']:.2f} s)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        child_main(sys.argv[2:])
    else:
        main()
