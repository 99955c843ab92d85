"""What ``make run`` and ``loc2vec run`` show on the console: stages, progress with an ETA, the assets'
own messages; Dagster's event log goes to a file instead (``pipelines.loggers``).

An asset reports progress with ``context.log.info(text, extra=assets.progress.progress_extra(...))``. On a
terminal each task is a rich progress bar (done/total, elapsed, remaining); in a pipe or a log file it is
a line at every quarter of the way, with the estimated time remaining. Runs launched by the UI log the same
message text to Dagster's event log.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def format_eta(seconds: float) -> str:
    seconds = max(0, round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


@dataclass
class _PlainTask:
    started: float
    printed_quarters: int = -1


@dataclass
class ConsoleDisplay:
    """Timestamped messages and per-task progress on one console (bars on a terminal, lines otherwise)."""

    console: Console = field(default_factory=lambda: Console(highlight=False, soft_wrap=True))
    prefix: str = "loc2vec"
    clock: Callable[[], float] = time.perf_counter
    _bars: Progress | None = None
    _bar_tasks: dict[str, TaskID] = field(default_factory=dict)
    _plain: dict[str, _PlainTask] = field(default_factory=dict)

    @property
    def interactive(self) -> bool:
        return self.console.is_terminal

    def message(self, text: str) -> None:
        line = f"[{self.prefix} {time.strftime('%H:%M:%S')}] {text}"
        (self._bars.console if self._bars else self.console).print(line, markup=False, highlight=False)

    def progress(self, task: str, done: int, total: int, text: str | None = None) -> None:
        """``task`` has done ``done`` of ``total`` steps; ``text`` is the asset's own message."""
        if self.interactive:
            if text:
                self.message(text)
            self._bar(task, done, total)
            return
        if task not in self._plain:
            self._plain[task] = _PlainTask(started=self.clock())
        state = self._plain[task]
        quarters = 4 if total <= 0 else min(4, done * 4 // total)
        if quarters == state.printed_quarters and not text:
            return
        state.printed_quarters = quarters
        elapsed = self.clock() - state.started
        eta = "" if done <= 0 or done >= total else f" (about {format_eta(elapsed / done * (total - done))} left)"
        self.message(f"{text or f'{task}: {done}/{total}'}{eta}")
        if done >= total:
            self._plain.pop(task, None)

    def _bar(self, task: str, done: int, total: int) -> None:
        if self._bars is None:
            self._bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("ETA"),
                TimeRemainingColumn(),
                console=self.console,
            )
            self._bars.start()
        if task not in self._bar_tasks:
            self._bar_tasks[task] = self._bars.add_task(task, total=total)
        self._bars.update(self._bar_tasks[task], completed=done, total=total)
        if done >= total:
            self._bars.remove_task(self._bar_tasks.pop(task))
            self.message(f"{task}: {done}/{total} done")

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
            self._bar_tasks.clear()


_active: ConsoleDisplay | None = None


def display() -> ConsoleDisplay:
    """The process's console display (created on first use)."""
    global _active
    if _active is None:
        _active = ConsoleDisplay()
    return _active


def quiet_libraries() -> None:
    """Keep library chatter off the console of a command-line run (it stays in Dagster's log file):
    Dagster's beta/preview notices, MLflow's INFO lines and download bars, torch.export's shape notes."""
    import logging
    import os
    import warnings

    from dagster import BetaWarning, PreviewWarning

    warnings.filterwarnings("ignore", category=BetaWarning)
    warnings.filterwarnings("ignore", category=PreviewWarning)
    warnings.filterwarnings("ignore", message="No complete tensor found in the group")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # reading a registered model's files
    for name in ("torch._export", "torch.export", "torch._dynamo", "alembic"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # A Ctrl-C that lands while SQLAlchemy closes a pooled connection is logged by the pool with a
    # traceback; the interrupted run already ends in one line, so the pool's report is noise.
    logging.getLogger("sqlalchemy.pool").setLevel(logging.CRITICAL)
