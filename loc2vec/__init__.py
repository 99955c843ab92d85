"""loc2vec: location embeddings from OpenStreetMap (domain library, no Dagster imports)."""

__version__ = "0.1.0"
