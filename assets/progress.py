"""Progress reports of long-running assets: ``context.log.info(text, extra=progress_extra(...))``.

The text goes to Dagster's event log as any message; ``make run`` shows the record as a progress bar
(``pipelines.console``).
"""

PROGRESS_ATTR = "loc2vec_progress"  # the LogRecord attribute carrying (task, done, total)


def progress_extra(task: str, done: int, total: int) -> dict:
    """``extra=`` for ``context.log.info``: ``done`` of ``total`` steps of ``task`` (units, epochs) are done."""
    return {PROGRESS_ATTR: {"task": task, "done": int(done), "total": int(total)}}
