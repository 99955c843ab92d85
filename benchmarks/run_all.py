"""Run every benchmark in turn (``make bench``); each prints its own table of ratios."""

from __future__ import annotations

import subprocess
import sys

BENCHMARKS = (
    "benchmarks.import_bench",
    "benchmarks.render_bench",
    "benchmarks.train_bench",
    "benchmarks.incremental_bench",
    "benchmarks.maps_bench",
    "benchmarks.leads_bench",
    "benchmarks.run_start_bench",
)


def main() -> int:
    failed = []
    for module in BENCHMARKS:
        print(f"\n=== {module} ===", flush=True)
        if subprocess.run([sys.executable, "-m", module]).returncode != 0:
            failed.append(module)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
