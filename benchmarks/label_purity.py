"""Where land-use neighbour recall is won and lost: balanced recall@10 by how purely the label covers its disc.

A location's land-use class is the class of the areas covering most of a 50 m disc around it
(``loc2vec.evaluation.protocol.landuse_classes``); the class may cover all of the disc or a third of it,
the rest unmapped or another class. This splits R's labelled test locations by that share (the label's
*purity*) and scores, in each band, the share of each location's 10 nearest embedding neighbours (beyond the
protocol's exclusion radius, among all labelled test locations) with its class, averaged per class and then
over classes, for the model trained without R (``OUT/embedded-R.parquet``) and its untrained encoder; then
each class alone, and how strongly each encoder's patch stem responds to a fill of each channel. Runs on a
``benchmarks/transfer.py`` output directory; not part of the suite:

    .venv/bin/python -m benchmarks.label_purity --run /tmp/transfer-0 --region kotka-karhula
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.transfer import ROOT, held_out

BANDS = ((0.0, 0.5), (0.5, 0.9), (0.9, 1.0))


def label_purity(features, xy: np.ndarray, labels: np.ndarray, crs, radius_m: float) -> np.ndarray:
    """The share of each point's disc covered by the areas of its own ``key=value`` label (NaN: ``none``)."""
    import shapely

    from loc2vec.evaluation.protocol import LANDUSE_KEYS

    areas = features[(features["kind"] == "area") & features["key"].isin(LANDUSE_KEYS)].to_crs(crs)
    tags = (areas["key"] + "=" + areas["value"]).to_numpy()
    covers = {label: shapely.union_all(areas.geometry.to_numpy()[tags == label]) for label in set(labels)}
    discs = shapely.buffer(shapely.points(xy), radius_m, quad_segs=8)
    share = [
        shapely.area(shapely.intersection(disc, covers[label])) / shapely.area(disc) if label != "none" else np.nan
        for disc, label in zip(discs, labels, strict=True)
    ]
    return np.clip(np.asarray(share, dtype=float), 0.0, 1.0)  # the union's area may exceed the disc's by rounding


def balanced_recall(agreement: np.ndarray, labels: np.ndarray) -> float:
    """The mean over classes of each class's mean neighbour agreement (NaN: no location)."""
    classes = np.unique(labels)
    return float(np.mean([agreement[labels == c].mean() for c in classes])) if len(classes) else np.nan


def banded(purity: np.ndarray, score) -> list[tuple[int, float]]:
    """Per band of ``BANDS``, then over all: (locations, ``score(mask of those locations)``; NaN: none)."""
    bands = [(purity >= low) & ((purity < high) if high < 1.0 else (purity <= high)) for low, high in BANDS]
    bands.append(np.ones(len(purity), dtype=bool))
    return [(int(inside.sum()), float(score(inside)) if inside.any() else np.nan) for inside in bands]


def banded_recall(agreement: np.ndarray, labels: np.ndarray, purity: np.ndarray) -> list[tuple[int, float]]:
    """``banded`` balanced recall@10: each class's mean neighbour agreement, averaged over classes."""
    return banded(purity, lambda inside: balanced_recall(agreement[inside], labels[inside]))


def banded_probe(purity: np.ndarray, classes: list[str], truth: np.ndarray, guess: np.ndarray):
    """``banded`` macro-F1 of the land-use probe's predictions (``landuse_probe_predictions``' output)."""
    from sklearn.metrics import f1_score

    return banded(purity, lambda inside: f1_score(truth[inside], guess[inside], labels=classes, average="macro"))


def fill_response(encoder) -> np.ndarray:
    """Per input channel, the norm of the patch stem's response to a stem patch uniformly filled with that
    channel, against an empty one (the convolution's kernel sum scaled by batch norm; before the ReLU): how
    much the stem's features, and so the embedding's stem parts, move with how much of a fill lies there."""
    conv, norm = encoder.backbone.stem[0], encoder.backbone.stem[1]
    scale = (norm.weight / (norm.running_var + norm.eps).sqrt()).detach()
    return (conv.weight.detach().sum(dim=(2, 3)) * scale[:, None]).norm(dim=0).numpy()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", type=Path, required=True, help="a benchmarks/transfer.py --out directory")
    p.add_argument("--region", required=True, help="a held-out region of that run")
    p.add_argument("--catalog", default=str(ROOT / "regions.toml"))
    args = p.parse_args()

    import geopandas as gpd

    from loc2vec.evaluation.embedders import encode
    from loc2vec.evaluation.metrics import _neighbour_agreement
    from loc2vec.evaluation.probes import (
        landuse_probe_classes,
        landuse_probe_predictions,
        landuse_test_classes,
        location_mask,
    )
    from loc2vec.evaluation.protocol import ProtocolSpec
    from loc2vec.evaluation.run import protocol_radii, untrained_encoder
    from loc2vec.models.encoders import load_encoder

    run, region = args.run, args.region
    config, protocol, frame, reader, model = held_out(run, region, args.catalog)
    found = sorted((protocol.work / "features").glob("*/features.parquet"))
    if len(found) != 1:
        raise SystemExit(f"expected one feature layer under {protocol.work / 'features'}, found {len(found)}")
    locations = (frame["kind"] == "location").to_numpy()
    frame = frame[locations].reset_index(drop=True)
    test = location_mask(frame, "test") & (frame["landuse_class"] != "none").to_numpy()
    xy, labels = frame[["x", "y"]].to_numpy(), frame["landuse_class"].to_numpy()
    purity = np.full(len(frame), np.nan)
    purity[test] = label_purity(
        gpd.read_parquet(found[0]), xy[test], labels[test], reader.grid.crs, ProtocolSpec().landuse_radius_m
    )
    exclude_m = protocol_radii(config, reader.grid.resolution)["exclude_m"]
    untrained = untrained_encoder(config, reader.channels)
    embedders = {
        "model": np.stack(gpd.read_parquet(run / f"embedded-{region}.parquet")["vector"].to_numpy())[locations],
        "untrained": encode(untrained, reader, xy, config.crop_px),
    }
    counted = np.isin(labels, landuse_test_classes(frame)) & test  # balanced recall's: classes of 20 or more
    print(f"{region}: {counted.sum()} labelled test locations, classes {', '.join(landuse_test_classes(frame))}")
    print("\nbalanced recall@10\n\n| label's share of its disc | locations | model | untrained |\n|---|---|---|---|")
    rows, by_class = {}, {}
    for name, vectors in embedders.items():
        same, valid = _neighbour_agreement(vectors[test], labels[test], xy[test], 10, exclude_m)
        kept = counted[test] & (valid > 0)
        agreement, kept_labels, kept_purity = same[kept] / valid[kept], labels[test][kept], purity[test][kept]
        rows[name] = banded_recall(agreement, kept_labels, kept_purity)
        by_class[name] = {  # one class's balanced recall is its mean agreement
            c: banded_recall(agreement[of], kept_labels[of], kept_purity[of])
            for c in landuse_test_classes(frame)
            if (of := kept_labels == c).any()
        }
    print_bands(rows)
    for c in by_class["model"]:
        print(f"\n{c}: the share of its 10 neighbours with its class\n")
        print("| label's share of its disc | locations | model | untrained |\n|---|---|---|---|")
        print_bands({name: classes[c] for name, classes in by_class.items()})
    print("\nthe stem's response to a uniform fill of each channel (norm, after batch norm)\n")
    print("| channel | model | untrained |\n|---|---|---|")
    responses = {"model": fill_response(load_encoder(model["weights_path"])), "untrained": fill_response(untrained)}
    for i, channel in enumerate(reader.channel_names):
        print(f"| {channel} | {responses['model'][i]:.2f} | {responses['untrained'][i]:.2f} |")
    probe_classes = landuse_probe_classes(frame)
    if len(probe_classes) < 2:
        print(f"\nno land-use probe: {len(probe_classes)} class(es) with enough train and test locations")
        return 0
    scored = test & np.isin(labels, probe_classes)  # the probe's test locations, in its order
    print(f"\nland-use probe macro-F1 ({', '.join(probe_classes)})\n")
    print("| label's share of its disc | locations | model | untrained |\n|---|---|---|---|")
    rows = {}
    for name, vectors in embedders.items():
        rows[name] = banded_probe(purity[scored], *landuse_probe_predictions(vectors, frame, config.seed))
    print_bands(rows)
    return 0


def print_bands(rows: dict[str, list[tuple[int, float]]]) -> None:
    names = [f"{low:g}–{high:g}" for low, high in BANDS] + ["all"]
    for name, m, u in zip(names, rows["model"], rows["untrained"], strict=True):
        print(f"| {name} | {m[0]} | {m[1]:.3f} | {u[1]:.3f} |")


if __name__ == "__main__":
    raise SystemExit(main())
