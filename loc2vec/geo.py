"""Regions and coordinate reference systems."""

from __future__ import annotations

import math
from dataclasses import dataclass

from pyproj import CRS, Transformer

from loc2vec.errors import ConfigError


@dataclass(frozen=True)
class BBox:
    """A lon/lat bounding box (WGS84)."""

    min_lon: float
    min_lat: float
    max_lon: float
    max_lat: float

    def __post_init__(self) -> None:
        values = (self.min_lon, self.min_lat, self.max_lon, self.max_lat)
        if not all(math.isfinite(v) for v in values):
            raise ConfigError(f"bbox has non-finite values: {values}")
        if not (-180 <= self.min_lon < self.max_lon <= 180 and -90 <= self.min_lat < self.max_lat <= 90):
            raise ConfigError(f"invalid bbox {values}: need -180<=min_lon<max_lon<=180 and -90<=min_lat<max_lat<=90")

    @classmethod
    def parse(cls, text: str) -> BBox:
        """Parse ``"min_lon,min_lat,max_lon,max_lat"``."""
        parts = [p.strip() for p in text.split(",")]
        if len(parts) != 4:
            raise ConfigError(f"bbox must be 'min_lon,min_lat,max_lon,max_lat', got {text!r}")
        try:
            return cls(*(float(p) for p in parts))
        except ValueError as exc:
            raise ConfigError(f"bbox must hold four numbers, got {text!r}") from exc

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.min_lon, self.min_lat, self.max_lon, self.max_lat)

    def intersects(self, other: BBox) -> bool:
        return not (
            self.max_lon <= other.min_lon
            or other.max_lon <= self.min_lon
            or self.max_lat <= other.min_lat
            or other.max_lat <= self.min_lat
        )

    def intersection(self, other: BBox) -> BBox:
        if not self.intersects(other):
            raise ConfigError(f"regions {self.as_tuple()} and {other.as_tuple()} do not overlap")
        return BBox(
            max(self.min_lon, other.min_lon),
            max(self.min_lat, other.min_lat),
            min(self.max_lon, other.max_lon),
            min(self.max_lat, other.max_lat),
        )

    def __str__(self) -> str:
        return ",".join(f"{v:.6f}" for v in self.as_tuple())


def utm_crs_for(bbox: BBox) -> CRS:
    """The UTM zone CRS of the bbox's centre: metric, conformal, about 1 m in 2,500 scale error."""
    lon = (bbox.min_lon + bbox.max_lon) / 2
    lat = (bbox.min_lat + bbox.max_lat) / 2
    zone = int((lon + 180) // 6) % 60 + 1
    epsg = (32600 if lat >= 0 else 32700) + zone
    return CRS.from_epsg(epsg)


def to_crs_transformer(crs: CRS) -> Transformer:
    """lon/lat -> crs (always_xy)."""
    return Transformer.from_crs("EPSG:4326", crs, always_xy=True)


def from_crs_transformer(crs: CRS) -> Transformer:
    """crs -> lon/lat (always_xy)."""
    return Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
