"""What a person sees on the console: progress with an ETA, and the closing summary of a real run."""

from __future__ import annotations

import io
import json
import re
import shlex
from pathlib import Path

import pytest
from rich.console import Console

from loc2vec.evaluation.metrics import METRICS
from pipelines.console import ConsoleDisplay


def test_progress_in_a_pipe_is_a_line_per_quarter_with_the_time_left():
    clock = iter(range(100))  # every reading of the clock is one second later
    out = io.StringIO()
    shown = ConsoleDisplay(Console(file=out, force_terminal=False, width=200), clock=lambda: float(next(clock)))
    for done in range(0, 9):
        shown.progress("units", done, 8)
    lines = [line.split("] ", 1)[1] for line in out.getvalue().splitlines()]
    assert lines == [  # started at 0 s; the reports at 2, 4, 6 of 8 steps read the clock at 2, 3, 4 s
        "units: 0/8",
        "units: 2/8 (about 0:00:06 left)",  # 2 s for 2 steps: 6 more take 6 s
        "units: 4/8 (about 0:00:03 left)",
        "units: 6/8 (about 0:00:01 left)",
        "units: 8/8",
    ]


def test_progress_on_a_terminal_is_a_bar(monkeypatch):
    out = io.StringIO()
    shown = ConsoleDisplay(Console(file=out, force_terminal=True, width=120))
    shown.progress("trained_model epochs", 1, 4, "trained_model: trained 1/4 epochs")
    shown.progress("trained_model epochs", 4, 4)
    shown.close()
    text = out.getvalue()
    assert "trained_model: trained 1/4 epochs" in text
    assert "1/4" in text and "━" in text  # rich's bar
    assert "trained_model epochs: 4/4 done" in text


@pytest.mark.slow
def test_a_run_ends_with_metrics_model_outputs_and_next_commands(monaco_run, capsys):
    from pipelines.cli import main

    console = (monaco_run / "console.txt").read_text()
    assert "DEBUG" not in console and "BetaWarning" not in console
    assert re.search(r"stage 1/\d+: ingest_job", console) and "trained_model: trained 1/1 epochs" in console
    summary = console[console.index("loc2vec: finished") :]
    doc = json.loads((monaco_run / "evaluation.json").read_text())
    header = next(line for line in summary.splitlines() if "metric" in line and "model" in line)
    columns = [c.strip() for c in header.split("┃")[2:-1]]
    assert columns[0] == "model" and set(columns[1:]) == set(doc["baselines"])
    for metric in METRICS:  # every metric row shows the model's and each baseline's value as in the JSON
        row = next(line for line in summary.splitlines() if f" {metric} " in line)
        cells = [c.strip().rstrip("*") for c in row.split("│")[2:-1]]
        expected = [doc["model"][metric] if c == "model" else doc["baselines"][c][metric] for c in columns]
        assert cells == ["n/a" if v is None or v != v else f"{v:.3f}" for v in expected], row
    assert "means over 2 runs" in summary
    version = doc["runs"][-1]["model_version"]
    assert f"loc2vec-encoder version {version}" in summary
    outputs = summary[summary.index("outputs:") : summary.index("next:")].splitlines()[1:]
    paths = [line.split()[-1] for line in outputs if line.split()[-1].startswith("/")]
    assert len(paths) >= 9 and all(Path(p).exists() for p in paths), paths
    similar = next(line.strip() for line in summary.splitlines() if "loc2vec similar" in line)
    capsys.readouterr()
    assert main(shlex.split(similar)[1:]) == 0  # the suggested query works as printed
    assert len(capsys.readouterr().out.splitlines()) == 11  # header + 10 places
