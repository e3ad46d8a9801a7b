"""Signing, confidence and one-date objects of the multi-date method (pure numpy).

Helpers of :mod:`pipeline.kernels.detect.core`:

- :func:`surface_zones`, :func:`sign_margin`: which view of a change is the empty surface
  (``detect.sign_method``; see :func:`pipeline.kernels.detect.segment.background_margin`);
- :func:`fit_tail`, :func:`confidence`: the probability that no unchanged pixel of a date would
  score as high as an object's peak, under the empirical tail of the scores;
- :func:`one_date_objects`: an appearance and a removal for each object seen on one date only
  (``transient`` = true), unless it lies next to a pixel masked that date.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.stats import chi2

from pipeline.config import DetectConfig
from pipeline.kernels.detect import clouds
from pipeline.kernels.detect.objects import region_features
from pipeline.kernels.detect.segment import (
    EIGHT,
    background_margin,
    surroundings_margin,
    water_margin,
)

QUIET_RATE = 0.1
"""A pixel signs its neighbours' changes only when its own statistic is below the chi-square
quantile ``1 - QUIET_RATE`` (a faint fringe of the change is not its surroundings)."""

TAIL_QUANTILES = (0.99, 0.999)
"""Quantiles of the scores between which their empirical tail is fitted (for confidence)."""


def fit_tail(scores: np.ndarray, n_bands: int) -> tuple[float, float]:
    """Exponential fit ``log P(G >= x) = a - rate * x`` of the scores' empirical tail.

    Parameters
    ----------
    scores
        Scores (chi-square units), NaN where not scored.
    n_bands
        Degrees of freedom of the chi-square null (the rate is never lighter than its tail).

    Returns
    -------
    tuple of float
        ``(a, rate)``, fitted between the :data:`TAIL_QUANTILES`; ``(0, 0.5)`` when there are
        too few scores.
    """
    s = scores[np.isfinite(scores)]
    if s.size < 1000:
        return 0.0, 0.5
    lo, hi = np.quantile(s, TAIL_QUANTILES)
    if not hi > lo:
        return 0.0, 0.5
    p_lo, p_hi = 1 - TAIL_QUANTILES[0], 1 - TAIL_QUANTILES[1]
    rate = float(np.log(p_lo / p_hi) / (hi - lo))
    rate = min(rate, 0.5)  # never lighter than the chi-square tail (exp(-x/2))
    return float(np.log(p_lo) + rate * lo), rate


def tail_p(x: np.ndarray, tail: tuple[float, float], n_bands: int) -> np.ndarray:
    """Tail probability of ``x``: the heavier of the fitted tail and chi-square.

    Parameters
    ----------
    x
        Scores.
    tail
        ``(a, rate)`` from :func:`fit_tail`.
    n_bands
        Degrees of freedom of the chi-square tail.

    Returns
    -------
    numpy.ndarray
        ``P(G >= x)`` per score.
    """
    a, rate = tail
    emp = np.exp(np.minimum(a - rate * np.asarray(x, dtype=np.float64), 0.0))
    return np.maximum(emp, chi2.sf(np.asarray(x, dtype=np.float64), n_bands))


def confidence(peak: np.ndarray, n_tested: int, tail: tuple, n_bands: int) -> np.ndarray:
    """Probability that none of ``n_tested`` unchanged pixels would score ``peak`` or more.

    Parameters
    ----------
    peak
        Peak score of each object.
    n_tested
        Pixels scored at the object's date.
    tail
        ``(a, rate)`` from :func:`fit_tail`.
    n_bands
        Degrees of freedom of the chi-square tail.

    Returns
    -------
    numpy.ndarray
        ``(1 - p)^n_tested`` per object, ``p`` = :func:`tail_p` of its peak.
    """
    p = np.minimum(tail_p(peak, tail, n_bands), 1 - 1e-12)
    return np.exp(n_tested * np.log1p(-p))


def surface_zones(
    zone_raster: np.ndarray, zone_kinds: Sequence[str], cfg: DetectConfig
) -> np.ndarray:
    """The zone raster with only the zones whose own surface carries the objects.

    Parameters
    ----------
    zone_raster
        (y, x) int zones (0 = none, i + 1 = zone i).
    zone_kinds
        Kind of each zone.
    cfg
        ``sign_surface_zone_kinds`` lists the surface kinds (apron, parking, ...).

    Returns
    -------
    numpy.ndarray
        ``zone_raster`` with every other zone set to 0.
    """
    surface = np.asarray([False] + [k in cfg.sign_surface_zone_kinds for k in zone_kinds])
    return np.where(surface[zone_raster], zone_raster, 0)


def sign_margin(
    before: np.ndarray,
    after: np.ndarray,
    changed: np.ndarray,
    quiet: np.ndarray,
    sigma: np.ndarray,
    surface_zones: np.ndarray,
    cfg: DetectConfig,
    bands: Sequence[str] = (),
) -> np.ndarray:
    """Removal margin of each changed pixel (> 0 removed) by ``cfg.sign_method``, overruled
    where one view is open water (:func:`pipeline.kernels.detect.segment.water_margin`).

    Parameters
    ----------
    before, after
        (B, y, x) the two views, reflectance.
    changed, quiet
        (y, x) bool: pixels to sign, and unchanged valid pixels (their surroundings).
    sigma
        (B,) noise sigma per band.
    surface_zones
        (y, x) zones whose own surface carries the objects (:func:`surface_zones`).
    cfg
        ``sign_method``, ``sign_ring_px``, ``sign_window_px``,
        ``sign_two_surface_separation``, ``sign_water_ndwi``.
    bands
        Vocabulary names of the first axis; the water rule needs ``green`` and ``nir``.

    Returns
    -------
    numpy.ndarray
        (y, x) float32 margin (:func:`pipeline.kernels.detect.segment.background_margin` or
        :func:`pipeline.kernels.detect.segment.surroundings_margin`).
    """
    if cfg.sign_method == "ring":
        margin = surroundings_margin(before, after, changed, quiet, sigma, cfg.sign_ring_px)
    else:
        ring = cfg.sign_ring_px if cfg.sign_method == "surround" else 0
        margin = background_margin(
            before,
            after,
            changed,
            quiet,
            sigma,
            cfg.sign_window_px,
            surface_zones,
            ring,
            cfg.sign_two_surface_separation,
        )
    if cfg.sign_water_ndwi is not None and "green" in bands and "nir" in bands:
        water = water_margin(
            before,
            after,
            changed,
            sigma,
            (list(bands).index("green"), list(bands).index("nir")),
            cfg.sign_water_ndwi,
        )
        margin = np.where(water != 0, water, margin).astype(np.float32)
    return margin


def one_date_objects(
    exc: clouds.Excursions,
    loaded: np.ndarray,
    refl: np.ndarray,
    used: np.ndarray,
    dates: list[str],
    cfg: DetectConfig,
    sigma: np.ndarray,
    levels: tuple[float, float, int],
    tail: tuple[float, float],
    site: str,
    features: list[dict],
    labels_all: np.ndarray,
    grid: tuple,
    model: clouds.AtmosphereModel | None = None,
    bands: Sequence[str] = (),
    *,
    n_used: Sequence[int] | None = None,
    first_pixels: dict[int, tuple[int, int]] | None = None,
) -> list[dict]:
    """An appearance and a removal for each one-date object (``transient`` = true).

    Parameters
    ----------
    exc
        What :func:`pipeline.kernels.detect.clouds.clean_excursions` found (its ``objects``).
    loaded
        (T, y, x) bool valid mask as loaded (SCL).
    refl
        (T, B, y, x) normalised reflectance.
    used
        (T, y, x) bool observations used by the step test.
    dates
        ISO dates of the cube.
    cfg
        Detection parameters (``one_date_cloud_distance_px``, the sign method).
    sigma
        (B,) noise sigma per band.
    levels
        ``(seed, grow, min_pixels)`` (unused thresholds kept for symmetry with the step test).
    tail
        ``(a, rate)`` from :func:`fit_tail`, for the confidence.
    site
        Site name (feature ids).
    features
        Features found so far (labels continue their numbering).
    labels_all
        (pair, y, x) int labels, updated in place.
    grid
        ``(transform, crs, zone_raster, zone_names, zone_kinds)``.
    model
        Atmospheric model: each object's ``atm_unexplained`` (the share of its departure a
        cloud, haze or shadow leaves unexplained); None leaves it out.
    bands
        Names of the bands of ``refl`` (for the water rule of :func:`sign_margin`).
    n_used
        Observations used per date over the whole grid when the arrays are a window of it
        (the confidence's number of tests); None: counted here.
    first_pixels
        When given, filled with each new label's ``(date, flat index of the object's first
        pixel)`` (the windowed detector's ownership and numbering).

    Returns
    -------
    list of dict
        ``features`` followed by the one-date objects' appearances and removals.
    """
    transform, crs, zone_raster, zone_names, zone_kinds = grid
    surfaces = surface_zones(zone_raster, zone_kinds, cfg)
    t_len = refl.shape[0]
    n_bands = refl.shape[1]
    idx = np.arange(t_len)[:, None, None]
    prev_valid = np.where(used, idx, -1)
    prev_valid = np.maximum.accumulate(prev_valid, axis=0)
    next_valid = np.where(used, idx, t_len)
    next_valid = np.minimum.accumulate(next_valid[::-1], axis=0)[::-1]
    features = list(features)
    for t in range(t_len):
        obj = exc.objects[t]
        if not obj.any():
            continue
        regions, n = ndimage.label(obj, EIGHT)
        base = exc.baseline[t]
        with np.errstate(invalid="ignore"):
            calm = np.nan_to_num(exc.stat[t], nan=np.inf) < chi2.isf(QUIET_RATE, n_bands)
        quiet = used[t] & ~obj & calm
        # the neighbours' mean exists on the object only; around it the date's own view is
        # the surroundings (quiet pixels did not change)
        base = np.where(obj[None], base, refl[t])
        margin = sign_margin(base, refl[t], obj, quiet, sigma, surfaces, cfg, bands)
        ids = np.arange(1, n + 1)
        # margin > 0: the date's view is the better explained = the object is absent that date
        absent = np.asarray(ndimage.sum(margin, regions, ids)) > 0
        before = prev_valid[t - 1] if t > 0 else np.full(obj.shape, -1)
        after = next_valid[t + 1] if t + 1 < t_len else np.full(obj.shape, t_len)
        first = np.asarray(ndimage.minimum(before, regions, ids))
        last = np.asarray(ndimage.maximum(after, regions, ids))
        dev = np.sqrt((((refl[t] - base) / sigma[:, None, None]) ** 2).sum(axis=0))
        peak = np.asarray(ndimage.maximum(np.nan_to_num(dev) ** 2, regions, ids))
        n_tested = int(used[t].sum()) if n_used is None else int(n_used[t])
        conf = confidence(peak, n_tested, tail, n_bands)
        unexplained = np.ones(n + 1)
        if model is not None:
            _, unexplained = clouds.classify_regions(
                regions, n, refl[t] - base, base, model, sigma, 1.0
            )
        cloudy = np.zeros(n, dtype=bool)
        if cfg.one_date_cloud_distance_px > 0:
            masked = ~loaded[t] | exc.atmospheric[t]
            if masked.any():
                near = ndimage.binary_dilation(
                    masked, EIGHT, iterations=cfg.one_date_cloud_distance_px
                )
                cloudy = np.asarray(ndimage.maximum(near, regions, ids)) > 0
        for k in range(n):
            if cloudy[k]:
                continue
            kinds = ("removed", "appeared") if absent[k] else ("appeared", "removed")
            spans = ((int(first[k]), t), (t, int(last[k])))
            for kind, (b, a) in zip(kinds, spans, strict=True):
                if b < 0 or a >= t_len:
                    continue
                label = len(features) + 1
                mask = regions == k + 1
                if first_pixels is not None:
                    first_pixels[label] = (t, int(np.argmax(mask)))
                labels_all[a - 1] = np.where(mask, label, labels_all[a - 1])
                props = {
                    label: {
                        "id": f"{site}-{dates[a].replace('-', '')}-{label}",
                        "kind": kind,
                        "date_before": dates[b],
                        "date_after": dates[a],
                        "date_before_latest": dates[b],
                        "score": round(float(peak[k]), 3),
                        "score_peak": round(float(peak[k]), 3),
                        "n_seed_pixels": int(mask.sum()),
                        "confidence": round(float(conf[k]), 4),
                        "pair": a - 1,
                        "n_dates_before": 1,
                        "n_dates_after": 1,
                        "transient": True,
                        "atm_unexplained": round(float(unexplained[k + 1]), 4),
                    }
                }
                glob = np.where(mask, label, 0).astype(np.int32)
                features += region_features(
                    glob, transform, crs, zone_raster, zone_names, zone_kinds, props
                )
    return features
