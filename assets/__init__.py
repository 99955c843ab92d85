"""Dagster software-defined assets: thin wiring around loc2vec."""
