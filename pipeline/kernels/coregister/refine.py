"""Masked sub-pixel refinement of a translation, and the quality of an alignment.

Helpers of :func:`pipeline.kernels.coregister.shift.estimate_shift`; pure numpy/scipy.

Internally a translation is the array displacement ``d = (rows, cols)`` with
``scipy.ndimage.shift(target, d) ~ reference``; :mod:`pipeline.kernels.coregister.shift` turns it
into the east/north ``shift_x_px = -d[1]``, ``shift_y_px = d[0]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

LEVELS_SIGMA_PX: tuple[float, ...] = (1.5, 0.0)
"""Gaussian smoothing of the coarse-to-fine levels of the refinement (0 = the band itself)."""

TOLERANCE_PX = 1e-3
"""The refinement has converged when an update moves the shift by less than this."""

MAX_ITERATIONS = 60
"""Gauss-Newton iterations allowed per level and robust-weighting stage."""

HIGH_PASS_SIGMA_PX = 5.0
"""Scale of the local mean removed before the refinement (see :func:`band_pass`)."""

MAX_DRIFT_PX = 2.5
"""The refinement may move this far from its starting point before it counts as diverged."""

_HUBER_K = 1.345
"""Huber threshold, in robust standard deviations of the residual."""

_REGION_SIGMA_PX = 3.0
"""Gaussian window of the local correlation that down-weights regions of real change."""

_REGION_POWER = 4.0
"""Exponent of that local correlation in the weights."""

_QUALITY_SIGMA_PX = (0.7, 6.0)
"""Band-pass (difference of Gaussians) of the quality correlation."""


@dataclass(frozen=True)
class Refinement:
    """Outcome of :func:`refine_translation`."""

    offset: tuple[float, float]
    """Array displacement (rows, cols) with ``ndimage.shift(target, offset) ~ reference``."""
    converged: bool
    """True when the last update was below :data:`TOLERANCE_PX`."""
    iterations: int
    """Gauss-Newton iterations spent over all levels."""
    mask: np.ndarray
    """Pixels used at the finest level (valid in the reference and the aligned target)."""


def erode(valid: np.ndarray, radius: int) -> np.ndarray:
    """Shrink a validity mask by ``radius`` pixels (square); the image edge counts as invalid."""
    if radius <= 0:
        return valid.copy()
    eroded = ndimage.minimum_filter(valid.view(np.uint8), size=2 * radius + 1, mode="constant")
    return eroded.astype(bool)


def fill_invalid(band: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Replace invalid pixels by a local mean of valid ones (coarser scales further away).

    Only keeps filters and splines from ringing on clouds or NaN; filled pixels are never used.
    """
    out = np.where(valid, band, 0.0)
    if valid.all():
        return out
    todo = ~valid
    weight = valid.astype(np.float64)
    for sigma in (2.0, 8.0):
        num = ndimage.gaussian_filter(out * weight, sigma, mode="constant")
        den = ndimage.gaussian_filter(weight, sigma, mode="constant")
        ok = todo & (den > 1e-3)
        out[ok] = num[ok] / den[ok]
        weight[ok] = 1.0
        todo &= ~ok
        if not todo.any():
            return out
    out[todo] = float(np.mean(band[valid])) if valid.any() else 0.0
    return out


def _smooth(band: np.ndarray, sigma: float) -> np.ndarray:
    return ndimage.gaussian_filter(band, sigma, mode="nearest") if sigma > 0 else band


def _margin(sigma: float) -> int:
    return math.ceil(3 * sigma) + 1 if sigma > 0 else 1


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    order = np.argsort(values)
    cum = np.cumsum(weights[order])
    if cum[-1] <= 0:
        return float(np.median(values))
    return float(values[order][np.searchsorted(cum, 0.5 * cum[-1])])


def _mad_scale(residual: np.ndarray, weights: np.ndarray) -> float:
    centre = _weighted_median(residual, weights)
    return 1.4826 * _weighted_median(np.abs(residual - centre), weights)


def _robust_weights(
    residual: np.ndarray, energy: np.ndarray, local_corr: np.ndarray | None = None
) -> np.ndarray:
    """IRLS weights of the masked residuals.

    Huber weights (bounded influence of single pixels: hot pixels, small moving objects),
    times, when given, the local correlation of the reference and aligned target to the power
    :data:`_REGION_POWER`, which down-weights regions whose structure changed (a field turned
    green, an unmasked cloud edge, a new building) but not strong edges that merely carry
    interpolation error (a redescending per-pixel weight would half-reject such an edge, a
    coastline say, and bias the shift). The residual scale is the MAD, floored by a quarter of
    the MAD over the pixels that carry the shift (weighted by gradient ``energy``), so that a
    noise-free flat area (calm sea) cannot shrink it to nothing.
    """
    scale = max(_mad_scale(residual, np.ones_like(residual)), 0.25 * _mad_scale(residual, energy))
    if not scale > 0:
        return np.ones_like(residual)
    u = np.abs(residual) / scale
    w = np.minimum(1.0, _HUBER_K / np.maximum(u, 1e-12))
    if local_corr is not None:
        w *= np.clip(local_corr, 0.0, 1.0) ** _REGION_POWER
    return w


def _local_correlation(ref: np.ndarray, aligned: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Gaussian-windowed correlation of two images at each masked pixel."""
    weight = mask.astype(np.float64)

    def mean(x: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(x * weight, _REGION_SIGMA_PX, mode="constant")

    den = np.maximum(mean(np.ones_like(ref)), 1e-6)
    mr, ma = mean(ref) / den, mean(aligned) / den
    cov = mean(ref * aligned) / den - mr * ma
    var_r = np.maximum(mean(ref * ref) / den - mr * mr, 0.0)
    var_a = np.maximum(mean(aligned * aligned) / den - ma * ma, 0.0)
    corr = cov / np.sqrt(np.maximum(var_r * var_a, 1e-30))
    return corr[mask]


def _gauss_newton(
    ref: np.ndarray, tgt: np.ndarray, mask: np.ndarray, d: np.ndarray, tol: float
) -> tuple[np.ndarray, bool, int]:
    """Robust translation + gain/offset Gauss-Newton on ``mask``; returns (d, converged, iters).

    Model ``ref ~ gain * shift(tgt, d) + offset``; the Jacobian of the shift uses the mean of
    the reference and aligned-target gradients (efficient second-order minimisation).
    """
    coeffs = ndimage.spline_filter(tgt, order=3, mode="mirror")
    ref_gy, ref_gx = (g[mask] for g in np.gradient(ref))
    ref_m = ref[mask]
    energy = ref_gy**2 + ref_gx**2
    d0 = d.copy()
    gain, offset = 1.0, 0.0
    iterations = 0
    for regional in (False, True):
        converged = False
        for _ in range(MAX_ITERATIONS):
            iterations += 1
            aligned = ndimage.shift(coeffs, d, order=3, mode="mirror", prefilter=False)
            gy, gx = (g[mask] for g in np.gradient(aligned))
            a = aligned[mask]
            if iterations == 1:
                gain, offset = np.polyfit(a, ref_m, 1)
            residual = gain * a + offset - ref_m
            corr = _local_correlation(ref, aligned, mask) if regional else None
            w = _robust_weights(residual, energy, corr)
            jac = np.stack(
                [-0.5 * (gain * gy + ref_gy), -0.5 * (gain * gx + ref_gx), a, np.ones_like(a)],
                axis=1,
            )
            wj = jac * w[:, None]
            try:
                step = -np.linalg.solve(wj.T @ jac, wj.T @ residual)
            except np.linalg.LinAlgError:
                return d, False, iterations
            d = d + step[:2]
            gain += step[2]
            offset += step[3]
            if np.max(np.abs(d - d0)) > MAX_DRIFT_PX or not np.all(np.isfinite(d)):
                return d, False, iterations
            if np.max(np.abs(step[:2])) < tol:
                converged = True
                break
        if not converged:
            return d, False, iterations
    return d, True, iterations


def _integer_shift(image: np.ndarray, k: tuple[int, int], fill: float | bool) -> np.ndarray:
    """``ndimage.shift(image, k)`` for whole pixels, exact: ``out[p] = image[p - k]``."""
    out = np.full_like(image, fill)
    n_rows, n_cols = image.shape
    kr, kc = k
    if abs(kr) >= n_rows or abs(kc) >= n_cols:
        return out
    out[max(kr, 0) : n_rows + min(kr, 0), max(kc, 0) : n_cols + min(kc, 0)] = image[
        max(-kr, 0) : n_rows + min(-kr, 0), max(-kc, 0) : n_cols + min(-kc, 0)
    ]
    return out


def band_pass(image: np.ndarray, mask: np.ndarray, fine: float, coarse: float) -> np.ndarray:
    """Smoothed band minus its local mean over ``mask`` (normalised Gaussian convolution).

    Removes offsets, gains' low-frequency part and slow radiometric change (haze, seasonal
    change inside fields) while keeping the edges that carry the sub-pixel information.
    """
    weight = mask.astype(np.float64)
    num = ndimage.gaussian_filter(image * weight, coarse, mode="constant")
    den = ndimage.gaussian_filter(weight, coarse, mode="constant")
    local = num / np.maximum(den, 1e-6)
    return _smooth(image, fine) - local


def refine_translation(
    ref: np.ndarray,
    ref_ok: np.ndarray,
    tgt: np.ndarray,
    tgt_ok: np.ndarray,
    d0: tuple[float, float],
) -> Refinement:
    """Refine a translation to sub-pixel precision on jointly valid pixels only.

    At each level the target is first moved by the nearest whole-pixel shift (exact), the
    jointly valid pixels are fixed, both images are band-passed over them, and the remaining
    sub-pixel shift is solved by :func:`_gauss_newton`.

    Parameters
    ----------
    ref, tgt : numpy.ndarray
        Reference and target bands with invalid pixels filled (:func:`fill_invalid`).
    ref_ok, tgt_ok : numpy.ndarray of bool
        Their validity masks.
    d0 : tuple of float
        Starting array displacement (rows, cols), within about a pixel of the answer.

    Returns
    -------
    Refinement
        The array displacement, whether it converged, and the mask of the pixels used.
    """
    d = np.asarray(d0, dtype=np.float64)
    iterations = 0
    mask = ref_ok & tgt_ok
    converged = False
    for level, sigma in enumerate(LEVELS_SIGMA_PX):
        k = (int(np.round(d[0])), int(np.round(d[1])))
        tgt_k = _integer_shift(tgt, k, 0.0)
        margin = _margin(sigma)
        joint = erode(ref_ok, margin) & erode(_integer_shift(tgt_ok, k, False), margin)
        mask = erode(joint, 2)
        if mask.sum() < 16:
            return Refinement((float(d[0]), float(d[1])), False, iterations, mask)
        feat_r = band_pass(ref, joint, sigma, HIGH_PASS_SIGMA_PX)
        feat_t = band_pass(tgt_k, joint, sigma, HIGH_PASS_SIGMA_PX)
        tol = TOLERANCE_PX if level == len(LEVELS_SIGMA_PX) - 1 else 10 * TOLERANCE_PX
        base = np.asarray(k, dtype=np.float64)
        residual, converged, n = _gauss_newton(feat_r, feat_t, mask, d - base, tol)
        d = base + residual
        iterations += n
        if not converged:
            break
    return Refinement((float(d[0]), float(d[1])), converged, iterations, mask)


def correlation_quality(
    ref: np.ndarray, tgt: np.ndarray, mask: np.ndarray, offset: tuple[float, float]
) -> float:
    """Correlation (clipped to 0..1) of the band-passed reference and aligned target on ``mask``.

    A difference of Gaussians removes gain, offset and slow radiometric change, so the score
    measures shared structure: near 1 for the same place, near 0 for unrelated places.
    """
    if mask.sum() < 16:
        return 0.0
    aligned = ndimage.shift(tgt, offset, order=3, mode="nearest")
    fine, coarse = _QUALITY_SIGMA_PX
    inner = erode(mask, 2)
    if inner.sum() < 16:
        inner = mask
    r = band_pass(ref, mask, fine, coarse)[inner]
    t = band_pass(aligned, mask, fine, coarse)[inner]
    r = r - r.mean()
    t = t - t.mean()
    denom = math.sqrt(float(np.dot(r, r)) * float(np.dot(t, t)))
    if denom <= 0:
        return 0.0
    return float(np.clip(np.dot(r, t) / denom, 0.0, 1.0))
