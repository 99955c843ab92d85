"""The code location on the small Kotka test extract, for tests that run ``dagster`` commands in new processes."""

from pipelines.definitions import build_definitions
from resources import MapnikRenderer, OsmSource
from tests.conftest import KOTKA
from tests.pipelines.test_partitions_per_process import RENDER

defs = build_definitions(OsmSource(pbf_path=str(KOTKA)), renderer=MapnikRenderer(**RENDER))
