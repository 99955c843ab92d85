"""SRAI peers on loc2vec's protocol: count, Hex2Vec and GeoVex embeddings of the protocol's points.

Writes one GeoParquet per embedder (the points' geometry and one ``vector`` column, same rows and order
as the points file) for ``loc2vec evaluate --embeddings``. Each point gets the embedding of the H3 cell
it lies in (resolution 9 by default, ~0.1 km²), computed by SRAI 0.10.2 from the OSM features of the
Hex2Vec tag filter in the extract. Runs in its own venv (SRAI pins its own torch, polars and DuckDB),
and imports nothing of loc2vec:

    python3 -m venv /tmp/srai-venv
    /tmp/srai-venv/bin/pip install torch==2.13.0 'srai[osm,torch]==0.10.2' quackosm==0.18.2 'polars<2' \\
        duckdb==1.5.5 duckdb-extension-spatial==1.5.5
    /tmp/srai-venv/bin/pip uninstall -y torchvision  # PyPI's build does not load beside torch 2.13.0's
    .venv/bin/loc2vec evaluate --pbf REGION --points-out /tmp/srai/points.parquet
    /tmp/srai-venv/bin/python benchmarks/srai_peers.py --pbf REGION.osm.pbf --points /tmp/srai/points.parquet \\
        --out /tmp/srai
    for e in count hex2vec geovex; do
        .venv/bin/loc2vec evaluate --pbf REGION --embeddings /tmp/srai/$e.parquet --out /tmp/srai/$e
    done

quackosm reads ``.osm.pbf`` only (convert ``.osm.bz2`` first, e.g. with pyosmium). Hex2Vec and GeoVex are
fitted on every cell of the region (SRAI's usual, transductive use: test blocks included), not on train
blocks only as loc2vec's model is. Count embeddings hold the counts of the very tags the POI labels and
the land-use classes are read from (``amenity=parking``, ``landuse=forest``, ...): on those tasks they
leak the label, and Hex2Vec/GeoVex, trained to reconstruct those counts, carry it compressed.
``--exclude-keys landuse,natural,leisure`` drops those keys from the tag filter (the keys loc2vec's land-use
classes are read from, ``loc2vec.evaluation.protocol.LANDUSE_KEYS``): the fair land-use comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import geopandas as gpd
import h3
import numpy as np
import pandas as pd

EMBEDDERS = ("count", "hex2vec", "geovex")


def install_spatial_extension() -> None:
    """quackosm loads DuckDB's spatial extension; with no network, install it once from the PyPI package."""
    import duckdb
    import duckdb_extension_spatial

    path = next(Path(duckdb_extension_spatial.__file__).parent.glob("extensions/*/spatial.duckdb_extension"))
    duckdb.connect().install_extension(str(path))


def tag_filter(exclude_keys: tuple[str, ...] = ()) -> dict:
    """SRAI's Hex2Vec tag filter without the keys ``exclude_keys`` (an unknown key is an error)."""
    from srai.loaders.osm_loaders.filters import HEX2VEC_FILTER

    unknown = sorted(set(exclude_keys) - set(HEX2VEC_FILTER))
    if unknown:
        raise SystemExit(f"--exclude-keys: not in the Hex2Vec filter: {', '.join(unknown)}")
    return {key: values for key, values in HEX2VEC_FILTER.items() if key not in exclude_keys}


def cell_embeddings(
    pbf: str,
    area: gpd.GeoDataFrame,
    resolution: int,
    epochs: int,
    work: Path,
    tags: dict,
    embedders: tuple[str, ...] = EMBEDDERS,
) -> dict:
    """``{embedder: DataFrame indexed by H3 cell}`` for ``embedders`` (of count, Hex2Vec and GeoVex) over
    ``area`` from the OSM features of the tag filter ``tags``."""
    if unknown := sorted(set(embedders) - set(EMBEDDERS)):
        raise SystemExit(f"--embedders: unknown {', '.join(unknown)} (choose from {', '.join(EMBEDDERS)})")
    import pytorch_lightning as pl
    from srai.embedders import CountEmbedder, GeoVexEmbedder, Hex2VecEmbedder
    from srai.joiners import IntersectionJoiner
    from srai.loaders import OSMPbfLoader
    from srai.neighbourhoods import H3Neighbourhood
    from srai.regionalizers import H3Regionalizer

    regions = H3Regionalizer(resolution=resolution).transform(area)
    features = OSMPbfLoader(pbf_file=pbf, download_directory=work / "files", verbosity_mode="silent").load(area, tags)
    joint = IntersectionJoiner().transform(regions, features)
    neighbourhood = H3Neighbourhood(regions)
    trainer = {
        "max_epochs": epochs,
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "logger": False,
        "enable_checkpointing": False,
        "default_root_dir": str(work),
    }
    fits = {
        "count": lambda: CountEmbedder(expected_output_features=tags).transform(regions, features, joint),
        "hex2vec": lambda: Hex2VecEmbedder(encoder_sizes=[150, 75, 50], expected_output_features=tags).fit_transform(
            regions, features, joint, neighbourhood, batch_size=64, trainer_kwargs=trainer
        ),
        "geovex": lambda: GeoVexEmbedder(
            target_features=tags, batch_size=64, neighbourhood_radius=4, embedding_size=32
        ).fit_transform(regions, features, joint, neighbourhood, trainer_kwargs=trainer),
    }
    out, seconds = {}, {}
    for name in embedders:
        started = time.perf_counter()
        pl.seed_everything(0, workers=True)  # the trained embedders start from the same seed whatever ran before
        out[name] = fits[name]()
        seconds[name] = time.perf_counter() - started
    return {"embeddings": out, "seconds": seconds, "regions": len(regions), "features": len(features)}


def point_vectors(points: gpd.GeoDataFrame, cells: pd.DataFrame, resolution: int) -> tuple[np.ndarray, int]:
    """Each point's cell embedding; points whose cell has none (outside the fitted cells) get the mean
    vector. Returns the vectors and how many points had no cell embedding."""
    lonlat = zip(points.geometry.x, points.geometry.y, strict=True)
    ids = [h3.latlng_to_cell(lat, lon, resolution) for lon, lat in lonlat]
    table = cells.astype(np.float64)
    found = table.reindex(ids)
    missing = found.isna().any(axis=1).to_numpy()
    vectors = found.to_numpy(copy=True)
    vectors[missing] = table.to_numpy().mean(axis=0)
    return vectors.astype(np.float32), int(missing.sum())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pbf", required=True, help="the extract as .osm.pbf (quackosm reads PBF only)")
    parser.add_argument("--points", required=True, help="loc2vec evaluate --points-out file")
    parser.add_argument("--out", required=True, help="directory for <embedder>.parquet and srai.json")
    parser.add_argument("--resolution", type=int, default=9, help="H3 resolution of the cells")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of Hex2Vec and GeoVex")
    parser.add_argument(
        "--exclude-keys", default="", help="comma-separated OSM keys left out of the tag filter (e.g. landuse)"
    )
    parser.add_argument("--embedders", default="count,hex2vec,geovex", help="comma-separated subset to compute")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    install_spatial_extension()
    points = gpd.read_parquet(args.points)
    area = gpd.GeoDataFrame(geometry=[points.geometry.union_all().convex_hull.buffer(0.005)], crs="EPSG:4326")
    exclude = tuple(k.strip() for k in args.exclude_keys.split(",") if k.strip())
    tags = tag_filter(exclude)
    embedders = tuple(e.strip() for e in args.embedders.split(",") if e.strip())
    result = cell_embeddings(args.pbf, area, args.resolution, args.epochs, out, tags, embedders)
    report = {k: v for k, v in result.items() if k != "embeddings"}
    report["excluded_keys"] = list(exclude)
    for name, cells in result["embeddings"].items():
        cells.to_parquet(out / f"cells-{name}.parquet")  # per H3 cell, as SRAI returned them
        vectors, missing = point_vectors(points, cells, args.resolution)
        frame = gpd.GeoDataFrame({"vector": list(vectors)}, geometry=points.geometry, crs="EPSG:4326")
        frame.to_parquet(out / f"{name}.parquet")
        report[name] = {"dim": int(vectors.shape[1]), "points_without_cell": missing}
        print(f"{name}: {vectors.shape[1]}-d, {missing} of {len(points)} points without a cell embedding")
    (out / "srai.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
