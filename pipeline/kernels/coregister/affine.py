"""The affine co-registration model and its application (numpy, dask, xarray).

Pure kernels. :class:`AffineModel` says where each reference pixel lies in the target:
``(row_t, col_t) = matrix @ (row, col) + offset`` in array coordinates;
:meth:`AffineModel.shift_at` turns that into the ``shift_x_px`` (east) and ``shift_y_px``
(north) of ``notes/CONTEXT.md`` at any position. :func:`apply_affine` resamples a target onto
the reference grid with a prefiltered cubic spline (interpolating: it blurs little); on dask it
runs one task per output chunk on that chunk plus a margin (the model's largest displacement and
the spline's reach), so a whole Sentinel-2 tile needs memory for a few chunks only. Estimation
is in :mod:`pipeline.kernels.coregister.local`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from scipy import ndimage

from pipeline.kernels.coregister.apply import (
    _FILL_RADIUS_PX,
    _INTEGER_EPS,
    _SPLINE_TAIL_PX,
    _fill_nodata,
    _is_dataarray,
)

__all__ = ["AffineModel", "apply_affine", "apply_affine_mask", "fit_affine"]


@dataclass(frozen=True)
class AffineModel:
    """Where reference pixels lie in the target: ``(row_t, col_t) = matrix @ (row, col) + offset``.

    Array coordinates (pixel centres at integers). A global shift is the translation
    :meth:`from_shift`; :func:`pipeline.kernels.coregister.local.estimate_local` fits the general
    case.
    """

    matrix: tuple[tuple[float, float], tuple[float, float]]
    """Linear part, array axes (rows, cols)."""
    offset: tuple[float, float]
    """Translation (rows, cols), pixels."""

    @classmethod
    def from_shift(cls, shift_x_px: float, shift_y_px: float) -> AffineModel:
        """The pure translation of a global shift (east and north positive)."""
        return cls(((1.0, 0.0), (0.0, 1.0)), (-float(shift_y_px), float(shift_x_px)))

    @classmethod
    def from_arrays(cls, matrix: np.ndarray, offset: np.ndarray) -> AffineModel:
        """Build from a 2 x 2 matrix and a 2-vector."""
        m = np.asarray(matrix, dtype=np.float64)
        t = np.asarray(offset, dtype=np.float64)
        return cls(((m[0, 0], m[0, 1]), (m[1, 0], m[1, 1])), (t[0], t[1]))

    @property
    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(matrix, offset)`` as float64 arrays."""
        return np.asarray(self.matrix, dtype=np.float64), np.asarray(self.offset, np.float64)

    def shift_at(self, row: Any, col: Any) -> tuple[Any, Any]:
        """``(shift_x_px, shift_y_px)`` of the content at reference position ``(row, col)``."""
        m, t = self.arrays
        row_t = m[0, 0] * row + m[0, 1] * col + t[0]
        col_t = m[1, 0] * row + m[1, 1] * col + t[1]
        return col_t - col, -(row_t - row)

    def max_displacement_px(self, shape: tuple[int, int]) -> float:
        """Largest displacement over an image of ``shape`` (reached at a corner: it is affine)."""
        rows = np.array([0.0, 0.0, shape[0] - 1.0, shape[0] - 1.0])
        cols = np.array([0.0, shape[1] - 1.0, 0.0, shape[1] - 1.0])
        sx, sy = self.shift_at(rows, cols)
        return float(np.max(np.hypot(sx, sy)))

    def max_axis_shift_px(self, shape: tuple[int, int]) -> float:
        """Largest ``|shift_x_px|`` or ``|shift_y_px|`` over an image of ``shape`` (per axis, as
        ``max_shift_px`` of :func:`pipeline.kernels.coregister.shift.estimate_shift`)."""
        rows = np.array([0.0, 0.0, shape[0] - 1.0, shape[0] - 1.0])
        cols = np.array([0.0, shape[1] - 1.0, 0.0, shape[1] - 1.0])
        sx, sy = self.shift_at(rows, cols)
        return float(max(np.max(np.abs(sx)), np.max(np.abs(sy))))

    @property
    def rotation_deg(self) -> float:
        """Rotation of the target's content, degrees, counter-clockwise on the map (north up)."""
        m = self.arrays[0]
        return math.degrees(math.atan2(m[1, 0] - m[0, 1], m[0, 0] + m[1, 1]))

    @property
    def scale(self) -> float:
        """Mean scale of the target's content relative to the reference (sqrt of |det|)."""
        return math.sqrt(abs(float(np.linalg.det(self.arrays[0]))))

    def to_dict(self, shape: tuple[int, int] | None = None) -> dict[str, Any]:
        """Plain JSON-ready dict; with ``shape``, also the centre's shift and the largest one."""
        out: dict[str, Any] = {
            "convention": "target (row, col) = matrix @ reference (row, col) + offset",
            "matrix": [list(map(float, r)) for r in self.matrix],
            "offset": [float(v) for v in self.offset],
            "rotation_deg": self.rotation_deg,
            "scale": self.scale,
        }
        if shape is not None:
            sx, sy = self.shift_at((shape[0] - 1) / 2, (shape[1] - 1) / 2)
            out["shift_x_px_centre"] = float(sx)
            out["shift_y_px_centre"] = float(sy)
            out["max_displacement_px"] = self.max_displacement_px(shape)
        return out


def fit_affine(points: np.ndarray, targets: np.ndarray) -> AffineModel:
    """Least-squares affine mapping ``points`` (N, 2 rows/cols) onto ``targets`` (N, 2).

    Coordinates are centred and scaled first, so the fit is well conditioned on large images.
    """
    centre = points.mean(axis=0)
    scale = max(float(np.abs(points - centre).max()), 1.0)
    design = np.column_stack([(points - centre) / scale, np.ones(len(points))])
    coef, *_ = np.linalg.lstsq(design, targets, rcond=None)  # (3, 2)
    matrix = coef[:2].T / scale
    offset = coef[2] - matrix @ centre
    return AffineModel.from_arrays(matrix, offset)


def _tap_range(order: int) -> tuple[int, int]:
    """Source taps ``base + lo .. base + hi`` of a spline of ``order`` between pixel centres."""
    if order % 2 == 1:
        return -(order - 1) // 2, (order + 1) // 2  # base = floor(position)
    return -order // 2, order // 2  # base = round(position)


def _box_and(valid: np.ndarray, lo: int, hi: int, axis: int) -> np.ndarray:
    """``out[i] = AND(valid[i + lo .. i + hi])`` along ``axis`` (``valid`` padded with False)."""
    out = valid.copy()
    for k in range(lo, hi + 1):
        if k:
            out &= np.roll(valid, -k, axis=axis)
    return out


def _support_ok(valid: np.ndarray, rows: np.ndarray, cols: np.ndarray, order: int) -> np.ndarray:
    """True where every source pixel that a spline sample at ``(rows, cols)`` reads is valid.

    At (near-)integer positions a spline reads one pixel; elsewhere its ``order + 1`` taps per
    axis. Pixels beyond ``valid``'s edges count as invalid.
    """
    lo, hi = _tap_range(order)
    pad = max(-lo, hi) + 1
    v = np.pad(valid, pad, constant_values=False)
    exact_r = np.abs(rows - np.round(rows)) < _INTEGER_EPS
    exact_c = np.abs(cols - np.round(cols)) < _INTEGER_EPS
    odd = order % 2 == 1
    base_r = np.where(exact_r | (not odd), np.round(rows), np.floor(rows))
    base_c = np.where(exact_c | (not odd), np.round(cols), np.floor(cols))
    idx_r = np.clip(base_r + pad, 0, v.shape[0] - 1).astype(np.intp)
    idx_c = np.clip(base_c + pad, 0, v.shape[1] - 1).astype(np.intp)
    wide_r = _box_and(v, lo, hi, 0)
    out = np.empty(rows.shape, dtype=bool)
    for row_wide, src in ((False, v), (True, wide_r)):
        for col_wide in (False, True):
            table = _box_and(src, lo, hi, 1) if col_wide else src
            sel = (~exact_r == row_wide) & (~exact_c == col_wide)
            if order == 0:
                sel = np.ones_like(sel) if not (row_wide or col_wide) else np.zeros_like(sel)
            out[sel] = table[idx_r[sel], idx_c[sel]]
    return out


def _source_grid(
    matrix: np.ndarray, offset: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    r = np.arange(shape[0], dtype=np.float64)[:, None]
    c = np.arange(shape[1], dtype=np.float64)[None, :]
    return (
        matrix[0, 0] * r + matrix[0, 1] * c + offset[0],
        matrix[1, 0] * r + matrix[1, 1] * c + offset[1],
    )


def _affine_np(
    block: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    out_shape: tuple[int, int],
    order: int,
    fill: float,
) -> np.ndarray:
    """Kernel: ``out[..., o] = block[..., matrix @ o + offset]`` plane by plane, NaN-aware."""
    dtype = block.dtype if np.issubdtype(block.dtype, np.floating) else np.dtype(np.float32)
    planes = block.astype(dtype, copy=False).reshape((-1, *block.shape[-2:]))
    out = np.empty((len(planes), *out_shape), dtype=dtype)
    rows, cols = _source_grid(matrix, offset, out_shape)
    for i, plane in enumerate(planes):
        finite = np.isfinite(plane)
        filled = _fill_nodata(plane, finite)
        value = ndimage.affine_transform(
            filled, matrix, offset, output_shape=out_shape, order=order, mode="nearest"
        )
        out[i] = np.where(_support_ok(finite, rows, cols, order), value, fill)
    return out.reshape((*block.shape[:-2], *out_shape))


def _mask_np(
    block: np.ndarray,
    matrix: np.ndarray,
    offset: np.ndarray,
    out_shape: tuple[int, int],
    order: int,
) -> np.ndarray:
    """Kernel of :func:`apply_affine_mask` (plane by plane)."""
    planes = np.asarray(block, dtype=bool).reshape((-1, *block.shape[-2:]))
    rows, cols = _source_grid(matrix, offset, out_shape)
    out = np.stack([_support_ok(p, rows, cols, order) for p in planes])
    return out.reshape((*block.shape[:-2], *out_shape))


def _merge_small(sizes: tuple[int, ...], least: int) -> tuple[int, ...]:
    """Merge chunks smaller than ``least`` with their neighbours (``overlap`` needs that)."""
    out: list[int] = []
    acc = 0
    for n in sizes:
        acc += n
        if acc >= least:
            out.append(acc)
            acc = 0
    if acc:
        if out:
            out[-1] += acc
        else:
            out.append(acc)
    return tuple(out)


def _blockwise(
    image: da.Array, model: AffineModel, extra: int, kernel: Any, dtype: Any
) -> da.Array:
    """Run ``kernel`` per output chunk on overlapping input blocks (lazy, bounded memory).

    Each block reads its chunk plus ``depth`` pixels around (the model's largest displacement
    plus ``extra`` for the spline and no-data fill); the chunk's own sampling offset is passed.
    """
    matrix, offset = model.arrays
    shape = image.shape[-2:]
    depth = math.ceil(model.max_displacement_px(shape)) + extra
    ax_y, ax_x = image.ndim - 2, image.ndim - 1
    chunks = list(image.chunks)
    for ax in (ax_y, ax_x):
        chunks[ax] = _merge_small(image.chunks[ax], depth)
    if tuple(chunks) != image.chunks:
        image = image.rechunk(tuple(chunks))
    depths = dict.fromkeys(range(image.ndim), 0)
    depths[ax_y] = depths[ax_x] = depth
    padded = da.overlap.overlap(image, depth=depths, boundary="none")
    starts_y = np.cumsum((0, *image.chunks[ax_y]))
    starts_x = np.cumsum((0, *image.chunks[ax_x]))

    def run(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
        loc = block_info[None]["chunk-location"]  # type: ignore[index]
        i, j = loc[ax_y], loc[ax_x]
        r0, c0 = int(starts_y[i]), int(starts_x[j])
        out_shape = (int(starts_y[i + 1]) - r0, int(starts_x[j + 1]) - c0)
        local = matrix @ np.array([r0, c0], dtype=np.float64) + offset
        local -= np.array([max(r0 - depth, 0), max(c0 - depth, 0)], dtype=np.float64)
        return kernel(block, matrix, local, out_shape)

    return da.map_blocks(run, padded, chunks=image.chunks, dtype=dtype)


def apply_affine(image: Any, model: AffineModel, *, order: int = 3, fill: float = np.nan) -> Any:
    """Resample ``image`` (the target) onto the reference grid under ``model``.

    ``aligned[p] = image[matrix @ p + offset]``: for a translation model (:meth:`AffineModel.
    from_shift`) this equals :func:`pipeline.kernels.coregister.shift.apply_shift` with the same
    shift.

    Parameters
    ----------
    image : numpy.ndarray, dask.array.Array or xarray.DataArray
        (Y, X) or (..., Y, X); leading axes resampled plane by plane; NaN marks no data;
        integer images are resampled as float32.
    model : AffineModel
        The model of :func:`estimate_local` (or :meth:`AffineModel.from_shift`).
    order : int, optional
        Spline order (3 = prefiltered cubic spline: interpolating, blurs little).
    fill : float, optional
        Value of pixels whose spline support touches no data or lies beyond the image.

    Returns
    -------
    Same type as ``image``
        Float, same shape. Dask input gives a lazy result, one task per chunk reading the chunk
        plus ``ceil(largest displacement) + 22`` px around; it equals the numpy result to ~1e-6.
    """
    if _is_dataarray(image):
        return image.copy(data=apply_affine(image.data, model, order=order, fill=fill))
    if getattr(image, "ndim", 0) < 2:
        raise ValueError(f"image must have at least 2 dimensions (..., Y, X), got {image.shape}")
    matrix, offset = model.arrays
    if isinstance(image, da.Array):
        dtype = image.dtype if np.issubdtype(image.dtype, np.floating) else np.dtype(np.float32)

        def kernel(block: np.ndarray, m: np.ndarray, t: np.ndarray, shp: tuple) -> np.ndarray:
            return _affine_np(block, m, t, shp, order, fill)

        extra = _SPLINE_TAIL_PX + _FILL_RADIUS_PX + order + 2
        return _blockwise(image, model, extra, kernel, dtype)
    image = np.asarray(image)
    return _affine_np(image, matrix, offset, image.shape[-2:], order, fill)


def apply_affine_mask(valid: Any, model: AffineModel, *, order: int = 3) -> Any:
    """Resample a validity mask the way :func:`apply_affine` resamples an image.

    A pixel stays valid only if every source pixel its spline sample reads (4 x 4 for a cubic,
    one at whole-pixel positions) is valid and inside the image. Numpy, dask (lazy) or DataArray.
    """
    if _is_dataarray(valid):
        return valid.copy(data=apply_affine_mask(valid.data, model, order=order))
    if getattr(valid, "ndim", 0) < 2:
        raise ValueError(f"valid must have at least 2 dimensions (..., Y, X), got {valid.shape}")
    if isinstance(valid, da.Array):

        def kernel(block: np.ndarray, m: np.ndarray, t: np.ndarray, shp: tuple) -> np.ndarray:
            return _mask_np(block, m, t, shp, order)

        return _blockwise(valid.astype(bool), model, order + 2, kernel, bool)
    valid = np.asarray(valid, dtype=bool)
    matrix, offset = model.arrays
    return _mask_np(valid, matrix, offset, valid.shape[-2:], order)
