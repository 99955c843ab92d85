"""Dagster resources: typed, configurable wrappers that hand plain values to loc2vec."""

from resources.osm import OsmSource
from resources.render import MapnikRenderer
from resources.storage import ProjectStorage

__all__ = ["MapnikRenderer", "OsmSource", "ProjectStorage"]
