"""The OSM extract the pipeline runs on."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from loc2vec.geo import BBox
from loc2vec.schema import ChannelSchema, load_schema
from resources.paths import DEFAULT_PBF


class OsmSource(dg.ConfigurableResource):
    """An OSM extract (.osm.pbf/.osm/.osm.bz2), an optional region and the channel schema."""

    pbf_path: str = Field(
        default_factory=lambda: os.environ.get("LOC2VEC_PBF", str(DEFAULT_PBF)),
        description="OSM extract to import ($LOC2VEC_PBF; default: the embedded Monaco extract).",
    )
    bbox: str | None = Field(
        default_factory=lambda: os.environ.get("LOC2VEC_BBOX") or None,
        description="Region 'min_lon,min_lat,max_lon,max_lat' ($LOC2VEC_BBOX); default: the extract bounds.",
    )
    schema_path: str | None = Field(
        default_factory=lambda: os.environ.get("LOC2VEC_SCHEMA") or None,
        description="Channel schema JSON ($LOC2VEC_SCHEMA); default: the packaged 12-channel schema.",
    )

    @property
    def path(self) -> Path:
        return Path(self.pbf_path)

    def region(self) -> BBox | None:
        return BBox.parse(self.bbox) if self.bbox else None

    def schema(self) -> ChannelSchema:
        return load_schema(self.schema_path)
