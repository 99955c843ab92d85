"""Run start-up benchmark: one render partition materialized as the UI's backfill and the automation launch it.

Run ``python -m benchmarks.run_start_bench`` (``--rounds 5``). The embedded Kotka extract is imported once;
then ``dagster asset materialize --select raster_blocks --partition block-0-0`` runs in a fresh process,
``--rounds`` times with each executor in turn: the shipped ``in_process_executor`` (the run's steps in the
run's own process) against the ``multiprocess_executor`` (a process per step, which loads the code a
second time), both through ``pipelines.definitions.build_definitions``. Prints the median wall seconds of
each and their ratio, measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import dagster as dg

from pipelines.definitions import build_definitions

ROOT = Path(__file__).resolve().parents[1]
KOTKA = ROOT / "data" / "osm" / "kotka_karhula.osm.pbf"
EXECUTORS = {"in_process": dg.in_process_executor, "multiprocess": dg.multiprocess_executor}

# what ``dagster asset materialize -m benchmarks.run_start_bench -a NAME`` loads
in_process = build_definitions(executor=EXECUTORS["in_process"])
multiprocess = build_definitions(executor=EXECUTORS["multiprocess"])


def materialize(name: str, env: dict[str, str]) -> float:
    """Wall seconds of one ``dagster asset materialize`` process of block-0-0 with the executor ``name``."""
    command = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "benchmarks.run_start_bench",
               "-a", name, "--select", "raster_blocks", "--partition", "block-0-0"]  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return time.perf_counter() - started


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    from pipelines.runner import open_instance

    with tempfile.TemporaryDirectory(prefix="run-start-") as tmp:
        home, data = Path(tmp) / "dagster_home", Path(tmp) / "data"
        env = {**os.environ, "DAGSTER_HOME": str(home), "LOC2VEC_DATA_DIR": str(data), "LOC2VEC_PBF": str(KOTKA)}
        os.environ.update({k: env[k] for k in ("DAGSTER_HOME", "LOC2VEC_DATA_DIR", "LOC2VEC_PBF")})
        with open_instance(home) as instance:  # the import, as an earlier run would have done it
            assert build_definitions().resolve_job_def("ingest_job").execute_in_process(instance=instance).success
        seconds: dict[str, list[float]] = {name: [] for name in EXECUTORS}
        for _ in range(args.rounds):  # in turn, so that load from other processes hits both alike
            for name in EXECUTORS:
                seconds[name].append(materialize(name, env))
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    for name, values in seconds.items():
        print(f"{name:13s} median {medians[name]:.1f} s  (min {min(values):.1f}, max {max(values):.1f})")
    print(f"in_process / multiprocess: {medians['in_process'] / medians['multiprocess']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
