"""Raster grids, shared by every layer (pure): the one :class:`Grid` type, the ground size of its
pixels, and the affine transform of a regular grid of pixel centres.

Imports no layer of :mod:`pipeline`, so :mod:`pipeline.io`, :mod:`pipeline.kernels` and
:mod:`pipeline.stages` can all use it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine

from pipeline.errors import DataError


def grid_transform(x: np.ndarray, y: np.ndarray) -> Affine:
    """Affine transform of a regular grid from its pixel-centre coordinates.

    Parameters
    ----------
    x, y
        1-D pixel-centre coordinates (at least two each), metres in the grid CRS.

    Returns
    -------
    affine.Affine
        Maps (col, row) of pixel corners to (x, y).

    Raises
    ------
    DataError
        When the grid has fewer than two pixels along an axis.
    """
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 2 or y.size < 2:
        raise DataError(
            f"grid of {y.size} x {x.size} pixels: need at least 2 x 2 to know the pixel size"
        )
    dx, dy = (x[-1] - x[0]) / (x.size - 1), (y[-1] - y[0]) / (y.size - 1)
    return Affine(dx, 0.0, x[0] - dx / 2, 0.0, dy, y[0] - dy / 2)


@dataclass(frozen=True)
class Grid:
    """A north-up raster grid: CRS, affine transform (pixel corners) and shape (rows, cols)."""

    crs: Any
    """rasterio CRS."""
    transform: Affine
    """Maps (col, row) of pixel corners to (x, y) in ``crs``."""
    shape: tuple[int, int]
    """(rows, cols)."""

    def same_as(self, other: Grid) -> bool:
        """True when both grids are the same pixels (CRS, shape, transform within 1e-6 px)."""
        if self.shape != other.shape or self.crs != other.crs:
            return False
        tol = 1e-6 * max(abs(self.transform.a), abs(self.transform.e))
        return all(
            abs(a - b) <= tol for a, b in zip(self.transform[:6], other.transform[:6], strict=True)
        )

    @property
    def crs_name(self) -> str:
        """``EPSG:xxxx`` when the CRS has a code, else its WKT."""
        epsg = self.crs.to_epsg() if self.crs is not None else None
        return f"EPSG:{epsg}" if epsg else str(self.crs)


def pixel_size_m(grid: Grid) -> tuple[float, float]:
    """Ground size (x, y) of a pixel of ``grid`` in metres (geodesic at the centre if lon/lat)."""
    t = grid.transform
    step_x, step_y = math.hypot(t.a, t.d), math.hypot(t.b, t.e)
    if grid.crs.is_geographic:
        from pyproj import Geod

        lon, lat = t @ (grid.shape[1] / 2, grid.shape[0] / 2)
        geod = Geod(ellps="WGS84")
        dx = geod.inv(lon - step_x / 2, lat, lon + step_x / 2, lat)[2]
        dy = geod.inv(lon, lat - step_y / 2, lon, lat + step_y / 2)[2]
        return float(dx), float(dy)
    factor = float(grid.crs.linear_units_factor[1])
    return step_x * factor, step_y * factor
