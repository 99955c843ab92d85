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
    from plotly.colors import qualitative

    for color in qualitative.Plotly[: len(set(sample.labels))]:
        assert _has_colour(shot, _hex_rgb(color), tolerance=8), f"no point of colour {color} in the screenshot"


def test_the_pipelines_own_pages_render_at_full_size(monaco_run, tmp_path):
    """The ``maps`` asset's pages of a real run (hundreds of points, 12-channel previews, UMAP in the menu)."""
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium chromium-driver)")
    map_page = sorted((monaco_run / "maps").rglob("embedding_map.html"))[0]
    dom, shot, log = _chromium(_instrument(map_page, MAP_PROBE), tmp_path)
    _assert_no_js_errors(dom, log)
    assert _attribute(dom, "data-l2v-probe")["popup"] is True
    assert len(re.findall(r'<path\b[^>]*class="[^"]*leaflet-interactive', dom)) > 100
    popup = re.search(r'class="leaflet-popup-content"[^>]*>(.*?)</div>\s*</div>', dom, re.S)
    assert popup and '<img src="data:image/png;base64,' in popup.group(1)
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
