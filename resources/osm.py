"""The OSM extract the pipeline runs on."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
from pydantic import Field

from loc2vec.geo import BBox
from loc2vec.osm.files import extract_bounds
from loc2vec.schema import ChannelSchema, load_schema
from resources.paths import DEFAULT_PBF, env_fields


class OsmSource(dg.ConfigurableResource):
    """An OSM extract (.osm.pbf/.osm/.osm.bz2), an optional region and the channel schema."""

    pbf_path: str = Field(
        default=str(DEFAULT_PBF),
        description="OSM extract to import ($LOC2VEC_PBF; default: the embedded Monaco extract).",
    )
    bbox: str | None = Field(
        default=None,
        description="Region 'min_lon,min_lat,max_lon,max_lat' ($LOC2VEC_BBOX); default: the extract bounds.",
    )
    schema_path: str | None = Field(
        default=None,
        description="Channel schema JSON ($LOC2VEC_SCHEMA); default: the packaged 12-channel schema.",
    )
    replication_url: str | None = Field(
        default=None,
        description="OSM replication source ($LOC2VEC_REPLICATION_URL): base URL with state.txt and "
        "AAA/BBB/CCC.osc.gz diffs, or a local directory of that layout. Set: the pipeline imports its own "
        "copy of the extract (<data_dir>/osm/), kept current with the diffs, kept to the region.",
    )
    replication_start: int | None = Field(
        default=None,
        description="Replication sequence the extract corresponds to, when its header records none "
        "($LOC2VEC_REPLICATION_START).",
    )

    @classmethod
    def from_env(cls) -> OsmSource:
        """The source as the environment sets it: ``dg.EnvVar`` for each variable that is set, so the UI
        shows where a value comes from; defaults for the others."""
        text = env_fields(
            {
                "pbf_path": "LOC2VEC_PBF",
                "bbox": "LOC2VEC_BBOX",
                "schema_path": "LOC2VEC_SCHEMA",
                "replication_url": "LOC2VEC_REPLICATION_URL",
            }
        )
        start = os.environ.get("LOC2VEC_REPLICATION_START")
        return cls(**text, **({"replication_start": dg.EnvVar.int("LOC2VEC_REPLICATION_START")} if start else {}))

    @property
    def path(self) -> Path:
        """The configured extract (with a replication source: the copy's starting point)."""
        return Path(self.pbf_path)

    def extract(self, data_dir: str | Path) -> Path:
        """The extract the pipeline imports: the configured file, or with a replication source the
        project's copy of it in ``<data_dir>/osm/`` (created from the file by the first update)."""
        return Path(data_dir) / "osm" / self.path.name if self.replication_url else self.path

    def region(self) -> BBox | None:
        return BBox.parse(self.bbox) if self.bbox else None

    def followed_region(self) -> BBox:
        """The region replication diffs are kept to: the configured bbox, else the extract's bounds."""
        return self.region() or extract_bounds(self.path)

    def schema(self) -> ChannelSchema:
        return load_schema(self.schema_path)
