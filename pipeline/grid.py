"""Grids shared by every layer: the affine transform of a regular grid of pixel centres (pure).

Imports no layer of :mod:`pipeline`, so :mod:`pipeline.io` and :mod:`pipeline.kernels` can both
use it.
"""

from __future__ import annotations

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
