"""Local co-registration: a tie-point grid, outlier rejection and an affine model, with a verdict.

Pure kernels (arrays in, results out; no file I/O). Method of :func:`estimate_local`:

1. **Tie points.** A grid of square windows (``window_px``, default 96 px, spaced ``spacing_px``)
   covers the image. Each window's shift is measured by the masked sub-pixel estimator
   :func:`pipeline.kernels.coregister.shift.estimate_shift` on the window alone (jointly valid
   pixels only), started from the global shift (or the model of a first pass), so each tie point
   costs one masked Gauss-Newton refinement. Windows with too few jointly valid pixels are skipped.
2. **Reliability.** A tie point is kept only if its window estimate is usable: converged, enough
   valid pixels, ``quality`` (post-alignment correlation) at least ``min_quality``.
3. **Neighbours.** A tie point whose shift departs from the median of its grid neighbours by more
   than ``max(0.5 px, 4 robust sigma)`` is ``"inconsistent"`` (isolated mismatches).
4. **RANSAC.** :func:`skimage.measure.ransac` fits an affine to the rest (seeded, reproducible);
   points beyond ``ransac_tol_px`` of its prediction are ``"outlier"``.
5. **Model and verdict.** A least-squares affine on the good points; ``rmse_px`` is their
   residual. ``failed`` when fewer than ``min_tie_points`` are good, when they lie along a line,
   when ``rmse_px > max_rmse_px`` or when the model shifts some pixel by more than
   ``max_shift_px`` along an axis; else ``ok`` (no pixel moves more than 0.1 px) or
   ``shifted``. Tie points that failed where the model predicts a shift far from their starting
   one are measured again from the model.

The model and its application (:class:`AffineModel`, :func:`apply_affine`,
:func:`apply_affine_mask`: numpy, lazy dask chunk by chunk, xarray) live in
:mod:`pipeline.kernels.coregister.affine` and are re-exported here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from skimage.measure import ransac
from skimage.transform import AffineTransform

from pipeline.errors import CoregistrationError
from pipeline.kernels.coregister.affine import (
    AffineModel,
    apply_affine,
    apply_affine_mask,
    fit_affine,
)
from pipeline.kernels.coregister.shift import OK_SHIFT_PX, ShiftEstimate, estimate_shift

__all__ = [
    "AffineModel",
    "LocalEstimate",
    "TiePoint",
    "apply_affine",
    "apply_affine_mask",
    "choose_model",
    "estimate_local",
    "fit_affine",
]

MAX_WINDOWS_PER_AXIS = 32
"""Default spacing grows with the image so that a grid has at most this many windows per axis."""

SEED_WINDOW_PX = 256
"""Size of the crop whose global shift starts the tie points when no ``initial`` is given."""

NEIGHBOUR_TOL_PX = 0.5
"""Least departure from the neighbours' median shift that makes a tie point inconsistent."""

_RESEED_PX = 0.3
"""A failed tie point is measured again when the model predicts a shift this far from its seed."""


@dataclass(frozen=True)
class TiePoint:
    """One window of the grid and its measured shift."""

    row: float
    """Window centre, reference array row."""
    col: float
    """Window centre, reference array column."""
    shift_x_px: float
    """Measured shift there, EAST positive (NaN when none)."""
    shift_y_px: float
    """Measured shift there, NORTH positive (NaN when none)."""
    quality: float
    """Reliability 0..1 of the window estimate (its post-alignment correlation)."""
    n_valid: int
    """Jointly valid pixels of the window."""
    flag: str
    """``"good"``, ``"failed"`` (no reliable estimate), ``"inconsistent"`` or ``"outlier"``."""
    reason: str | None = None
    """Why the point is not good (None when it is)."""


@dataclass(frozen=True)
class LocalEstimate:
    """Outcome of :func:`estimate_local`: the affine model, its tie points and the verdict."""

    model: AffineModel | None
    """The fitted model (None when too few tie points were good to fit one)."""
    status: str
    """``"ok"``, ``"shifted"`` or ``"failed"`` (as for :class:`ShiftEstimate`)."""
    reason: str | None
    """Why the model failed (None otherwise)."""
    n_tie_points: int
    """Windows of the grid."""
    n_tie_points_good: int
    """Tie points kept for the model."""
    rmse_px: float
    """Residual RMSE of the good tie points about the model, pixels (NaN without a model)."""
    shape: tuple[int, int]
    """Shape (Y, X) of the registered images."""
    tie_points: tuple[TiePoint, ...] = ()
    """Every window, in grid order."""

    @property
    def usable(self) -> bool:
        """True when the model can be applied (status ``ok`` or ``shifted``)."""
        return self.status != "failed"

    def to_dict(self, *, tie_points: bool = False) -> dict[str, Any]:
        """Plain JSON-ready dict (tie points only when asked)."""
        out: dict[str, Any] = {
            "status": self.status,
            "reason": self.reason,
            "n_tie_points": self.n_tie_points,
            "n_tie_points_good": self.n_tie_points_good,
            "rmse_px": float(self.rmse_px) if math.isfinite(self.rmse_px) else None,
            "model": self.model.to_dict(self.shape) if self.model is not None else None,
        }
        flags = [p.flag for p in self.tie_points]
        out["tie_point_flags"] = {f: flags.count(f) for f in sorted(set(flags))}
        if tie_points:
            out["tie_points"] = [
                {
                    k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                    for k, v in p.__dict__.items()
                }
                for p in self.tie_points
            ]
        return out


def _grid(shape: tuple[int, int], window_px: int, spacing_px: int) -> list[tuple[int, int]]:
    """Top-left corners of the windows, the grid centred on the image."""
    rows = _starts(shape[0], window_px, spacing_px)
    cols = _starts(shape[1], window_px, spacing_px)
    return [(r, c) for r in rows for c in cols]


def _starts(n: int, window: int, spacing: int) -> list[int]:
    if n < window:
        return []
    count = (n - window) // spacing + 1
    first = (n - window - (count - 1) * spacing) // 2
    return [first + i * spacing for i in range(count)]


def _read(array: Any, r0: int, c0: int, h: int, w: int, dtype: Any) -> np.ndarray:
    """One window as numpy (a dask array is read for that window only)."""
    return np.asarray(array[r0 : r0 + h, c0 : c0 + w], dtype=dtype)


def _valid_window(image: np.ndarray, valid: Any, r0: int, c0: int, w: int) -> np.ndarray:
    ok = np.isfinite(image)
    if valid is not None:
        ok &= _read(valid, r0, c0, w, w, bool)
    return ok


def _initial_model(
    initial: Any, arrays: tuple[Any, Any, Any, Any], shape: tuple[int, int], max_shift_px: float
) -> AffineModel | None:
    """The seed of the tie points: the given one, or the global shift of the best crop."""
    if isinstance(initial, AffineModel):
        return initial
    if isinstance(initial, ShiftEstimate):
        usable = initial.usable and math.isfinite(initial.shift_x_px)
        return AffineModel.from_shift(initial.shift_x_px, initial.shift_y_px) if usable else None
    if initial is not None:
        return AffineModel.from_shift(*initial)
    ref, tgt, ref_valid, tgt_valid = arrays
    size = (min(SEED_WINDOW_PX, shape[0]), min(SEED_WINDOW_PX, shape[1]))
    best, best_count = (0, 0), -1
    for fr in (0.5, 0.2, 0.8):  # centre first: it wins ties
        for fc in (0.5, 0.2, 0.8):
            r0, c0 = round(fr * (shape[0] - size[0])), round(fc * (shape[1] - size[1]))
            count = int(
                (
                    _read_valid(ref, ref_valid, r0, c0, size)
                    & _read_valid(tgt, tgt_valid, r0, c0, size)
                ).sum()
            )
            if count > best_count:
                best, best_count = (r0, c0), count
    r0, c0 = best
    est = estimate_shift(
        _read(ref, r0, c0, *size, np.float64),
        _read(tgt, r0, c0, *size, np.float64),
        _read_valid(ref, ref_valid, r0, c0, size),
        _read_valid(tgt, tgt_valid, r0, c0, size),
        max_shift_px=max_shift_px,
    )
    return AffineModel.from_shift(est.shift_x_px, est.shift_y_px) if est.usable else None


def _read_valid(image: Any, valid: Any, r0: int, c0: int, size: tuple[int, int]) -> np.ndarray:
    ok = np.isfinite(_read(image, r0, c0, *size, np.float64))
    if valid is not None:
        ok &= _read(valid, r0, c0, *size, bool)
    return ok


def _measure(
    arrays: tuple[Any, Any, Any, Any],
    corner: tuple[int, int],
    window_px: int,
    seed: AffineModel | None,
    kwargs: dict,
) -> TiePoint:
    """The tie point of one window: its masked sub-pixel shift, started from ``seed``."""
    ref, tgt, ref_valid, tgt_valid = arrays
    r0, c0 = corner
    centre = (r0 + (window_px - 1) / 2, c0 + (window_px - 1) / 2)
    ref_w = _read(ref, r0, c0, window_px, window_px, np.float64)
    tgt_w = _read(tgt, r0, c0, window_px, window_px, np.float64)
    ok_r = _valid_window(ref_w, ref_valid, r0, c0, window_px)
    ok_t = _valid_window(tgt_w, tgt_valid, r0, c0, window_px)
    n_joint = int((ok_r & ok_t).sum())
    if n_joint < kwargs["min_valid_fraction"] * window_px**2:
        return TiePoint(*centre, math.nan, math.nan, 0.0, n_joint, "failed", "too few valid pixels")
    initial = None
    if seed is not None:
        sx, sy = seed.shift_at(*centre)
        initial = (float(sx), float(sy))
    est = estimate_shift(ref_w, tgt_w, ok_r, ok_t, initial=initial, **kwargs)
    flag = "good" if est.usable else "failed"
    return TiePoint(
        *centre, est.shift_x_px, est.shift_y_px, est.quality, est.n_valid, flag, est.reason
    )


def _inconsistent(positions: np.ndarray, shifts: np.ndarray, spacing: float) -> np.ndarray:
    """True where a point departs from the median of its grid neighbours (8-neighbourhood)."""
    dist = np.hypot(*(positions[:, None, :] - positions[None, :, :]).transpose(2, 0, 1))
    neighbours = (dist <= 1.5 * spacing) & (dist > 0)
    deviation = np.full(len(positions), np.nan)
    for i in range(len(positions)):
        if neighbours[i].sum() >= 2:
            deviation[i] = np.hypot(*(shifts[i] - np.median(shifts[neighbours[i]], axis=0)))
    finite = deviation[np.isfinite(deviation)]
    if finite.size == 0:
        return np.zeros(len(positions), dtype=bool)
    tol = max(NEIGHBOUR_TOL_PX, 4 * 1.4826 * float(np.median(finite)))
    return np.nan_to_num(deviation, nan=0.0) > tol


def _ransac_inliers(
    positions: np.ndarray, targets: np.ndarray, tol: float, seed: int
) -> np.ndarray:
    """Inliers of a RANSAC affine fit (skimage works in (x, y) = (col, row))."""
    if len(positions) < 4:
        return np.ones(len(positions), dtype=bool)
    model, inliers = ransac(
        (positions[:, ::-1], targets[:, ::-1]),
        AffineTransform,
        min_samples=3,
        residual_threshold=tol,
        max_trials=200,
        rng=seed,
    )
    if model is None or inliers is None:
        return np.zeros(len(positions), dtype=bool)
    return np.asarray(inliers, dtype=bool)


def _fit(
    points: list[TiePoint], spacing: float, ransac_tol_px: float, seed: int
) -> tuple[list[TiePoint], AffineModel | None, float]:
    """Flag inconsistent and outlying tie points; fit the model to the good ones."""
    good = np.array([p.flag == "good" for p in points], dtype=bool)
    idx = np.flatnonzero(good)
    positions = np.array([(p.row, p.col) for p in points], dtype=np.float64)
    shifts = np.array([(p.shift_x_px, p.shift_y_px) for p in points], dtype=np.float64)
    # target position of each point: (row - shift_y, col + shift_x)
    targets = positions + np.column_stack([-shifts[:, 1], shifts[:, 0]])
    points = list(points)
    if len(idx) >= 3:
        bad = _inconsistent(positions[idx], shifts[idx], spacing)
        for i in idx[bad]:
            points[i] = _reflag(points[i], "inconsistent", "departs from its neighbours' shifts")
        idx = idx[~bad]
    if len(idx) >= 3:
        keep = _ransac_inliers(positions[idx], targets[idx], ransac_tol_px, seed)
        for i in idx[~keep]:
            points[i] = _reflag(points[i], "outlier", f"more than {ransac_tol_px:g} px off RANSAC")
        idx = idx[keep]
    if len(idx) < 3:
        return points, None, math.nan
    model = fit_affine(positions[idx], targets[idx])
    m, t = model.arrays
    residual = targets[idx] - (positions[idx] @ m.T + t)
    return points, model, float(np.sqrt(np.mean(np.sum(residual**2, axis=1))))


def _reflag(point: TiePoint, flag: str, reason: str | None) -> TiePoint:
    return TiePoint(**{**point.__dict__, "flag": flag, "reason": reason})


def _verdict(
    points: list[TiePoint],
    model: AffineModel | None,
    rmse: float,
    shape: tuple[int, int],
    spacing: float,
    limits: dict[str, float],
) -> tuple[str, str | None]:
    good = np.array([(p.row, p.col) for p in points if p.flag == "good"], dtype=np.float64)
    n_good, n_all = len(good), len(points)
    if n_good < limits["min_tie_points"] or model is None:
        n_data = sum(p.reason != "too few valid pixels" for p in points)
        return "failed", (
            f"only {n_good} of {n_all} tie points are reliable ({n_data} windows had enough "
            f"valid pixels; needs min_tie_points={limits['min_tie_points']:g})"
        )
    spread = np.linalg.svd(good - good.mean(axis=0), compute_uv=False) / math.sqrt(n_good)
    if spread.min() < 0.2 * spacing:
        return (
            "failed",
            f"the {n_good} good tie points lie along a line: the affine is undetermined",
        )
    if rmse > limits["max_rmse_px"]:
        return "failed", (
            f"tie points depart from an affine by {rmse:.2f} px RMSE "
            f"(max_rmse_px={limits['max_rmse_px']:g})"
        )
    largest = model.max_axis_shift_px(shape)
    if largest > limits["max_shift_px"]:
        return "failed", (
            f"the model shifts pixels by up to {largest:.1f} px along an axis "
            f"(max_shift_px={limits['max_shift_px']:g})"
        )
    return ("ok" if model.max_displacement_px(shape) <= OK_SHIFT_PX else "shifted"), None


def estimate_local(
    reference: Any,
    target: Any,
    reference_valid: Any = None,
    target_valid: Any = None,
    *,
    window_px: int = 96,
    spacing_px: int | None = None,
    initial: ShiftEstimate | AffineModel | tuple[float, float] | None = None,
    max_shift_px: float = 4.0,
    min_valid_fraction: float = 0.5,
    min_quality: float = 0.5,
    min_tie_points: int = 6,
    ransac_tol_px: float = 0.3,
    max_rmse_px: float = 0.3,
    seed: int = 0,
) -> LocalEstimate:
    """Fit an affine co-registration model to a grid of masked sub-pixel tie points.

    Parameters
    ----------
    reference, target : array_like
        One band (Y, X) of each date on one grid, float, NaN = invalid. Numpy or dask: a dask
        array is read window by window (memory of a few windows), never whole.
    reference_valid, target_valid : array_like of bool, optional
        True where the pixel is usable (no cloud, shadow, no data); default: finite pixels.
    window_px : int, optional
        Side of the square window of each tie point.
    spacing_px : int, optional
        Distance between window corners; default ``window_px``, or more on large images so
        that at most :data:`MAX_WINDOWS_PER_AXIS` windows lie along an axis.
    initial : ShiftEstimate, AffineModel or (shift_x_px, shift_y_px), optional
        The starting shift of the tie points, e.g. the global estimate. Default: the global
        shift of the best-covered :data:`SEED_WINDOW_PX` crop; when that fails, each window
        is estimated from scratch (slower).
    max_shift_px : float, optional
        Largest credible shift of a tie point, and of any pixel under the model, per axis.
    min_valid_fraction : float, optional
        Least share of a window's pixels valid in both dates for its tie point to be measured.
    min_quality : float, optional
        Least window quality (post-alignment correlation) of a reliable tie point.
    min_tie_points : int, optional
        Least number of good tie points for a usable model.
    ransac_tol_px : float, optional
        Residual beyond which RANSAC calls a tie point an outlier.
    max_rmse_px : float, optional
        Largest residual RMSE of the good tie points for a usable model.
    seed : int, optional
        Seed of RANSAC's random samples (results are reproducible).

    Returns
    -------
    LocalEstimate
        The model (``apply_affine(target, est.model)`` aligns the target), the tie points with
        their flags, the counts, the residual RMSE and the verdict with its reason.

    Raises
    ------
    CoregistrationError
        If the inputs are not 2-D of one shape, or smaller than one window.
    """
    ref_shape, tgt_shape = tuple(np.shape(reference)), tuple(np.shape(target))
    if len(ref_shape) != 2 or tgt_shape != ref_shape:
        raise CoregistrationError(
            f"reference {ref_shape} and target {tgt_shape} must be 2-D bands of one shape: "
            "put both dates on one grid first"
        )
    shape = (int(ref_shape[0]), int(ref_shape[1]))
    spacing = (
        int(spacing_px)
        if spacing_px is not None
        else max(window_px, math.ceil(max(shape) / MAX_WINDOWS_PER_AXIS))
    )
    corners = _grid(shape, window_px, spacing)
    if not corners:
        raise CoregistrationError(
            f"images of shape {shape} are smaller than one window ({window_px} px): "
            "pass a smaller window_px"
        )
    arrays = (reference, target, reference_valid, target_valid)
    kwargs = {
        "max_shift_px": max_shift_px,
        "min_valid_fraction": min_valid_fraction,
        "min_quality": min_quality,
    }
    start = _initial_model(initial, arrays, shape, max_shift_px)
    seeds = [start] * len(corners)
    points = [_measure(arrays, c, window_px, start, kwargs) for c in corners]
    points, model, rmse = _fit(points, spacing, ransac_tol_px, seed)
    if model is not None:  # second pass: points whose seed was far from the model's prediction
        redo = [
            i
            for i, p in enumerate(points)
            if p.flag != "good"
            and p.reason != "too few valid pixels"
            and _seed_gap(seeds[i], model, p) > _RESEED_PX
        ]
        for i in redo:
            points[i] = _measure(arrays, corners[i], window_px, model, kwargs)
        if redo:
            points = [
                p if p.flag in ("good", "failed") else _reflag(p, "good", None) for p in points
            ]
            points, model, rmse = _fit(points, spacing, ransac_tol_px, seed)
    limits = {
        "min_tie_points": min_tie_points,
        "max_rmse_px": max_rmse_px,
        "max_shift_px": max_shift_px,
    }
    status, reason = _verdict(points, model, rmse, shape, spacing, limits)
    return LocalEstimate(
        model=model,
        status=status,
        reason=reason,
        n_tie_points=len(points),
        n_tie_points_good=sum(p.flag == "good" for p in points),
        rmse_px=rmse,
        shape=shape,
        tie_points=tuple(points),
    )


def _seed_gap(seed: AffineModel | None, model: AffineModel, point: TiePoint) -> float:
    if seed is None:
        return math.inf
    a = seed.shift_at(point.row, point.col)
    b = model.shift_at(point.row, point.col)
    return float(math.hypot(a[0] - b[0], a[1] - b[1]))


def choose_model(
    global_estimate: ShiftEstimate,
    local: LocalEstimate | None,
    *,
    min_gain_px: float = OK_SHIFT_PX,
) -> AffineModel | None:
    """The correction to apply to one date: the local affine only where it adds something.

    Parameters
    ----------
    global_estimate : ShiftEstimate
        The date's global shift (:func:`pipeline.kernels.coregister.shift.estimate_shift`).
    local : LocalEstimate or None
        Its local model (:func:`estimate_local`), if one was estimated.
    min_gain_px : float, optional
        The affine is chosen only if it departs from the global shift by more than this
        somewhere in the image (else the translation, which has fewer parameters, is kept).

    Returns
    -------
    AffineModel or None
        For :func:`apply_affine` / :func:`apply_affine_mask`; None when both estimates failed
        (the date must then be excluded).
    """
    shift = None
    if global_estimate.usable:
        shift = AffineModel.from_shift(global_estimate.shift_x_px, global_estimate.shift_y_px)
    if local is None or not local.usable or local.model is None:
        return shift
    if shift is None:
        return local.model
    m, t = local.model.arrays
    difference = AffineModel.from_arrays(m, t - shift.arrays[1])
    gap = difference.max_displacement_px(local.shape)
    return local.model if gap > min_gain_px else shift
