"""Dagster resources: typed, configurable wrappers that hand plain values to loc2vec."""

from resources.osm import OsmSource
from resources.regions import RegionCatalog
from resources.render import MapnikRenderer
from resources.storage import ProjectStorage
from resources.torch_device import TorchDevice
from resources.tracking import MlflowTracking

__all__ = ["MapnikRenderer", "MlflowTracking", "OsmSource", "ProjectStorage", "RegionCatalog", "TorchDevice"]
