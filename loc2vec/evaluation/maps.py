"""The evaluation's pages as self-contained HTML files that work offline.

* :func:`embedding_map`: a Leaflet map (built with folium) of the region, one circle marker per location
  coloured by its k-means cluster, a legend with cluster ids and counts, and a popup with the location's
  channels, each labelled, and their composite.
* :func:`similar_map`: a similarity query and its results, ranked, with embedding and ground distances.
* :func:`projector`: a plotly scatter of the embeddings projected to 2-D, with a menu switching between
  PCA, UMAP and t-SNE, points coloured by label; hovering a point shows its tile beside the plot.

Both maps share :func:`leaflet_page`; their base layer is the region's own rendered composite
(:func:`region_base_layer`), warped into Web Mercator and embedded as an image overlay. No page fetches
anything at run time: Leaflet 1.9.4 (BSD-2-Clause, vendored in ``static/leaflet``) and plotly.js are
inlined, pictures are ``data:`` URIs and a map has no tile layer unless one is asked for. All carry the
OpenStreetMap attribution of the data they are rendered from."""

from __future__ import annotations

import base64
import html
import json
import re
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from loc2vec.errors import ConfigError
from loc2vec.io import atomic_path

STATIC = Path(__file__).with_name("static")
LEAFLET_DIR = STATIC / "leaflet"
OSM_ATTRIBUTION = "© OpenStreetMap contributors"
OSM_COPYRIGHT_URL = "https://www.openstreetmap.org/copyright"
OSM_ATTRIBUTION_HTML = f'<a href="{OSM_COPYRIGHT_URL}">{OSM_ATTRIBUTION}</a>'

TABLEAU10 = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
PROJECTIONS = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}

POPUP_MIN_PX = 128  # previews narrower than this are shown enlarged by an integer factor in the popup
POPUP_TILE_PX = 48  # a channel tile in a popup; the composite is shown 3x as large
POPUP_COLUMNS = 4
EARTH_RADIUS = 6378137.0  # metres: the sphere of Web Mercator (EPSG:3857)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# <script src="http..."> and <link href="http..."> (any attribute order): things a page would fetch.
_EXTERNAL_ASSET = re.compile(
    r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//[^>]*>|<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//[^>]*>",
    re.IGNORECASE,
)


def hex_rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def srgb_to_lab(rgb) -> np.ndarray:
    """``(..., 3)`` sRGB 0-255 -> CIELAB (D65): Euclidean distance there is CIE76 delta E."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    m = np.array([[0.4124, 0.3576, 0.1805], [0.2126, 0.7152, 0.0722], [0.0193, 0.1192, 0.9505]])
    xyz = linear @ m.T / np.array([0.95047, 1.0, 1.08883])
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


@cache
def _palette(n: int) -> tuple[str, ...]:
    chosen = [srgb_to_lab(hex_rgb(c)) for c in TABLEAU10[:n]]
    levels = np.arange(0, 256, 17)
    candidates = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = srgb_to_lab(candidates)
    usable = (lab[:, 0] >= 35) & (lab[:, 0] <= 85)  # neither near-black nor near-white: legible on white and map
    candidates, lab = candidates[usable], lab[usable]
    colors = list(TABLEAU10[:n])
    nearest = np.full(len(lab), np.inf)
    for c in chosen:
        nearest = np.minimum(nearest, np.linalg.norm(lab - c, axis=1))
    while len(colors) < n:
        k = int(np.argmax(nearest))  # farthest from every colour so far (first of ties: deterministic)
        colors.append("#" + "".join(f"{int(v):02x}" for v in candidates[k]))
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[k], axis=1))
    return tuple(colors)


def categorical_colors(n: int) -> list[str]:
    """``n`` distinct colours (hex): Tableau 10, then each next colour the one farthest in CIELAB from all
    before it (lightness 35-85), so no two are alike: the minimum CIE76 distance stays large as ``n`` grows."""
    return list(_palette(n))


def png_data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_size(png: bytes) -> tuple[int, int]:
    """``(width, height)`` from a PNG's header; refuses anything that is not a PNG."""
    if not isinstance(png, bytes | bytearray | memoryview) or bytes(png[:8]) != _PNG_SIGNATURE or len(png) < 24:
        raise ConfigError("previews/thumbnails must be PNG bytes (e.g. loc2vec.preview.png_bytes)")
    return struct.unpack(">II", bytes(png[16:24]))


def external_assets(page: str) -> list[str]:
    """The ``<script src>`` / ``<link href>`` tags of ``page`` that point at another host (should be none)."""
    return _EXTERNAL_ASSET.findall(page)


def _js_string(text: str) -> str:
    """A JavaScript string literal that is safe inside ``<script>`` and keeps non-ASCII text readable."""
    return json.dumps(text, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _inline_script(js: str) -> str:
    return "<script>" + js.replace("</script", "<\\/script") + "</script>"


def _inline_style(css: str) -> str:
    return "<style>" + css.replace("</style", "<\\/style") + "</style>"


@cache
def leaflet_assets() -> tuple[str, str]:
    """The vendored Leaflet ``(js, css)``, the CSS's images turned into ``data:`` URIs."""
    js = (LEAFLET_DIR / "leaflet.js").read_text(encoding="utf-8")
    css = (LEAFLET_DIR / "leaflet.css").read_text(encoding="utf-8")

    def data_uri(match: re.Match) -> str:
        image = LEAFLET_DIR / match.group(1)
        return f"url({png_data_uri(image.read_bytes())})" if image.is_file() else match.group(0)

    return js, re.sub(r"url\((images/[\w.-]+\.png)\)", data_uri, css)


def _write_page(page: str, out_path: str | Path) -> Path:
    leftover = external_assets(page)
    if leftover:
        raise RuntimeError(f"page would fetch external assets at run time: {leftover}")
    with atomic_path(out_path) as tmp:
        tmp.write_text(page, encoding="utf-8")
    return Path(out_path)


def _check_lengths(n: int, **arrays) -> None:
    for name, value in arrays.items():
        if len(value) != n:
            raise ConfigError(f"{name} has {len(value)} entries, expected {n} (one per location)")


# --------------------------------------------------------------------------------------------- the map


@dataclass(frozen=True)
class BaseLayer:
    """A picture of the region in Web Mercator (PNG, transparent outside the region) and its WGS84
    ``bounds`` ``((south, west), (north, east))``: Leaflet stretches it linearly between them."""

    png: bytes
    bounds: tuple[tuple[float, float], tuple[float, float]]


@dataclass(frozen=True)
class Marker:
    """One point of a map page: where, how it looks and what its tooltip and popup say (HTML)."""

    lat: float
    lon: float
    fill: str
    tooltip: str
    popup: str
    popup_width: int = 300
    radius: float = 5.0
    stroke: str = "#222222"
    weight: float = 1.0
    label: str | None = None  # a permanent label beside the marker (e.g. a rank)


def _mercator(lon, lat):
    """WGS84 degrees -> Web Mercator metres (EPSG:3857, as Leaflet's default CRS)."""
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    return np.radians(lon) * EARTH_RADIUS, np.log(np.tan(np.pi / 4 + np.radians(lat) / 2)) * EARTH_RADIUS


def _mercator_inverse(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return np.degrees(x / EARTH_RADIUS), np.degrees(2 * np.arctan(np.exp(y / EARTH_RADIUS)) - np.pi / 2)


def warp_to_mercator(image: np.ndarray, grid, step: int) -> tuple[np.ndarray, tuple[tuple[float, float], ...]]:
    """Resample ``image`` (``(h, w, 4)`` RGBA over ``grid`` at ``step`` mosaic px per pixel) into Web
    Mercator: every output pixel centre is mapped back into the grid (nearest pixel; transparent outside).
    Returns the picture and its WGS84 bounds ``((south, west), (north, east))``."""
    from pyproj import Transformer

    h, w = image.shape[:2]
    t = np.linspace(0.0, 1.0, 65)
    cols = np.concatenate([t * grid.width, t * grid.width, np.zeros_like(t), np.full_like(t, grid.width)])
    rows = np.concatenate([np.zeros_like(t), np.full_like(t, grid.height), t * grid.height, t * grid.height])
    mx, my = _mercator(*grid.pixel_to_lonlat(cols, rows))
    x0, x1, y0, y1 = mx.min(), mx.max(), my.min(), my.max()
    size = max(x1 - x0, y1 - y0) / max(h, w)  # metres per output pixel: about the overview's pixel count
    out_w, out_h = max(1, round((x1 - x0) / size)), max(1, round((y1 - y0) / size))
    xs = x0 + (np.arange(out_w) + 0.5) * (x1 - x0) / out_w
    ys = y1 - (np.arange(out_h) + 0.5) * (y1 - y0) / out_h
    gx, gy = np.meshgrid(xs, ys)
    to_grid = Transformer.from_crs("EPSG:3857", grid.crs, always_xy=True)
    col, row = grid.xy_to_pixel(*to_grid.transform(gx, gy))
    col, row = np.floor(col / step).astype(np.int64), np.floor(row / step).astype(np.int64)
    ok = (col >= 0) & (col < w) & (row >= 0) & (row < h)
    out = np.zeros((out_h, out_w, image.shape[2]), np.uint8)
    out[ok] = image[row[ok], col[ok]]
    (west, east), (south, north) = _mercator_inverse([x0, x1], [y0, y1])
    return out, ((float(south), float(west)), (float(north), float(east)))


def region_base_layer(mosaic_path: str | Path, max_px: int = 2048) -> BaseLayer:
    """The mosaic's composite (light land, blue water and sea) as a Web Mercator :class:`BaseLayer`."""
    from loc2vec.preview import composite, overview, overview_step, png_bytes, region_inside
    from loc2vec.store.mosaic import open_mosaic

    store = open_mosaic(mosaic_path)
    grid, step = store.grid, overview_step(store.grid, max_px)
    inside = region_inside(grid, step)
    rgb = composite(overview(store, max_px), list(store.attrs["channel_names"]), inside=inside)
    rgba = np.dstack([rgb, np.where(inside, 255, 0).astype(np.uint8)])
    picture, bounds = warp_to_mercator(rgba, grid, step)
    return BaseLayer(png_bytes(picture), bounds)


def _check_points(lon, lat) -> tuple[np.ndarray, np.ndarray]:
    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    if lon.shape[0] == 0:
        raise ConfigError("a map needs at least one location")
    _check_lengths(lon.shape[0], lat=lat)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ConfigError("lon/lat must be finite")
    if (np.abs(lat) > 90).any() or (np.abs(lon) > 180).any():
        raise ConfigError("lon/lat must be WGS84 degrees (|lon| <= 180, |lat| <= 90)")
    return lon, lat


def popup_picture(png: bytes, channel_names: Sequence[str] | None, alt: str) -> tuple[str, int]:
    """The popup's picture as HTML and its width in px.

    Without ``channel_names`` the PNG is shown as it is (enlarged when small). With them, it is a strip of
    ``len(channel_names) + 1`` square tiles (:func:`loc2vec.preview.channel_strip`): the composite is shown
    large and the channels in a 4-column grid, each tile labelled with its channel's full name. The PNG is
    embedded once, as a CSS variable the tiles take their part of.
    """
    width, height = png_size(png)
    uri = png_data_uri(png)
    if channel_names is None:
        scale = max(1, POPUP_MIN_PX // width)  # small previews are enlarged, pixel for pixel
        w, h = width * scale, height * scale
        return f'<img src="{uri}" width="{w}" height="{h}" alt="{html.escape(alt)}">', w
    n = len(channel_names) + 1
    if width != n * height:
        raise ConfigError(f"a channel strip of {n} tiles must be {n * height} x {height} px, got {width} x {height}")
    tile, big = POPUP_TILE_PX, POPUP_TILE_PX * 3

    def part(j: int, size: int, cls: str) -> str:
        return (
            f'<i class="{cls}" style="width:{size}px;height:{size}px;background-size:{n * size}px {size}px;'
            f'background-position:-{j * size}px 0"></i>'
        )

    tiles = "".join(
        f'<figure class="l2v-tile">{part(j, tile, "l2v-part")}<figcaption>{_breakable(name)}</figcaption></figure>'
        for j, name in enumerate(channel_names)
    )
    grid_w = POPUP_COLUMNS * 76  # .l2v-tile's width
    picture = (
        f'<div class="l2v-picture" role="img" aria-label="{html.escape(alt)}" style="--l2v-strip:url({uri})">'
        f'<figure class="l2v-tile l2v-composite">{part(n - 1, big, "l2v-part")}<figcaption>composite</figcaption>'
        f'</figure><div class="l2v-grid" style="width:{grid_w}px">{tiles}</div></div>'
    )
    return picture, big + grid_w + 16


def _script_element(code: str):
    """A folium element appending ``code`` to its parent's Leaflet variable (e.g. ``.bindPopup(...)``)."""
    from branca.element import MacroElement
    from folium.template import Template

    element = MacroElement()
    element._name = "Loc2vecScript"
    element._template = Template(
        "{% macro script(this, kwargs) %}{{ this._parent.get_name() }}{{ this.code }}{% endmacro %}"
    )
    element.code = code
    return element


def leaflet_page(
    markers: Sequence[Marker],
    legend: str,
    out_path: str | Path,
    title: str,
    *,
    base_layer: BaseLayer | None = None,
    tiles: str | None = None,
    tiles_attr: str | None = None,
) -> Path:
    """Write a self-contained Leaflet page: the optional ``base_layer`` (an image overlay, embedded) and
    ``tiles``, one circle marker per :class:`Marker`, ``legend`` (HTML) in a box, fitted to the markers."""
    import folium
    from branca.element import Element

    lat = np.array([m.lat for m in markers])
    lon = np.array([m.lon for m in markers])
    fmap = folium.Map(location=[float(lat.mean()), float(lon.mean())], zoom_start=13, tiles=None, control_scale=True)
    # No CDN links: Leaflet is inlined below and folium's other defaults (jQuery, Bootstrap, awesome-markers)
    # are not used by circle markers, tooltips and string popups. Instance attributes, so folium's
    # module-level lists stay untouched.
    fmap.default_js = []
    fmap.default_css = []
    if tiles:
        folium.TileLayer(tiles=tiles, attr=tiles_attr or OSM_ATTRIBUTION_HTML, name="tiles").add_to(fmap)
    if base_layer is not None:
        bounds = [list(base_layer.bounds[0]), list(base_layer.bounds[1])]
        options = {"opacity": 1.0, "interactive": False, "className": "l2v-base", "alt": "rendered region"}
        code = (
            f"L.imageOverlay({_js_string(png_data_uri(base_layer.png))}, {json.dumps(bounds)}, {json.dumps(options)})"
        )
        fmap.add_child(_script_element(f";\nvar {fmap.get_name()}_base = {code}.addTo({fmap.get_name()});"))
    fmap.add_child(_script_element(f".attributionControl.addAttribution({_js_string(OSM_ATTRIBUTION_HTML)});"))

    root = fmap.get_root()
    root.title = html.escape(title)
    js, css = leaflet_assets()
    root.header.add_child(Element(_inline_style(css) + _inline_script(js)), name="leaflet_inline")
    root.header.add_child(Element(_inline_style(_MAP_CSS)), name="loc2vec_map_css")

    points = folium.FeatureGroup(name="locations").add_to(fmap)
    for m in markers:
        marker = folium.CircleMarker(
            location=[m.lat, m.lon],
            radius=m.radius,
            color=m.stroke,
            weight=m.weight,
            fill=True,
            fill_color=m.fill,
            fill_opacity=0.9,
        )
        tip = {"permanent": True, "direction": "right", "className": "l2v-label"} if m.label else {}
        options = json.dumps({"maxWidth": max(300, m.popup_width + 40), "minWidth": min(m.popup_width, 300)})
        marker.add_child(_script_element(f".bindPopup({_js_string(m.popup)}, {options});"))
        marker.add_child(_script_element(f".bindTooltip({_js_string(m.label or m.tooltip)}, {json.dumps(tip)});"))
        marker.add_to(points)
    # a switch for each layer, so the region under the points can be seen
    overlays = {"locations": points.get_name()}
    if base_layer is not None:
        overlays = {"rendered region (OSM)": f"{fmap.get_name()}_base", **overlays}
    entries = ", ".join(f"{_js_string(label)}: {var}" for label, var in overlays.items())
    points.add_child(
        _script_element(
            f";\nL.control.layers(null, {{{entries}}}, {{collapsed: false, position: 'topleft'}})"
            f".addTo({fmap.get_name()});"
        )
    )

    pad = 0.0005  # degrees: a single point (or a line of points) still gets a sensible view
    fmap.fit_bounds(
        [[float(lat.min()) - pad, float(lon.min()) - pad], [float(lat.max()) + pad, float(lon.max()) + pad]],
        padding=(20, 20),
        max_zoom=18,
    )
    box = (
        f'<div id="l2v-legend" class="l2v-legend"><div class="l2v-title">{html.escape(title)}</div>{legend}'
        f'<div class="l2v-attr">Map data {OSM_ATTRIBUTION_HTML}</div></div>'
    )
    root.html.add_child(Element(box), name="loc2vec_legend")
    return _write_page(root.render(), out_path)


def _breakable(name: str) -> str:
    """``name`` as HTML that may wrap after ``_`` (channel names are snake_case)."""
    return html.escape(name).replace("_", "_<wbr>")


def _swatch(color: str, cls: str = "l2v-swatch") -> str:
    return f'<span class="{cls}" style="background:{color}"></span>'


def embedding_map(
    lon,
    lat,
    clusters,
    previews: Sequence[bytes],
    out_path: str | Path,
    title: str = "Location embeddings: k-means clusters",
    *,
    channel_names: Sequence[str] | None = None,
    base_layer: BaseLayer | None = None,
    tiles: str | None = None,
    tiles_attr: str | None = None,
    radius: float = 5.0,
) -> Path:
    """Write a self-contained Leaflet map of the locations, coloured by cluster, to ``out_path``.

    ``lon``/``lat`` are WGS84 degrees, ``clusters`` integer cluster ids and ``previews[i]`` the PNG bytes
    of location ``i``'s picture, shown in the popup of its marker (a channel strip, labelled, when
    ``channel_names`` are given: see :func:`popup_picture`). ``base_layer`` (e.g. :func:`region_base_layer`)
    is drawn under the points; ``tiles`` is an optional tile URL (or folium tile name) for a background
    fetched from the network. The legend lists cluster ids and counts.
    """
    lon, lat = _check_points(lon, lat)
    clusters = np.asarray(clusters).reshape(-1)
    n = lon.shape[0]
    _check_lengths(n, clusters=clusters, previews=previews)
    if not np.issubdtype(clusters.dtype, np.integer):
        if not np.array_equal(clusters, np.round(clusters)):
            raise ConfigError(f"clusters must be integer ids, got {clusters.dtype}")
        clusters = clusters.astype(np.int64)

    ids, counts = np.unique(clusters, return_counts=True)
    color_of = dict(zip(ids.tolist(), categorical_colors(len(ids)), strict=True))
    markers = []
    for i in range(n):
        cid = int(clusters[i])
        picture, width = popup_picture(previews[i], channel_names, f"preview of location {i}")
        popup = (
            f'<div class="l2v-popup"><div class="l2v-head">location {i} · cluster {cid} · '
            f"{lat[i]:.5f}, {lon[i]:.5f}</div>{picture}</div>"
        )
        markers.append(Marker(float(lat[i]), float(lon[i]), color_of[cid], f"cluster {cid}", popup, width, radius))
    rows = "".join(
        f'<tr><td>{_swatch(color_of[c])}</td><td class="l2v-num">{c}</td><td class="l2v-num">{k}</td></tr>'
        for c, k in zip(ids.tolist(), counts.tolist(), strict=True)
    )
    legend = (
        f"<div>{n} locations, {len(ids)} clusters</div>"
        f"<table><thead><tr><th></th><th>cluster</th><th>count</th></tr></thead><tbody>{rows}</tbody></table>"
    )
    return leaflet_page(markers, legend, out_path, title, base_layer=base_layer, tiles=tiles, tiles_attr=tiles_attr)


QUERY_COLOR = "#ffffff"
RESULT_COLOR = "#d62728"


def similar_map(
    query: tuple[float, float],
    found,
    previews: Sequence[bytes],
    out_path: str | Path,
    title: str,
    *,
    channel_names: Sequence[str] | None = None,
    base_layer: BaseLayer | None = None,
) -> Path:
    """Write the map of a similarity query: the query ``(lat, lon)`` as a large white marker and each row
    of ``found`` (columns ``rank``, ``lat``, ``lon``, ``embedding_distance``, ``ground_km``, optionally
    ``kind``/``landuse_class``) labelled with its rank; tooltips, popups and the legend's table give the
    embedding and ground distances. ``previews``: the query's picture first, then one per row."""
    _check_lengths(len(found) + 1, previews=previews)
    q_lat, q_lon = query
    _check_points([q_lon, *found["lon"]], [q_lat, *found["lat"]])
    picture, width = popup_picture(previews[0], channel_names, "preview of the query")
    head = f"query · {q_lat:.5f}, {q_lon:.5f}"
    markers = [
        Marker(
            q_lat,
            q_lon,
            QUERY_COLOR,
            head,
            f'<div class="l2v-popup"><div class="l2v-head">{head}</div>{picture}</div>',
            width,
            radius=10,
            stroke="#000000",
            weight=4,
            label="query",
        )
    ]
    rows = [
        f'<tr class="l2v-query"><td>{_swatch(QUERY_COLOR, "l2v-swatch l2v-swatch-query")}</td><td>query</td>'
        f'<td class="l2v-num">—</td><td class="l2v-num">0.000</td><td>{q_lat:.5f}, {q_lon:.5f}</td></tr>'
    ]
    for i, row in enumerate(found.itertuples(index=False), start=1):
        what = " · ".join(str(v) for v in (getattr(row, "kind", ""), getattr(row, "landuse_class", "")) if v)
        text = f"rank {row.rank} · embedding distance {row.embedding_distance:.4f} · {row.ground_km:.3f} km away"
        picture, width = popup_picture(previews[i], channel_names, f"preview of rank {row.rank}")
        popup = (
            f'<div class="l2v-popup"><div class="l2v-head">{html.escape(text)}<br>{row.lat:.5f}, {row.lon:.5f}'
            f"{' · ' + html.escape(what) if what else ''}</div>{picture}</div>"
        )
        markers.append(Marker(float(row.lat), float(row.lon), RESULT_COLOR, text, popup, width, 7, label=str(row.rank)))
        rows.append(
            f'<tr><td>{_swatch(RESULT_COLOR)}</td><td class="l2v-num">{row.rank}</td>'
            f'<td class="l2v-num">{row.embedding_distance:.4f}</td><td class="l2v-num">{row.ground_km:.3f}</td>'
            f"<td>{html.escape(what)}</td></tr>"
        )
    legend = (
        f"<div>query and {len(found)} most similar places</div><table><thead><tr><th></th><th>rank</th>"
        "<th>embedding distance</th><th>ground km</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )
    return leaflet_page(markers, legend, out_path, title, base_layer=base_layer)


_MAP_CSS = """
.leaflet-container { background: #eef0f2; }
.l2v-base { image-rendering: auto; }
.l2v-legend { position: fixed; top: 10px; right: 10px; z-index: 1000; max-height: 80vh; overflow: auto;
  background: rgba(255,255,255,0.93); padding: 8px 10px; border-radius: 4px; box-shadow: 0 1px 5px rgba(0,0,0,0.4);
  font: 12px/1.4 "Helvetica Neue", Arial, sans-serif; }
.l2v-legend .l2v-title { font-weight: bold; margin-bottom: 2px; }
.l2v-legend table { border-collapse: collapse; margin-top: 4px; }
.l2v-legend th { font-weight: normal; color: #555; padding: 0 6px; text-align: right; }
.l2v-legend td { padding: 1px 6px; }
.l2v-legend .l2v-num { text-align: right; font-variant-numeric: tabular-nums; }
.l2v-swatch { display: inline-block; width: 12px; height: 12px; border-radius: 50%; border: 1px solid #222; }
.l2v-swatch-query { width: 14px; height: 14px; border: 3px solid #000; box-sizing: border-box; }
.l2v-legend .l2v-attr { margin-top: 6px; color: #555; }
.l2v-label { font: bold 12px/1.2 "Helvetica Neue", Arial, sans-serif; padding: 1px 4px; }
.l2v-popup { font: 12px/1.4 "Helvetica Neue", Arial, sans-serif; }
.l2v-popup .l2v-head { margin-bottom: 6px; }
.l2v-popup > img { display: block; image-rendering: pixelated; }
.l2v-picture { display: flex; align-items: flex-start; gap: 12px; }
.l2v-grid { display: flex; flex-wrap: wrap; }
.l2v-tile { margin: 0; padding: 0 0 4px; width: 76px; text-align: center; }
.l2v-tile figcaption { font-size: 11px; line-height: 1.2; width: 100%; overflow-wrap: anywhere; color: #222; }
.l2v-tile.l2v-composite { width: auto; }
.l2v-composite figcaption { font-weight: bold; }
.l2v-part { display: block; margin: 0 auto 2px; background-image: var(--l2v-strip); background-repeat: no-repeat;
  image-rendering: pixelated; outline: 1px solid #aaa; }
"""


# ---------------------------------------------------------------------------------------- the projector


def _umap_class():
    """``umap.UMAP``, or ``None`` when umap-learn is not installed or does not import."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from umap import UMAP
    except Exception:
        return None
    return UMAP


TSNE_ITERATIONS = 500


def project(embeddings: np.ndarray, method: str, seed: int = 0) -> np.ndarray:
    """``(N, D)`` embeddings -> ``(N, 2)`` with PCA, UMAP or t-SNE, seeded with ``seed``."""
    x = np.asarray(embeddings, dtype=np.float32)
    n = x.shape[0]
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
        # 500 iterations (250 of them early exaggeration) from the PCA start: the layout of a few hundred
        # points has settled by then, at half the default's time
        tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", max_iter=TSNE_ITERATIONS, random_state=seed)
        return tsne.fit_transform(x)
    if method == "umap":
        umap_cls = _umap_class()
        if umap_cls is None:
            raise ConfigError("UMAP needs the umap-learn package (pip install umap-learn)")
        from sklearn.neighbors import NearestNeighbors

        # The exact neighbours (each point its own first, as UMAP's own search gives them) from scikit-learn:
        # UMAP's search would JIT-compile first, about 40 % of its first fit in a process.
        k = min(15, n - 1)
        distances, indices = NearestNeighbors(n_neighbors=k).fit(x).kneighbors(x)
        with warnings.catch_warnings():
            # A fixed random_state makes UMAP single-threaded and says so; that is the point of seeding.
            warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
            # nor is ``transform`` of new points used, which needs UMAP's own search index
            warnings.filterwarnings("ignore", message=".*knn_search_index.*")
            model = umap_cls(
                n_components=2, n_neighbors=k, random_state=seed, n_jobs=1,
                precomputed_knn=(indices, distances.astype(np.float32), None),
            )  # fmt: skip
            return model.fit_transform(x)
    raise ConfigError(f"unknown projection {method!r}; expected one of {sorted(PROJECTIONS)}")


def projector(
    embeddings,
    labels: Sequence[str],
    thumbnails: Sequence[bytes],
    out_path: str | Path,
    title: str = "Location embeddings: projector",
    methods: Sequence[str] = ("pca", "umap", "tsne"),
    seed: int = 0,
) -> Path:
    """Write a self-contained plotly page of the embeddings in 2-D to ``out_path``.

    A menu switches between the ``methods`` (``"pca"``, ``"umap"``, ``"tsne"``, each seeded with ``seed``);
    points are coloured by ``labels`` and hovering one shows ``thumbnails[i]`` (PNG bytes) beside the plot.
    When umap-learn is not available UMAP is left out and the page says so.
    """
    import plotly.graph_objects as go

    x = np.asarray(embeddings, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] < 3 or x.shape[1] < 2:
        raise ConfigError(f"embeddings must be (N >= 3, D >= 2), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ConfigError("embeddings must be finite")
    n = x.shape[0]
    _check_lengths(n, labels=labels, thumbnails=thumbnails)
    methods = list(dict.fromkeys(methods))
    unknown = [m for m in methods if m not in PROJECTIONS]
    if unknown or not methods:
        raise ConfigError(f"methods must be a non-empty subset of {list(PROJECTIONS)}, got {unknown or methods}")

    notes = []
    if "umap" in methods and _umap_class() is None:
        methods.remove("umap")
        notes.append("UMAP is left out: the umap-learn package is not installed (pip install umap-learn).")
        if not methods:
            raise ConfigError("no projection left: UMAP needs umap-learn")
    # Plain rounded lists: the same JSON in the traces and in the menu's restyle arguments.
    coords = {m: np.round(project(x, m, seed).astype(np.float64), 5) for m in methods}

    labels = [str(label) for label in labels]
    for thumb in thumbnails:
        png_size(thumb)  # refuses anything that is not a PNG
    uris = [png_data_uri(thumb) for thumb in thumbnails]
    groups = {label: [] for label in sorted(set(labels))}
    for i, label in enumerate(labels):
        groups[label].append(i)
    colors = categorical_colors(len(groups))
    members = [np.asarray(idx) for idx in groups.values()]

    first = coords[methods[0]]
    fig = go.Figure()
    for k, (label, idx) in enumerate(zip(groups, members, strict=True)):
        fig.add_trace(
            go.Scatter(
                x=first[idx, 0].tolist(),
                y=first[idx, 1].tolist(),
                mode="markers",
                name=label,
                marker={"size": 7, "color": colors[k], "line": {"width": 0.5, "color": "#333"}},
                customdata=[[uris[i], int(i)] for i in idx],
                hovertemplate=f"<b>{html.escape(label)}</b><br>point %{{customdata[1]}}<extra></extra>",
            )
        )
    buttons = [
        {
            "label": PROJECTIONS[m],
            "method": "update",
            "args": [
                {
                    "x": [coords[m][idx, 0].tolist() for idx in members],
                    "y": [coords[m][idx, 1].tolist() for idx in members],
                },
                {"xaxis.title.text": f"{PROJECTIONS[m]} 1", "yaxis.title.text": f"{PROJECTIONS[m]} 2"},
            ],
        }
        for m in methods
    ]
    fig.update_layout(
        title={"text": html.escape(title), "x": 0.5, "xanchor": "center"},
        template="plotly_white",
        height=760,
        legend={"title": {"text": "label"}},
        xaxis={"title": {"text": f"{PROJECTIONS[methods[0]]} 1"}, "zeroline": False},
        yaxis={"title": {"text": f"{PROJECTIONS[methods[0]]} 2"}, "zeroline": False},
        hovermode="closest",
        margin={"t": 90},
        updatemenus=[
            {
                "type": "dropdown",
                "buttons": buttons,
                "active": 0,
                "showactive": True,
                "x": 0.08,
                "xanchor": "left",
                "y": 1.02,
                "yanchor": "bottom",
            }
        ],
        annotations=[
            {
                "text": "projection:",
                "showarrow": False,
                "xref": "paper",
                "yref": "paper",
                "x": 0.08,
                "y": 1.045,
                "xanchor": "right",
                "yanchor": "middle",
            }
        ],
    )
    plot = fig.to_html(
        full_html=False,
        include_plotlyjs=True,
        div_id="l2v-projector",
        config={"displaylogo": False, "responsive": True},
        post_script=_HOVER_JS,
    )
    note_html = "".join(f'<p class="l2v-note">{html.escape(note)}</p>' for note in notes)
    method_names = ", ".join(PROJECTIONS[m] for m in methods)
    page = _PROJECTOR_PAGE.format(
        title=html.escape(title),
        plot=plot,
        notes=note_html,
        summary=html.escape(
            f"{n} points, {x.shape[1]}-d embeddings, {len(groups)} labels; {method_names}; seed {seed}"
        ),
        attribution=OSM_ATTRIBUTION_HTML,
    )
    return _write_page(page, out_path)


# Runs once the plot exists ({plot_id} is plotly's div id): show the hovered point's tile in the side panel.
_HOVER_JS = """
document.getElementById('{plot_id}').on('plotly_hover', function (event) {
  var p = event && event.points && event.points[0];
  // looked up here, not when the plot is drawn: the side panel comes later in the document
  var img = document.getElementById('l2v-thumb'), caption = document.getElementById('l2v-caption');
  if (!p || !p.customdata || !img) { return; }
  img.src = p.customdata[0];
  img.style.visibility = 'visible';
  caption.textContent = p.data.name + ' \\u00b7 point ' + p.customdata[1];
});
"""

_PROJECTOR_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ margin: 0; font: 13px/1.4 "Helvetica Neue", Arial, sans-serif; color: #222; }}
#l2v-main {{ margin-right: 260px; padding: 8px; }}
#l2v-side {{ position: fixed; top: 0; right: 0; width: 236px; height: 100%; box-sizing: border-box; padding: 12px;
  border-left: 1px solid #ddd; background: #fafafa; overflow: auto; }}
#l2v-thumb {{ width: 208px; image-rendering: pixelated; visibility: hidden; border: 1px solid #ccc; background: #000; }}
#l2v-caption {{ margin: 6px 0 12px; min-height: 1.4em; }}
.l2v-note {{ color: #8a4b00; background: #fff4e0; padding: 4px 6px; border-radius: 3px; }}
.l2v-small {{ color: #666; font-size: 11px; }}
</style>
</head>
<body>
<div id="l2v-main">{plot}</div>
<div id="l2v-side">
<b>Hovered tile</b>
<img id="l2v-thumb" alt="tile of the hovered point">
<div id="l2v-caption">hover a point to see its tile</div>
{notes}
<p class="l2v-small">{summary}</p>
<p class="l2v-small">Tiles rendered from map data {attribution}</p>
</div>
</body>
</html>
"""
