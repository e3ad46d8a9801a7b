"""Label rasters to lon/lat GeoJSON objects (pipeline.kernels.detect.objects)."""

from __future__ import annotations

import numpy as np
import pytest
import shapely
from pyproj import Transformer
from shapely.geometry import shape

from pipeline.errors import DataError
from pipeline.grid import grid_transform
from pipeline.kernels.detect.objects import (
    label_geometries,
    region_features,
    zone_of_labels,
)

X0, Y0, RES = 766000.0, 3920000.0, 10.0
NY, NX = 40, 50
CRS = "EPSG:32636"


def _transform():
    x = X0 + RES / 2 + RES * np.arange(NX)
    y = Y0 - RES / 2 - RES * np.arange(NY)
    return grid_transform(x, y)


def _to_utm(geom: shapely.Geometry) -> shapely.Geometry:
    tr = Transformer.from_crs(4326, 32636, always_xy=True)

    def fwd(coords: np.ndarray) -> np.ndarray:
        return np.column_stack(tr.transform(coords[:, 0], coords[:, 1]))

    return shapely.transform(geom, fwd)


def test_grid_transform_maps_pixel_corners() -> None:
    t = _transform()
    assert t @ (0, 0) == (X0, Y0)
    assert t @ (NX, NY) == (X0 + NX * RES, Y0 - NY * RES)
    with pytest.raises(DataError, match="2 x 2"):
        grid_transform(np.array([1.0]), np.array([1.0, 2.0]))


def test_rectangle_polygon_area_and_lonlat() -> None:
    labels = np.zeros((NY, NX), dtype=np.int32)
    labels[10:15, 20:28] = 1  # 5 rows x 8 cols
    (feat,) = region_features(labels, _transform(), CRS)
    p = feat["properties"]
    assert p["n_pixels"] == 40 and p["area_m2"] == pytest.approx(4000.0)
    assert feat["geometry"]["type"] == "Polygon"
    lonlat = shape(feat["geometry"])
    assert 35.0 < lonlat.centroid.x < 36.5 and 35.0 < lonlat.centroid.y < 36.0  # lon, lat order
    minx, miny, maxx, maxy = _to_utm(lonlat).bounds
    assert minx == pytest.approx(X0 + 200.0, abs=0.05)
    assert maxx == pytest.approx(X0 + 280.0, abs=0.05)
    assert maxy == pytest.approx(Y0 - 100.0, abs=0.05)
    assert miny == pytest.approx(Y0 - 150.0, abs=0.05)
    assert _to_utm(lonlat).area == pytest.approx(4000.0, rel=1e-4)
    to_ll = Transformer.from_crs(32636, 4326, always_xy=True)
    clon, clat = to_ll.transform(X0 + 240.0, Y0 - 125.0)
    assert p["centroid_lon"] == pytest.approx(clon, abs=1e-6)
    assert p["centroid_lat"] == pytest.approx(clat, abs=1e-6)


def test_diagonal_pixels_of_one_label_become_one_valid_multipolygon() -> None:
    labels = np.zeros((NY, NX), dtype=np.int32)
    labels[5, 5] = labels[6, 6] = 3
    geoms = label_geometries(labels, _transform())
    assert list(geoms) == [3]
    assert geoms[3].geom_type == "MultiPolygon" and geoms[3].is_valid
    assert geoms[3].area == pytest.approx(200.0)


def test_zone_is_the_largest_overlap_or_none() -> None:
    zones = np.zeros((NY, NX), dtype=np.int16)
    zones[:, :10] = 1  # apron
    zones[:, 10:20] = 2  # pier
    labels = np.zeros((NY, NX), dtype=np.int32)
    labels[0:2, 8:14] = 1  # 4 px in zone 1, 8 px in zone 2
    labels[30:33, 30:33] = 2  # outside every zone
    labels[20, 9:11] = 3  # a tie: the lower zone index
    assert zone_of_labels(labels, zones, 3, 2).tolist() == [-1, 1, -1, 0]
    feats = region_features(
        labels, _transform(), CRS, zones, ("apron-n", "pier-1"), ("apron", "pier")
    )
    by_label = {f["properties"]["label"]: f["properties"] for f in feats}
    assert (by_label[1]["zone"], by_label[1]["zone_kind"]) == ("pier-1", "pier")
    assert by_label[2]["zone"] is None and by_label[2]["zone_kind"] is None
    assert by_label[3]["zone"] == "apron-n"


def test_extra_properties_are_merged_in_label_order() -> None:
    labels = np.zeros((NY, NX), dtype=np.int32)
    labels[30:32, 30:32] = 2
    labels[1:3, 1:3] = 1
    feats = region_features(
        labels, _transform(), CRS, properties={1: {"id": "a", "kind": "removed"}, 2: {"id": "b"}}
    )
    assert [f["properties"]["id"] for f in feats] == ["a", "b"]
    assert feats[0]["properties"]["kind"] == "removed"
    assert feats[0]["properties"]["n_pixels"] == 4


def test_empty_labels_and_bad_zones() -> None:
    labels = np.zeros((NY, NX), dtype=np.int32)
    assert region_features(labels, _transform(), CRS) == []
    labels[0, 0] = 1
    with pytest.raises(DataError, match="zone raster"):
        region_features(labels, _transform(), CRS, np.zeros((3, 3), np.int16), ("a",), ("b",))
    with pytest.raises(DataError, match="kind"):
        region_features(labels, _transform(), CRS, np.zeros((NY, NX), np.int16), ("a",), ())
