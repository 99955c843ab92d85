"""The docs' transfer tables from result files: means over seeds, the bar's gaps per seed, flags, own-region rows."""

from __future__ import annotations

import json

from benchmarks.transfer_table import cells_met, main, own_cells, tables

METRIC_NAMES = (
    "landuse_recall_at_10",
    "landuse_balanced_recall_at_10",
    "landuse_probe_macro_f1",
    "poi_presence_macro_auc",
    "triplet_accuracy",
)


def _metrics(value: float, probe: float | None = 0.5) -> dict:
    out = dict.fromkeys(METRIC_NAMES, value)
    out["landuse_probe_macro_f1"] = probe
    return out


def _run(model: float, untrained: float, stats: float, **extra) -> dict:
    baselines = {"untrained": _metrics(untrained), "channel_stats": _metrics(stats), "random": _metrics(0.1)}
    return {"scored": True, "model": _metrics(model), "baselines": baselines, **extra}


def test_means_gaps_and_flags_over_seeds():
    seed0 = {"north": _run(0.6, 0.5, 0.7, insufficient=["poi_presence_macro_auc"]), "small": {"scored": False}}
    seed1 = {"north": _run(0.8, 0.5, 0.7)}
    text = tables([seed0, seed1])
    lines = text.splitlines()
    model_row = next(line for line in lines if line.startswith("| north | model |"))
    assert "0.700 ± 0.100" in model_row  # mean ± std of 0.6 and 0.8
    assert "(insufficient)" in model_row.split("|")[6]  # POI presence, flagged in one seed's protocol
    assert "(insufficient)" not in model_row.split("|")[4]  # balanced recall is not flagged
    assert not any(line.startswith("| small") for line in lines)  # not scored: no rows
    bar = next(line for line in lines if line.startswith("| north |") and "/" in line and "±" not in line)
    # per seed: model - untrained / model - channel stats
    assert bar.split("|")[2].strip() == "+0.100 / -0.100; +0.300 / +0.100"


def test_own_region_files_add_the_region_alone(tmp_path, capsys):
    result = {"north": _run(0.6, 0.5, 0.7, model_alone=_metrics(0.65))}
    path = tmp_path / "own-region.json"
    path.write_text(json.dumps(result))
    assert main([str(path)]) == 0
    text = capsys.readouterr().out
    assert "| | model (region alone) | 0.650 |" in text.replace("|  |", "| |")
    assert "Model minus untrained / channel statistics / the region alone" in text
    assert "+0.100 / -0.100 / -0.050" in text


def test_a_missing_probe_is_na_not_a_number():
    run = _run(0.6, 0.5, 0.7)
    for metrics in (run["model"], *run["baselines"].values()):
        metrics["landuse_probe_macro_f1"] = None
    text = tables([{"north": run}])
    model_row = next(line for line in text.splitlines() if line.startswith("| north | model |"))
    assert model_row.split("|")[5].strip() == "n/a"


def _lead(low: float) -> dict:
    return {"lead": low + 0.01, "low": low, "high": low + 0.02}


def test_cells_of_the_bar_count_sufficient_metrics_ahead_of_both_baselines():
    """Seed 0: ahead of both on every metric, POI presence insufficient (not a cell), both leads' intervals
    above 0 on balanced recall only; seed 1: behind channel statistics everywhere."""
    leads = {
        b: {m: _lead(0.01 if m == "landuse_balanced_recall_at_10" else -0.01) for m in METRIC_NAMES}
        for b in ("untrained", "channel_stats")
    }
    seed0 = {"north": _run(0.8, 0.5, 0.7, insufficient=["poi_presence_macro_auc"], leads=leads)}
    seed0["north"]["model"]["landuse_probe_macro_f1"] = 0.9
    seed1 = {"north": _run(0.6, 0.5, 0.7), "small": {"scored": False}}
    assert cells_met([seed0, seed1]) == (5, 2, 1)
    text = tables([seed0, seed1])
    assert "Cells of the bar met: 2 of 5 (ahead of both baselines; 1 with both" in text
    bar = next(line for line in text.splitlines() if line.startswith("| north |") and "+0.300 / +0.100" in line)
    balanced, probe = (cell.strip() for cell in bar.split("|")[2:4])
    assert balanced == "+0.300 / +0.100; +0.100 / -0.100"  # intervals above 0, and a file without leads
    assert probe == "+0.400 [-0.010, +0.010] / +0.400 [-0.010, +0.010]; +0.000 / +0.000"


def test_own_region_cells_count_no_worse_and_behind_beyond_the_noise():
    """Seed 0 (with lead_over_alone): balanced recall behind with its interval below 0, the probe behind
    within the noise, POI presence ahead; seed 1 (an earlier file, no intervals): behind on everything,
    counted as within the noise; a leave-one-out file (no region-alone model) adds no cell."""
    lead_over_alone = {
        "landuse_balanced_recall_at_10": {"lead": -0.03, "low": -0.05, "high": -0.01},
        "landuse_probe_macro_f1": {"lead": -0.01, "low": -0.04, "high": 0.02},
        "poi_presence_macro_auc": {"lead": 0.02, "low": -0.01, "high": 0.05},
    }
    alone = _metrics(0.63, probe=0.61)
    alone["poi_presence_macro_auc"] = 0.58
    seed0 = {"north": _run(0.6, 0.5, 0.7, model_alone=alone, lead_over_alone=lead_over_alone)}
    seed1 = {"north": _run(0.6, 0.5, 0.7, model_alone=_metrics(0.9, probe=0.9))}
    loo = {"north": _run(0.6, 0.5, 0.7)}
    assert own_cells([seed0, seed1, loo]) == (6, 1, 1)
    assert "no worse on 1 of 6 cells, behind with the interval of its lead below 0 on 1." in tables([seed0, seed1])
    assert "region's own model" not in tables([loo])
