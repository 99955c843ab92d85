"""The evaluation's two pages as self-contained HTML files that work offline.

* :func:`embedding_map`: a Leaflet map (built with folium) of the region, one circle marker per location
  coloured by its k-means cluster, a legend with cluster ids and counts, and a popup with the location's
  12-channel preview picture.
* :func:`projector`: a plotly scatter of the embeddings projected to 2-D, with a menu switching between
  PCA, UMAP and t-SNE, points coloured by label; hovering a point shows its tile beside the plot.

Neither page fetches anything at run time: Leaflet 1.9.4 (BSD-2-Clause, vendored in ``static/leaflet``)
and plotly.js are inlined, pictures are ``data:`` URIs and the map has no tile layer unless one is asked
for. Both carry the OpenStreetMap attribution of the data they are rendered from.
"""

from __future__ import annotations

import base64
import html
import json
import re
import struct
import warnings
from collections.abc import Sequence
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

# Categorical palette: Tableau 10, then its lighter companions (tab20); more clusters get golden-angle hues.
CATEGORICAL = [
    *("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"),
    *("#aec7e8", "#ffbb78", "#98df8a", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#c7c7c7", "#dbdb8d", "#9edae5"),
]

PROJECTIONS = {"pca": "PCA", "umap": "UMAP", "tsne": "t-SNE"}

POPUP_MIN_PX = 128  # previews narrower than this are shown enlarged by an integer factor in the popup
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# <script src="http..."> and <link href="http..."> (any attribute order): things a page would fetch.
_EXTERNAL_ASSET = re.compile(
    r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//[^>]*>|<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//[^>]*>",
    re.IGNORECASE,
)


def categorical_colors(n: int) -> list[str]:
    """``n`` distinct colours (hex), the first 20 from tab10/tab20."""
    colors = list(CATEGORICAL[:n])
    for i in range(len(colors), n):
        hue = (i * 137.508) % 360  # golden angle: successive hues stay far apart
        colors.append(_hsl_hex(hue, 0.65, 0.5 if i % 2 else 0.38))
    return colors


def _hsl_hex(hue: float, sat: float, light: float) -> str:
    c = (1 - abs(2 * light - 1)) * sat
    x = c * (1 - abs((hue / 60) % 2 - 1))
    m = light - c / 2
    r, g, b = [(c, x, 0), (x, c, 0), (0, c, x), (0, x, c), (x, 0, c), (c, 0, x)][int(hue // 60) % 6]
    return "#" + "".join(f"{round((v + m) * 255):02x}" for v in (r, g, b))


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


def embedding_map(
    lon,
    lat,
    clusters,
    previews: Sequence[bytes],
    out_path: str | Path,
    title: str = "Location embeddings: k-means clusters",
    *,
    tiles: str | None = None,
    tiles_attr: str | None = None,
    radius: float = 5.0,
) -> Path:
    """Write a self-contained Leaflet map of the locations, coloured by cluster, to ``out_path``.

    ``lon``/``lat`` are WGS84 degrees, ``clusters`` integer cluster ids and ``previews[i]`` the PNG bytes
    of location ``i``'s picture, shown in the popup of its marker. ``tiles`` is an optional tile URL (or
    folium tile name) for a background; by default there is none, so the page needs no network. The map
    is fitted to the points and carries the OpenStreetMap attribution.
    """
    import folium
    from branca.element import Element, MacroElement
    from folium.template import Template

    lon = np.asarray(lon, dtype=np.float64).reshape(-1)
    lat = np.asarray(lat, dtype=np.float64).reshape(-1)
    clusters = np.asarray(clusters).reshape(-1)
    n = lon.shape[0]
    if n == 0:
        raise ConfigError("embedding_map needs at least one location")
    _check_lengths(n, lat=lat, clusters=clusters, previews=previews)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ConfigError("lon/lat must be finite")
    if (np.abs(lat) > 90).any() or (np.abs(lon) > 180).any():
        raise ConfigError("lon/lat must be WGS84 degrees (|lon| <= 180, |lat| <= 90)")
    if not np.issubdtype(clusters.dtype, np.integer):
        if not np.array_equal(clusters, np.round(clusters)):
            raise ConfigError(f"clusters must be integer ids, got {clusters.dtype}")
        clusters = clusters.astype(np.int64)

    ids, counts = np.unique(clusters, return_counts=True)
    color_of = dict(zip(ids.tolist(), categorical_colors(len(ids)), strict=True))

    class _Script(MacroElement):
        """A method call on the parent's Leaflet object: ``code`` is appended to its variable name."""

        _template = Template(
            "{% macro script(this, kwargs) %}{{ this._parent.get_name() }}{{ this.code }}{% endmacro %}"
        )

        def __init__(self, code: str) -> None:
            super().__init__()
            self._name = "Loc2vecScript"
            self.code = code

    fmap = folium.Map(location=[float(lat.mean()), float(lon.mean())], zoom_start=13, tiles=None, control_scale=True)
    # No CDN links: Leaflet is inlined below and folium's other defaults (jQuery, Bootstrap, awesome-markers)
    # are not used by circle markers, tooltips and string popups. Instance attributes, so folium's
    # module-level lists stay untouched.
    fmap.default_js = []
    fmap.default_css = []
    if tiles:
        folium.TileLayer(tiles=tiles, attr=tiles_attr or OSM_ATTRIBUTION_HTML, name="tiles").add_to(fmap)
    fmap.add_child(_Script(f".attributionControl.addAttribution({_js_string(OSM_ATTRIBUTION_HTML)});"))

    root = fmap.get_root()
    root.title = html.escape(title)
    js, css = leaflet_assets()
    root.header.add_child(Element(_inline_style(css) + _inline_script(js)), name="leaflet_inline")
    root.header.add_child(Element(_inline_style(_MAP_CSS)), name="loc2vec_map_css")

    for i in range(n):
        cid = int(clusters[i])
        color = color_of[cid]
        width, height = png_size(previews[i])
        scale = max(1, POPUP_MIN_PX // width)  # small previews are enlarged, pixel for pixel
        width, height = width * scale, height * scale
        popup = (
            f'<div class="l2v-popup"><img src="{png_data_uri(previews[i])}" width="{width}" height="{height}"'
            f' alt="preview of location {i}"><div>location {i} · cluster {cid}<br>'
            f"{lat[i]:.5f}, {lon[i]:.5f}</div></div>"
        )
        marker = folium.CircleMarker(
            location=[float(lat[i]), float(lon[i])],
            radius=radius,
            color="#222222",
            weight=1,
            fill=True,
            fill_color=color,
            fill_opacity=0.9,
            tooltip=f"cluster {cid}",
        )
        options = json.dumps({"maxWidth": max(300, width + 40), "minWidth": min(width, 300)})
        marker.add_child(_Script(f".bindPopup({_js_string(popup)}, {options});"))
        marker.add_to(fmap)

    pad = 0.0005  # degrees: a single point (or a line of points) still gets a sensible view
    fmap.fit_bounds(
        [[float(lat.min()) - pad, float(lon.min()) - pad], [float(lat.max()) + pad, float(lon.max()) + pad]],
        padding=(20, 20),
        max_zoom=18,
    )

    rows = "".join(
        f'<tr><td><span class="l2v-swatch" style="background:{color_of[c]}"></span></td>'
        f'<td class="l2v-num">{c}</td><td class="l2v-num">{k}</td></tr>'
        for c, k in zip(ids.tolist(), counts.tolist(), strict=True)
    )
    legend = (
        f'<div id="l2v-legend" class="l2v-legend"><div class="l2v-title">{html.escape(title)}</div>'
        f"<div>{n} locations, {len(ids)} clusters</div>"
        f"<table><thead><tr><th></th><th>cluster</th><th>count</th></tr></thead><tbody>{rows}</tbody></table>"
        f'<div class="l2v-attr">Map data {OSM_ATTRIBUTION_HTML}</div></div>'
    )
    root.html.add_child(Element(legend), name="loc2vec_legend")
    return _write_page(root.render(), out_path)


_MAP_CSS = """
.leaflet-container { background: #eef0f2; }
.l2v-legend { position: fixed; top: 10px; right: 10px; z-index: 1000; max-height: 80vh; overflow: auto;
  background: rgba(255,255,255,0.93); padding: 8px 10px; border-radius: 4px; box-shadow: 0 1px 5px rgba(0,0,0,0.4);
  font: 12px/1.4 "Helvetica Neue", Arial, sans-serif; }
.l2v-legend .l2v-title { font-weight: bold; margin-bottom: 2px; }
.l2v-legend table { border-collapse: collapse; margin-top: 4px; }
.l2v-legend th { font-weight: normal; color: #555; padding: 0 6px; text-align: right; }
.l2v-legend td { padding: 1px 6px; }
.l2v-legend .l2v-num { text-align: right; font-variant-numeric: tabular-nums; }
.l2v-swatch { display: inline-block; width: 12px; height: 12px; border-radius: 50%; border: 1px solid #222; }
.l2v-legend .l2v-attr { margin-top: 6px; color: #555; }
.l2v-popup img { display: block; image-rendering: pixelated; margin-bottom: 4px; }
.l2v-popup { font: 12px/1.4 "Helvetica Neue", Arial, sans-serif; }
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
        return TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)
    if method == "umap":
        umap_cls = _umap_class()
        if umap_cls is None:
            raise ConfigError("UMAP needs the umap-learn package (pip install umap-learn)")
        with warnings.catch_warnings():
            # A fixed random_state makes UMAP single-threaded and says so; that is the point of seeding.
            warnings.filterwarnings("ignore", message=".*n_jobs.*overridden.*")
            model = umap_cls(n_components=2, n_neighbors=min(15, n - 1), random_state=seed, n_jobs=1)
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
    from plotly.colors import qualitative

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
    palette = qualitative.Plotly + qualitative.D3 + qualitative.Alphabet
    colors = palette if len(groups) <= len(palette) else categorical_colors(len(groups))
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
                marker={"size": 7, "color": colors[k % len(colors)], "line": {"width": 0.5, "color": "#333"}},
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
