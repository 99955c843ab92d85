"""Process-wide settings, made once at each process entry point (never on import of a library module).

Entry points: the ``loc2vec`` command line (``pipelines.cli.main``), the Dagster code location
(``pipelines.definitions``, loaded by ``dagster dev``, the webserver, the daemon and every run worker)
and the DDP worker (``loc2vec.training.ddp``).
"""

from __future__ import annotations

import os


def configure_process() -> None:
    """Settings that must hold before torch is imported.

    ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads that spin-wait collapse torch's CPU throughput whenever
    another process holds a core (measured 82 vs 676 samples/s, docs/benchmarks.md). A value already
    set in the environment wins.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def set_torch_threads(threads: int) -> None:
    """Intra-op threads of torch for this process (0: leave torch's default, one per core)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)
