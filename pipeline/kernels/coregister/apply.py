"""Applying a co-registration shift: sub-pixel resampling of images and of validity masks.

Pure kernels, numpy in -> numpy out, dask in -> dask out (lazy, through ``map_overlap``),
``xarray.DataArray`` in -> ``DataArray`` out with the same coordinates. The public names are
re-exported by :mod:`pipeline.kernels.coregister.shift`; import them from there.

Shift convention (see ``notes/CONTEXT.md``): ``shift_x_px``, ``shift_y_px`` say where the
target's content lies relative to the reference, EAST and NORTH positive, so a feature at
``(row, col)`` of the reference appears at ``(row - shift_y_px, col + shift_x_px)`` of the target.
Applying the shift brings that content back: ``aligned[row, col] = target[row - shift_y_px,
col + shift_x_px]``.
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np
from scipy import ndimage

_INTEGER_EPS = 1e-6
"""A sampling position closer than this to a pixel centre is read from that pixel alone."""

_SPLINE_TAIL_PX = 12
"""Extra overlap for the cubic spline prefilter: its influence decays as 0.268**n, < 1e-6 at 12."""

_FILL_SIGMA_PX = 2.0
"""Gaussian scale of the normalised convolution that fills no-data pixels before resampling."""

_FILL_RADIUS_PX = 8
"""Reach of that fill (``truncate=4`` sigma)."""


def _array_offset(shift_x_px: float, shift_y_px: float) -> tuple[float, float]:
    """Sampling offset (rows, cols): ``aligned[p] = image[p + offset]``."""
    return -float(shift_y_px), float(shift_x_px)


def _taps(offset: float, order: int) -> tuple[int, ...]:
    """Integer source offsets read by a spline of ``order`` sampling at ``p + offset``.

    Parameters
    ----------
    offset : float
        Sampling offset along one axis, in pixels.
    order : int
        Spline order (0, 1 or 3 in practice); an order-n spline reads n + 1 pixels.

    Returns
    -------
    tuple of int
        The offsets ``k`` of the pixels ``p + k`` the sample depends on.
    """
    nearest = round(offset)
    if order == 0 or abs(offset - nearest) < _INTEGER_EPS:
        return (int(nearest),)
    if order % 2 == 1:
        base = math.floor(offset)
        half = (order - 1) // 2
        return tuple(range(base - half, base + half + 2))
    return tuple(range(int(nearest) - order // 2, int(nearest) + order // 2 + 1))


def _take_shifted(valid: np.ndarray, k: int, axis: int) -> np.ndarray:
    """``out[..., p, ...] = valid[..., p + k, ...]`` along ``axis``, False beyond the edges."""
    out = np.zeros_like(valid)
    n = valid.shape[axis]
    if abs(k) >= n:
        return out
    src = [slice(None)] * valid.ndim
    dst = [slice(None)] * valid.ndim
    if k >= 0:
        src[axis], dst[axis] = slice(k, n), slice(0, n - k)
    else:
        src[axis], dst[axis] = slice(0, n + k), slice(-k, n)
    out[tuple(dst)] = valid[tuple(src)]
    return out


def _shift_mask_np(valid: np.ndarray, offset: tuple[float, float], order: int) -> np.ndarray:
    """Numpy kernel of :func:`apply_shift_mask` over the last two axes."""
    valid = np.asarray(valid, dtype=bool)
    out_rows = np.ones_like(valid)
    for k in _taps(offset[0], order):
        out_rows &= _take_shifted(valid, k, valid.ndim - 2)
    out = np.ones_like(valid)
    for k in _taps(offset[1], order):
        out &= _take_shifted(out_rows, k, valid.ndim - 1)
    return out


def _fill_nodata(plane: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Fill non-finite pixels with a local mean of their finite neighbours (0 where none).

    The fill only feeds the spline prefilter; filled pixels are masked again after resampling.
    """
    if finite.all():
        return plane
    data = np.where(finite, plane, 0.0)
    weight = finite.astype(plane.dtype)
    num = ndimage.gaussian_filter(data, _FILL_SIGMA_PX, mode="constant", truncate=4.0)
    den = ndimage.gaussian_filter(weight, _FILL_SIGMA_PX, mode="constant", truncate=4.0)
    local = np.divide(num, den, out=np.zeros_like(num), where=den > 1e-6)
    return np.where(finite, plane, local)


def _shift_image_np(
    image: np.ndarray, offset: tuple[float, float], order: int, fill: float
) -> np.ndarray:
    """Numpy kernel of :func:`apply_shift` over the last two axes."""
    image = np.asarray(image)
    dtype = image.dtype if np.issubdtype(image.dtype, np.floating) else np.dtype(np.float32)
    planes = image.astype(dtype, copy=False).reshape((-1, *image.shape[-2:]))
    out = np.empty(planes.shape, dtype=dtype)
    shift = (-offset[0], -offset[1])
    for i, plane in enumerate(planes):
        finite = np.isfinite(plane)
        filled = _fill_nodata(plane, finite)
        shifted = ndimage.shift(filled, shift, order=order, mode="nearest", prefilter=True)
        keep = _shift_mask_np(finite, offset, order)
        out[i] = np.where(keep, shifted, fill)
    return out.reshape(image.shape)


def _depth(offset: tuple[float, float], ndim: int, extra: int) -> dict[int, int]:
    """``map_overlap`` depth per axis: zero on leading axes, shift + ``extra`` on (Y, X)."""
    depth = dict.fromkeys(range(ndim - 2), 0)
    depth[ndim - 2] = math.ceil(abs(offset[0])) + extra
    depth[ndim - 1] = math.ceil(abs(offset[1])) + extra
    return depth


def _check_2d(image: Any, what: str) -> None:
    if getattr(image, "ndim", 0) < 2:
        raise ValueError(f"{what} must have at least 2 dimensions (..., Y, X), got {image.shape}")


def apply_shift(
    image: Any,
    shift_x_px: float,
    shift_y_px: float,
    *,
    order: int = 3,
    fill: float = np.nan,
) -> Any:
    """Resample ``image`` so that content displaced by the shift returns to the reference grid.

    ``apply_shift(target, est.shift_x_px, est.shift_y_px)`` aligns a target to its reference
    (see :func:`pipeline.kernels.coregister.shift.estimate_shift`).

    Parameters
    ----------
    image : numpy.ndarray, dask.array.Array or xarray.DataArray
        Image of shape (Y, X) or (..., Y, X); leading axes (time, band) are resampled plane by
        plane. NaN marks no data. Integer images are resampled as float32.
    shift_x_px, shift_y_px : float
        Where the image's content lies relative to the reference grid, in pixels, EAST and NORTH
        positive.
    order : int, optional
        Spline order of :func:`scipy.ndimage.shift` (3 = cubic spline with prefilter, which blurs
        little; 1 = bilinear).
    fill : float, optional
        Value of output pixels that draw on no-data pixels or on pixels beyond the image edge.

    Returns
    -------
    Same type as ``image``
        The aligned image, same shape; float dtype. A dask input gives a lazy dask result
        computed with ``map_overlap`` (overlap ``ceil(|shift|) + 20`` px; dask merges chunks
        smaller than that), equal to the numpy result to about 1e-6.

    Notes
    -----
    No-data pixels are filled with a local mean before the spline prefilter, and every output
    pixel whose spline support (4 x 4 source pixels for a cubic, 1 pixel at whole-pixel shifts)
    touches a no-data or out-of-image pixel is set to ``fill``, as :func:`apply_shift_mask` says.
    """
    if _is_dataarray(image):
        data = apply_shift(image.data, shift_x_px, shift_y_px, order=order, fill=fill)
        return image.copy(data=data)
    _check_2d(image, "image")
    offset = _array_offset(shift_x_px, shift_y_px)
    if isinstance(image, da.Array):
        dtype = image.dtype if np.issubdtype(image.dtype, np.floating) else np.dtype(np.float32)
        depth = _depth(offset, image.ndim, _SPLINE_TAIL_PX + _FILL_RADIUS_PX)
        return image.map_overlap(
            _shift_image_np,
            depth=depth,
            boundary="none",
            dtype=dtype,
            offset=offset,
            order=order,
            fill=fill,
        )
    return _shift_image_np(np.asarray(image), offset, order, fill)


def apply_shift_mask(valid: Any, shift_x_px: float, shift_y_px: float, *, order: int = 3) -> Any:
    """Shift a validity mask the way :func:`apply_shift` shifts an image.

    Parameters
    ----------
    valid : numpy.ndarray, dask.array.Array or xarray.DataArray
        Boolean mask (Y, X) or (..., Y, X), True = usable pixel.
    shift_x_px, shift_y_px : float
        Content displacement, EAST and NORTH positive (as for :func:`apply_shift`).
    order : int, optional
        Spline order of the matching :func:`apply_shift` call (sets the support read per pixel).

    Returns
    -------
    Same type as ``valid``
        Boolean mask: a pixel stays valid only if every source pixel its resampled value draws
        on (the 4 x 4 cubic support, or the single pixel at whole-pixel shifts) was valid and
        inside the image.
    """
    if _is_dataarray(valid):
        return valid.copy(data=apply_shift_mask(valid.data, shift_x_px, shift_y_px, order=order))
    _check_2d(valid, "valid")
    offset = _array_offset(shift_x_px, shift_y_px)
    if isinstance(valid, da.Array):
        depth = _depth(offset, valid.ndim, 2 + order // 2)
        return valid.astype(bool).map_overlap(
            _shift_mask_np, depth=depth, boundary="none", dtype=bool, offset=offset, order=order
        )
    return _shift_mask_np(np.asarray(valid, dtype=bool), offset, order)


def _is_dataarray(obj: Any) -> bool:
    """True for an ``xarray.DataArray`` (checked without importing xarray eagerly)."""
    return type(obj).__name__ == "DataArray" and hasattr(obj, "dims") and hasattr(obj, "copy")
