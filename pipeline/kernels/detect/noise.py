"""Radiometric normalisation of a whole stack and the noise of every observation (pure numpy).

Used by the multi-date change test (:mod:`pipeline.kernels.detect.multidate`). Everything is
estimated from the data itself:

1. **Reference and gain/offset** (:func:`normalise_stack`). The per-pixel temporal median of the
   valid observations is a cloud-free, change-free reference image; each date's gain and offset
   per band are the robust symmetric fit of that date on the reference
   (:func:`pipeline.kernels.detect.normalise.fit_band`, on a regular sample of pixels), iterated
   twice (the reference is recomputed from the normalised dates). A whole-scene brightness drift,
   haze offset or calibration change of one date is taken out; changes are rare and do not pull the
   fit.
2. **Local level** (:func:`noise_model`). What is left of each date against the reference is
   mostly noise plus changes wider than ``window_px`` (a field greening, a veil of haze): their
   local median (block medians) is taken out of each date.
3. **Noise of each observation**, in units of the band's noise sigma ``s_b`` (the median over
   dates of the robust sigma of the residuals): ``var = max(date factor, local spread,
   structure) `` where the date factor is ``(s_tb / s_b)^2`` (a hazy date is noisier), the local
   spread the local MAD of the residuals, and the structure term ``k_t^2(x) g(x)``: ``g`` the
   squared gradient of the reference and of the date (the smaller, 3 x 3 maximum: a 20 m band's
   edge spans two 10 m pixels), ``k_t^2(x)`` the local slope of the squared residuals on ``g``
   over ``structure_window_px`` (residual misregistration, resampling and, where a date was
   filled from the other UTM zone's tile, reprojection blur: texture then differs on that date
   only, and only there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.kernels.detect.neighbourhood import gradient_sq, local_background
from pipeline.kernels.detect.normalise import MAD_TO_SIGMA, fit_band, robust_sigma, sample_stride
from pipeline.kernels.detect.ranks import nanmedian_time

FIT_SAMPLE_PX = 15_000
"""Most pixels sampled for the per-date gain/offset fits (plenty for two numbers per band)."""

MIN_DATE_PX = 100
"""A date with fewer valid pixels keeps gain 1, offset 0 and the median noise."""

RESIDUAL_CAP = 25.0
"""Squared residuals are capped at this many noise variances (plus the expected structure) in the
structure fit, so a change does not read as texture."""


def temporal_median(y: np.ndarray) -> np.ndarray:
    """Per-pixel median over time, ignoring NaN: (T, B, y, x) -> (B, y, x) float32."""
    return nanmedian_time(y)


def fit_gain_offset(
    xs: np.ndarray, vs: np.ndarray, iterations: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """Per-date, per-band gain and offset of a sample onto its temporal median reference.

    Parameters
    ----------
    xs
        (T, B, ys, xs) float32 reflectance of the sampled pixels, NaN where invalid.
    vs
        (T, ys, xs) bool.
    iterations
        Fits, each against the median of the dates normalised by the previous one.

    Returns
    -------
    gain, offset : numpy.ndarray
        (T, B) float32: ``x ~ gain * reference + offset``.
    """
    t_len, n_bands = xs.shape[:2]
    gain = np.ones((t_len, n_bands), np.float32)
    offset = np.zeros((t_len, n_bands), np.float32)
    ys = xs
    for _ in range(max(1, iterations)):
        ref = temporal_median(ys)
        for t in range(t_len):
            m = vs[t] & np.isfinite(ref).all(axis=0) & np.isfinite(xs[t]).all(axis=0)
            if m.sum() < MIN_DATE_PX:
                continue
            for b in range(n_bands):
                g, o = fit_band(ref[b][m].astype(np.float64), xs[t, b][m].astype(np.float64))
                gain[t, b], offset[t, b] = g, o
        ys = (xs - offset[:, :, None, None]) / gain[:, :, None, None]
    return gain, offset


def fit_sample_stride(shape: tuple[int, ...], max_sample_px: int) -> int:
    """Stride of the regular lattice (``[::k, ::k]``) the gain/offset fits sample."""
    return sample_stride(shape, min(max_sample_px, FIT_SAMPLE_PX))


def apply_gain_offset(x: np.ndarray, gain: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """(T, B, y, x) normalised reflectance ``(x - offset) / gain``, float32."""
    return ((x - offset[:, :, None, None]) / gain[:, :, None, None]).astype(np.float32)


def normalise_stack(
    x: np.ndarray, valid: np.ndarray, max_sample_px: int, iterations: int = 2
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-date, per-band gain and offset onto the temporal median reference.

    Parameters
    ----------
    x
        (T, B, y, x) float32 reflectance, NaN where invalid.
    valid
        (T, y, x) bool.
    max_sample_px
        Pixels sampled (a regular grid, :func:`fit_sample_stride`) for the fits
        (:func:`fit_gain_offset`).
    iterations
        Fits, each against the median of the dates normalised by the previous one.

    Returns
    -------
    y : numpy.ndarray
        (T, B, y, x) float32 normalised reflectance ``(x - offset) / gain``.
    gain, offset : numpy.ndarray
        (T, B) float32: ``x ~ gain * reference + offset``.
    """
    k = fit_sample_stride(x.shape, max_sample_px)
    gain, offset = fit_gain_offset(x[..., ::k, ::k], valid[:, ::k, ::k], iterations)
    return apply_gain_offset(x, gain, offset), gain, offset


@dataclass(frozen=True)
class NoiseModel:
    """Standardised observations and their variances (see the module docstring)."""

    z: np.ndarray
    """(T, B, y, x) float32 level-corrected reflectance divided by ``sigma``; NaN invalid."""
    var: np.ndarray
    """(T, B, y, x) float32 variance of each observation of ``z`` (1 = a clean date)."""
    sigma: np.ndarray
    """(B,) float32 noise sigma of one observation per band, reflectance."""
    date_sigma: np.ndarray
    """(T, B) float32 the same per date (NaN-free; the median where a date is too small)."""
    reference: np.ndarray
    """(B, y, x) float32 the temporal median reference."""


def _grad(a: np.ndarray, window: int) -> np.ndarray:
    g = gradient_sq(a)
    return ndimage.maximum_filter(g, size=(1, window, window)) if window > 1 else g


def residuals(y: np.ndarray, window_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Temporal median reference (B, y, x) and each observation's residual from it with the
    local level (block medians of ``window_px``) taken out (T, B, y, x)."""
    ref = temporal_median(y)
    resid = y - ref[None]
    resid = resid - np.nan_to_num(local_background(resid, window_px))
    return ref, resid


def noise_sample_stride(shape: tuple[int, ...]) -> int:
    """Stride of the lattice (``[::k, ::k]``) the date noise levels sample (about 40 000 px)."""
    return max(1, round(float(np.sqrt(shape[-2] * shape[-1] / 40_000))))


def date_noise(resid_s: np.ndarray, valid_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Band and date noise levels from residuals sampled on :func:`noise_sample_stride`.

    Parameters
    ----------
    resid_s
        (T, B, ys, xs) residuals (:func:`residuals`) on the lattice.
    valid_s
        (T, ys, xs) bool validity there.

    Returns
    -------
    sigma : numpy.ndarray
        (B,) float32 median over dates of the robust sigma of each date.
    date_sigma : numpy.ndarray
        (T, B) float32 each date's (the median where a date has too few valid pixels).
    """
    t_len, n_bands = resid_s.shape[:2]
    date_sigma = np.full((t_len, n_bands), np.nan, np.float32)
    for t in range(t_len):
        m = valid_s[t]
        if m.sum() < MIN_DATE_PX:
            continue
        for b in range(n_bands):
            r = resid_s[t, b][m]
            date_sigma[t, b] = max(robust_sigma(r[np.isfinite(r)]), 1e-6)
    sigma = np.full(n_bands, 1e-3, np.float32)
    for b in range(n_bands):
        col = date_sigma[:, b]
        if np.isfinite(col).any():
            sigma[b] = np.nanmedian(col)
    date_sigma = np.where(np.isfinite(date_sigma), date_sigma, sigma[None]).astype(np.float32)
    return sigma, date_sigma


def noise_model(
    y: np.ndarray,
    valid: np.ndarray,
    *,
    window_px: int,
    gradient_window_px: int = 3,
    structure_window_px: int = 31,
    levels: tuple[np.ndarray, np.ndarray] | None = None,
) -> NoiseModel:
    """Level-corrected, standardised observations and the variance of each (module docstring).

    Parameters
    ----------
    y
        (T, B, y, x) normalised reflectance (NaN where invalid).
    valid
        (T, y, x) bool.
    window_px
        Side of the local level window (changes wider than half of it are not objects).
    gradient_window_px
        Side of the maximum filter applied to the squared gradients.
    structure_window_px
        Side of the window over which the structure noise of each date is fitted.
    levels
        ``(sigma, date_sigma)`` of the whole grid (:func:`date_noise`) when ``y`` is a window
        of it; None: from ``y`` itself.

    Returns
    -------
    NoiseModel
        The standardised stack, variances and noise levels.
    """
    t_len = y.shape[0]
    ref, resid = residuals(y, window_px)
    if levels is None:
        k = noise_sample_stride(valid.shape)
        sigma, date_sigma = date_noise(resid[..., ::k, ::k], valid[:, ::k, ::k])
    else:
        sigma, date_sigma = levels
    s2 = (sigma**2)[:, None, None]
    spread = local_background(np.abs(resid), window_px)
    var = np.maximum(
        np.maximum((date_sigma / sigma[None]) ** 2, 1.0)[:, :, None, None],
        (MAD_TO_SIGMA * np.nan_to_num(spread)) ** 2 / s2[None],
    ).astype(np.float32)
    ref_f = np.nan_to_num(ref)
    g_ref = _grad(ref_f, gradient_window_px)
    w = structure_window_px
    for t in range(t_len):
        filled = np.where(valid[t][None], np.nan_to_num(y[t]), ref_f)
        g_t = np.minimum(_grad(filled, gradient_window_px), g_ref)
        cap = (RESIDUAL_CAP * date_sigma[t] ** 2)[:, None, None] + g_ref * 0.09
        e2 = np.where(valid[t][None], np.nan_to_num(resid[t]) ** 2, 0.0)
        e2 = np.clip(e2 - (date_sigma[t] ** 2)[:, None, None], 0.0, cap)
        num = ndimage.uniform_filter(np.where(valid[t][None], e2 * g_ref, 0.0), (1, w, w))
        den = ndimage.uniform_filter(np.where(valid[t][None], g_ref**2, 0.0), (1, w, w))
        k2 = np.where(den > 1e-12, num / np.maximum(den, 1e-12), 0.0)
        var[t] += (k2 * g_t / s2).astype(np.float32)
    z = np.where(valid[:, None], resid + ref[None], np.nan) / sigma[None, :, None, None]
    z = z.astype(np.float32)
    return NoiseModel(z=z, var=var, sigma=sigma, date_sigma=date_sigma, reference=ref)
