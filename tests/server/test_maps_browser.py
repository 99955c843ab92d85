"""The evaluation pages render in a real browser, offline: headless Chromium, driven with subprocess only.

Each page is copied with two scripts added: an error collector at the top of ``<head>`` (uncaught errors,
failed resource loads, unhandled rejections and ``console.error`` go into an attribute of ``<html>``) and
a probe run after ``load`` that uses the page the way a person would (opens a marker's popup; hovers a
point and switches the projection menu) and writes what it saw into another attribute. Chromium loads the
copy with every host name unresolvable, takes a screenshot and dumps the DOM; the test reads both.

CI needs the Debian packages: ``apt-get install -y --no-install-recommends chromium chromium-driver``.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from loc2vec.evaluation.maps import OSM_ATTRIBUTION, categorical_colors, embedding_map, projector
from tests.evaluation.sample_pages import make_sample

pytestmark = pytest.mark.server

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
WINDOW = (1200, 800)
CHROMIUM_TIMEOUT = 60.0

ERROR_HOOK = """<script>
(function () {
  var errors = [];
  function record(message) {
    errors.push(String(message));
    document.documentElement.setAttribute('data-l2v-errors', JSON.stringify(errors));
  }
  window.__l2vRecord = record;
  document.documentElement.setAttribute('data-l2v-errors', '[]');
  window.addEventListener('error', function (e) {
    var t = e.target;
    if (t && t !== window && (t.src || t.href)) { record('failed to load ' + (t.src || t.href)); return; }
    record((e.message || 'error') + ' at ' + (e.filename || '?') + ':' + (e.lineno || '?'));
  }, true);
  window.addEventListener('unhandledrejection', function (e) {
    record('unhandled rejection: ' + (e.reason && (e.reason.stack || e.reason)));
  });
  var consoleError = console.error;
  console.error = function () {
    record('console.error: ' + Array.prototype.join.call(arguments, ' '));
    return consoleError.apply(console, arguments);
  };
})();
</script>"""

PROBE = """<script>
(function () {
  var probe = {};
  function done() { document.documentElement.setAttribute('data-l2v-probe', JSON.stringify(probe)); }
  function guard(step) {
    return function () { try { step(); } catch (e) { window.__l2vRecord('probe: ' + (e.stack || e)); done(); } };
  }
  window.addEventListener('load', function () { setTimeout(guard(%s), 300); });
})();
</script>"""

MAP_PROBE = """function () {
  var map = window[document.querySelector('.folium-map').id];
  probe.zoom = map.getZoom();
  var opened = false;
  map.eachLayer(function (layer) {
    if (!opened && layer.getPopup && layer.getPopup()) { layer.openPopup(); opened = true; }
  });
  probe.popup = opened;
  done();
}"""

PROJECTOR_PROBE = """function () {
  var gd = document.getElementById('l2v-projector');
  var point = function () { return gd.querySelector('.scatterlayer .trace .point'); };
  probe.before = point().getAttribute('transform');
  // a real mouse move over the first point (plotly only emits plotly_hover for events with a target)
  var box = point().getBoundingClientRect();
  var at = {bubbles: true, cancelable: true, view: window,
            clientX: box.left + box.width / 2, clientY: box.top + box.height / 2};
  gd.querySelector('.nsewdrag').dispatchEvent(new MouseEvent('mousemove', at));
  setTimeout(guard(function () {
    probe.thumb = document.getElementById('l2v-thumb').getAttribute('src') || '';
    probe.caption = document.getElementById('l2v-caption').textContent;
    var click = function (el) { el.dispatchEvent(new MouseEvent('click', {bubbles: true})); };
    click(gd.querySelector('.updatemenu-header'));  // opens the projection menu
    setTimeout(guard(function () {
      var buttons = gd.querySelectorAll('.updatemenu-dropdown-button');
      probe.buttons = Array.prototype.map.call(buttons, function (b) { return b.textContent; });
      click(buttons[1]);
      setTimeout(guard(function () {
        probe.xtitle = gd.layout.xaxis.title.text;
        probe.after = point().getAttribute('transform');
        done();
      }), 500);
    }), 200);
  }), 200);
}"""


def _instrument(page: Path, probe: str) -> Path:
    text = page.read_text(encoding="utf-8")
    head = re.search(r"<head[^>]*>", text, re.I)
    assert head, f"{page} has no <head>"
    end = text.lower().rindex("</html>")
    text = text[: head.end()] + ERROR_HOOK + text[head.end() : end] + (PROBE % probe) + text[end:]
    copy = page.with_name(page.stem + ".probe.html")
    copy.write_text(text, encoding="utf-8")
    return copy


def _chromium(page: Path, work: Path) -> tuple[str, Image.Image, str]:
    """Load ``page`` offline in headless Chromium: its DOM after the probe, a screenshot and the log."""
    shot = work / f"{page.stem}.png"
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--host-resolver-rules=MAP * ~NOTFOUND",  # offline: any fetch from another host fails
        "--enable-logging=stderr",
        "--v=0",
        f"--user-data-dir={work / ('profile-' + page.stem)}",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        "--virtual-time-budget=10000",
        f"--screenshot={shot}",
        "--dump-dom",
        page.as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT, check=False)
    log = proc.stderr[-4000:]
    assert proc.returncode == 0, f"chromium failed ({proc.returncode}):\n{log}"
    assert shot.is_file(), f"no screenshot:\n{log}"
    return proc.stdout, Image.open(shot).convert("RGB"), log


def _attribute(dom: str, name: str):
    match = re.search(rf'{name}="([^"]*)"', dom)
    assert match, f"{name} missing: the injected script did not run"
    return json.loads(html.unescape(match.group(1)))


def _assert_no_js_errors(dom: str, log: str) -> None:
    errors = _attribute(dom, "data-l2v-errors")
    assert errors == [], f"JavaScript errors: {errors}"
    uncaught = [line for line in log.splitlines() if "CONSOLE" in line and "Uncaught" in line]
    assert uncaught == [], uncaught


def _has_colour(image: Image.Image, rgb, tolerance: int = 12) -> bool:
    pixels = np.asarray(image, dtype=np.int16)
    return bool((np.abs(pixels - np.asarray(rgb, np.int16)).max(axis=-1) <= tolerance).any())


def _hex_rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))


def _assert_not_blank(image: Image.Image) -> None:
    assert image.size == WINDOW
    pixels = np.asarray(image)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"screenshot looks blank: {len(colours)} distinct colours"
    assert pixels.std() > 5


@pytest.fixture(scope="module")
def sample():
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver)")
    return make_sample()


def test_embedding_map_renders_offline(sample, tmp_path):
    page = embedding_map(sample.lon, sample.lat, sample.clusters, sample.previews, tmp_path / "map.html")
    dom, shot, log = _chromium(_instrument(page, MAP_PROBE), tmp_path)
    _assert_no_js_errors(dom, log)
    probe = _attribute(dom, "data-l2v-probe")
    assert probe["popup"] is True and probe["zoom"] >= 12, probe
    # one SVG circle per location, the legend and the attribution
    markers = re.findall(r'<path\b[^>]*class="[^"]*leaflet-interactive', dom)
    assert len(markers) == len(sample.lon)
    assert 'id="l2v-legend"' in dom
    attribution = re.search(r'class="leaflet-control-attribution[^"]*">(.*?)</div>', dom, re.S)
    assert attribution and OSM_ATTRIBUTION in attribution.group(1)
    # the opened popup shows the preview picture
    popup = re.search(r'class="leaflet-popup-content"[^>]*>(.*?)</div>\s*</div>', dom, re.S)
    assert popup and '<img src="data:image/png;base64,' in popup.group(1)
    _assert_not_blank(shot)
    background = np.array([0xEE, 0xF0, 0xF2])
    for color in categorical_colors(len(np.unique(sample.clusters))):
        filled = 0.9 * np.array(_hex_rgb(color)) + 0.1 * background  # fill-opacity 0.9 over the map
        assert _has_colour(shot, filled.round()), f"no marker of colour {color} in the screenshot"


def test_projector_renders_offline(sample, tmp_path):
    page = projector(sample.embeddings, sample.labels, sample.previews, tmp_path / "proj.html", methods=("pca", "tsne"))
    dom, shot, log = _chromium(_instrument(page, PROJECTOR_PROBE), tmp_path)
    _assert_no_js_errors(dom, log)
    probe = _attribute(dom, "data-l2v-probe")
    points = re.findall(r'<path\b[^>]*class="point\b', dom)
    assert len(points) == len(sample.labels)
    # hovering shows the point's tile beside the plot
    assert probe["thumb"].startswith("data:image/png;base64,"), probe
    assert "point" in probe["caption"]
    assert re.search(r'<img id="l2v-thumb"[^>]*src="data:image/png;base64,', dom)
    # the menu switches to t-SNE: new axis title, the points move
    assert probe["buttons"] == ["PCA", "t-SNE"], probe
    assert probe["xtitle"] == "t-SNE 1" and probe["after"] != probe["before"], probe
    _assert_not_blank(shot)
    for color in categorical_colors(len(set(sample.labels))):
        assert _has_colour(shot, _hex_rgb(color), tolerance=8), f"no point of colour {color} in the screenshot"


def _schema_names() -> list[str]:
    from loc2vec.schema import load_schema

    return [c.name for c in load_schema().channels]


def test_the_pipelines_own_pages_render_at_full_size(monaco_run, tmp_path):
    """The ``maps`` asset's pages of a real run (hundreds of points, 12-channel previews, UMAP in the menu)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver)")
    map_page = sorted((monaco_run / "maps").rglob("embedding_map.html"))[0]
    dom, shot, log = _chromium(_instrument(map_page, MAP_PROBE), tmp_path)
    _assert_no_js_errors(dom, log)
    assert _attribute(dom, "data-l2v-probe")["popup"] is True
    assert len(re.findall(r'<path\b[^>]*class="[^"]*leaflet-interactive', dom)) > 100
    popup = re.search(r'class="leaflet-popup-content"[^>]*>(.*?)</div>\s*</div>\s*<a', dom, re.S)
    assert popup and re.search(r"--l2v-strip:\s*url\((?:&quot;)?data:image/png;base64,", popup.group(1))
    captions = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", popup.group(1))]
    assert captions == ["composite", *_schema_names()]
    assert re.search(r'<img\b[^>]*class="[^"]*l2v-base', dom)  # the region's composite under the points
    _assert_not_blank(shot)

    projector_page = sorted((monaco_run / "maps").rglob("projector.html"))[0]
    dom, shot, log = _chromium(_instrument(projector_page, PROJECTOR_PROBE), tmp_path)
    _assert_no_js_errors(dom, log)
    probe = _attribute(dom, "data-l2v-probe")
    assert probe["buttons"] == ["PCA", "UMAP", "t-SNE"], probe
    assert probe["xtitle"] == "UMAP 1" and probe["after"] != probe["before"], probe
    assert probe["thumb"].startswith("data:image/png;base64,"), probe
    assert len(re.findall(r'<path\b[^>]*class="point\b', dom)) > 100
    _assert_not_blank(shot)


def test_map_over_the_region_renders_its_base_layer_and_labelled_popup(monaco_mosaic, sample, tmp_path):
    from loc2vec.data.crops import CropReader
    from loc2vec.evaluation.maps import region_base_layer
    from loc2vec.evaluation.stage import previews
    from loc2vec.preview import LAND, WATER

    _, mosaic = monaco_mosaic
    reader = CropReader.from_store(mosaic.path)
    cols, rows = reader.grid.lonlat_to_pixel(sample.lon, sample.lat)
    strips = previews(reader, np.column_stack(reader.grid.pixel_to_xy(cols, rows)), 64)
    page = embedding_map(
        sample.lon,
        sample.lat,
        sample.clusters,
        strips,
        tmp_path / "region_map.html",
        channel_names=reader.channel_names,
        base_layer=region_base_layer(mosaic.path, max_px=512),
    )
    dom, shot, log = _chromium(_instrument(page, MAP_PROBE), tmp_path)
    shot.save(tmp_path / "region_map_screenshot.png")  # the artifact to look at when this fails
    _assert_no_js_errors(dom, log)
    assert _attribute(dom, "data-l2v-probe")["popup"] is True
    assert re.search(r'<img\b[^>]*src="data:image/png;base64,[^"]+"[^>]*class="[^"]*l2v-base', dom) or re.search(
        r'<img\b[^>]*class="[^"]*l2v-base[^"]*"[^>]*src="data:image/png;base64,', dom
    )
    popup = re.search(r'class="leaflet-popup-content"[^>]*>(.*?)</div>\s*</div>\s*<a', dom, re.S)
    assert popup, "no open popup"
    captions = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<figcaption>(.*?)</figcaption>", popup.group(1))]
    assert captions == ["composite", *reader.channel_names]
    _assert_not_blank(shot)
    # the rendered region is under the points: light land and blue sea fill the screen, not a grey void
    assert _has_colour(shot, LAND.astype(int), tolerance=3) and _has_colour(shot, WATER.astype(int), tolerance=3)


def test_maps_server_serves_pages_on_localhost(tmp_path):
    import os
    import signal
    import socket
    import sys
    import urllib.error
    import urllib.request

    from loc2vec.evaluation.serve_maps import page_url

    page = tmp_path / "maps" / "v1-abc" / "embedding_map.html"
    page.parent.mkdir(parents=True)
    page.write_text("<html><body>a map</body></html>", encoding="utf-8")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "secret.pt").write_text("weights")
    with socket.socket() as probe:  # a free port, handed to the server like LOC2VEC_MAPS_PORT would be
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {**os.environ, "LOC2VEC_MAPS_PORT": str(port)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "loc2vec.evaluation.serve_maps", "--dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
        cwd=Path(__file__).resolve().parents[2],
    )
    try:
        assert f"http://127.0.0.1:{port}/" in proc.stdout.readline()
        url = page_url(page, tmp_path, f"http://127.0.0.1:{port}")
        assert url == f"http://127.0.0.1:{port}/maps/v1-abc/embedding_map.html"
        with urllib.request.urlopen(url, timeout=10) as response:
            assert response.status == 200 and b"a map" in response.read()
        for other in ("models/secret.pt", "maps/../models/secret.pt", ""):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/{other}", timeout=10)
            assert refused.value.code == 404
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:  # a loaded machine: make sure nothing is left behind
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode is not None
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/maps/v1-abc/embedding_map.html", timeout=2)


def test_maps_links_default_to_the_local_server(monkeypatch, tmp_path):
    from loc2vec.evaluation.serve_maps import maps_base_url, page_url

    monkeypatch.delenv("LOC2VEC_MAPS_URL", raising=False)
    monkeypatch.setenv("LOC2VEC_MAPS_PORT", "9123")
    assert maps_base_url() == "http://127.0.0.1:9123"
    monkeypatch.setenv("LOC2VEC_MAPS_URL", "https://maps.example.org/loc2vec/")
    assert page_url(tmp_path / "maps" / "p.html", tmp_path) == "https://maps.example.org/loc2vec/maps/p.html"
