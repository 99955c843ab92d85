"""The ``maps`` asset's pictures: popup strips and projector thumbnails, sampled first against drawn full size.

Run ``python -m benchmarks.maps_bench``. On the embedded Monaco extract (Monaco proper, the default
``MosaicSpec``), ``--points`` grid locations (seeded) get what ``build_maps`` draws for them:

- the popup strip (each channel's tile and the composite, 48 px each) and the projector thumbnail
  (the composite, 64 px) of a 128-px crop, each as PNG;
- ours: ``loc2vec.evaluation.stage.previews`` and ``_thumbnails`` (pixels sampled to the picture's size
  first, then coloured; open sea found at full size; PNG without the optimizer);
- baseline: the crops read the same way, their pictures coloured at full size, resized after and written
  with ``optimize=True`` (how they were drawn before). Both give the same pixels; the benchmark checks that.

Rounds alternate the two sides on one pinned core, so load from other processes hits both alike.

The projector's UMAP is timed apart, as its first fit in a new process (what every ``maps`` run pays: the
JIT compilation of umap-learn's numba code), on ``--points`` seeded 224-d vectors, one process per fit:
``loc2vec.evaluation.maps.project`` (neighbours from scikit-learn) against ``umap.UMAP`` searching its own.
"""

from __future__ import annotations

import argparse
import io
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.common import Clock
from benchmarks.render_bench import pin_to_one_core

ROOT = Path(__file__).resolve().parents[1]
PBF = ROOT / "data" / "osm" / "monaco_region_2016.osm.pbf"
MONACO_PROPER = (7.405, 43.722, 7.445, 43.752)
CROP = 128


def _resized(picture: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(picture).resize((size, size), Image.NEAREST))


def strip_drawn_full_size(crop: np.ndarray, names: list[str] | None, cell: int) -> np.ndarray:
    """A ``(C, S, S)`` crop's channel strip coloured at the crop's size and resized after: the reference
    ``loc2vec.preview.channel_strip`` equals (tests/test_preview.py)."""
    from loc2vec.preview import LAND, PALETTE, composite

    alpha = crop.astype(np.float32)[..., None] / 255.0
    tiles = [(LAND * (1 - alpha[j]) + PALETTE[j] * alpha[j]).clip(0, 255).astype(np.uint8) for j in range(len(crop))]
    return np.concatenate([_resized(t, cell) for t in [*tiles, composite(crop, names)]], axis=1)


def baseline_pictures(crops: np.ndarray, names: list[str]) -> tuple[list[bytes], list[bytes]]:
    """Strips and thumbnails drawn at the crop's size, resized after, PNG optimized (``(N, C, S, S)`` crops)."""
    from loc2vec.preview import composite, png_bytes

    strips = [png_bytes(strip_drawn_full_size(crop, names, 48)) for crop in crops]
    thumbs = [png_bytes(_resized(composite(crop, names), 64)) for crop in crops]
    return strips, thumbs


UMAP_FIT = """
import sys, warnings
import numpy as np
x = np.random.default_rng(0).normal(size=(int(sys.argv[1]), 224)).astype(np.float32)
if sys.argv[2] == "ours":
    from loc2vec.evaluation.maps import project
    project(x, "umap")
else:
    from umap import UMAP
    warnings.simplefilter("ignore")
    UMAP(n_components=2, n_neighbors=15, random_state=0, n_jobs=1).fit_transform(x)
"""


def umap_first_fit_cpu(points: int, side: str) -> float:
    """CPU seconds of a new process that imports UMAP and fits it once (``side``: ours or baseline)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", UMAP_FIT, str(points), side], check=True, cwd=ROOT)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=600)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    pin_to_one_core()

    from loc2vec.data.crops import CropReader
    from loc2vec.evaluation.embedders import crops_at
    from loc2vec.evaluation.stage import _thumbnails, previews
    from loc2vec.geo import BBox
    from loc2vec.osm.layers import build_feature_layers
    from loc2vec.render.mosaic import MosaicSpec, render_mosaic
    from loc2vec.schema import load_schema

    with tempfile.TemporaryDirectory() as tmp:
        features, _ = build_feature_layers(PBF, load_schema(), Path(tmp) / "features", bbox=BBox(*MONACO_PROPER))
        mosaic = render_mosaic(features, MosaicSpec(), Path(tmp) / "mosaic")
        reader = CropReader.from_store(mosaic.path)
        grid, rng = reader.grid, np.random.default_rng(0)
        col = rng.uniform(CROP, grid.width - CROP, args.points)
        row = rng.uniform(CROP, grid.height - CROP, args.points)
        xy = np.column_stack(grid.pixel_to_xy(col, row))
        names = list(reader.channel_names)

        ours_s, base_s = [], []
        for _ in range(args.rounds):
            with Clock() as base:
                strips, thumbs = baseline_pictures(crops_at(reader, xy, CROP).transpose(0, 3, 1, 2), names)
            with Clock() as ours:
                new_strips, new_thumbs = previews(reader, xy, CROP), _thumbnails(reader, xy, CROP)
            base_s.append(base.cpu)
            ours_s.append(ours.cpu)
        decoded = [np.asarray(Image.open(io.BytesIO(p))) for p in (*new_strips, *new_thumbs)]
        expected = [np.asarray(Image.open(io.BytesIO(p))) for p in (*strips, *thumbs)]
        same = all(np.array_equal(a, b) for a, b in zip(decoded, expected, strict=True))
        size_ratio = sum(map(len, (*new_strips, *new_thumbs))) / sum(map(len, (*strips, *thumbs)))

    umap_base, umap_ours = [], []
    for _ in range(args.rounds):
        umap_base.append(umap_first_fit_cpu(args.points, "baseline"))
        umap_ours.append(umap_first_fit_cpu(args.points, "ours"))

    base_cpu, ours_cpu = float(np.median(base_s)), float(np.median(ours_s))
    print(f"{args.points} locations, {CROP}-px crops, {args.rounds} rounds, one core; CPU s, median of rounds")
    print("| pictures (strip 48 px + thumbnail 64 px, PNG) | CPU s | per location | ratio |")
    print("|---|---|---|---|")
    for label, cpu in (
        ("drawn full size, resized, PNG optimized (baseline)", base_cpu),
        ("sampled first (ours)", ours_cpu),
    ):
        print(f"| {label} | {cpu:.2f} | {cpu / args.points * 1e3:.1f} ms | {base_cpu / cpu:.1f}x |")
    print(f"identical pixels: {same}; PNG bytes ours / baseline: {size_ratio:.3f}")
    umap_b, umap_o = float(np.median(umap_base)), float(np.median(umap_ours))
    print(f"\n| UMAP, first fit in a new process ({args.points} points, import included) | CPU s | ratio |")
    print("|---|---|---|")
    print(f"| UMAP's own neighbour search (baseline) | {umap_b:.2f} | 1.0x |")
    print(f"| neighbours from scikit-learn (ours) | {umap_o:.2f} | {umap_b / umap_o:.1f}x |")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
