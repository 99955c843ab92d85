"""Mapnik styles generated from the channel schema: one style set per channel, sizes in pixels.

Everything is drawn opaque white on a transparent background; the renderer keeps the alpha channel,
so a pixel's value is the share of it covered (antialiased edges give intermediate values).
"""

from __future__ import annotations

import hashlib
from xml.sax.saxutils import escape

import mapnik

from loc2vec.schema import Channel, ChannelSchema

STYLE_VERSION = "1"


def _line_rules(channel: Channel, resolution: float) -> str:
    rules = []
    for value, width_m in sorted(channel.width_m.items()):
        if value == "*":
            continue
        px = max(width_m / resolution, 1.0)
        rules.append(
            f"<Rule><Filter>[value] = '{escape(value.replace(chr(39), ''))}'</Filter>"
            f'<LineSymbolizer stroke="white" stroke-width="{px:.3f}" stroke-linecap="round" '
            f'stroke-linejoin="round"/></Rule>'
        )
    default_px = max(channel.line_width_m("*") / resolution, 1.0)
    rules.append(
        f'<Rule><ElseFilter/><LineSymbolizer stroke="white" stroke-width="{default_px:.3f}" '
        f'stroke-linecap="round" stroke-linejoin="round"/></Rule>'
    )
    return "".join(rules)


def _area_rule(channel: Channel, resolution: float) -> str:
    if channel.area_style == "outline":
        px = max(channel.line_width_m("*") / resolution, 1.0)
        return f'<Rule><LineSymbolizer stroke="white" stroke-width="{px:.3f}"/></Rule>'
    return '<Rule><PolygonSymbolizer fill="white" gamma="1.0"/></Rule>'


def channel_styles_xml(channel: Channel, resolution: float) -> str:
    """Three styles for one channel: ``<name>_area``, ``<name>_line`` and ``<name>_point`` (discs)."""
    return (
        f'<Style name="{channel.name}_area">{_area_rule(channel, resolution)}</Style>'
        f'<Style name="{channel.name}_line">{_line_rules(channel, resolution)}</Style>'
        f'<Style name="{channel.name}_point"><Rule><PolygonSymbolizer fill="white"/></Rule></Style>'
    )


def map_xml(schema: ChannelSchema, resolution: float, srs: str) -> str:
    """The full style document (no layers: data is attached in memory by the renderer)."""
    styles = "".join(channel_styles_xml(c, resolution) for c in schema.channels)
    return f'<Map srs="{srs}" background-color="transparent">{styles}</Map>'


def mapnik_version() -> str:
    """The Mapnik library's version ("4.3.2"): part of the style's identity (rendering may change with it)."""
    return str(mapnik.version_string())


def style_hash(schema: ChannelSchema, resolution: float, srs: str) -> str:
    """Identity of the rendering: a function of the style document and the Mapnik version only, the same
    in every process and on every machine with that Mapnik."""
    text = f"{STYLE_VERSION}|{mapnik_version()}|{map_xml(schema, resolution, srs)}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
