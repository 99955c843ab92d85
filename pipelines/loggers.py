"""Dagster loggers of the code location: the console (Dagster's default) and a log file for in-process runs."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import dagster as dg


@dg.logger(
    config_schema={"path": str, "log_level": dg.Field(str, is_required=False, default_value="DEBUG")},
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


class _UserMessages(logging.Filter):
    """Only what the assets themselves log (``context.log``), not Dagster's own step events."""

    def filter(self, record: logging.LogRecord) -> bool:
        meta = getattr(record, "dagster_meta", None)
        if not isinstance(meta, dict) or meta.get("dagster_event") is not None:
            return False
        record.msg = f"{meta.get('step_key') or meta.get('job_name')}: {meta.get('orig_message', record.msg)}"
        record.args = ()
        return True


@dg.logger(
    config_schema={"log_level": dg.Field(str, is_required=False, default_value="INFO")},
    description="Progress on the console: the assets' own messages (epochs, units rendered), no Dagster events.",
)
def progress_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    logger = logging.getLogger("loc2vec.dagster.progress")
    logger.setLevel(init_context.logger_config["log_level"])
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("[loc2vec %(asctime)s] %(message)s", datefmt="%H:%M:%S"))
        handler.addFilter(_UserMessages())
        logger.addHandler(handler)
    logger.propagate = False
    return logger
