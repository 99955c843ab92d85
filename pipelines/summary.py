"""The closing summary of ``make run`` / ``loc2vec run``: metrics, the model, where the outputs are, what next."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table

from loc2vec import tracking
from loc2vec.evaluation.metrics import METRICS
from loc2vec.evaluation.run import MAIN_METRIC
from loc2vec.evaluation.significance import LEAD_METRICS, LEVEL, format_lead
from loc2vec.evaluation.stage import IndexManifest, MapsManifest

CHAMPION = "champion"


def lead_lines(evaluation: dict) -> list[str]:
    """The model's lead over each compared baseline on the bar's metrics with its bootstrap interval
    (``loc2vec.evaluation.significance``), as plain lines; none when the document has no leads."""
    leads = evaluation.get("leads")
    if not leads:
        return []
    names = list(leads)
    width = max(len(m) for m in LEAD_METRICS) + 2
    lines = [f"the model's lead, with its {LEVEL:.0%} interval over resampled test examples (evaluation.json 'leads'):"]
    lines.append(" " * (width + 2) + "".join(f"{'over ' + n:<28}" for n in names).rstrip())
    for metric in LEAD_METRICS:
        text = [format_lead(leads[n].get(metric)) for n in names]
        lines.append(f"  {metric:<{width}}" + "".join(f"{x:<28}" for x in text).rstrip())
    return lines


@dataclass
class RunSummary:
    """What a finished pipeline run produced; ``render`` prints it."""

    evaluation: dict  # the evaluation document: model and baselines metrics, test set sizes
    model_name: str
    model_version: str
    champion_version: str | None
    outputs: list[tuple[str, str]]
    next_commands: list[tuple[str, str]] = field(default_factory=list)
    seconds: float | None = None

    def metrics_table(self) -> Table:
        """Metric rows, one column per embedder; the best image embedder of each row in bold."""
        names = ["model", *self.evaluation["baselines"]]
        by_construction = self.evaluation.get("by_construction", {})
        table = Table(title=f"held-out test blocks (main metric: {MAIN_METRIC})", title_justify="left")
        table.add_column("metric", no_wrap=True)
        for name in names:
            table.add_column(name, justify="right", no_wrap=True)
        support = self.evaluation.get("support", {})
        for metric in METRICS:
            values = {n: self._value(n, metric) for n in names}
            fair = [v for n, v in values.items() if metric not in by_construction.get(n, ()) and not math.isnan(v)]
            best = max(fair) if fair else math.nan
            cells = []
            for name, value in values.items():
                text = "n/a" if math.isnan(value) else f"{value:.3f}"
                if metric in by_construction.get(name, ()):
                    text += "*"
                cells.append(f"[bold]{text}[/bold]" if value == best else text)
            flagged = support.get(metric, {})
            label = f"{metric} (insufficient, n={flagged.get('n')})" if flagged.get("insufficient") else metric
            table.add_row(label, *cells)
        table.caption = (
            "* by construction (ground distance is the coordinates); bold: best of the others; insufficient: "
            "too few test examples to tell embedders apart (evaluation.json, support)"
        )
        table.caption_justify = "left"
        return table

    def _value(self, name: str, metric: str) -> float:
        scores = self.evaluation["model"] if name == "model" else self.evaluation["baselines"][name]
        value = scores.get(metric, math.nan)
        return math.nan if value is None else float(value)

    def champion_text(self) -> str:
        if self.champion_version == self.model_version:
            return f"{self.model_name} version {self.model_version}, now the '{CHAMPION}' (serves `similar`)"
        held = f"version {self.champion_version}" if self.champion_version else "no version"
        return f"{self.model_name} version {self.model_version}; '{CHAMPION}' stays with {held} (it scores better)"

    def print_table(self, console: Console) -> None:
        """The metrics table, never wrapping or cutting a metric name: in a pipe or log the table is as wide
        as it needs to be."""
        table = self.metrics_table()
        natural = Measurement.get(console, console.options.update_width(1000), table).maximum
        saved = console.width
        console.width = max(saved, natural)  # rich never prints wider than its console
        try:
            console.print(table)
        finally:
            console.width = saved
        for line in lead_lines(self.evaluation):
            console.print(line, markup=False)

    def render(self, console: Console) -> None:
        took = "" if self.seconds is None else f" in {self.seconds / 60:.1f} min"
        console.print(f"\n[bold]loc2vec: finished{took}[/bold]")
        test = self.evaluation
        console.print(f"{test['n_test_locations']} test locations, {test['n_test_pois']} test POIs")
        if "seeds" in test:
            console.print(f"means over {test['seeds']['n_seeds']} runs; each run's metrics: evaluation.json 'runs'")
        self.print_table(console)
        console.print(f"model: {self.champion_text()}", markup=False)
        # plain lines, not tables: paths and commands are copied from here and must never be cut or wrapped
        width = max(len(name) for name, _ in self.outputs) + 2
        console.print("outputs:")
        for name, where in self.outputs:
            for k, line in enumerate(where.splitlines()):
                console.print(f"  {(name if k == 0 else ''):<{width}}{line}", markup=False, soft_wrap=True)
        if self.next_commands:
            console.print("next:")
            for command, what in self.next_commands:
                console.print(f"  # {what}\n  {command}", markup=False, soft_wrap=True)


def champion_version(tracking_uri: str, model_name: str) -> str | None:
    holder = tracking.alias_holder(tracking_uri, model_name, CHAMPION)
    return None if holder is None else str(holder.version)


def example_place(index: IndexManifest) -> tuple[float, float]:
    """(lat, lon) of the indexed place nearest the middle of the indexed ones: a query that works."""
    ids = pd.read_parquet(index.ids_path, columns=["lat", "lon"])
    middle = ids[["lat", "lon"]].median().to_numpy()
    nearest = int(np.argmin(((ids[["lat", "lon"]].to_numpy() - middle) ** 2).sum(axis=1)))
    return float(ids["lat"].iloc[nearest]), float(ids["lon"].iloc[nearest])


def summarize(
    main: dg.ExecuteInProcessResult,
    evaluation: dict,
    data_dir: Path,
    instance_home: str | None,
    log_path: Path,
    next_commands: list[tuple[str, str]],
    seconds: float | None = None,
) -> RunSummary:
    """The summary of a pipeline whose last stage was ``main``; ``evaluation`` is its (or a sweep's) document."""
    model = main.output_for_node("trained_model")
    index: IndexManifest = main.output_for_node("similarity_index")
    maps: MapsManifest = main.output_for_node("maps")
    outputs = [
        ("data dir", str(data_dir)),
        ("mosaic (Zarr)", main.output_for_node("raster_mosaic").path),
        ("samples", main.output_for_node("sample_locations").path),
        ("model weights", model.weights_path),
        ("embeddings", main.output_for_node("embeddings").path),
        ("similarity index", index.index_path),
        ("maps", f"{maps.embedding_map}\n{maps.projector}"),
        ("MLflow store", model.tracking_uri),
        ("Dagster instance", instance_home or "(ephemeral)"),
        ("run log", str(log_path)),
    ]
    lat, lon = example_place(index)
    commands = [
        (command.format(lat=f"{lat:.5f}", lon=f"{lon:.5f}", data_dir=data_dir), what) for command, what in next_commands
    ]
    return RunSummary(
        evaluation=evaluation,
        model_name=model.model_name,
        model_version=str(model.model_version),
        champion_version=champion_version(model.tracking_uri, model.model_name),
        outputs=outputs,
        next_commands=commands,
        seconds=seconds,
    )
