"""The multi-date detector's statistics of a cube, up to the step test (pure numpy).

Steps 1-4 of :mod:`pipeline.kernels.detect.core` (radiometry, noise, drift, excursion
cleaning, the multi-date step test) as one :class:`SeriesState`, then the score's null levels
(:class:`NullLevels`: null scale, empirical tail, per-date counts). A whole grid computes both
itself; a window of a larger grid (:mod:`pipeline.kernels.detect.windows`) takes the grid's
levels (:class:`GridLevels`) and null levels from the stage, so every window sees the same
global quantities as the whole-array path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy.stats import chi2

from pipeline.config import DetectConfig
from pipeline.grid import grid_transform
from pipeline.kernels.detect import clouds, multidate, noise, onedate
from pipeline.kernels.detect.neighbourhood import local_background, median3x3
from pipeline.kernels.detect.windows import null_stride


def series_thresholds(cfg: DetectConfig, n_bands: int) -> tuple[float, float]:
    """Seed and grow thresholds of the multi-date statistic (chi-square, ``n_bands`` dof)."""
    seed = float(chi2.isf(cfg.series_false_alarm_rate, n_bands))
    grow = float(min(chi2.isf(cfg.grow_false_alarm_rate, n_bands), seed))
    return seed, grow


def drift(
    z: np.ndarray, valid: np.ndarray, days: np.ndarray, cfg: DetectConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel noise floor (B, y, x), smoothed drift rate and its variance (B, y, x)."""
    px_noise, slope = multidate.series_noise(z, valid, days, trim=cfg.series_noise_trim)
    px_noise = np.nan_to_num(px_noise, nan=0.0)
    floor = np.maximum(px_noise, median3x3(px_noise))
    n_bands = z.shape[1]
    if not cfg.drift:
        zero = np.zeros((n_bands, *z.shape[2:]), np.float32)
        return floor, zero, zero
    smooth = np.nan_to_num(local_background(slope, cfg.drift_window_px)).astype(np.float32)
    sd = np.float32(cfg.drift_residual_sd)
    slope_var = np.full(smooth.shape, sd**2, dtype=np.float32)
    return floor, smooth, slope_var


@dataclass(frozen=True)
class GridLevels:
    """What a window of a grid takes from the whole grid
    (:mod:`pipeline.kernels.detect.windows`)."""

    gain: np.ndarray
    """(T, B) float32 gain of each date onto the reference (:func:`noise.fit_gain_offset`)."""
    offset: np.ndarray
    """(T, B) float32 offset."""
    sigma: np.ndarray
    """(B,) float32 noise sigma per band (:func:`noise.date_noise`)."""
    date_sigma: np.ndarray
    """(T, B) float32 per date."""
    near: np.ndarray | None
    """(T, y, x) bool within the context distance of a pixel loaded masked, over the whole grid
    (:func:`clouds.context_near`); None without a context test."""
    edges: tuple[bool, bool, bool, bool]
    """Which sides of the window (top, bottom, left, right) are the grid's edges."""


@dataclass(frozen=True)
class NullLevels:
    """The score's null scale and tail and the per-date counts of the whole grid."""

    scale: float
    """Null scale: ``max(1, median raw score / chi-square median)``."""
    tail: tuple[float, float]
    """Empirical tail of the score (:func:`onedate.fit_tail`)."""
    n_scored: tuple[int, ...]
    """(T,) pixels with a score at each date."""
    n_used: tuple[int, ...]
    """(T,) observations used by the step test at each date."""
    n_atmospheric: tuple[int, ...]
    """(T,) observations masked as atmospheric excursions at each date."""


@dataclass(frozen=True)
class SeriesState:
    """The multi-date detector up to the step test (steps 1-4 of the module docstring)."""

    z: np.ndarray
    """(T, B, y, x) standardised observations."""
    valid: np.ndarray
    """(T, y, x) the observations as loaded (valid and finite in every band)."""
    sigma: np.ndarray
    """(B,) noise sigma per band."""
    date_sigma: np.ndarray
    """(T, B) per date."""
    gain: np.ndarray
    """(T, B) gain of each date."""
    offset: np.ndarray
    """(T, B) offset of each date."""
    exc: clouds.Excursions
    """The excursion cleaning's result."""
    used: np.ndarray
    """(T, y, x) observations used by the step test."""
    series: multidate.SeriesChange
    """The step test."""
    model: clouds.AtmosphereModel
    """The atmospheric model."""
    context_px: float | None
    """Context distance of the atmosphere test (pixels; None: none)."""
    context: tuple[np.ndarray | None, tuple[bool, bool, bool, bool]] | None
    """A window's ``(near, edges)`` (None: the whole grid)."""


def series_state(
    cube: xr.Dataset,
    stack: np.ndarray,
    valid: np.ndarray,
    cfg: DetectConfig,
    bands: Sequence[str],
    *,
    grid: GridLevels | None = None,
) -> SeriesState:
    """Steps 1-4 of the multi-date detector on a cube (or a window of one).

    Parameters
    ----------
    cube
        The aligned cube or window (its dates, grid and whether it has ``scl``).
    stack, valid
        (T, B, y, x) float32 bands and (T, y, x) bool validity, numpy.
    cfg
        Detection parameters.
    bands
        Bands of ``stack``'s second axis.
    grid
        The whole grid's levels when the arrays are a window of it; None: from the arrays.

    Returns
    -------
    SeriesState
        Standardised stack, noise levels, radiometry, excursions and the step test.
    """
    stack = np.where(valid[:, None], stack, np.nan).astype(np.float32)
    times = cube["time"].values
    days = ((times - times[0]) / np.timedelta64(1, "D")).astype(np.float32)
    n_bands = stack.shape[1]
    transform = grid_transform(cube["x"].values, cube["y"].values)
    pixel_area = abs(transform.a * transform.e)
    min_px = max(1, math.ceil(cfg.min_area_m2 / pixel_area - 1e-9))
    seed_thr, grow_thr = series_thresholds(cfg, n_bands)
    if grid is None:
        y, gain, offset = noise.normalise_stack(stack, valid, cfg.max_sample_px)
        levels = None
    else:
        gain, offset = grid.gain, grid.offset
        y = noise.apply_gain_offset(stack, gain, offset)
        levels = (grid.sigma, grid.date_sigma)
    del stack
    nm = noise.noise_model(
        y,
        valid,
        window_px=cfg.local_window_px,
        structure_window_px=cfg.structure_window_px,
        levels=levels,
    )
    del y
    floor, slope, slope_var = drift(nm.z, valid, days, cfg)
    var = np.maximum(nm.var, (floor**2)[None]).astype(np.float32)
    sigma = nm.sigma
    model = clouds.atmosphere_model(
        bands, cfg.cloud_brightness, shadow=cfg.shadow_model, haze=cfg.haze_model
    )
    # the context test needs a cloud mask to give context: without an SCL (Level-1C, bands
    # exported without it) the excursions are the only cloud test, so they stay unconditional
    context_px = (
        None
        if cfg.atmosphere_context_m is None or "scl" not in cube
        else cfg.atmosphere_context_m / math.sqrt(pixel_area)
    )
    context = None if grid is None else (grid.near, grid.edges)
    exc = clouds.clean_excursions(
        nm.z,
        var,
        valid,
        sigma,
        model,
        candidate_threshold=float(chi2.isf(cfg.excursion_false_alarm_rate, n_bands)),
        grow_threshold=grow_thr,
        seed_threshold=float(chi2.isf(cfg.one_date_false_alarm_rate, n_bands)),
        min_pixels=min_px,
        max_unexplained=cfg.atmosphere_max_unexplained,
        dilation_px=cfg.excursion_dilation_px,
        passes=cfg.excursion_passes,
        mask=cfg.excursion_mask,
        min_seeds=cfg.min_seed_pixels,
        context_distance_px=context_px,
        context=context,
    )
    one_date = exc.objects if cfg.one_date_objects else np.zeros_like(exc.objects)
    used = exc.valid & ~one_date
    sc = multidate.series_change(
        nm.z,
        var,
        used,
        days,
        slope=slope,
        slope_var=slope_var,
        window=cfg.window_dates,
        threshold=seed_thr,
        max_changes=cfg.max_changes,
    )
    return SeriesState(
        z=nm.z,
        valid=valid,
        sigma=sigma,
        date_sigma=nm.date_sigma,
        gain=gain,
        offset=offset,
        exc=exc,
        used=used,
        series=sc,
        model=model,
        context_px=context_px,
        context=context,
    )


def null_levels(raw_sample: np.ndarray, n_bands: int) -> tuple[float, tuple[float, float]]:
    """Null scale and tail fit of the score from the raw step statistic on the null lattice.

    Parameters
    ----------
    raw_sample
        (T, ys, xs) raw step statistic on the lattice of
        :func:`pipeline.kernels.detect.windows.null_stride` (every pixel of a site).
    n_bands
        Degrees of freedom.

    Returns
    -------
    scale : float
        ``max(1, median / chi-square median)``.
    tail : tuple of float
        :func:`pipeline.kernels.detect.onedate.fit_tail` of the scaled scores after the first
        date (at most about two million of them, evenly strided).
    """
    finite = np.isfinite(raw_sample).any()
    med = float(np.nanmedian(raw_sample)) if finite else chi2.median(n_bands)
    scale = max(1.0, med / chi2.median(n_bands))
    score = (raw_sample[1:] / np.float32(scale)).astype(np.float32)
    tail = onedate.fit_tail(score.ravel()[:: max(1, score.size // 2_000_000)], n_bands)
    return scale, tail


def grid_null_levels(state: SeriesState, n_bands: int) -> NullLevels:
    """:class:`NullLevels` of a whole grid's :class:`SeriesState`."""
    raw = state.series.score
    k = null_stride(raw.shape)
    scale, tail = null_levels(raw[:, ::k, ::k], n_bands)
    return NullLevels(
        scale=scale,
        tail=tail,
        n_scored=tuple(int(n) for n in np.isfinite(raw).sum(axis=(1, 2))),
        n_used=tuple(int(n) for n in state.used.sum(axis=(1, 2))),
        n_atmospheric=tuple(int(n) for n in state.exc.atmospheric.sum(axis=(1, 2))),
    )
