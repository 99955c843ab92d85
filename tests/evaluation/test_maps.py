"""The evaluation pages: a cluster map and an embedding projector, self-contained HTML that works offline."""

from __future__ import annotations

import base64
import json
import re

import numpy as np
import pytest

from loc2vec.errors import ConfigError
from loc2vec.evaluation import maps
from loc2vec.evaluation.maps import (
    OSM_ATTRIBUTION,
    categorical_colors,
    embedding_map,
    external_assets,
    project,
    projector,
)
from tests.evaluation.sample_pages import make_sample

FAST_METHODS = ("pca", "tsne")  # UMAP's first fit JIT-compiles for ~15 s: covered by the slow test
CDN_ASSET = re.compile(r"(?:src|href)\s*=\s*[\"']?(?:https?:)?//[^\"' >]*(?:cdn|unpkg|jquery|bootstrap)", re.I)


@pytest.fixture(scope="module")
def sample():
    return make_sample()


def _b64(png: bytes) -> str:
    return base64.b64encode(png).decode()


def _assert_offline(page: str) -> None:
    assert external_assets(page) == []
    assert CDN_ASSET.search(page) is None
    assert "<link" not in page or not re.search(r"<link\b[^>]*stylesheet", page)


# ------------------------------------------------------------------------------------------------ map


def test_map_one_marker_per_point_with_preview_popups(sample, tmp_path):
    out = embedding_map(sample.lon, sample.lat, sample.clusters, sample.previews, tmp_path / "maps" / "map.html")
    assert out == tmp_path / "maps" / "map.html" and out.is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["map.html"]  # no temp file left behind
    page = out.read_text(encoding="utf-8")
    n = len(sample.lon)
    assert page.count("L.circleMarker(") == n
    assert len(re.findall(r"circle_marker_\w+\.bindPopup\(", page)) == n
    for png in sample.previews:
        assert _b64(png) in page
    assert page.count("data:image/png;base64,") >= n
    # coordinates of every point, as [lat, lon]
    for la, lo in zip(sample.lat[:5], sample.lon[:5], strict=True):
        assert f"[{float(la)}, {float(lo)}]" in page
    assert "<title>Location embeddings: k-means clusters</title>" in page


def test_map_legend_colours_and_counts(sample, tmp_path):
    page = embedding_map(sample.lon, sample.lat, sample.clusters, sample.previews, tmp_path / "m.html").read_text()
    legend = page[page.index('id="l2v-legend"') :]
    legend = legend[: legend.index("</table>")]
    ids, counts = np.unique(sample.clusters, return_counts=True)
    colors = categorical_colors(len(ids))
    for cid, count, color in zip(ids, counts, colors, strict=True):
        assert (
            f'background:{color}"></span></td><td class="l2v-num">{cid}</td><td class="l2v-num">{count}</td>' in legend
        )
        # every marker of the cluster is filled with its colour
    fills = re.findall(r'"fillColor": "(#[0-9a-f]{6})"', page)
    assert sorted(fills) == sorted(colors[int(c)] for c in sample.clusters)
    assert f"{len(sample.lon)} locations, {len(ids)} clusters" in legend


def test_map_is_offline_attributed_and_fitted(sample, tmp_path):
    page = embedding_map(sample.lon, sample.lat, sample.clusters, sample.previews, tmp_path / "m.html").read_text()
    _assert_offline(page)
    assert "Leaflet 1.9.4" in page  # the vendored library is inlined
    assert "url(images/" not in page  # its CSS images too
    assert "L.tileLayer" not in page  # no tiles: nothing to fetch
    assert OSM_ATTRIBUTION in page and ".attributionControl.addAttribution(" in page
    assert "https://www.openstreetmap.org/copyright" in page
    assert ".fitBounds(" in page
    bounds = re.search(r"\.fitBounds\(\s*(\[\[.*?\]\])", page, re.S).group(1)
    (south, west), (north, east) = json.loads(bounds)
    assert south < sample.lat.min() and north > sample.lat.max()
    assert west < sample.lon.min() and east > sample.lon.max()


def test_map_optional_tiles_keep_the_attribution(sample, tmp_path):
    url = "https://tile.openstreetmap.org/{z}/{x}/{y}.png"
    page = embedding_map(
        sample.lon, sample.lat, sample.clusters, sample.previews, tmp_path / "m.html", tiles=url
    ).read_text()
    assert "L.tileLayer" in page and url in page
    assert page.count(OSM_ATTRIBUTION) >= 2  # the tile layer's and the data's


def test_map_many_clusters_get_distinct_colours():
    colors = categorical_colors(40)
    assert len(set(colors)) == 40
    assert all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colors)


def test_map_refuses_bad_input(sample, tmp_path):
    out = tmp_path / "m.html"
    with pytest.raises(ConfigError, match="previews"):
        embedding_map(sample.lon, sample.lat, sample.clusters, sample.previews[:-1], out)
    with pytest.raises(ConfigError, match="PNG"):
        embedding_map(sample.lon, sample.lat, sample.clusters, [b"not a png"] * len(sample.lon), out)
    lat = sample.lat.copy()
    lat[3] = np.nan
    with pytest.raises(ConfigError, match="finite"):
        embedding_map(sample.lon, lat, sample.clusters, sample.previews, out)
    with pytest.raises(ConfigError, match="at least one"):
        embedding_map([], [], [], [], out)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_map_replaces_an_existing_page(sample, tmp_path):
    out = tmp_path / "m.html"
    out.write_text("old")
    embedding_map(sample.lon[:5], sample.lat[:5], sample.clusters[:5], sample.previews[:5], out)
    assert out.read_text().count("L.circleMarker(") == 5


# ------------------------------------------------------------------------------------------ projector


def _figure(page: str) -> tuple[list, dict]:
    """The traces and layout plotly.newPlot is called with."""
    call = page[re.search(r'Plotly\.newPlot\(\s*"l2v-projector",', page).end() :]
    decoder = json.JSONDecoder()
    start = call.index("[")
    data, end = decoder.raw_decode(call, start)
    layout, _ = decoder.raw_decode(call, call.index("{", end))
    return data, layout


def test_projector_page(sample, tmp_path):
    out = projector(
        sample.embeddings, sample.labels, sample.previews, tmp_path / "p" / "proj.html", methods=FAST_METHODS
    )
    assert out.is_file() and sorted(p.name for p in out.parent.iterdir()) == ["proj.html"]
    page = out.read_text(encoding="utf-8")
    _assert_offline(page)
    assert "plotly.js v" in page  # inlined, not fetched
    unescaped = page.replace("\\u002f", "/")  # plotly's JSON writes "/" as \u002f
    for png in sample.previews:
        assert _b64(png) in unescaped
    data, layout = _figure(page)
    # one trace per label, every point once, its thumbnail and index in customdata
    assert sorted(t["name"] for t in data) == sorted(set(sample.labels))
    seen = {}
    for trace in data:
        assert len(trace["x"]) == len(trace["y"]) == len(trace["customdata"])
        for uri, index in trace["customdata"]:
            assert sample.labels[index] == trace["name"]
            seen[index] = uri
    assert seen == {i: "data:image/png;base64," + _b64(p) for i, p in enumerate(sample.previews)}
    # the menu switches projections
    buttons = layout["updatemenus"][0]["buttons"]
    assert [b["label"] for b in buttons] == ["PCA", "t-SNE"]
    for b in buttons:
        assert b["method"] == "update"
        assert [len(x) for x in b["args"][0]["x"]] == [len(t["x"]) for t in data]
    # the hover handler shows the thumbnail beside the plot
    assert "plotly_hover" in page and 'id="l2v-thumb"' in page and "customdata[0]" in page
    assert OSM_ATTRIBUTION in page


def test_projections_are_seeded(sample):
    embeddings = sample.embeddings[:30]
    for method in FAST_METHODS:
        a = project(embeddings, method, seed=3)
        b = project(embeddings, method, seed=3)
        assert a.shape == (30, 2)
        np.testing.assert_array_equal(a, b)


def test_projector_without_umap_leaves_it_out_and_says_so(sample, tmp_path, monkeypatch):
    monkeypatch.setattr(maps, "_umap_class", lambda: None)
    out = projector(sample.embeddings, sample.labels, sample.previews, tmp_path / "p.html", methods=("pca", "umap"))
    page = out.read_text()
    _, layout = _figure(page)
    assert [b["label"] for b in layout["updatemenus"][0]["buttons"]] == ["PCA"]
    assert "UMAP is left out" in page
    with pytest.raises(ConfigError, match="umap-learn"):
        projector(sample.embeddings, sample.labels, sample.previews, tmp_path / "q.html", methods=("umap",))


def test_projector_refuses_bad_input(sample, tmp_path):
    out = tmp_path / "p.html"
    with pytest.raises(ConfigError, match="labels"):
        projector(sample.embeddings, sample.labels[:-1], sample.previews, out, methods=("pca",))
    with pytest.raises(ConfigError, match="methods"):
        projector(sample.embeddings, sample.labels, sample.previews, out, methods=("pca", "mds"))
    with pytest.raises(ConfigError, match="shape"):
        projector(sample.embeddings[:2], sample.labels[:2], sample.previews[:2], out, methods=("pca",))
    assert not out.exists()


@pytest.mark.slow
def test_projector_with_all_three_projections(sample, tmp_path):
    pytest.importorskip("umap", reason="umap-learn is not installed")
    page = projector(sample.embeddings, sample.labels, sample.previews, tmp_path / "p.html").read_text()
    _, layout = _figure(page)
    buttons = layout["updatemenus"][0]["buttons"]
    assert [b["label"] for b in buttons] == ["PCA", "UMAP", "t-SNE"]
    # three different layouts of the same points
    firsts = {b["label"]: tuple(b["args"][0]["x"][0][:3]) for b in buttons}
    assert len(set(firsts.values())) == 3
    assert "UMAP is left out" not in page
    umap_xy = project(sample.embeddings, "umap", seed=0)
    np.testing.assert_allclose(umap_xy, project(sample.embeddings, "umap", seed=0))


# ------------------------------------------------------------------- base layer, popups, similar map


def _lab_min_distance(colors: list[str]) -> float:
    lab = maps.srgb_to_lab([maps.hex_rgb(c) for c in colors])
    d = np.linalg.norm(lab[:, None] - lab[None], axis=-1)
    return float(d[~np.eye(len(colors), dtype=bool)].min())


def test_class_colours_are_far_apart_in_cielab():
    # the old palettes (tab20's light companions, plotly + D3 concatenated) came within CIE76 delta E 11-17
    for n in (2, 10, 15, 20, 40):
        colors = categorical_colors(n)
        assert len(colors) == n and all(re.fullmatch(r"#[0-9a-f]{6}", c) for c in colors)
        assert _lab_min_distance(colors) >= 25, n
    assert categorical_colors(12)[:10] == categorical_colors(10)  # stable as classes are added


def test_projector_colours_every_label_distinctly(sample, tmp_path):
    labels = [f"class {i % 15}" for i in range(len(sample.labels))]
    page = projector(sample.embeddings, labels, sample.previews, tmp_path / "p.html", methods=("pca",)).read_text()
    data, _ = _figure(page)
    colors = [t["marker"]["color"] for t in data]
    assert len(colors) == 15 and _lab_min_distance(colors) >= 25


@pytest.fixture(scope="module")
def region(monaco_mosaic):
    """The Monaco test mosaic: its base layer, reader and overview."""
    from loc2vec.data.crops import CropReader
    from loc2vec.preview import overview, overview_step
    from loc2vec.store.mosaic import open_mosaic

    _, mosaic = monaco_mosaic
    store = open_mosaic(mosaic.path)
    layer = maps.region_base_layer(mosaic.path, max_px=512)
    return layer, CropReader.from_store(mosaic.path), overview(store, 512), overview_step(store.grid, 512)


def _overlay_pixel(layer, lon: float, lat: float) -> np.ndarray:
    """The overlay's pixel under (lon, lat) as Leaflet places it: linear in Web Mercator between bounds."""
    from PIL import Image

    image = np.asarray(Image.open(__import__("io").BytesIO(layer.png)))
    (south, west), (north, east) = layer.bounds
    merc_y = lambda la: np.log(np.tan(np.pi / 4 + np.radians(la) / 2))  # noqa: E731
    fx = (lon - west) / (east - west)
    fy = (merc_y(north) - merc_y(lat)) / (merc_y(north) - merc_y(south))
    return image[int(fy * image.shape[0]), int(fx * image.shape[1])]


def _only_channel_pixel(ov: np.ndarray, channel: int, r: int = 2) -> tuple[int, int]:
    """An overview pixel whose (2r+1)² neighbourhood has ``channel`` at 255 and no other channel."""
    from scipy import ndimage

    alone = (ov[channel] == 255) & (np.delete(ov, channel, axis=0).max(axis=0) == 0)
    rows, cols = np.nonzero(ndimage.minimum_filter(alone.astype(np.uint8), size=2 * r + 1))
    assert len(rows), f"no clean patch of channel {channel}"
    return int(rows[len(rows) // 2]), int(cols[len(cols) // 2])


def test_base_layer_lines_up_with_the_points(region):
    from loc2vec.preview import PALETTE, WATER

    layer, reader, ov, step = region
    names = reader.channel_names
    assert layer.png.startswith(b"\x89PNG")
    for channel in ("water", "landuse", "buildings"):
        color = WATER if channel == "water" else PALETTE[names.index(channel)]
        row, col = _only_channel_pixel(ov, names.index(channel))
        lon, lat = reader.grid.pixel_to_lonlat((col + 0.5) * step, (row + 0.5) * step)
        pixel = _overlay_pixel(layer, float(lon), float(lat))
        assert pixel[3] == 255 and tuple(pixel[:3]) == tuple(color.astype(np.uint8)), (channel, pixel)
    # open sea off Monaco is blue, not the light colour of empty land
    assert tuple(_overlay_pixel(layer, 7.442, 43.727)[:3]) == tuple(WATER.astype(np.uint8))


def _popups(page: str) -> list[str]:
    return [json.loads(p) for p in re.findall(r'\.bindPopup\(("(?:[^"\\]|\\.)*")', page)]


def test_map_has_the_base_layer_and_labelled_channel_popups(region, sample, tmp_path):
    from loc2vec.evaluation.stage import previews

    layer, reader, _, _ = region
    cols, rows = reader.grid.lonlat_to_pixel(sample.lon, sample.lat)
    strips = previews(reader, np.column_stack(reader.grid.pixel_to_xy(cols, rows)), 64)
    out = tmp_path / "m.html"
    embedding_map(
        sample.lon, sample.lat, sample.clusters, strips, out, channel_names=reader.channel_names, base_layer=layer
    )
    page = out.read_text()
    _assert_offline(page)
    overlay = re.search(r'L\.imageOverlay\("data:image/png;base64,([^"]+)", (\[\[.*?\]\]),', page)
    assert overlay and overlay.group(1) == _b64(layer.png)
    assert json.loads(overlay.group(2)) == [list(layer.bounds[0]), list(layer.bounds[1])]
    popups = _popups(page)
    assert len(popups) == len(sample.lon)
    for popup in popups:
        captions = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", popup)]
        assert captions == ["composite", *reader.channel_names]
        assert popup.count("data:image/png;base64,") == 1  # one strip, shared by the tiles


def test_similar_map_marks_the_query_and_ranks_results(region, sample, tmp_path):
    import pandas as pd

    layer, _, _, _ = region
    found = pd.DataFrame(
        {
            "rank": [1, 2, 3],
            "lat": sample.lat[1:4],
            "lon": sample.lon[1:4],
            "kind": "grid",
            "landuse_class": ["residential", "commercial", "park"],
            "embedding_distance": [0.1234, 0.2345, 0.3456],
            "ground_km": [1.5, 2.25, 3.125],
        }
    )
    page = maps.similar_map(
        (float(sample.lat[0]), float(sample.lon[0])),
        found,
        sample.previews[:4],
        tmp_path / "s.html",
        "similar",
        base_layer=layer,
    ).read_text()
    assert "L.imageOverlay(" in page and "cluster" not in page
    legend = page[page.index('id="l2v-legend"') :]
    assert ">query</td>" in legend
    for rank, dist, km in zip([1, 2, 3], ["0.1234", "0.2345", "0.3456"], ["1.500", "2.250", "3.125"], strict=True):
        assert f'<td class="l2v-num">{rank}</td><td class="l2v-num">{dist}</td><td class="l2v-num">{km}</td>' in legend
        popup = _popups(page)[rank]
        assert f"rank {rank} · embedding distance {dist} · {km} km away" in popup
    # the query: a bigger, thick-ringed white marker, labelled "query"; results labelled with their rank
    radii = re.findall(r'"radius": (\d+(?:\.\d+)?)', page)
    assert float(radii[0]) > max(float(r) for r in radii[1:])
    labels = re.findall(r'\.bindTooltip\("([^"]*)", \{"permanent": true', page)
    assert labels == ["query", "1", "2", "3"]
