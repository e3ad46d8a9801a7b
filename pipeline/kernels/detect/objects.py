"""Labelled change regions -> GeoJSON objects (pure: label raster, grid and CRS in; features out).

A label raster holds one integer per object (0 = none) on a north-up grid. Each object becomes one
GeoJSON Feature in lon/lat (EPSG:4326):

- geometry: the union of the object's pixel squares (:func:`rasterio.features.shapes` with
  4-connectivity, then a union per label, so two pixels touching only at a corner give a
  MultiPolygon rather than an invalid self-touching ring), reprojected vertex by vertex with pyproj;
- ``n_pixels`` and ``area_m2`` = ``n_pixels`` x pixel area (the grid's own metric units);
- ``centroid_lon`` / ``centroid_lat``: the polygon centroid in the grid CRS, reprojected;
- ``zone`` / ``zone_kind``: the zone holding most of the object's pixels, ``None`` when it touches
  no zone (ties go to the lower zone index);
- shape (:func:`shape_measures`): ``length_m`` and ``width_m`` (from the second moments of the
  pixel centres: a filled ``L x W`` rectangle of pixels gives ``L`` and ``W``), ``elongation``
  = length / width, ``solidity`` = area / area of the convex hull of the polygon (1 for a
  compact blob, low for a ragged or hollow region).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import shapely
from affine import Affine
from pyproj import CRS, Transformer
from rasterio.features import shapes
from shapely.geometry import mapping, shape

from pipeline.errors import DataError

LONLAT_DIGITS = 7
"""Decimals of lon/lat coordinates written (about 1 cm)."""


def label_geometries(labels: np.ndarray, transform: Affine) -> dict[int, shapely.Geometry]:
    """Polygon (or MultiPolygon) of every non-zero label, in the grid CRS.

    Parameters
    ----------
    labels
        (y, x) integer label raster, 0 = background.
    transform
        Affine transform of the grid.

    Returns
    -------
    dict
        Label -> shapely geometry.
    """
    lab = np.ascontiguousarray(labels, dtype=np.int32)
    parts: dict[int, list] = {}
    for geom, value in shapes(lab, mask=lab > 0, connectivity=4, transform=transform):
        parts.setdefault(int(value), []).append(shape(geom))
    return {k: (v[0] if len(v) == 1 else shapely.union_all(v)) for k, v in sorted(parts.items())}


def zone_of_labels(
    labels: np.ndarray, zone_raster: np.ndarray, n_labels: int, n_zones: int
) -> np.ndarray:
    """Index (0-based) of the zone overlapping each label most, -1 when it overlaps none.

    Parameters
    ----------
    labels
        (y, x) labels 0..n_labels.
    zone_raster
        (y, x) int: 0 = no zone, i + 1 = zone i.
    n_labels, n_zones
        Number of labels and zones.

    Returns
    -------
    numpy.ndarray
        (n_labels + 1,) int; entry 0 (background) is -1.
    """
    lab = labels.ravel().astype(np.int64)
    zon = np.clip(zone_raster.ravel().astype(np.int64), 0, n_zones)
    counts = np.bincount(lab * (n_zones + 1) + zon, minlength=(n_labels + 1) * (n_zones + 1))
    counts = counts.reshape(n_labels + 1, n_zones + 1)[:, 1:]
    best = np.argmax(counts, axis=1) if n_zones else np.zeros(n_labels + 1, dtype=np.int64)
    has = counts.sum(axis=1) > 0 if n_zones else np.zeros(n_labels + 1, dtype=bool)
    out = np.where(has, best, -1)
    out[0] = -1
    return out


def shape_measures(
    labels: np.ndarray, transform: Affine, geoms: Mapping[int, shapely.Geometry]
) -> dict[int, dict[str, float]]:
    """Length, width, elongation and solidity of every label (see the module docstring).

    Parameters
    ----------
    labels
        (y, x) integer label raster, 0 = background.
    transform
        Affine transform of the grid (metric).
    geoms
        Label -> its polygon in the grid CRS (:func:`label_geometries`).

    Returns
    -------
    dict
        Label -> ``length_m``, ``width_m``, ``elongation``, ``solidity``.
    """
    lab = np.asarray(labels).ravel().astype(np.int64)
    n = int(lab.max()) if lab.size else 0
    if n == 0:
        return {}
    rows, cols = np.indices(labels.shape)
    x = transform.c + (cols.ravel() + 0.5) * transform.a
    y = transform.f + (rows.ravel() + 0.5) * transform.e
    cnt = np.bincount(lab, minlength=n + 1).astype(float)
    safe = np.maximum(cnt, 1)
    mx, my = np.bincount(lab, x, n + 1) / safe, np.bincount(lab, y, n + 1) / safe
    sxx = np.bincount(lab, x * x, n + 1) / safe - mx**2
    syy = np.bincount(lab, y * y, n + 1) / safe - my**2
    sxy = np.bincount(lab, x * y, n + 1) / safe - mx * my
    half = np.sqrt(np.maximum(((sxx - syy) / 2) ** 2 + sxy**2, 0))
    big, small = (sxx + syy) / 2 + half, np.maximum((sxx + syy) / 2 - half, 0)
    res2 = abs(transform.a * transform.e)
    length = np.sqrt(12 * big + res2)
    width = np.sqrt(12 * small + res2)
    out = {}
    for label, geom in geoms.items():
        hull = geom.convex_hull.area
        out[label] = {
            "length_m": round(float(length[label]), 1),
            "width_m": round(float(width[label]), 1),
            "elongation": round(float(length[label] / width[label]), 3),
            "solidity": round(float(geom.area / hull) if hull > 0 else 1.0, 3),
        }
    return out


def region_features(
    labels: np.ndarray,
    transform: Affine,
    crs: str,
    zone_raster: np.ndarray | None = None,
    zone_names: Sequence[str] = (),
    zone_kinds: Sequence[str] = (),
    properties: Mapping[int, Mapping[str, Any]] | None = None,
) -> list[dict]:
    """One lon/lat GeoJSON Feature per non-zero label, in label order.

    Parameters
    ----------
    labels
        (y, x) integer label raster, 0 = background.
    transform
        Affine transform of the grid (see :func:`pipeline.grid.grid_transform`).
    crs
        CRS of the grid, e.g. ``"EPSG:32636"`` (metric).
    zone_raster
        (y, x) int zones (0 = none, i + 1 = ``zone_names[i]``), or None.
    zone_names, zone_kinds
        Name and kind of each zone.
    properties
        Extra properties per label, merged into each Feature's properties (first).

    Returns
    -------
    list of dict
        Features with properties ``label``, ``n_pixels``, ``area_m2``, ``centroid_lon``,
        ``centroid_lat``, ``zone``, ``zone_kind`` plus the extras.

    Raises
    ------
    DataError
        When the zone raster does not match the label raster or the zone lists disagree.
    """
    labels = np.asarray(labels)
    if len(zone_names) != len(zone_kinds):
        raise DataError(
            f"{len(zone_names)} zone names but {len(zone_kinds)} zone kinds: give one kind per zone"
        )
    if zone_raster is not None and zone_raster.shape != labels.shape:
        raise DataError(
            f"zone raster {zone_raster.shape} does not match the grid {labels.shape}: "
            "rasterise the zones on the cube's grid"
        )
    geoms = label_geometries(labels, transform)
    if not geoms:
        return []
    n_labels = int(labels.max())
    n_px = np.bincount(labels.ravel().astype(np.int64), minlength=n_labels + 1)
    zones = (
        zone_of_labels(labels, zone_raster, n_labels, len(zone_names))
        if zone_raster is not None
        else np.full(n_labels + 1, -1)
    )
    pixel_area_m2 = abs(transform.a * transform.e - transform.b * transform.d)
    shapes_of = shape_measures(labels, transform, geoms)
    to_lonlat = Transformer.from_crs(CRS.from_user_input(crs), 4326, always_xy=True)

    def project(coords: np.ndarray) -> np.ndarray:
        lon, lat = to_lonlat.transform(coords[:, 0], coords[:, 1])
        return np.round(np.column_stack([lon, lat]), LONLAT_DIGITS)

    features = []
    for label, geom in geoms.items():
        c = geom.centroid
        clon, clat = to_lonlat.transform(c.x, c.y)
        zi = int(zones[label])
        props: dict[str, Any] = dict(properties.get(label, {})) if properties else {}
        props.update(
            label=label,
            n_pixels=int(n_px[label]),
            area_m2=float(n_px[label] * pixel_area_m2),
            centroid_lon=round(float(clon), LONLAT_DIGITS),
            centroid_lat=round(float(clat), LONLAT_DIGITS),
            zone=zone_names[zi] if zi >= 0 else None,
            zone_kind=zone_kinds[zi] if zi >= 0 else None,
            **shapes_of.get(label, {}),
        )
        features.append(
            {
                "type": "Feature",
                "geometry": mapping(shapely.transform(geom, project)),
                "properties": props,
            }
        )
    return features
