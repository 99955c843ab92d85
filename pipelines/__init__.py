"""Dagster definitions: the one Definitions object, jobs, schedules, sensors, runner and CLI."""

import os

# OpenMP threads that spin-wait collapse torch's CPU throughput whenever another process holds a core
# (measured 82 vs 676 samples/s, docs/benchmarks.md); must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
