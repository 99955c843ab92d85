"""Helpers that turn plain values into Dagster metadata."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import dagster as dg


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> dg.MetadataValue:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def counts_table(counts: Mapping[str, int], name: str = "channel", value: str = "features"):
    return markdown_table([name, value], list(counts.items()))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def osm_time_tags(source) -> dict[str, str]:
    """``osm_sequence``/``osm_timestamp`` of a manifest (features, mosaic, embeddings) that records the
    extract's replication state; empty when the extract records none."""
    if getattr(source, "osm_sequence", None) is None:
        return {}
    return {"osm_sequence": str(source.osm_sequence), "osm_timestamp": str(source.osm_timestamp)}
