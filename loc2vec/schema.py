"""The channel schema: one declaration of what each raster channel holds, used by import, render and docs.

A schema is JSON (see ``default_channels.json``)::

    {"name": ..., "channels": [{"name", "description", "rules": [{"key", "values"?, "exclude"?,
     "geometry"}], "width_m"?, "point_radius_m"?, "area_style"?}, ...]}

A feature belongs to every channel with a rule whose key is among its tags, whose value is in
``values`` (any value when absent) and not in ``exclude``, and whose ``geometry`` lists the feature's
kind (point, line or area). Unknown fields or kinds are refused, so typos fail loudly.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from loc2vec.errors import ConfigError

GEOMETRY_KINDS = ("point", "line", "area")
AREA_STYLES = ("fill", "outline")
_RULE_FIELDS = {"key", "values", "exclude", "geometry"}
_CHANNEL_FIELDS = {"name", "description", "rules", "width_m", "point_radius_m", "area_style"}
_SCHEMA_FIELDS = {"name", "description", "channels"}


@dataclass(frozen=True)
class TagRule:
    """One tag filter: ``key`` with optional allowed/excluded values, for some geometry kinds."""

    key: str
    geometry: tuple[str, ...]
    values: frozenset[str] | None = None
    exclude: frozenset[str] = frozenset()

    def matches(self, value: str, kind: str) -> bool:
        if kind not in self.geometry or value in self.exclude:
            return False
        return self.values is None or value in self.values


@dataclass(frozen=True)
class Channel:
    """One raster channel: its name, tag rules and drawing parameters (in metres on the ground)."""

    name: str
    description: str
    rules: tuple[TagRule, ...]
    width_m: Mapping[str, float] = field(default_factory=lambda: {"*": 3.0})
    point_radius_m: float = 5.0
    area_style: str = "fill"

    def line_width_m(self, value: str) -> float:
        return float(self.width_m.get(value, self.width_m.get("*", 3.0)))

    def match(self, tags: Mapping[str, str], kind: str) -> tuple[str, str] | None:
        """The first ``(key, value)`` of ``tags`` that a rule of this channel accepts for ``kind``."""
        for rule in self.rules:
            value = tags.get(rule.key)
            if value is not None and rule.matches(value, kind):
                return rule.key, value
        return None


@dataclass(frozen=True)
class ChannelSchema:
    """An ordered set of channels; the order is the raster's channel axis."""

    name: str
    channels: tuple[Channel, ...]
    source: Mapping[str, Any]

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.channels]

    @property
    def keys(self) -> list[str]:
        """Every tag key any rule looks at (for C++-side pre-filtering)."""
        return sorted({r.key for c in self.channels for r in c.rules})

    def keys_for(self, kind: str) -> list[str]:
        return sorted({r.key for c in self.channels for r in c.rules if kind in r.geometry})

    def classify(self, tags: Mapping[str, str], kind: str) -> list[tuple[int, str, str]]:
        """``(channel index, key, value)`` for every channel that accepts a feature of ``kind``."""
        out = []
        for index, channel in enumerate(self.channels):
            hit = channel.match(tags, kind)
            if hit is not None:
                out.append((index, *hit))
        return out

    def digest(self) -> str:
        """A short content hash of the schema (part of every raster's version)."""
        text = json.dumps(self.source, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def to_json(self) -> str:
        return json.dumps(self.source, indent=2, sort_keys=True)


def _unknown(found: Iterable[str], allowed: set[str], where: str) -> None:
    extra = sorted(set(found) - allowed)
    if extra:
        raise ConfigError(f"unknown channel-schema entry {extra} in {where}; allowed fields: {sorted(allowed)}")


def _parse_rule(raw: Mapping[str, Any], where: str) -> TagRule:
    if not isinstance(raw, Mapping):
        raise ConfigError(f"channel-schema rule in {where} must be an object, got {raw!r}")
    _unknown(raw, _RULE_FIELDS, where)
    if not isinstance(raw.get("key"), str) or not raw["key"]:
        raise ConfigError(f"channel-schema rule in {where} needs a non-empty 'key'")
    geometry = tuple(raw.get("geometry", GEOMETRY_KINDS))
    bad = [g for g in geometry if g not in GEOMETRY_KINDS]
    if bad or not geometry:
        raise ConfigError(
            f"unknown geometry kind {bad} in {where} (rule key={raw['key']!r}); use {list(GEOMETRY_KINDS)}"
        )
    values = raw.get("values")
    return TagRule(
        key=raw["key"],
        geometry=geometry,
        values=frozenset(map(str, values)) if values is not None else None,
        exclude=frozenset(map(str, raw.get("exclude", ()))),
    )


def _parse_channel(raw: Mapping[str, Any], index: int) -> Channel:
    where = f"channel #{index} ({raw.get('name', '?')!r})" if isinstance(raw, Mapping) else f"#{index}"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"channel {where} must be an object")
    _unknown(raw, _CHANNEL_FIELDS, where)
    if not isinstance(raw.get("name"), str) or not raw["name"].isidentifier():
        raise ConfigError(f"channel {where} needs a 'name' that is an identifier")
    rules = raw.get("rules")
    if not rules:
        raise ConfigError(f"channel {where} has no rules")
    area_style = raw.get("area_style", "fill")
    if area_style not in AREA_STYLES:
        raise ConfigError(f"unknown area_style {area_style!r} in {where}; use {list(AREA_STYLES)}")
    width_m = {str(k): float(v) for k, v in raw.get("width_m", {"*": 3.0}).items()}
    radius = float(raw.get("point_radius_m", 5.0))
    if any(w <= 0 for w in width_m.values()) or radius <= 0:
        raise ConfigError(f"widths and radii must be positive in {where}")
    return Channel(
        name=raw["name"],
        description=str(raw.get("description", "")),
        rules=tuple(_parse_rule(r, where) for r in rules),
        width_m=width_m,
        point_radius_m=radius,
        area_style=area_style,
    )


def parse_schema(raw: Mapping[str, Any]) -> ChannelSchema:
    """Validate and build a schema from its JSON form; raises ConfigError naming the bad entry."""
    if not isinstance(raw, Mapping):
        raise ConfigError("a channel schema must be a JSON object")
    _unknown(raw, _SCHEMA_FIELDS, "the schema")
    channels = tuple(_parse_channel(c, i) for i, c in enumerate(raw.get("channels") or []))
    if not channels:
        raise ConfigError("the channel schema declares no channels")
    names = [c.name for c in channels]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate channel names in the schema: {names}")
    return ChannelSchema(name=str(raw.get("name", "custom")), channels=channels, source=dict(raw))


def load_schema(path: str | Path | None = None) -> ChannelSchema:
    """Load a schema file, or the packaged default when ``path`` is None."""
    if path is None:
        text = resources.files("loc2vec").joinpath("default_channels.json").read_text()
        where = "default_channels.json"
    else:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"channel schema file not found: {p}")
        text, where = p.read_text(), str(p)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"channel schema {where} is not valid JSON: {exc}") from exc
    return parse_schema(raw)
