"""A pixel's observations in time order, its valid ones first ("ranks"), and medians over
short time axes (pure numpy; the numpy engine of :mod:`pipeline.kernels.detect.multidate`)."""

from __future__ import annotations

import numpy as np


def rank_order(valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order of each pixel's observations with the valid ones first, in time order.

    Parameters
    ----------
    valid
        (T, ...) bool.

    Returns
    -------
    order : numpy.ndarray
        (T, ...) int: ``order[k]`` = date index of the pixel's ``k``-th valid observation
        (then its invalid dates).
    n : numpy.ndarray
        (...) int: number of valid observations.
    """
    order = np.argsort(~valid, axis=0, kind="stable")
    return order, valid.sum(axis=0)


def to_rank(a: np.ndarray, order: np.ndarray) -> np.ndarray:
    """(T, ...) or (T, B, ...) array in date order -> rank order."""
    idx = order if a.ndim == order.ndim else order[:, None]
    return np.take_along_axis(a, idx, axis=0)


def from_rank(a: np.ndarray, order: np.ndarray, n: np.ndarray, fill: float) -> np.ndarray:
    """Inverse of :func:`to_rank`; dates without a valid observation get ``fill``."""
    ok = np.arange(order.shape[0]).reshape((-1,) + (1,) * n.ndim) < n
    if a.ndim != order.ndim:
        ok = ok[:, None]
    out = np.empty(a.shape, dtype=a.dtype)
    idx = order if a.ndim == order.ndim else np.broadcast_to(order[:, None], a.shape)
    np.put_along_axis(out, idx, np.where(ok, a, np.asarray(fill, dtype=a.dtype)), axis=0)
    return out


def nanmedian_time(a: np.ndarray) -> np.ndarray:
    """Median over axis 0 ignoring NaN (NaN when all are NaN); sort-based, for short axes."""
    srt = np.sort(a, axis=0)
    cnt = (~np.isnan(a)).sum(axis=0)
    lo = np.take_along_axis(srt, np.maximum((cnt - 1) // 2, 0)[None], axis=0)[0]
    hi = np.take_along_axis(srt, np.minimum(cnt // 2, a.shape[0] - 1)[None], axis=0)[0]
    return np.where(cnt > 0, (lo + hi) / 2, np.nan).astype(np.float32)
