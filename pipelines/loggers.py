"""Dagster loggers of the code location: the console (Dagster's default) and a log file for in-process runs."""

from __future__ import annotations

import logging
from pathlib import Path

import dagster as dg

from assets.progress import PROGRESS_ATTR
from pipelines.console import display


@dg.logger(
    config_schema={"path": str, "log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="Dagster's event log of a run, appended to a file.",
)
def file_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    path = Path(init_context.logger_config["path"])
    path.parent.mkdir(parents=True, exist_ok=True)
    logger = logging.getLogger(f"loc2vec.dagster.{path}")
    logger.setLevel(init_context.logger_config["log_level"])
    if not logger.handlers:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.propagate = False
    return logger


class _ConsoleHandler(logging.Handler):
    """What the assets themselves log (``context.log``), not Dagster's own step events, on the console
    display: progress records (``pipelines.console.progress_extra``) as bars, the rest as lines."""

    def emit(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None)
        if not isinstance(meta, dict) or meta.get("dagster_event") is not None:
            return
        step = meta.get("step_key") or meta.get("job_name")
        text = f"{step}: {meta.get('orig_message', record.getMessage())}"
        progress = getattr(record, PROGRESS_ATTR, None)
        if progress:
            display().progress(f"{step} {progress['task']}", progress["done"], progress["total"], text)
        else:
            display().message(text)


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="Progress on the console: the assets' own messages and progress bars, no Dagster events.",
)
def progress_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.getLogger("loc2vec.dagster.progress")
    logger.setLevel(init_context.logger_config["log_level"])
    if not logger.handlers:
        logger.addHandler(_ConsoleHandler())
    logger.propagate = False
    return logger
