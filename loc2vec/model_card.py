"""What the MLflow UI says about a model: the registered model's and each version's description, as text.

Plain functions of plain values (no MLflow calls): ``loc2vec.tracking`` writes what they return. A version
description is markdown made of ``## `` sections; evaluation and promotion replace their own section.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

EVALUATION = "## Evaluation"
CHAMPION = "## Champion status"

# lineage tags in the order (and with the labels) the version description shows them
LINEAGE_LABELS = {
    "region": "region (extract)",
    "osm_bbox": "bounding box",
    "osm_sha256": "OSM file SHA-256",
    "osm_sequence": "OSM replication sequence",
    "osm_timestamp": "OSM replication timestamp",
    "mosaic_version": "mosaic version",
    "samples_version": "split / sample version",
    "dagster_run_id": "Dagster run",
    "git_commit": "git commit",
}


@dataclass(frozen=True)
class EmbeddingIO:
    """What the registered model takes and gives: a 12-channel crop in, the place embedding out."""

    crop_px: int
    m_per_px: float
    channel_names: tuple[str, ...]
    output_dim: int
    encoder: str
    projection_dim: int

    def input_text(self) -> str:
        ground = self.crop_px * self.m_per_px
        return (
            f"uint8 tensor `(N, {len(self.channel_names)}, {self.crop_px}, {self.crop_px})`: a north-up crop of "
            f"{self.crop_px} px at {self.m_per_px:g} m/px ({ground:g} m square) centred on the place, channels "
            + ", ".join(f"`{c}`" for c in self.channel_names)
        )

    def output_text(self) -> str:
        return (
            f"float32 `(N, {self.output_dim})`: the L2-normalised **{self.output_dim}-d place embedding** "
            "(`Encoder.embed`) that the stored embeddings, the evaluation and the similarity index use "
            f"(not the {self.projection_dim}-d projection the triplet loss trains)"
        )


def model_description(name: str, io: EmbeddingIO) -> str:
    """The registered model's description: what it is, input, output, how to load it."""
    return f"""Place embeddings learnt from OpenStreetMap by loc2vec (triplet training on rasterized OSM).

**Input**: {io.input_text()}. Crop size and m/px are those of the version (see its description).

**Output**: {io.output_text()}. Cosine similarity is the dot product.

**Alias `champion`**: the one current model; evaluation moves it only to a version that scores better.

**Load**:

```python
import mlflow.pytorch, torch
model = mlflow.pytorch.load_model("models:/{name}@champion")
vectors = model(torch.from_numpy(crops))  # crops: uint8 (N, {len(io.channel_names)}, S, S)
```

The {io.projection_dim}-d projection head is not part of the registered model: every version's run holds
`encoder/model.pt`; `loc2vec.models.encoders.load_encoder(path)` rebuilds the whole encoder
(`model(x)`: projection, `model.embed(x)`: this place embedding).
"""


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(_cell(v) for v in row) + " |" for row in rows)])


def version_description(
    io: EmbeddingIO, lineage: Mapping[str, str], training: Mapping[str, object], dagster_run_url: str | None = None
) -> str:
    """A new version's description: what it is, its data lineage and the essentials of its training."""
    rows = []
    for key, label in LINEAGE_LABELS.items():
        if key in lineage:
            value = f"`{lineage[key]}`"
            if key == "dagster_run_id" and dagster_run_url:
                value = f"[{lineage[key]}]({dagster_run_url})"
            rows.append((label, value))
    return "\n\n".join(
        [
            f"`{io.encoder}` place embedding. **Input**: {io.input_text()}. **Output**: {io.output_text()}.",
            "## Data lineage\n\n" + table(["", ""], rows),
            "## Training\n\n" + table(["", ""], list(training.items())),
            f"{EVALUATION}\n\nnot evaluated yet",
        ]
    )


def _number(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.4f}"


def metrics_table(
    metrics: Mapping[str, Mapping[str, float | None]],
    main_metric: str,
    by_construction: Mapping[str, Sequence[str]] | None = None,
) -> str:
    """Metrics (rows) of the model and the baselines (columns); the main metric in bold."""
    names = list(metrics)
    rows = []
    for metric in next(iter(metrics.values())):
        cells = []
        for name in names:
            cell = _number(metrics[name].get(metric))
            if metric in (by_construction or {}).get(name, ()):
                cell += " (by construction)"
            cells.append(cell)
        rows.append([f"**{metric}**" if metric == main_metric else metric, *cells])
    return table(["metric", *names], rows)


def with_section(description: str, heading: str, body: str) -> str:
    """``description`` with the ``heading`` section's body replaced (or the section appended)."""
    sections = description.split("\n\n## ")
    block = f"{heading}\n\n{body}"
    for i, part in enumerate(sections[1:], start=1):
        if f"## {part}".partition("\n")[0] == heading:
            sections[i] = block.removeprefix("## ")
            return "\n\n## ".join(sections)
    return f"{description.rstrip()}\n\n{block}" if description.strip() else block


def section(description: str, heading: str) -> str | None:
    """The body of the ``heading`` section of ``description`` (None when there is none)."""
    for part in description.split("\n\n## ")[1:]:
        title, _, body = f"## {part}".partition("\n\n")
        if title == heading:
            return body
    return None
