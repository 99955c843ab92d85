"""Errors raised by loc2vec for bad input or configuration: each names the problem."""


class Loc2VecError(Exception):
    """Base class of loc2vec's own errors."""


class InputDataError(Loc2VecError):
    """An input file is missing, unreadable, not OSM data, or holds nothing usable."""


class ConfigError(Loc2VecError):
    """A configuration value (region, schema, hyper-parameter) is invalid."""
