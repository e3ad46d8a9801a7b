"""The pairwise change core: signed changes between each date and the last clear view before it
(pure). :func:`pipeline.stages.detect.detect_cube` runs it with ``detect.method: pairwise``;
its pair kernel :func:`pair_change` is also the core of ``basewatch pair``.

Method (input: an aligned cube, see ``notes/CONTEXT.md``): steps 1 to 5 are :func:`pair_scores`
(lazy for dask input), steps 6 to 9 :func:`pairwise_objects` (numpy, once the stage has computed
the scores):

1. **Last valid view.** For each date ``t > 0`` every pixel is compared with its *last valid*
   observation before ``t`` (a forward fill along time over ``valid``, one vectorised step per
   date). A change hidden by cloud on one date is found at the next clear date, once. The filled
   view is a mosaic of dates, so after each pair the pixels not refreshed are carried into the new
   date's radiometry by that pair's gain/offset: the before view stays one consistent image.
2. **Radiometry and noise** (:mod:`pipeline.kernels.detect.normalise`, on a sample): per band a
   robust symmetric gain/offset of the after view on the before view; the level and robust (MAD)
   sigma of the normalised difference per *before date* (a view from weeks ago carries crop and soil
   change); the robust band correlation of the noise.
3. **Pair kernel** (:func:`pair_change`, numpy or dask). ``d_b`` = normalised difference minus
   its before-date level minus its *local* level (median of block medians over
   ``local_window_px``: change wider than that, a field greening or a veil of haze, is no object).
   ``z_b = d_b / sigma_eff_b`` with ``sigma_eff_b^2 = max(sigma_group_b, local MAD)^2 +
   (registration_noise_px * |grad|)^2 + (resampling_blur_px2 * laplacian)^2``; gradient and
   Laplacian are the smaller of the two views' (a static edge or a town's fine texture, present in
   both, is not change; an object present in one view only is not damped). Optional Gaussian
   smoothing of ``z``. Score ``||W z||^2`` (Mahalanobis with the robust band correlation:
   chi-square with ``B`` dof under no change), divided by its null scale ``max(1, median score /
   median of chi-square)`` (it may raise the thresholds, never lower them).
4. **Thin-cloud guard.** SCL misses thin cloud edges and faint puffs beside the clouds it flags.
   At date ``t``, a pixel within ``haze_distance_px`` of a transient cloud (invalid at ``t`` but
   valid on most dates: surfaces SCL flags on most dates, like bright concrete, do not count)
   whose view changed (score above the grow threshold, or blue up by more than ``haze_z``
   sigmas) is deferred: not scored at ``t`` and not used as a later before view. A real change
   there is found at the next clear view (wider interval); a puff of cloud is not seen again.
5. **Sign.** ``removed`` margin = ``sum_b ((before_b - bg_before_b)/sigma_b)^2 - sum_b
   ((after_b - bg_after_b)/sigma_b)^2``: positive when the after view is spectrally closer to
   its surroundings than the before view, i.e. something left (bright or dark alike: distance,
   not the sign of the difference). The background is that of the *quiet* (unchanged) pixels only,
   finest window first (:func:`pipeline.kernels.detect.neighbourhood.surroundings`), so it is the
   object's near surroundings whatever its size.
6. **Objects** (:func:`segment_pair`, numpy, after the stage's one ``dask.compute`` of every
   pair's score, margin and before-date index: labelling must see whole regions across chunk
   borders). Seeds at the chi-square quantile ``1 - false_alarm_rate``, grown by hysteresis to
   ``1 - grow_false_alarm_rate`` (8-connectivity); a region takes its majority sign unless its
   minority exceeds ``sign_split_fraction``, then it is split into signed components; a component
   needs a seed and at least ``min_area_m2``.
7. **Transients** (:func:`transient_objects`). An object whose core is, at its next clear view,
   mostly covered by objects of the opposite kind (appeared then removed, or the reverse) is
   flagged ``transient``: usually a cloud or shadow SCL missed, sometimes an object present on one
   date only. ``drop_transients`` drops both.
8. **Interval.** Per pixel the change lies after its last valid view ``b_i`` and by ``t``. An
   object may join pixels whose last clear views differ (a cloud over part of it): only the
   *earliest* ``b_i`` gives an interval that holds the change of every pixel in it, so
   ``date_before`` = earliest last-valid date over the object's seed pixels (seeds only: a weak
   fringe pixel, possibly noise, must not widen it). ``date_before_latest`` is the latest one, the
   tight bound when the object is a single event. ``date_after`` = the date ``t``.
9. **Confidence** = ``(1 - p)^N``, ``p`` = chi-square tail probability of the object's peak
   score, ``N`` = pixels scored in that pair: the probability that no unchanged pixel of the whole
   pair would score as high, under the noise model. It ignores the area requirement, so it is
   conservative for objects near the threshold (about ``exp(-N * false_alarm_rate)``). ``score``
   is the object's mean score, ``score_peak`` its largest (chi-square units).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from scipy.stats import chi2

from pipeline.config import DetectConfig
from pipeline.errors import DataError
from pipeline.grid import grid_transform
from pipeline.kernels.detect.neighbourhood import (
    dilate,
    gaussian_weights_sq,
    gradient_sq,
    laplacian_sq,
    local_background,
    smooth,
    surroundings,
)
from pipeline.kernels.detect.normalise import (
    MAD_TO_SIGMA,
    PairRadiometry,
    fit_radiometry,
    is_dask,
    null_scale,
    per_group,
)
from pipeline.kernels.detect.objects import region_features
from pipeline.kernels.detect.segment import (
    keep_labels,
    object_properties,
    segment_pair,
    transient_objects,
)

DEFAULT_BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")
"""Bands compared, in the project's vocabulary."""

USUALLY_VALID_FRACTION = 0.5
"""An invalid pixel counts as (transient) cloud when valid on at least this share of dates."""


@dataclass
class DetectResult:
    """Everything :func:`pipeline.stages.detect.detect_cube` finds in a cube."""

    features: list[dict]
    """GeoJSON Features (lon/lat), one per object; feature ``i`` is label ``i + 1``."""
    pairs: list[dict]
    """Per consecutive date pair: dates, noise, thresholds, counts."""
    score: xr.DataArray
    """(pair, y, x) float32 null-calibrated score (chi-square units), NaN where not scored; lazy
    when the cube is."""
    labels: xr.DataArray
    """(pair, y, x) int32 object labels (0 = none), numpy."""
    occupancy: list[dict] = field(default_factory=list)
    """Per date: the share of each zone covered by objects known present
    (:mod:`pipeline.kernels.detect.occupancy`)."""


def detect_result(
    features: list[dict],
    pairs: list[dict],
    score: Any,
    labels: np.ndarray,
    coords: dict[str, Any],
    crs: str,
    n_bands: int,
) -> DetectResult:
    """A :class:`DetectResult` with its (pair, y, x) score and labels as DataArrays on
    ``coords`` (:func:`pair_coords`)."""
    score_da = xr.DataArray(
        score,
        dims=("pair", "y", "x"),
        coords=coords,
        attrs={"crs": crs, "long_name": "change score", "units": f"chi-square, {n_bands} dof"},
    )
    labels_da = xr.DataArray(
        labels, dims=("pair", "y", "x"), coords=coords, attrs={"crs": crs, "long_name": "object"}
    )
    return DetectResult(features=features, pairs=pairs, score=score_da, labels=labels_da)


@dataclass(frozen=True)
class PairChange:
    """Per-pixel outputs of :func:`pair_change` (numpy, or lazy dask for dask input)."""

    score: Any
    """(y, x) float32 score in chi-square units of ``B`` dof; NaN where not scored."""
    removed: Any
    """(y, x) float32 removal margin: > 0 when the after view is closer to its background."""
    used: Any
    """(y, x) bool: pixels scored (valid in both views, not hazy, pair fit trusted)."""
    haze: Any
    """(y, x) bool: valid after-view pixels deferred by the thin-cloud guard."""
    radiometry: PairRadiometry
    """Gain, offset, noise sigma and band whitening of the pair."""
    null_scale: Any
    """0-d: ``max(1, median raw score / median of chi-square)``; the score is divided by it."""


def thresholds(cfg: DetectConfig, n_bands: int) -> tuple[float, float]:
    """Seed and grow thresholds of the null-calibrated score (chi-square, ``n_bands`` dof)."""
    seed = float(chi2.isf(cfg.false_alarm_rate, n_bands))
    grow = float(min(chi2.isf(cfg.grow_false_alarm_rate, n_bands), seed))
    return seed, grow


def _mahalanobis(z: Any, whitening: Any, xp: Any) -> Any:
    """``||W z||^2`` over the band axis of (B, y, x) standardised differences."""
    white = xp.tensordot(whitening, z, axes=1)
    return (white**2).sum(axis=0)


def _xp(*arrays: Any) -> Any:
    return da if is_dask(*arrays) else np


def pair_change(
    before: Any,
    after: Any,
    before_ok: Any,
    after_ok: Any,
    cloud: Any,
    cfg: DetectConfig,
    *,
    before_index: Any = None,
    n_dates: int = 1,
    blue_index: int | None = None,
) -> PairChange:
    """Score the change between two views of every pixel (numpy in -> numpy out, dask -> dask).

    Parameters
    ----------
    before
        (B, y, x) float32: last valid observation of each pixel before the date of ``after``.
    after
        (B, y, x) float32: the observation at that date.
    before_ok, after_ok
        (y, x) bool: the views are valid.
    cloud
        (y, x) bool: transient cloud at the date of ``after`` (drives the thin-cloud guard).
    cfg
        Detection parameters.
    before_index
        (y, x) int: date index of each pixel's before view (None: one date for all).
    n_dates
        Number of dates the index can take.
    blue_index
        Position of the blue band in ``B`` (None: no thin-cloud guard).

    Returns
    -------
    PairChange
        Score, removal margin, masks and the pair's radiometric model.
    """
    xp = _xp(before, after, before_ok, after_ok)
    n_bands = int(before.shape[0])
    ok = before_ok & after_ok
    if before_index is None:
        before_index, n_dates = xp.zeros_like(ok, dtype=np.int16), 1
    after_f = xp.nan_to_num(xp.where(after_ok[None], after, before))
    before_f = xp.nan_to_num(xp.where(before_ok[None], before, after_f))
    rad = fit_radiometry(
        before_f,
        after_f,
        ok,
        max_sample_px=cfg.max_sample_px,
        decorrelate=cfg.decorrelate_bands,
        before_index=before_index,
        n_groups=n_dates,
    )
    sigma = rad.sigma[:, None, None]
    norm_before = before_f * rad.gain[:, None, None] + rad.offset[:, None, None]
    # Per before-date level and noise: a view from weeks ago carries surface change.
    diff = after_f - norm_before - per_group(rad.group_level, before_index)
    group_sigma = per_group(rad.group_sigma, before_index)
    # Local change level and local noise: change wider than the window (a field greening, a
    # veil of haze) is not an object, and busy texture (a town) is noisier than open ground.
    level = local_background(xp.where(ok[None], diff, np.nan), cfg.local_window_px)
    blue_rise = diff[blue_index] if blue_index is not None else None  # before the local level
    diff = diff - xp.nan_to_num(level)
    spread = local_background(xp.where(ok[None], xp.abs(diff), np.nan), cfg.local_window_px)
    var = xp.maximum(group_sigma**2, (np.float32(MAD_TO_SIGMA) * xp.nan_to_num(spread)) ** 2)
    # Structure noise, only where both views show the structure (an object in one view only is
    # not damped): residual misregistration ~ shift x gradient, resampling blur ~ Laplacian.
    # The noise's own share of each energy (one view's noise variance is sigma^2 / 2: 1/2 of it
    # for the squared central-difference gradient, 20/2 for the 5-point Laplacian) is taken off.
    view_var = sigma**2 / np.float32(2)
    if cfg.registration_noise_px > 0:
        grad = xp.minimum(gradient_sq(norm_before), gradient_sq(after_f)) - view_var
        var = var + np.float32(cfg.registration_noise_px**2) * xp.maximum(grad, 0)
    if cfg.resampling_blur_px2 > 0:
        curv = xp.minimum(laplacian_sq(norm_before), laplacian_sq(after_f)) - 20 * view_var
        var = var + np.float32(cfg.resampling_blur_px2**2) * xp.maximum(curv, 0)
    z = diff / xp.sqrt(var)
    z = xp.where(ok[None], z, np.float32(0))
    raw = _mahalanobis(z, rad.whitening, xp)
    _, grow_thr = thresholds(cfg, n_bands)
    if cfg.haze_distance_px > 0:
        # Thin-cloud guard: near a transient cloud a changed view is deferred to the next one.
        suspect = raw >= np.float32(grow_thr)
        if blue_index is not None:
            suspect = suspect | (blue_rise > cfg.haze_z * group_sigma[blue_index])
        haze = after_ok & suspect & dilate(cloud, cfg.haze_distance_px)
    else:
        haze = xp.zeros_like(ok)
    used = ok & ~haze & rad.fit_ok
    if cfg.smooth_sigma_px > 0:
        z = smooth(xp.where(used[None], z, np.float32(0)), cfg.smooth_sigma_px)
        z = z / np.float32(math.sqrt(gaussian_weights_sq(cfg.smooth_sigma_px)))
        raw = _mahalanobis(z, rad.whitening, xp)
    scale = null_scale(raw, used, n_bands, max_sample_px=cfg.max_sample_px).astype(np.float32)
    score = xp.where(used, raw / scale, np.float32(np.nan))
    quiet = used & (raw / scale < np.float32(grow_thr))
    both = surroundings(xp.concatenate([norm_before, after_f]), quiet, cfg.local_window_px)
    bg_before, bg_after = both[:n_bands], both[n_bands:]
    dist_before = (((norm_before - bg_before) / sigma) ** 2).sum(axis=0)
    dist_after = (((after_f - bg_after) / sigma) ** 2).sum(axis=0)
    return PairChange(
        score=score.astype(np.float32),
        removed=(dist_before - dist_after).astype(np.float32),
        used=used,
        haze=haze,
        radiometry=rad,
        null_scale=scale,
    )


def check_inputs(
    cube: xr.Dataset, zone_raster: np.ndarray, bands: Sequence[str]
) -> tuple[list[str], str, np.ndarray]:
    """Bands as a list, the cube's CRS and the zone raster, checked.

    Raises
    ------
    DataError
        When no band is given, the ``crs`` attribute is missing or the zone raster does not
        match the cube grid.
    """
    bands = list(bands)
    if not bands:
        raise DataError("no bands to compare: pass bands= with at least one loaded band")
    crs = cube.attrs.get("crs")
    if not crs:
        raise DataError("cube has no 'crs' attribute: load it with pipeline.io.load (EPSG:326xx)")
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    zone_raster = np.asarray(zone_raster)
    if zone_raster.shape != (ny, nx):
        raise DataError(
            f"zone raster {zone_raster.shape} does not match the cube grid {(ny, nx)}: "
            "rasterise the zones on the cube's geobox"
        )
    return bands, str(crs), zone_raster


def stack_inputs(cube: xr.Dataset, bands: Sequence[str]) -> tuple[Any, Any]:
    """(T, B, y, x) float32 band stack and (T, y, x) valid mask (valid and finite)."""
    return _inputs(cube, bands)


def pair_coords(times: np.ndarray, cube: xr.Dataset) -> dict[str, Any]:
    """Coordinates of (pair, y, x) arrays: pair index, consecutive dates, y, x."""
    return _pair_coords(times, cube)


def _inputs(cube: xr.Dataset, bands: Sequence[str]) -> tuple[Any, Any]:
    """(T, B, y, x) float32 band stack and (T, y, x) valid mask (valid and finite)."""
    missing = [b for b in (*bands, "valid") if b not in cube]
    if missing:
        raise DataError(
            f"cube has no variable(s) {', '.join(missing)}: load them or pass bands= without them"
        )
    if tuple(cube["valid"].dims) != ("time", "y", "x"):
        raise DataError(f"cube 'valid' has dims {cube['valid'].dims}: expected (time, y, x)")
    arrays = [cube[b].transpose("time", "y", "x").data for b in bands]
    xp = _xp(*arrays, cube["valid"].data)
    stack = xp.stack([xp.asarray(a).astype(np.float32) for a in arrays], axis=1)
    if xp is da:
        stack = stack.rechunk({1: -1})
    valid = xp.asarray(cube["valid"].data).astype(bool) & xp.isfinite(stack).all(axis=1)
    return stack, valid


def _pair_coords(times: np.ndarray, cube: xr.Dataset) -> dict[str, Any]:
    n_pairs = max(0, len(times) - 1)
    return {
        "pair": np.arange(n_pairs),
        "date_before": ("pair", times[:-1] if n_pairs else times[:0]),
        "date_after": ("pair", times[1:]),
        "y": cube["y"].values,
        "x": cube["x"].values,
    }


@dataclass(frozen=True)
class PairScores:
    """Per-pixel results of every date pair of a cube (:func:`pair_scores`): lazy for dask
    input; ``dask.compute`` of the whole gives the same with numpy values, which
    :func:`pairwise_objects` labels."""

    score: Any
    """(pair, y, x) float32 null-calibrated score (chi-square units), NaN where not scored."""
    removed: Any
    """(pair, y, x) float32 removal margin (> 0: the after view is closer to its background)."""
    before_index: Any
    """(pair, y, x) int16 date index of each pixel's before view (-1: none yet)."""
    n_used: list[Any]
    """Per pair, 0-d: the number of pixels scored."""
    radiometry: list[PairRadiometry]
    """Per pair: gain, offset, noise sigma and band whitening."""
    null_scale: list[Any]
    """Per pair, 0-d: the null scale the raw score was divided by."""


def pair_scores(cube: xr.Dataset, cfg: DetectConfig, bands: Sequence[str]) -> PairScores:
    """Score every date of an aligned cube against each pixel's last clear view before it.

    Steps 1 to 5 of the module docstring; nothing is computed (lazy for dask input).

    Parameters
    ----------
    cube
        Aligned cube: bands float32 and ``valid`` bool on (time, y, x); numpy or dask backed.
    cfg
        Detection parameters.
    bands
        Bands compared (checked by :func:`check_inputs`).

    Returns
    -------
    PairScores
        Score, removal margin, before-date index and fit summaries of each consecutive pair.

    Raises
    ------
    DataError
        When a band or ``valid`` is missing.
    """
    bands = list(bands)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    stack, valid = _inputs(cube, bands)
    xp = _xp(stack)
    n_times = cube.sizes["time"]
    blue = bands.index("blue") if "blue" in bands else None
    if n_times < 2:
        empty = np.zeros((0, ny, nx))
        return PairScores(
            score=xp.zeros((0, ny, nx), dtype=np.float32),
            removed=empty,
            before_index=empty,
            n_used=[],
            radiometry=[],
            null_scale=[],
        )

    usually_valid = valid.mean(axis=0) >= USUALLY_VALID_FRACTION
    prev, prev_ok = stack[0], valid[0]
    prev_idx = xp.where(valid[0], 0, -1).astype(np.int16)
    changes: list[PairChange] = []
    before_idx = []
    for t in range(1, n_times):
        pc = pair_change(
            prev,
            stack[t],
            prev_ok,
            valid[t],
            ~valid[t] & usually_valid,
            cfg,
            before_index=prev_idx,
            n_dates=n_times,
            blue_index=blue,
        )
        changes.append(pc)
        before_idx.append(prev_idx)
        fresh = valid[t] & ~pc.haze & pc.radiometry.fit_ok
        # Views not refreshed at t are carried into t's radiometry (the pair's gain/offset), so
        # the before view stays one consistent image however old each pixel's last view is.
        rad = pc.radiometry
        carried = prev * rad.gain[:, None, None] + rad.offset[:, None, None]
        prev = xp.where(fresh[None], stack[t], carried)
        prev_idx = xp.where(fresh, np.int16(t), prev_idx)
        prev_ok = prev_ok | fresh
    return PairScores(
        score=xp.stack([pc.score for pc in changes]),
        removed=xp.stack([pc.removed for pc in changes]),
        before_index=xp.stack(before_idx),
        n_used=[pc.used.sum() for pc in changes],
        radiometry=[pc.radiometry for pc in changes],
        null_scale=[pc.null_scale for pc in changes],
    )


def pairwise_objects(
    cube: xr.Dataset,
    scores: PairScores,
    zone_raster: np.ndarray,
    zone_names: Sequence[str],
    zone_kinds: Sequence[str],
    cfg: DetectConfig,
    bands: Sequence[str],
    *,
    score: Any = None,
) -> DetectResult:
    """Removed and appeared objects of every date pair, from computed :class:`PairScores`.

    Steps 6 to 9 of the module docstring, on numpy: labelling must see whole regions across
    chunk borders, so the caller computes ``scores`` first (one ``dask.compute`` of the
    :func:`pair_scores` of the cube).

    Parameters
    ----------
    cube
        The aligned cube the scores come from (its dates, grid, ``crs`` and ``site`` attributes).
    scores
        :func:`pair_scores` of the cube, computed (numpy).
    zone_raster
        (y, x) int zones on the cube's grid (0 = none, i + 1 = ``zone_names[i]``).
    zone_names, zone_kinds
        Name and kind of each zone.
    cfg
        Detection parameters.
    bands
        Bands compared.
    score
        The (pair, y, x) score the result carries (the lazy one, so writing it recomputes it
        chunk by chunk); None: ``scores.score``.

    Returns
    -------
    DetectResult
        Features, per-pair summaries, the score and the object labels (numpy).

    Raises
    ------
    DataError
        When the ``crs`` attribute or a matching zone raster is missing.
    """
    bands, crs, zone_raster = check_inputs(cube, zone_raster, bands)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    transform = grid_transform(cube["x"].values, cube["y"].values)
    times = cube["time"].values
    dates = [str(np.datetime_as_string(t, unit="D")) for t in times]
    n_bands, n_pairs = len(bands), max(0, len(times) - 1)
    score_np, removed_np, idx_np = scores.score, scores.removed, scores.before_index
    n_used, rads, scales = scores.n_used, scores.radiometry, scores.null_scale
    score_lazy = scores.score if score is None else score

    seed_thr, grow_thr = thresholds(cfg, n_bands)
    pixel_area = abs(transform.a * transform.e)
    min_px = max(1, math.ceil(cfg.min_area_m2 / pixel_area - 1e-9))
    site = str(cube.attrs.get("site", "site"))
    labels_all = np.zeros((n_pairs, ny, nx), dtype=np.int32)
    segments = [
        segment_pair(
            score_np[p], removed_np[p], seed_thr, grow_thr, min_px, cfg.sign_split_fraction
        )
        for p in range(n_pairs)
    ]
    transient = transient_objects(segments, score_np)
    features: list[dict] = []
    pairs: list[dict] = []
    for p in range(n_pairs):
        labels, kinds, seed = segments[p]
        keep = ~transient[p] if cfg.drop_transients else np.ones(len(kinds), dtype=bool)
        labels, kinds = keep_labels(labels, kinds, keep)
        n_obj = len(kinds)
        props = object_properties(
            labels,
            kinds,
            seed,
            score_np[p],
            idx_np[p],
            dates,
            p,
            int(n_used[p]),
            n_bands,
            site,
            offset=len(features),
        )
        for k, extra in zip(sorted(props), transient[p][keep], strict=True):
            props[k]["transient"] = bool(extra)
        glob = np.where(labels > 0, labels + len(features), 0).astype(np.int32)
        labels_all[p] = glob
        features += region_features(
            glob, transform, crs, zone_raster, zone_names, zone_kinds, props
        )
        r = rads[p]
        pairs.append(
            {
                "date_before": dates[p],
                "date_after": dates[p + 1],
                "n_changed_px": int((labels > 0).sum()),
                "noise_sigma": [round(float(s), 6) for s in np.asarray(r.sigma)],
                "gain": [round(float(g), 5) for g in np.asarray(r.gain)],
                "offset": [round(float(o), 6) for o in np.asarray(r.offset)],
                "threshold": round(seed_thr, 4),
                "grow_threshold": round(grow_thr, 4),
                "null_scale": round(float(scales[p]), 4),
                "n_scored_px": int(n_used[p]),
                "n_objects": n_obj,
            }
        )

    return detect_result(
        features, pairs, score_lazy, labels_all, _pair_coords(times, cube), crs, n_bands
    )
