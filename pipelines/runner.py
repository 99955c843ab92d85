"""Run the whole pipeline in process, stage by stage, recording every run in a Dagster instance.

Partitioned and unpartitioned assets cannot share one Dagster run, so the end-to-end pipeline is a
sequence of jobs: ingest, one render run per spatial block, then everything downstream. With
DAGSTER_HOME set (as ``make run`` does) the runs and materializations show in ``dagster dev``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import dagster as dg

from loc2vec.errors import Loc2VecError
from pipelines.definitions import defs

STAGES: list[tuple[str, bool]] = [("ingest_job", False), ("render_job", True), ("main_job", False)]


class PipelineFailed(Loc2VecError):
    """A stage of the pipeline failed; the message names the job, partition and error."""


def _instance() -> dg.DagsterInstance:
    if os.environ.get("DAGSTER_HOME"):
        return dg.DagsterInstance.get()
    return dg.DagsterInstance.ephemeral()


def _error_of(result: dg.ExecuteInProcessResult) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cls_name.startswith("Dagster") and error.cause is not None:
                error = error.cause  # the user's exception, not Dagster's wrapper
            return f"{event.step_key}: {error.message.strip()}"
    return "unknown error"


def run_pipeline(
    definitions: dg.Definitions = defs,
    instance: dg.DagsterInstance | None = None,
    run_config: dict | None = None,
    log: Callable[[str], None] = print,
    main_assets: list[str] | None = None,
) -> dict[str, dg.ExecuteInProcessResult]:
    """Execute every stage; raise PipelineFailed at the first failing run.

    ``main_assets`` restricts the last stage to these assets (default: all of ``main_job``).
    """
    instance = instance or _instance()
    results: dict[str, dg.ExecuteInProcessResult] = {}
    for job_name, partitioned in STAGES:
        job = definitions.resolve_job_def(job_name)
        keys = job.partitions_def.get_partition_keys() if partitioned and job.partitions_def else [None]
        for key in keys:
            label = f"{job_name}[{key}]" if key else job_name
            started = time.perf_counter()
            config = (run_config or {}).get(job_name)
            selection = [dg.AssetKey(k) for k in main_assets] if main_assets and job_name == "main_job" else None
            result = job.execute_in_process(
                instance=instance,
                partition_key=key,
                run_config=config,
                raise_on_error=False,
                asset_selection=selection,
            )
            results[label] = result
            if not result.success:
                raise PipelineFailed(f"{label} failed (run {result.run_id}): {_error_of(result)}")
            log(f"{label}: ok in {time.perf_counter() - started:.1f} s (run {result.run_id[:8]})")
    return results


def main() -> None:
    run_pipeline()


if __name__ == "__main__":
    main()
