"""The evaluation protocol's points: held-out locations and POIs, with split, class and category.

Everything an embedder is scored on is a *point*: train/test anchor locations (a seeded subsample of
the spatial split) and OSM POIs (nodes and areas) of the most frequent categories, assigned to train or
test by the same spatial blocks. POIs in train blocks closer than the leak distance to a test anchor are
dropped. Each location gets its *dominant land-use class*: the tag value (``landuse=residential``,
``natural=scrub``, ``leisure=park``, ...) of the OSM land-use/land-cover areas covering most of a disc
around it, or ``none`` where no such area is mapped (those points are not scored for land-use
recall). The input draws these areas without their value (residential and commercial land are the same
fill), and a POI's category (``amenity=cafe``, ...) is never drawn as such (all POIs are the same disc),
so predicting either from the embedding is a real test.

Each point also lists the frequent POI categories with a POI within 100 m of it (``pois_nearby``,
``|``-separated), for the POI-presence probe. That probe runs over every train/test anchor (far more
labels than POI points): the anchors beyond the location subsample are points of kind ``anchor``, used
by that probe only.
"""

from __future__ import annotations

from dataclasses import dataclass

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree

from loc2vec.data.crops import CropGeometry
from loc2vec.data.samples import assign_blocks, busy_mask
from loc2vec.errors import ConfigError

POI_KEYS = ("amenity", "shop", "tourism", "leisure")
LANDUSE_KEYS = ("landuse", "natural", "leisure")
POINT_COLUMNS = ["point_id", "kind", "split", "x", "y", "lon", "lat", "category", "landuse_class", "pois_nearby"]
PRESENCE_SEP = "|"


@dataclass(frozen=True)
class ProtocolSpec:
    max_train_locations: int = 3000
    max_test_locations: int = 1500
    top_categories: int = 8
    min_train_per_category: int = 5
    landuse_radius_m: float = 50.0
    presence_categories: int = 8
    presence_radius_m: float = 100.0
    max_extra_anchors: int = 3000  # train/test anchors beyond the locations, for the POI-presence probe
    seed: int = 0


def landuse_classes(features: gpd.GeoDataFrame, xy: np.ndarray, crs, radius_m: float) -> np.ndarray:
    """``key=value`` of the land-use/land-cover area covering most of a disc around each point."""
    areas = features[(features["kind"] == "area") & features["key"].isin(LANDUSE_KEYS)].to_crs(crs)
    out = np.full(len(xy), "none", dtype=object)
    if areas.empty:
        return out
    labels = (areas["key"] + "=" + areas["value"]).to_numpy()
    polygons = areas.geometry.to_numpy()
    discs = shapely.buffer(shapely.points(xy), radius_m, quad_segs=8)
    disc_idx, poly_idx = shapely.STRtree(polygons).query(discs, predicate="intersects")
    if len(disc_idx) == 0:
        return out
    overlap = shapely.area(shapely.intersection(discs[disc_idx], polygons[poly_idx]))
    table = pd.DataFrame({"point": disc_idx, "label": labels[poly_idx], "area": overlap})
    best = (
        table.groupby(["point", "label"])["area"]
        .sum()
        .reset_index()
        .sort_values(["point", "area", "label"], ascending=[True, False, True], kind="stable")
    )
    best = best.drop_duplicates("point")
    out[best["point"].to_numpy()] = best["label"].to_numpy()
    return out


def pois_nearby(pois: pd.DataFrame, xy: np.ndarray, top: int, radius_m: float) -> np.ndarray:
    """For each point, the ``|``-joined sorted categories among the ``top`` most frequent of ``pois`` (columns
    x, y, category) with a POI within ``radius_m``; ``""`` where none."""
    counts = pois["category"].value_counts()
    frequent = [c for c in counts.index if PRESENCE_SEP not in c][:top]
    pois = pois[pois["category"].isin(frequent)]
    out = np.full(len(xy), "", dtype=object)
    if pois.empty or len(xy) == 0:
        return out
    categories = pois["category"].to_numpy()
    near = cKDTree(pois[["x", "y"]].to_numpy()).query_ball_point(np.asarray(xy, dtype=float), radius_m)
    for i, found in enumerate(near):
        if found:
            out[i] = PRESENCE_SEP.join(sorted(set(categories[found])))
    return out


def _subsample(frame: pd.DataFrame, n: int, seed: int) -> pd.DataFrame:
    return frame if len(frame) <= n else frame.sample(n=n, random_state=seed).sort_index()


def poi_points(features: gpd.GeoDataFrame, reader: CropGeometry) -> pd.DataFrame:
    """POIs inside the mosaic with their first POI key as category: nodes, and areas (at a point inside
    them) except land-cover keys (``leisure=park`` areas are scored by land-use recall). One row per
    OSM object."""
    kind, key = features["kind"], features["key"]
    selected = key.isin(POI_KEYS) & ((kind == "point") | ((kind == "area") & ~key.isin(LANDUSE_KEYS)))
    pois = features[selected].drop_duplicates(["osm_type", "osm_id"]).to_crs(reader.grid.crs)
    at = pois.geometry.representative_point()
    frame = pd.DataFrame(
        {
            "x": at.x.to_numpy(),
            "y": at.y.to_numpy(),
            "category": (pois["key"] + "=" + pois["value"]).to_numpy(),
        }
    )
    cols, rows = reader.grid.xy_to_pixel(frame["x"], frame["y"])
    inside = (cols >= 0) & (cols < reader.width) & (rows >= 0) & (rows < reader.height)
    return frame[np.asarray(inside)].reset_index(drop=True)


def build_points(
    samples: pd.DataFrame,
    features: gpd.GeoDataFrame,
    reader: CropGeometry,
    block_m: float,
    leak_distance_m: float,
    spec: ProtocolSpec = ProtocolSpec(),
) -> pd.DataFrame:
    """Every point the protocol needs an embedding for, with split, map class and POI category."""
    grid = reader.grid
    train = _subsample(samples[samples["split"] == "train"], spec.max_train_locations, spec.seed)
    test = _subsample(samples[samples["split"] == "test"], spec.max_test_locations, spec.seed)
    locations = pd.concat([train, test])[["x", "y", "split"]].assign(kind="location", category="")
    anchors = samples[samples["split"].isin(["train", "test"])].drop(index=locations.index)
    anchors = _subsample(anchors, spec.max_extra_anchors, spec.seed)[["x", "y", "split"]]
    anchors = anchors.assign(kind="anchor", category="")

    block_split = samples[samples["split"].isin(["train", "test"])].groupby("block")["split"].first()
    all_pois = poi_points(features, reader)
    pois = all_pois.copy()
    pois["split"] = assign_blocks(pois, grid.x0, grid.y0, block_m).map(block_split)
    pois = pois.dropna(subset=["split"])
    test_xy = samples.loc[samples["split"] == "test", ["x", "y"]].to_numpy()
    if len(test_xy):
        d, _ = cKDTree(test_xy).query(pois[["x", "y"]].to_numpy(), k=1)
        pois = pois[(pois["split"] == "test") | (d > leak_distance_m)]
    counts = pois[pois["split"] == "train"]["category"].value_counts()
    keep = [c for c in counts.index if counts[c] >= spec.min_train_per_category][: spec.top_categories]
    pois = pois[pois["category"].isin(keep)].assign(kind="poi")

    points = pd.concat([locations, pois, anchors], ignore_index=True)
    lon, lat = grid.pixel_to_lonlat(*grid.xy_to_pixel(points["x"], points["y"]))
    points["lon"], points["lat"] = lon, lat
    points["landuse_class"] = landuse_classes(features, points[["x", "y"]].to_numpy(), grid.crs, spec.landuse_radius_m)
    points["pois_nearby"] = pois_nearby(
        all_pois, points[["x", "y"]].to_numpy(), spec.presence_categories, spec.presence_radius_m
    )
    points["point_id"] = np.arange(len(points))
    if not (points["kind"] == "location").any() or not (points["split"] == "test").any():
        raise ConfigError("the protocol found no test locations: region too small for its split")
    return points[POINT_COLUMNS]


def to_geoparquet_frame(points: pd.DataFrame) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(points, geometry=gpd.points_from_xy(points["lon"], points["lat"]), crs="EPSG:4326")


def grid_points(reader: CropGeometry, spacing_m: float, window_px: int = 32) -> pd.DataFrame:
    """A regular grid over the mosaic, keeping points with something drawn around them."""
    grid = reader.grid
    step = spacing_m / grid.resolution
    cc, rr = np.meshgrid(np.arange(step / 2, reader.width, step), np.arange(step / 2, reader.height, step))
    cols, rows = cc.ravel(), rr.ravel()
    busy = busy_mask(reader, cols, rows, window_px)
    x, y = grid.pixel_to_xy(cols[busy], rows[busy])
    lon, lat = grid.pixel_to_lonlat(cols[busy], rows[busy])
    return pd.DataFrame({"x": x, "y": y, "lon": lon, "lat": lat})
