"""The tables of docs/evaluation.md from ``benchmarks/transfer.py`` results of several training seeds.

    .venv/bin/python benchmarks/transfer_table.py /tmp/transfer-0/transfer.json /tmp/transfer-1/transfer.json ...

Prints, as Markdown: per held-out region and embedder the mean ± standard deviation over the files of every
metric (``insufficient`` where R's protocol flags it), then the bar: per seed, the model minus the untrained
encoder and minus channel statistics on balanced recall, the probe and POI presence, each with the 95 %
interval of its lead (``leads`` in evaluation.json) where that reaches 0 or below, and how many of the bar's
cells (file, held-out region, sufficient metric) the model meets: ahead of both, and ahead of both with the
leads' intervals above 0. The files of ``--own-region`` runs
(``own-region.json``) add the model trained on the region alone (and the model minus it), and how many cells
the model of all regions is no worse on, and behind beyond the noise (``lead_over_alone``'s interval below 0).
A region may be missing from some files (held out in other runs): its rows use the files that hold it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from loc2vec.evaluation.significance import LEAD_BASELINES as BAR_BASELINES
from loc2vec.evaluation.significance import LEAD_METRICS as BAR

METRICS = (
    ("landuse_recall_at_10", "land-use recall@10"),
    ("landuse_balanced_recall_at_10", "balanced recall@10"),
    ("landuse_probe_macro_f1", "land-use probe macro-F1"),
    ("poi_presence_macro_auc", "POI presence AUC"),
    ("triplet_accuracy", "triplet acc"),
)
BASELINES = ("untrained", "channel_stats", "coordinates", "random")


def _value(metrics: dict, metric: str) -> float:
    value = metrics.get(metric)
    return math.nan if value is None else float(value)


def _cell(values: list[float]) -> str:
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    if len(values) == 1 or np.std(values) < 5e-4:
        return f"{values[0]:.3f}"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def embedders(run: dict) -> dict[str, dict]:
    """``{embedder: metrics}`` of one region in one file: the model(s), then the baselines."""
    out = {"model": run["model"]}
    if "model_alone" in run:
        out["model (region alone)"] = run["model_alone"]
    return {**out, **{name: run["baselines"][name] for name in BASELINES if name in run["baselines"]}}


def _lead(run: dict, against: str, metric: str) -> dict | None:
    """The model's lead over ``against`` (a bar baseline, or ``"alone"``: R's own model) on one metric, with
    its interval: from ``leads``, or ``lead_over_alone`` in own-region files; None where the file has none."""
    leads = run.get("lead_over_alone") if against == "alone" else (run.get("leads") or {}).get(against)
    return (leads or {}).get(metric)


def _sufficient_cells(results: list[dict], value: Callable[[dict, str], float]) -> Iterator[tuple[dict, str, float]]:
    """(run, metric, value) of each scored region's sufficient bar metrics over the files, where ``value`` of
    the run and metric is a number."""
    for result in results:
        for run in result.values():
            if not run.get("scored"):
                continue
            for metric in BAR:
                number = value(run, metric)
                if metric not in run.get("insufficient", []) and not math.isnan(number):
                    yield run, metric, number


def cells_met(results: list[dict]) -> tuple[int, int, int]:
    """(cells, met, met beyond the noise) of the bar over the files: each scored region's sufficient bar
    metrics; met when the model is ahead of both baselines, beyond the noise when both leads' intervals lie
    above 0 (files without ``leads`` count as not beyond it)."""
    cells = met = clear = 0
    for run, metric, model in _sufficient_cells(results, lambda run, metric: _value(run["model"], metric)):
        cells += 1
        if all(model > _value(run["baselines"][b], metric) for b in BAR_BASELINES):
            met += 1
            leads = [_lead(run, b, metric) for b in BAR_BASELINES]
            clear += all(lead is not None and lead["low"] > 0 for lead in leads)
    return cells, met, clear


def _gap_to_alone(run: dict, metric: str) -> float:
    if "model_alone" not in run:
        return math.nan
    return _value(run["model"], metric) - _value(run["model_alone"], metric)


def own_cells(results: list[dict]) -> tuple[int, int, int]:
    """(cells, no worse, behind beyond the noise) of the own-region question over the files: each region's
    sufficient bar metrics scored with both the model of all regions and R's own model; no worse when the
    model of all regions is at least as good, behind beyond the noise when ``lead_over_alone``'s interval
    lies below 0 (files without it count as not beyond it)."""
    cells = no_worse = behind = 0
    for run, metric, gap in _sufficient_cells(results, _gap_to_alone):
        cells += 1
        no_worse += gap >= 0
        lead = _lead(run, "alone", metric)
        behind += lead is not None and lead["high"] < 0
    return cells, no_worse, behind


def _interval(lead: dict | None) -> str:
    """`` [low, high]`` of a lead whose interval reaches 0 or below (as the docs' tables show it), else ``""``."""
    if not lead or lead["low"] > 0:
        return ""
    return f" [{lead['low']:+.3f}, {lead['high']:+.3f}]"


def _gaps(run: dict, metric: str) -> str:
    """The model minus each bar baseline (and minus R's own model, in own-region files) on one metric, each
    with its interval where it reaches 0; ``n/a`` where a score is missing."""
    model = _value(run["model"], metric)
    others = [(run["baselines"][b], b) for b in BAR_BASELINES]
    if "model_alone" in run:
        others.append((run["model_alone"], "alone"))
    gaps = [(model - _value(other, metric), _lead(run, against, metric)) for other, against in others]
    if any(math.isnan(gap) for gap, _ in gaps):
        return "n/a"
    return " / ".join(f"{gap:+.3f}{_interval(lead)}" for gap, lead in gaps)


def tables(results: list[dict]) -> str:
    regions = list(dict.fromkeys(r for result in results for r, run in result.items() if run.get("scored")))
    head = "| held out | embedder | " + " | ".join(label for _, label in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    bar = ["| held out | " + " | ".join(m for m in BAR) + " |", "|" + "---|" * (len(BAR) + 1)]
    for region in regions:
        runs = [result[region] for result in results if result.get(region, {}).get("scored")]
        flagged = set().union(*(run.get("insufficient", []) for run in runs))
        for i, name in enumerate(embedders(runs[0])):
            cells = []
            for metric, _ in METRICS:
                cell = _cell([_value(embedders(run)[name], metric) for run in runs])
                cells.append(f"{cell} (insufficient)" if metric in flagged and cell != "n/a" else cell)
            lines.append(f"| {region if i == 0 else ''} | {name} | " + " | ".join(cells) + " |")
        per_metric = []
        for metric in BAR:
            seeds = [_gaps(run, metric) for run in runs]
            per_metric.append("; ".join(seeds) + (" (insufficient)" if metric in flagged else ""))
        bar.append(f"| {region} | " + " | ".join(per_metric) + " |")
    against = "untrained / channel statistics" + (
        " / the region alone" if any("model_alone" in r for x in results for r in x.values()) else ""
    )
    cells, met, clear = cells_met(results)
    summary = (
        f"Cells of the bar met: {met} of {cells} (ahead of both baselines; {clear} with both leads' intervals above 0)."
    )
    own, no_worse, behind = own_cells(results)
    if own:
        summary += (
            f" The model of all regions against the region's own model: no worse on {no_worse} of {own} cells,"
            f" behind with the interval of its lead below 0 on {behind}."
        )
    return "\n".join([*lines, "", f"Model minus {against}, per file:", "", *bar, "", summary])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+", help="transfer.json or own-region.json files, one per training seed")
    args = parser.parse_args(argv)
    print(tables([json.loads(Path(f).read_text()) for f in args.files]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
