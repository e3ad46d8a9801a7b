"""The multi-date test on one block of a tile, its radiometry fixed for the whole tile (pure numpy).

The site detector (:func:`pipeline.kernels.detect.core.multidate_objects`) fits everything on the
cube it holds. A tile is read block by block (:mod:`pipeline.stages.tile_series`), so what must be
the same for every block is fitted first, once, on sample windows of the whole stack
(:func:`fit_series`), and each block then runs the per-pixel statistics of
:mod:`pipeline.kernels.detect.multidate` with it (:func:`block_series`):

1. **Global, from the sample** (:class:`SeriesParams`): each date's gain and offset per band onto
   the temporal median reference (:func:`pipeline.kernels.detect.noise.normalise_stack` on the
   sample); the noise sigma of each date and band (robust sigma of the sample's residuals from
   the temporal median) and of each band (their median over dates); the null scale of the step
   statistic (``max(1, median / chi-square median)`` of the sample's scores, as the site detector
   takes it over its cube).
2. **Per block**: ``z = ((x - offset) / gain) / sigma``; each observation's variance is its
   date's factor ``max((s_tb / s_b)^2, 1)``, at least the pixel's own series noise floor
   (:func:`pipeline.kernels.detect.multidate.series_noise`, 3 x 3 median floor) and the drift
   rate smoothed over ``drift_window_px``
   (:func:`pipeline.kernels.detect.neighbourhood.local_background`) is taken out, as in the site
   detector; two-sided excursions
   (:func:`pipeline.kernels.detect.multidate.excursion_stat` at the
   ``excursion_false_alarm_rate`` quantile) are left out of the step test, pixel by pixel, in
   ``excursion_passes`` passes; then the step test
   (:func:`pipeline.kernels.detect.multidate.series_change`), divided by the null scale.

The neighbourhood parts (the 3 x 3 floor and the drift smoothing, blocks anchored on the array's
origin) reach :func:`stats_reach_px` pixels: a block read that far past the pixels it must get
right, starting on a multiple of :func:`stats_align_px`, gives them their whole-array values.

Left out, unlike the site detector (the neighbourhood and region work that a block cannot do
alone, or that needs the whole cube):

- the local change level of each date and the local noise spread (block medians over
  ``local_window_px``) and the texture (structure) noise of each date: the variance of an
  observation here is its date's noise, or the pixel's own series noise where that is larger;
- the region-level cloud, haze and shadow classification of excursions
  (:func:`pipeline.kernels.detect.clouds.clean_excursions`), its dilation margin and its
  context test: every strong two-sided excursion is left out of the step test, whatever it is;
- one-date objects (a ship anchored for one pass) are not reported;
- the end check (one-date changes at a series end explained by the atmosphere), the
  atmosphere-unexplained share, the empirical-tail noise confidence and the calibrated
  confidence (``min_confidence``), zones and occupancy.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from scipy.stats import chi2

from pipeline.config import DetectConfig
from pipeline.kernels.detect import multidate
from pipeline.kernels.detect.neighbourhood import (
    BACKGROUND_WINDOW_BLOCKS,
    background_block_px,
)
from pipeline.kernels.detect.noise import MIN_DATE_PX, normalise_stack, temporal_median
from pipeline.kernels.detect.normalise import robust_sigma
from pipeline.kernels.detect.series_state import drift

__all__ = [
    "BLOCK_BYTES",
    "BlockSeries",
    "SeriesParams",
    "block_mb",
    "block_series",
    "fit_series",
    "series_classes",
    "stats_align_px",
    "stats_reach_px",
    "strip_rows",
]

NOT_SCORED = np.uint8(255)
"""Class of a pixel with no break at a date."""

STRIP_PX = 16_384
"""Pixels per strip of the per-pixel statistics (their temporaries, some 25 arrays of
``T x B`` float32 per pixel, stay near 160 MB at 24 dates and 4 bands)."""


BLOCK_BYTES = (15, 64, 36)
"""Peak memory of a multi-date tile task (read, :func:`block_series`, candidates), in bytes:
``a`` per pixel, date and band of its window (the float32 series, overwritten in place, and
the window means before and after each break), ``b`` per pixel (drift rates, noise floor,
classes and labels of one date) and ``c`` per strip pixel (:data:`STRIP_PX`), date and band
(the strip's temporaries). Fitted to ``tracemalloc`` peaks of whole tasks at 4 bands, 4 and 24
dates, 204 to 1100 px windows (within 4 %, with ``a`` = 14), ``a`` then rounded up so that it
errs on the safe side (it overestimates those peaks by 1-7 %); ``tests/test_tile_series.py``
checks it on another shape and number of dates."""


def block_mb(shape: tuple[int, int], n_dates: int, n_bands: int) -> float:
    """Estimated peak memory (MB) of a multi-date tile task on a window of ``shape`` (y, x) px
    with ``n_dates`` x ``n_bands`` (:data:`BLOCK_BYTES`)."""
    a, b, c = BLOCK_BYTES
    px = float(shape[0]) * shape[1]
    series = n_dates * n_bands
    return (a * px * series + b * px + c * min(px, STRIP_PX) * series) / 2**20


@dataclass(frozen=True)
class SeriesParams:
    """What every block of a tile shares (fitted on sample windows: :func:`fit_series`)."""

    gain: np.ndarray
    """(T, B) float32: ``x ~ gain * reference + offset``."""
    offset: np.ndarray
    """(T, B) float32."""
    date_sigma: np.ndarray
    """(T, B) float32 noise sigma of each date and band, reflectance."""
    sigma: np.ndarray
    """(B,) float32 noise sigma of each band (median over dates), reflectance."""
    days: np.ndarray
    """(T,) float32 days since the first date."""
    seed_threshold: float
    """Seed level of the step statistic (chi-square quantile)."""
    grow_threshold: float
    """Grow level."""
    null_scale: float = 1.0
    """The step statistic is divided by this (at least 1)."""

    def with_scale(self, scale: float) -> SeriesParams:
        """The same parameters with another null scale."""
        return replace(self, null_scale=float(scale))


@dataclass(frozen=True)
class BlockSeries:
    """The multi-date statistics of one block (date order; index ``t``: break before date ``t``)."""

    score: np.ndarray
    """(T, y, x) float32 step statistic over its null scale, NaN where no break."""
    mean_before: np.ndarray
    """(T, B, y, x) float32 mean of the window before the break, normalised reflectance."""
    mean_after: np.ndarray
    """(T, B, y, x) float32 mean of the window after, normalised reflectance."""
    before_index: np.ndarray
    """(T, y, x) int16 date of the pixel's last valid observation before the break (-1: none)."""
    used: np.ndarray
    """(T, y, x) bool observations used by the step test (valid, excursions left out)."""


def stats_align_px(cfg: DetectConfig) -> int:
    """Block reads start on a multiple of this (the drift smoothing's block grid)."""
    return background_block_px(cfg.drift_window_px) if cfg.drift else 1


def stats_reach_px(cfg: DetectConfig) -> int:
    """Farthest pixel (px) the statistics of a pixel depend on, plus alignment slack."""
    block = stats_align_px(cfg)
    return max(1, block * (BACKGROUND_WINDOW_BLOCKS // 2 + 1) + block)


def strip_rows(width: int) -> int:
    """Rows of a strip of about :data:`STRIP_PX` pixels in a block ``width`` wide."""
    return max(1, STRIP_PX // max(width, 1))


def _strips(ny: int, width: int) -> list[slice]:
    step = strip_rows(width)
    return [slice(r, min(r + step, ny)) for r in range(0, ny, step)]


def _strip_series(
    z: np.ndarray,
    valid: np.ndarray,
    factor: np.ndarray,
    floor: np.ndarray,
    slope: np.ndarray,
    slope_var: np.ndarray,
    params: SeriesParams,
    cfg: DetectConfig,
) -> tuple[multidate.SeriesChange, np.ndarray]:
    """Excursions left out, then the step test, on one strip (every input is the strip's)."""
    # the kernels take C-contiguous arrays: copy the strip's rows once, not at every call
    z, valid, slope, slope_var = (np.ascontiguousarray(a) for a in (z, valid, slope, slope_var))
    var = np.maximum(factor[:, :, None, None], (floor**2)[None]).astype(np.float32)
    used = valid.copy()
    if cfg.excursion_mask:
        level = float(chi2.isf(cfg.excursion_false_alarm_rate, z.shape[1]))
        for _ in range(max(1, cfg.excursion_passes)):
            stat, two, _ = multidate.excursion_stat(z, var, used, baseline=False)
            with np.errstate(invalid="ignore"):
                drop = used & two & (stat >= level)
            del stat, two
            if not drop.any():
                break
            used &= ~drop
    sc = multidate.series_change(
        z,
        var,
        used,
        params.days,
        slope=slope,
        slope_var=slope_var,
        window=cfg.window_dates,
        threshold=params.seed_threshold,
        max_changes=cfg.max_changes,
        engine="numba",
    )
    return sc, used


def block_series(
    bands: np.ndarray, valid: np.ndarray, params: SeriesParams, cfg: DetectConfig
) -> BlockSeries:
    """The multi-date statistics of one block (step 2 of the module docstring).

    The per-pixel statistics run on strips of about :data:`STRIP_PX` pixels, so their
    temporaries are the strip's; the block holds its standardised series and the outputs.

    Parameters
    ----------
    bands
        (T, B, y, x) float32 reflectance of every date (any value where invalid). Overwritten
        (it becomes the standardised series), so a block holds one full copy less.
    valid
        (T, y, x) bool.
    params
        The tile's radiometry (:func:`fit_series`).
    cfg
        Detection parameters.

    Returns
    -------
    BlockSeries
        Scores, window means, before dates and the observations used.
    """
    g = params.gain[:, :, None, None]
    o = params.offset[:, :, None, None]
    s = params.sigma[None, :, None, None]
    z = bands
    np.subtract(z, o, out=z)
    np.divide(z, g * s, out=z)
    np.copyto(z, np.float32(np.nan), where=~valid[:, None])
    factor = np.maximum((params.date_sigma / params.sigma[None]) ** 2, 1.0).astype(np.float32)
    floor, slope, slope_var = drift(z, valid, params.days, cfg)
    t_len, _, ny, nx = z.shape
    score = np.empty((t_len, ny, nx), np.float32)
    mean_before = np.empty(z.shape, np.float32)
    mean_after = np.empty(z.shape, np.float32)
    before_index = np.empty((t_len, ny, nx), np.int16)
    used = np.empty(valid.shape, bool)
    scale = np.float32(params.null_scale)
    for rows in _strips(ny, nx):
        sc, used[:, rows] = _strip_series(
            z[:, :, rows],
            valid[:, rows],
            factor,
            floor[:, rows],
            slope[:, rows],
            slope_var[:, rows],
            params,
            cfg,
        )
        np.divide(sc.score, scale, out=score[:, rows])
        np.multiply(sc.mean_before, s, out=mean_before[:, :, rows])
        np.multiply(sc.mean_after, s, out=mean_after[:, :, rows])
        before_index[:, rows] = sc.before_index
    return BlockSeries(
        score=score,
        mean_before=mean_before,
        mean_after=mean_after,
        before_index=before_index,
        used=used,
    )


def series_classes(score: np.ndarray, params: SeriesParams) -> np.ndarray:
    """(y, x) uint8 classes of one date's scores: 255 no break, 0 quiet, 1 grow, 2 seed
    (compared in float64, as :func:`pipeline.kernels.detect.segment.segment_pair` compares)."""
    s = score.astype(np.float64)
    with np.errstate(invalid="ignore"):
        seed = s >= params.seed_threshold
        grow = (s >= min(params.grow_threshold, params.seed_threshold)) | seed
    out = np.where(seed, 2, np.where(grow, 1, 0)).astype(np.uint8)
    out[np.isnan(score)] = NOT_SCORED
    return out


def fit_series(
    bands: np.ndarray,
    valid: np.ndarray,
    days: np.ndarray,
    cfg: DetectConfig,
    thresholds: tuple[float, float],
) -> SeriesParams:
    """The tile's radiometry and null scale from sample windows (step 1 of the module docstring).

    Parameters
    ----------
    bands
        (T, n, B, h, w) float32: ``n`` sample windows of every date.
    valid
        (T, n, h, w) bool.
    days
        (T,) days since the first date.
    cfg
        Detection parameters.
    thresholds
        Seed and grow levels of the step statistic
        (:func:`pipeline.kernels.detect.core.series_thresholds`).

    Returns
    -------
    SeriesParams
        Gain, offset, noise and null scale.
    """
    n_dates, n_win, n_bands, h, w = bands.shape
    flat = np.moveaxis(bands, 1, 2).reshape(n_dates, n_bands, n_win * h, w)
    flat_ok = valid.reshape(n_dates, n_win * h, w)
    x = np.where(flat_ok[:, None], flat, np.nan).astype(np.float32)
    y, gain, offset = normalise_stack(x, flat_ok, n_win * h * w + 1)
    resid = y - temporal_median(y)[None]
    date_sigma = np.full((n_dates, n_bands), np.nan, np.float32)
    for t in range(n_dates):
        if flat_ok[t].sum() < MIN_DATE_PX:
            continue
        for b in range(n_bands):
            r = resid[t, b][flat_ok[t]]
            r = r[np.isfinite(r)]
            if r.size >= MIN_DATE_PX:
                date_sigma[t, b] = max(robust_sigma(r), 1e-6)
    sigma = np.full(n_bands, 1e-3, np.float32)
    for b in range(n_bands):
        if np.isfinite(date_sigma[:, b]).any():
            sigma[b] = np.nanmedian(date_sigma[:, b])
    date_sigma = np.where(np.isfinite(date_sigma), date_sigma, sigma[None]).astype(np.float32)
    params = SeriesParams(
        gain=gain,
        offset=offset,
        date_sigma=date_sigma,
        sigma=sigma,
        days=np.asarray(days, np.float32),
        seed_threshold=float(thresholds[0]),
        grow_threshold=float(thresholds[1]),
    )
    scores = [
        block_series(bands[:, i].copy(), valid[:, i], params, cfg).score for i in range(n_win)
    ]
    raw = np.concatenate([s.ravel() for s in scores])
    finite = raw[np.isfinite(raw)]
    med = float(np.median(finite)) if finite.size else chi2.median(n_bands)
    return params.with_scale(max(1.0, med / chi2.median(n_bands)))
