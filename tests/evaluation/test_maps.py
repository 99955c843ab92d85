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
