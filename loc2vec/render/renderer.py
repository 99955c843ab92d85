"""Render windows of the mosaic with Mapnik: one map per channel, data held in memory datasources."""

from __future__ import annotations

import geopandas as gpd
import mapnik
import numpy as np
import shapely

from loc2vec.grid import MosaicGrid, Window
from loc2vec.render.styles import map_xml
from loc2vec.schema import ChannelSchema

BUFFER_PX = 64


def _datasource(geoms: np.ndarray, values: np.ndarray) -> mapnik.MemoryDatasource:
    ds = mapnik.MemoryDatasource()
    ctx = mapnik.Context()
    ctx.push("value")
    for i, (wkb, value) in enumerate(zip(shapely.to_wkb(geoms), values, strict=True)):
        feature = mapnik.Feature(ctx, i)
        feature.geometry = mapnik.Geometry.from_wkb(wkb)
        feature["value"] = str(value)
        ds.add_feature(feature)
    return ds


class ChannelRenderer:
    """Renders any window of ``grid`` from features already projected to the grid's CRS."""

    def __init__(self, features: gpd.GeoDataFrame, schema: ChannelSchema, grid: MosaicGrid) -> None:
        if features.crs is None or features.crs.to_epsg() != grid.crs_epsg:
            features = features.to_crs(grid.crs)
        self.schema, self.grid = schema, grid
        srs = f"epsg:{grid.crs_epsg}"
        xml = map_xml(schema, grid.resolution, srs)
        self.maps: list[mapnik.Map] = []
        for index, channel in enumerate(schema.channels):
            m = mapnik.Map(grid.unit_px, grid.unit_px)
            mapnik.load_map_from_string(m, xml)
            m.buffer_size = BUFFER_PX
            rows = features[features["channel_index"] == index]
            for kind in ("area", "line", "point"):
                sub = rows[rows["kind"] == kind]
                if sub.empty:
                    continue
                geoms = sub.geometry.values
                if kind == "point":
                    geoms = shapely.buffer(np.asarray(geoms), channel.point_radius_m, quad_segs=8)
                layer = mapnik.Layer(f"{channel.name}_{kind}", srs)
                layer.datasource = _datasource(np.asarray(geoms), sub["value"].to_numpy())
                layer.styles.append(f"{channel.name}_{kind}")
                m.layers.append(layer)
            self.maps.append(m)

    def render(self, window: Window) -> np.ndarray:
        """``(channels, h, w)`` uint8 coverage of ``window``."""
        out = np.zeros((len(self.maps), window.height, window.width), dtype=np.uint8)
        minx, miny, maxx, maxy = self.grid.window_bounds(window)
        image = mapnik.Image(window.width, window.height)
        for index, m in enumerate(self.maps):
            if not len(m.layers):
                continue
            if m.width != window.width or m.height != window.height:
                m.resize(window.width, window.height)
            m.zoom_to_box(mapnik.Box2d(minx, miny, maxx, maxy))
            image.clear()
            mapnik.render(m, image)
            rgba = np.frombuffer(image.to_string(), dtype=np.uint8)
            out[index] = rgba.reshape(window.height, window.width, 4)[:, :, 3]
        return out
