"""Errors raised by loc2vec for bad input or configuration: each names the problem."""


class Loc2VecError(Exception):
    """Base class of loc2vec's own errors."""


class InputDataError(Loc2VecError):
    """An input file is missing, unreadable, not OSM data, or holds nothing usable."""


class ConfigError(Loc2VecError):
    """A configuration value (region, schema, hyper-parameter) is invalid."""


class NoFeaturesError(InputDataError):
    """A region of an extract holds no feature of the channel schema."""


class CatalogError(ConfigError):
    """The region catalog is malformed (syntax, unknown keys, duplicate names, overlapping regions)."""


class RegionError(CatalogError):
    """One region of the catalog cannot be used; ``region`` and ``fault`` name it and what is wrong."""

    def __init__(self, region: str, fault: str, message: str) -> None:
        super().__init__(f"region {region!r}: {message}")
        self.region = region
        self.fault = fault
        self.detail = message
