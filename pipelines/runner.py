"""Run the whole pipeline in process, stage by stage, recording every run in a Dagster instance.

Partitioned and unpartitioned assets cannot share one Dagster run, so the end-to-end pipeline is a
sequence of jobs: ingest, one render run per spatial block, then everything downstream. With
DAGSTER_HOME set (as ``make run`` does) the runs and materializations show in ``dagster dev``.

Before any stage runs: the extract, region, configuration and free disk are checked (``loc2vec.preflight``),
the data directory is locked against a second writer (``loc2vec.lock``), and runs that a killed
process left RUNNING/STARTED are marked failed. Dagster's own event log (stack traces included) goes to
``<data_dir>/logs/``, not to the console.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
from dagster._core.definitions.repository_definition.valid_definitions import SINGLETON_REPOSITORY_NAME
from dagster._core.storage.tags import REPOSITORY_LABEL_TAG

from loc2vec import tracking
from loc2vec.errors import Loc2VecError
from loc2vec.io import json_text
from loc2vec.lock import DataDirLock
from loc2vec.preflight import RunPlan, plan_run
from loc2vec.process import ProcessId
from loc2vec.training.config import TrainConfig

STAGES: list[tuple[str, bool]] = [("ingest_job", False), ("render_job", True), ("main_job", False)]
OWNER_TAG_PREFIX = "loc2vec/"  # Dagster run tags naming the process that executes a run in process
CODE_LOCATION = "loc2vec"  # workspace.yaml's and pyproject's location name: what `make ui` serves
# The UI lists a job's runs by this hidden tag (Dagster sets it on runs launched from a code location);
# runs executed in process carry it too, so they show under their jobs (job page, timeline), not only in /runs.
REPOSITORY_TAG = {REPOSITORY_LABEL_TAG: f"{SINGLETON_REPOSITORY_NAME}@{CODE_LOCATION}"}
ACTIVE_STATUSES = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]


class PipelineFailed(Loc2VecError):
    """A stage of the pipeline failed; the message names the job, partition and error (and the log file).

    ``step`` is the failed step and ``cause`` the class name of the exception it raised (when known), so a
    caller can act on one kind of failure without reading the message."""

    def __init__(self, message: str, step: str = "", cause: str = "") -> None:
        super().__init__(message)
        self.step, self.cause = step, cause


class PipelineInterrupted(PipelineFailed):
    """A stage was interrupted (SIGINT, SIGTERM); running the same command again resumes."""


# Runs executed in this process skip Dagster's stdout capture, which tees through helper processes that
# print tracebacks on Ctrl-C; their events still reach the instance (the UI) and the log file.
IN_PROCESS_OVERRIDES = {
    "compute_logs": {"module": "dagster._core.storage.noop_compute_log_manager", "class": "NoOpComputeLogManager"}
}


def open_instance(home: str | Path | None = None) -> dg.DagsterInstance:
    """The Dagster instance at ``home`` (default ``$DAGSTER_HOME``; none set: an ephemeral one)."""
    from dagster._core.instance.ref import InstanceRef

    home = home or os.environ.get("DAGSTER_HOME")
    if not home:
        return dg.DagsterInstance.ephemeral()
    Path(home).mkdir(parents=True, exist_ok=True)
    return dg.DagsterInstance.from_ref(InstanceRef.from_dir(str(home), overrides=IN_PROCESS_OVERRIDES))


INTERRUPTED = "DagsterExecutionInterruptedError"


def _failure_of(result: dg.ExecuteInProcessResult) -> tuple[str, str, str]:
    """(step, message, exception class name) of a failed run: the user's exception, not Dagster's wrapper."""
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data and event.step_failure_data.error:
            error = event.step_failure_data.error
            while error.cls_name.startswith("Dagster") and error.cause is not None:
                error = error.cause
            return event.step_key or "", error.message.strip(), error.cls_name
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.RUN_FAILURE and event.message:
            return "", event.message.strip(), ""
    return "", "unknown error", ""


def fail_orphaned_dagster_runs(instance: dg.DagsterInstance) -> list[str]:
    """Mark failed the runs this runner started in a process that has since died (SIGKILL, power loss)."""
    marked = []
    for run in instance.get_runs(filters=dg.RunsFilter(statuses=ACTIVE_STATUSES)):
        owner = ProcessId.from_tags(run.tags, OWNER_TAG_PREFIX)
        if owner is not None and owner.is_alive() is False:
            instance.report_run_failed(run, message=f"its process ({owner.describe()}) died; marked failed on restart")
            marked.append(run.run_id)
    return marked


def _resources(definitions: dg.Definitions) -> dict:
    """The definitions' resources with their settings resolved (``dg.EnvVar`` read now)."""
    return {
        name: r.process_config_and_initialize() if isinstance(r, dg.ConfigurableResource) else r
        for name, r in (definitions.resources or {}).items()
    }


JobConfigs = dict[str, dg.RunConfig | dict]  # run config per job name ("main_job": ...)


def main_job_config(
    seed: int = 0, epochs: int | None = None, split_seed: int | None = None, steps_per_epoch: int | None = None
) -> dg.RunConfig:
    """``main_job``'s run config for one training seed (epochs and batches per epoch where given, else the
    asset's defaults), on one draw of the held-out blocks."""
    from assets.training import SamplesConfig, TrainingConfig

    given = {"epochs": epochs, "steps_per_epoch": steps_per_epoch}
    ops: dict = {"trained_model": TrainingConfig(seed=seed, **{k: v for k, v in given.items() if v is not None})}
    if split_seed is not None:
        ops["sample_locations"] = SamplesConfig(seed=split_seed)
    return dg.RunConfig(ops=ops)


def _op_config(run_config: dg.RunConfig | dict | None, op: str, config_type):
    """An op's config object from typed or plain run config (defaults where none is given)."""
    if isinstance(run_config, dg.RunConfig):
        found = (run_config.ops or {}).get(op)
        return found if isinstance(found, config_type) else config_type(**((found or {}).get("config", {})))
    ops = (run_config or {}).get("ops", {})
    return config_type(**((ops.get(op) or {}).get("config", {})))


def _train_config(run_config: dg.RunConfig | dict | None, crop_px: int) -> TrainConfig:
    """The training config a run will use (validated now, so bad values fail before any work)."""
    from assets.training import TrainingConfig

    return TrainConfig(**{**_op_config(run_config, "trained_model", TrainingConfig).model_dump(), "crop_px": crop_px})


def _crop_px(run_config: dg.RunConfig | dict | None) -> int:
    from assets.training import SamplesConfig
    from loc2vec.data.samples import SplitSpec

    return SplitSpec(**_op_config(run_config, "sample_locations", SamplesConfig).model_dump()).crop_px


def preflight(definitions: dg.Definitions, run_config: JobConfigs | None = None, n_models: int = 1) -> RunPlan:
    """Everything that can be known to fail before the first stage: extract, region, config, disk."""
    from pydantic import ValidationError

    resources = _resources(definitions)
    osm, renderer, storage = resources["osm"], resources["renderer"], resources["storage"]
    main = (run_config or {}).get("main_job")
    try:
        crop_px = _crop_px(main)
        _train_config(main, crop_px)
    except ValidationError as exc:
        raise Loc2VecError(f"bad run configuration: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
    plan = plan_run(
        osm.pbf_path, osm.bbox, renderer.spec(), len(osm.schema().names), crop_px, storage.data_dir, n_models
    )
    server = resources["mlflow_tracking"].tracking_uri
    if server and server.startswith(("http://", "https://")):
        tracking.check_reachable(server)  # a tracking server that is down fails the run now, not after training
    return plan


class Pipeline:
    """One invocation of the pipeline on a data directory: locked, recovered, logged to a file."""

    def __init__(
        self,
        definitions: dg.Definitions,
        instance: dg.DagsterInstance,
        log: Callable[[str], None] = print,
    ):
        self.definitions = definitions
        self.instance = instance
        self.log = log
        resources = _resources(definitions)
        self.data_dir = Path(resources["storage"].data_dir)
        self.tracking = resources["mlflow_tracking"]
        self.log_path = self.data_dir / "logs" / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        self.lock = DataDirLock(self.data_dir, log=log)
        self.results: dict[str, dg.ExecuteInProcessResult] = {}  # the latest successful run of each job

    def last(self, job_name: str) -> dg.ExecuteInProcessResult:
        """The latest successful run of ``job_name`` in this invocation."""
        return self.results[job_name]

    def __enter__(self) -> Pipeline:
        self.lock.acquire()
        try:
            self.recover()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def recover(self) -> None:
        """Runs left RUNNING/STARTED by a killed process of this data directory are marked failed."""
        for run_id in fail_orphaned_dagster_runs(self.instance):
            self.log(f"marked Dagster run {run_id[:8]} failed: the process that ran it is gone")
        uri = self.tracking.uri(str(self.data_dir))
        for run_id in tracking.fail_orphaned_runs(uri, self.tracking.experiment):
            self.log(f"marked MLflow run {run_id[:8]} failed: the process that ran it is gone")

    def run_job(
        self,
        job_name: str,
        partition_key: str | None = None,
        run_config: dg.RunConfig | dict | None = None,
        asset_selection: list[str] | None = None,
    ) -> dg.ExecuteInProcessResult:
        """Execute one job in process; raise PipelineFailed (one line, naming the log file) if it fails."""
        label = f"{job_name}[{partition_key}]" if partition_key else job_name
        started = time.perf_counter()
        loggers = {"file": {"config": {"path": str(self.log_path)}}, "progress": {"config": {}}}
        if isinstance(run_config, dg.RunConfig):
            config: dg.RunConfig | dict = dg.RunConfig(
                ops=run_config.ops, resources=run_config.resources, loggers={**(run_config.loggers or {}), **loggers}
            )
        else:
            config = {**(run_config or {}), "loggers": loggers}
        try:
            result = self.definitions.resolve_job_def(job_name).execute_in_process(
                instance=self.instance,
                partition_key=partition_key,
                run_config=config,
                raise_on_error=False,
                asset_selection=[dg.AssetKey(k) for k in asset_selection] if asset_selection else None,
                tags={**ProcessId.current().as_tags(OWNER_TAG_PREFIX), **REPOSITORY_TAG},
            )
        except dg.DagsterInvalidConfigError as exc:
            raise PipelineFailed(f"{label}: invalid run configuration: {exc}") from exc
        if not result.success:
            step, message, cause = _failure_of(result)
            if cause == INTERRUPTED:
                raise PipelineInterrupted(
                    f"{label} interrupted at {step} (run {result.run_id[:8]}): run the same command "
                    "again to resume where it stopped"
                )
            where = f"{step}: " if step else ""
            raise PipelineFailed(
                f"{label} failed (run {result.run_id[:8]}): {where}{message} [details: {self.log_path}]", step, cause
            )
        self.log(f"{label}: ok in {time.perf_counter() - started:.1f} s (run {result.run_id[:8]})")
        self.results[job_name] = result
        return result

    def run_stages(
        self, run_config: JobConfigs | None = None, main_assets: list[str] | None = None
    ) -> dict[str, dg.ExecuteInProcessResult]:
        results: dict[str, dg.ExecuteInProcessResult] = {}
        runs = []
        for job_name, partitioned in STAGES:
            job = self.definitions.resolve_job_def(job_name)
            keys = job.partitions_def.get_partition_keys() if partitioned and job.partitions_def else [None]
            runs += [(job_name, key) for key in keys]
        for n, (job_name, key) in enumerate(runs, start=1):
            label = f"{job_name}[{key}]" if key else job_name
            self.log(f"stage {n}/{len(runs)}: {label}")
            main = main_assets if job_name == "main_job" else None
            results[label] = self.run_job(job_name, key, (run_config or {}).get(job_name), main)
        return results


def run_pipeline(
    definitions: dg.Definitions | None = None,
    instance: dg.DagsterInstance | None = None,
    run_config: JobConfigs | None = None,
    log: Callable[[str], None] = print,
    main_assets: list[str] | None = None,
) -> dict[str, dg.ExecuteInProcessResult]:
    """Check, lock, then execute every stage; raise PipelineFailed at the first failing run.

    ``main_assets`` restricts the last stage to these assets (default: all of ``main_job``).
    """
    if definitions is None:
        from pipelines.definitions import defs as definitions
    preflight(definitions, run_config)
    with Pipeline(definitions, instance or open_instance(), log) as pipeline:
        return pipeline.run_stages(run_config, main_assets)


def run_sweep(
    pipeline: Pipeline,
    seeds: list[int],
    split_seeds: list[int | None],
    epochs: int | None = None,
    steps_per_epoch: int | None = None,
) -> dict:
    """Every training seed on every draw of the held-out blocks: the whole pipeline once, then ``main_job``
    again per (split, seed); returns the evaluation document (means, stds and every run, with ``>1`` run)."""
    from loc2vec.evaluation.run import sweep_document

    results, runs = [], []
    for k, (split, seed) in enumerate((split, seed) for split in split_seeds for seed in seeds):
        config = main_job_config(seed, epochs, split, steps_per_epoch)
        if k == 0:
            run = pipeline.run_stages(run_config={"main_job": config})["main_job"]
        else:
            pipeline.log(f"training seed {seed}" + ("" if split is None else f" on split {split}"))
            run = pipeline.run_job("main_job", run_config=config)
        result, model = run.output_for_node("evaluation"), run.output_for_node("trained_model")
        results.append(result)
        runs.append(
            {
                "split_seed": 0 if split is None else split,
                "seed": seed,
                "n_test_locations": result["n_test_locations"],
                "n_test_pois": result["n_test_pois"],
                "model_version": model.model_version,
                "mlflow_run_id": model.run_id,
                "model": result["model"],
                "baselines": result["baselines"],
                "leads": result.get("leads"),
            }
        )
    document = sweep_document(results, runs, seeds)
    if len(results) > 1:
        document["mlflow_summary_run_id"] = tracking.log_seed_summary(
            model.tracking_uri, model.experiment_id, document["seeds"], json_text(document), runs
        )
        pipeline.log(f"mean and std over {len(results)} runs logged to MLflow run {document['mlflow_summary_run_id']}")
    return document
