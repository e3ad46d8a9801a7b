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

import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.stats import chi2

from pipeline.config import DetectConfig
from pipeline.grid import grid_transform
from pipeline.kernels.detect import calibration, clouds, multidate, occupancy, onedate
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
from pipeline.kernels.detect.series_state import (
    GridLevels,
    NullLevels,
    SeriesState,
    grid_null_levels,
    null_levels,
    series_state,
    series_thresholds,
)

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
