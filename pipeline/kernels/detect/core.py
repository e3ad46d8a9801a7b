"""The change core: signed objects (removed / appeared) over a stack of dates, dated (pure).

:func:`pipeline.stages.detect.detect_cube` runs one of two methods (``detect.method``):

- ``pairwise`` (:mod:`pipeline.kernels.detect.pairwise`): each date against the last clear view
  before it; its kernel :func:`pair_change` is the two-date core (``basewatch pair``).
- ``multidate`` (the default, here: :func:`multidate_objects`): every valid observation of a
  pixel is used.

The kernels never compute a lazy input: :func:`multidate_objects` takes the band stack and its
validity as numpy, computed by the stage.

Method of the multi-date path (input: an aligned cube, see ``notes/CONTEXT.md``):

1. **Radiometry** (:func:`pipeline.kernels.detect.noise.normalise_stack`): each date's gain and
   offset per band onto the temporal median reference.
2. **Noise** (:func:`pipeline.kernels.detect.noise.noise_model`,
   :func:`pipeline.kernels.detect.multidate.series_noise`): the local change level of each date is
   taken out; each observation gets a variance from its date's noise, the local spread, the texture
   noise of that date there, and at least the pixel's own series noise; each pixel's slow drift rate
   (smoothed over ``drift_window_px``) is taken out of its series.
3. **Clouds beyond the SCL** (:func:`pipeline.kernels.detect.clouds.clean_excursions`): one-date
   departures that fit a cloud, haze or shadow are masked (with a margin), repeatedly; object-like
   one-date departures (``min_seed_pixels`` past the ``one_date_false_alarm_rate`` quantile)
   are one-date objects (a ship anchored for one pass).
4. **Multi-date test** (:func:`pipeline.kernels.detect.multidate.series_change`): at every break
   between two valid observations, the mean of up to ``window_dates`` dates before against up to
   ``window_dates`` after, windows bounded by the pixel's other changes: chi-square with
   ``B`` dof under no change, divided by its null scale ``max(1, median / chi-square
   median)``. The break's date interval is exact: the pixel's last valid date before it and
   its date.
5. **Objects** per break date: seeds at the chi-square quantile ``1 -
   series_false_alarm_rate`` grown to ``1 - grow_false_alarm_rate``; sign by which view the
   surroundings explain (:func:`pipeline.kernels.detect.segment.surroundings_margin`), voted with
   weights score x margin; changes seen on one date only at an end of the series (or between clouds)
   are dropped when atmospheric (``end_check``); at least ``min_area_m2``. The surroundings
   of a region straddling two surfaces (a quay and the water) are both
   (:func:`pipeline.kernels.detect.segment.background_margin`).
6. **Properties**: interval (``date_before`` = earliest last-valid date over the seeds, so it
   holds the change of every pixel; ``date_before_latest``), ``score`` / ``score_peak``,
   ``n_dates_before`` / ``n_dates_after`` (median window sizes), shape measures, zone,
   ``atm_unexplained`` (the share of the change a cloud, haze or shadow leaves unexplained),
   and ``noise_confidence`` = ``(1 - p)^N``: ``p`` the tail probability of the peak score under
   the *empirical* tail of all scores of the stack (an exponential fitted between their 99th
   and 99.9th percentiles, never lighter than chi-square), ``N`` the pixels tested at that
   date: the probability that no unchanged pixel of the date would score as high.
7. **Calibrated confidence** (:mod:`pipeline.kernels.detect.calibration`): ``confidence`` = the
   probability that the detection is real, from a logistic model of its properties fitted on
   generated scenes; detections under ``min_confidence`` are dropped.
8. **Occupancy** (:mod:`pipeline.kernels.detect.occupancy`): per zone and date, the share covered by
   objects known present from their changes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.stats import chi2

from pipeline.config import DetectConfig
from pipeline.grid import grid_transform
from pipeline.kernels.detect import calibration, clouds, multidate, noise, occupancy, onedate
from pipeline.kernels.detect.neighbourhood import local_background
from pipeline.kernels.detect.objects import region_features
from pipeline.kernels.detect.pairwise import (
    DEFAULT_BANDS,
    DetectResult,
    PairChange,
    check_inputs,
    detect_result,
    pair_change,
    pair_coords,
    thresholds,
)
from pipeline.kernels.detect.segment import (
    hysteresis_regions,
    object_properties,
    segment_pair,
)
from pipeline.kernels.detect.windows import null_stride

__all__ = [
    "DEFAULT_BANDS",
    "DetectResult",
    "GridLevels",
    "NullLevels",
    "PairChange",
    "SeriesState",
    "candidate_objects",
    "detection_occupancy",
    "finish_objects",
    "grid_null_levels",
    "multidate_objects",
    "null_levels",
    "pair_change",
    "series_state",
    "series_thresholds",
    "thresholds",
]


def series_thresholds(cfg: DetectConfig, n_bands: int) -> tuple[float, float]:
    """Seed and grow thresholds of the multi-date statistic (chi-square, ``n_bands`` dof)."""
    seed = float(chi2.isf(cfg.series_false_alarm_rate, n_bands))
    grow = float(min(chi2.isf(cfg.grow_false_alarm_rate, n_bands), seed))
    return seed, grow


def detection_occupancy(
    result: DetectResult,
    zone_raster: np.ndarray,
    zone_names: Sequence[str],
    cube: xr.Dataset,
) -> list[dict]:
    """Per date, the share of each zone covered by the detected objects known present.

    Parameters
    ----------
    result
        Detections of the cube (numpy labels).
    zone_raster
        (y, x) int zones on the cube's grid (0 = none, i + 1 = ``zone_names[i]``).
    zone_names
        Name of each zone.
    cube
        The cube detected in (its dates and grid).

    Returns
    -------
    list of dict
        :func:`pipeline.kernels.detect.occupancy.zone_occupancy` rows; empty for a grid under
        2 x 2 pixels.
    """
    dates = [str(np.datetime_as_string(t, unit="D")) for t in cube["time"].values]
    kinds = {int(f["properties"]["label"]): f["properties"]["kind"] for f in result.features}
    labels = np.asarray(result.labels.values)
    state = occupancy.pixel_state(labels, kinds, list(range(1, len(dates))), len(dates))
    if cube.sizes.get("x", 0) < 2 or cube.sizes.get("y", 0) < 2:
        return []
    t = grid_transform(cube["x"].values, cube["y"].values)
    return occupancy.zone_occupancy(state, zone_raster, zone_names, dates, abs(t.a * t.e))


def _drift(
    z: np.ndarray, valid: np.ndarray, days: np.ndarray, cfg: DetectConfig
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel noise floor (B, y, x), smoothed drift rate and its variance (B, y, x)."""
    px_noise, slope = multidate.series_noise(z, valid, days, trim=cfg.series_noise_trim)
    px_noise = np.nan_to_num(px_noise, nan=0.0)
    floor = np.maximum(px_noise, ndimage.median_filter(px_noise, size=(1, 3, 3)))
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
    floor, slope, slope_var = _drift(nm.z, valid, days, cfg)
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


def multidate_objects(
    cube: xr.Dataset,
    stack: np.ndarray,
    valid: np.ndarray,
    zone_raster: np.ndarray,
    zone_names: Sequence[str],
    zone_kinds: Sequence[str],
    cfg: DetectConfig,
    bands: Sequence[str],
    *,
    calibration_model: calibration.Model | None,
) -> DetectResult:
    """Removed and appeared objects of the multi-date method (see the module docstring).

    Parameters
    ----------
    cube
        The aligned cube (its dates, grid, ``crs``, ``site`` attribute and whether it has
        ``scl``); its bands are read from ``stack`` and ``valid``.
    stack, valid
        :func:`pipeline.kernels.detect.pairwise.stack_inputs` of the cube, computed: (T, B, y, x)
        float32 bands and (T, y, x) bool validity, numpy (over the memory budget the stage runs
        it window by window: :mod:`pipeline.kernels.detect.windows`).
    zone_raster
        (y, x) int zones on the cube's grid (0 = none, i + 1 = ``zone_names[i]``).
    zone_names, zone_kinds
        Name and kind of each zone.
    cfg
        Detection parameters.
    bands
        Bands compared (the order of ``stack``'s second axis).
    calibration_model
        The confidence model (None: confidence stays noise-only and nothing is dropped by
        ``cfg.min_confidence``).

    Returns
    -------
    DetectResult
        Features, per-pair summaries, the (pair, y, x) score and labels (numpy).

    Raises
    ------
    DataError
        When the ``crs`` attribute or a matching zone raster is missing.
    """
    bands, crs, zone_raster = check_inputs(cube, zone_raster, bands)
    times = cube["time"].values
    t_len, n_bands, ny, nx = stack.shape
    coords = pair_coords(times, cube)
    if t_len < 2:
        empty = np.zeros((0, ny, nx), np.float32)
        return DetectResult(
            features=[],
            pairs=[],
            score=xr.DataArray(empty, dims=("pair", "y", "x"), coords=coords, attrs={"crs": crs}),
            labels=xr.DataArray(
                empty.astype(np.int32), dims=("pair", "y", "x"), coords=coords, attrs={"crs": crs}
            ),
        )
    state = series_state(cube, stack, valid, cfg, bands)
    null = grid_null_levels(state, n_bands)
    features, labels_all, pairs, score = candidate_objects(
        cube, state, null, zone_raster, zone_names, zone_kinds, cfg, bands
    )
    features = finish_objects(features, labels_all, pairs, cfg, n_bands, calibration_model)
    return detect_result(features, pairs, score, labels_all, coords, crs, n_bands)


def finish_objects(
    features: list[dict],
    labels_all: np.ndarray,
    pairs: list[dict],
    cfg: DetectConfig,
    n_bands: int,
    calibration_model: calibration.Model | None,
) -> list[dict]:
    """Step 7 on the whole grid's candidates: calibrated confidence, unlikely ones dropped
    (their labels cleared in place, the pairs' counts updated)."""
    seed_thr, _ = series_thresholds(cfg, n_bands)
    calibration.calibrate(features, seed_thr, calibration_model)
    if calibration_model is not None and cfg.min_confidence > 0:
        features = _drop_unlikely(features, labels_all, pairs, cfg.min_confidence)
    return features


def candidate_objects(
    cube: xr.Dataset,
    state: SeriesState,
    null: NullLevels,
    zone_raster: np.ndarray,
    zone_names: Sequence[str],
    zone_kinds: Sequence[str],
    cfg: DetectConfig,
    bands: Sequence[str],
    *,
    first_pixels: dict[int, tuple[int, int]] | None = None,
) -> tuple[list[dict], np.ndarray, list[dict], np.ndarray]:
    """Steps 5-6 of the multi-date detector (objects per date, one-date objects, mask
    distances), before the calibrated confidence.

    Parameters
    ----------
    cube
        The aligned cube or window (dates, grid, ``crs``, ``site``).
    state
        :func:`series_state` of it.
    null
        The whole grid's null levels and counts (:func:`grid_null_levels`, or summed over
        windows).
    zone_raster, zone_names, zone_kinds
        Zones on the cube's grid.
    cfg
        Detection parameters.
    bands
        Bands of the stack.
    first_pixels
        When given, filled with each label's ``(date, flat index of its first pixel)`` at its
        creation (for a window's ownership and the global numbering).

    Returns
    -------
    features : list of dict
        Features (step objects by date, then one-date objects).
    labels_all : numpy.ndarray
        (pair, y, x) int32 labels.
    pairs : list of dict
        Per-pair summaries.
    score : numpy.ndarray
        (pair, y, x) float32 scaled score.
    """
    _, crs, _ = check_inputs(cube, zone_raster, bands)
    exc, sc, sigma = state.exc, state.series, state.sigma
    times = cube["time"].values
    dates = [str(np.datetime_as_string(t, unit="D")) for t in times]
    t_len, n_bands, ny, nx = state.z.shape
    transform = grid_transform(cube["x"].values, cube["y"].values)
    pixel_area = abs(transform.a * transform.e)
    min_px = max(1, math.ceil(cfg.min_area_m2 / pixel_area - 1e-9))
    seed_thr, grow_thr = series_thresholds(cfg, n_bands)
    site = str(cube.attrs.get("site", "site"))
    n_pairs = t_len - 1
    score = (sc.score / np.float32(null.scale)).astype(np.float32)
    sig3 = sigma[None, :, None, None]
    mean_b, mean_a = sc.mean_before * sig3, sc.mean_after * sig3
    labels_all = np.zeros((n_pairs, ny, nx), dtype=np.int32)
    features: list[dict] = []
    pairs: list[dict] = []
    for t in range(1, t_len):
        # a change seen on one date at a series end is atmospheric only near a masked cloud
        possible = clouds.atmosphere_possible(
            ~exc.valid[t] | ~exc.valid[t - 1],
            state.context_px,
            **clouds.context_kwargs(state.context, (t - 1, t)),
        )
        feats, labels = _objects_at(
            t,
            score[t],
            mean_b[t],
            mean_a[t],
            sc,
            dates,
            cfg,
            state.model,
            sigma,
            (seed_thr, grow_thr, min_px),
            null.tail,
            site,
            len(features),
            (transform, crs, zone_raster, zone_names, zone_kinds),
            possible,
            bands,
            n_tested=null.n_scored[t],
        )
        labels_all[t - 1] = labels
        if first_pixels is not None and feats:
            ids, first = np.unique(labels.ravel(), return_index=True)
            first_pixels.update(
                {int(i): (t, int(f)) for i, f in zip(ids, first, strict=True) if i > 0}
            )
        features += feats
        pairs.append(
            {
                "date_before": dates[t - 1],
                "date_after": dates[t],
                "n_changed_px": int((labels > 0).sum()),
                "noise_sigma": [round(float(s), 6) for s in state.date_sigma[t]],
                "gain": [round(float(g), 5) for g in state.gain[t]],
                "offset": [round(float(o), 6) for o in state.offset[t]],
                "threshold": round(seed_thr, 4),
                "grow_threshold": round(grow_thr, 4),
                "null_scale": round(null.scale, 4),
                "n_scored_px": null.n_scored[t],
                "n_objects": len(feats),
                "n_cloud_masked_px": null.n_atmospheric[t],
            }
        )
    if cfg.one_date_objects:
        features = onedate.one_date_objects(
            exc,
            state.valid,
            state.z * sig3,
            state.used,
            dates,
            cfg,
            sigma,
            (seed_thr, grow_thr, min_px),
            null.tail,
            site,
            features,
            labels_all,
            (transform, crs, zone_raster, zone_names, zone_kinds),
            state.model,
            bands,
            n_used=null.n_used,
            first_pixels=first_pixels,
        )
    calibration.add_mask_distance(features, labels_all, ~exc.valid, dates)
    return features, labels_all, pairs, score[1:]


def _drop_unlikely(
    features: list[dict], labels: np.ndarray, pairs: list[dict], min_confidence: float
) -> list[dict]:
    """Features with a confidence of at least ``min_confidence``; the others' labels are
    cleared (in place) and each pair's counts follow."""
    kept = [f for f in features if f["properties"]["confidence"] >= min_confidence]
    if len(kept) == len(features):
        return features
    keep_ids = np.zeros(int(labels.max()) + 1, dtype=bool)
    keep_ids[[int(f["properties"]["label"]) for f in kept]] = True
    labels[~keep_ids[labels]] = 0
    for i, summary in enumerate(pairs):
        summary["n_objects"] = sum(int(f["properties"]["pair"]) == i for f in kept)
        summary["n_changed_px"] = int((labels[i] > 0).sum())
    return kept


def _objects_at(
    t: int,
    score: np.ndarray,
    before: np.ndarray,
    after: np.ndarray,
    sc: multidate.SeriesChange,
    dates: list[str],
    cfg: DetectConfig,
    model: clouds.AtmosphereModel,
    sigma: np.ndarray,
    levels: tuple[float, float, int],
    tail: tuple[float, float],
    site: str,
    offset: int,
    grid: tuple,
    possible: np.ndarray | None = None,
    bands: Sequence[str] = (),
    n_tested: int | None = None,
) -> tuple[list[dict], np.ndarray]:
    """Signed objects of the changes first seen at date ``t`` (labels offset to be global).

    ``possible`` (y, x): where the end check may explain a change by the atmosphere
    (:func:`pipeline.kernels.detect.clouds.atmosphere_possible`); None: everywhere. ``bands``: names
    of the views' first axis (for the water rule of
    :func:`pipeline.kernels.detect.onedate.sign_margin`). ``n_tested``: pixels scored at the date
    over the whole grid (None: counted in ``score``)."""
    seed_thr, grow_thr, min_px = levels
    transform, crs, zone_raster, zone_names, zone_kinds = grid
    n_bands = before.shape[0]
    surface_zones = onedate.surface_zones(zone_raster, zone_kinds, cfg)
    with np.errstate(invalid="ignore"):
        changed = np.nan_to_num(score, nan=-1.0) >= grow_thr
        quiet = np.nan_to_num(score, nan=np.inf) < chi2.isf(onedate.QUIET_RATE, n_bands)
    # only a region holding a seed can become an object (segment_pair drops the others), and a
    # region's sign depends on its own ring only: sign those (noise leaves many seedless ones)
    changed &= hysteresis_regions(score, seed_thr, grow_thr, 1)[0] > 0
    margin = onedate.sign_margin(before, after, changed, quiet, sigma, surface_zones, cfg, bands)
    labels, kinds, seed = segment_pair(
        score, margin, seed_thr, grow_thr, min_px, cfg.series_sign_split_fraction, weighted=True
    )
    n = len(kinds)
    if n == 0:
        return [], np.zeros(score.shape, np.int32)
    ids = np.arange(1, n + 1)
    n_b = np.asarray(ndimage.median(sc.n_before[t], labels, ids), dtype=float)
    n_a = np.asarray(ndimage.median(sc.n_after[t], labels, ids), dtype=float)
    keep = np.ones(n, dtype=bool)
    if cfg.region_mean_test:
        # the region as a whole passes the seed level, not only its peak: a noise spike grown
        # by hysteresis into its fringe does not, a changed object (every pixel changed) does
        mean = np.asarray(ndimage.mean(np.nan_to_num(score), labels, ids), dtype=float)
        keep &= mean >= seed_thr
    if cfg.min_seed_pixels > 1:
        # noise passes the seed level in isolated pixels; an object of the smallest size of
        # interest, spread by the PSF, in several
        n_seed = np.asarray(ndimage.sum(seed, labels, ids), dtype=float)
        keep &= n_seed >= cfg.min_seed_pixels
    single = (n_a <= 1) | (n_b <= 1)
    if cfg.end_check and single.any():
        after_single = np.concatenate([[False], n_a <= 1])[labels]
        delta = np.where(after_single[None], after - before, before - after)
        base = np.where(after_single[None], before, after)
        atm, _ = clouds.classify_regions(
            labels, n, delta, base, model, sigma, cfg.atmosphere_max_unexplained, possible
        )
        keep &= ~(single & atm[1:])
    if not keep.all():
        new_id = np.zeros(n + 1, dtype=np.int32)
        new_id[1:][keep] = np.arange(1, int(keep.sum()) + 1)
        labels, kinds, n_b, n_a = new_id[labels], kinds[keep], n_b[keep], n_a[keep]
    if len(kinds) == 0:
        return [], np.zeros(score.shape, np.int32)
    if n_tested is None:
        n_tested = int(np.isfinite(score).sum())
    props = object_properties(
        labels,
        kinds,
        seed,
        score,
        sc.before_index[t],
        dates,
        t - 1,
        n_tested,
        n_bands,
        site,
        offset=offset,
    )
    peaks = np.asarray([props[k]["score_peak"] for k in sorted(props)])
    conf = onedate.confidence(peaks, n_tested, tail, n_bands)
    # how well a cloud, haze or shadow arriving (or leaving) explains each change
    n = len(kinds)
    unexplained = np.minimum(
        clouds.classify_regions(labels, n, after - before, before, model, sigma, 1.0)[1],
        clouds.classify_regions(labels, n, before - after, after, model, sigma, 1.0)[1],
    )[1:]
    for j, k in enumerate(sorted(props)):
        props[k].update(
            atm_unexplained=round(float(unexplained[j]), 4),
            confidence=round(float(conf[j]), 4),
            n_dates_before=int(n_b[j]),
            n_dates_after=int(n_a[j]),
            transient=False,
        )
    glob = np.where(labels > 0, labels + offset, 0).astype(np.int32)
    feats = region_features(glob, transform, crs, zone_raster, zone_names, zone_kinds, props)
    return feats, glob
