"""Clouds, haze and shadows the SCL missed, told from one-date objects (pure numpy).

The SCL flags cloud cores; it misses thin edges, faint puffs, thin cirrus and the shadows of
all of these, and it flags bright concrete as cloud. What it misses shows in the time series as
an **excursion**: one observation that departs from *both* its neighbours in time, which agree
with each other (:func:`pipeline.kernels.detect.multidate.excursion_stat`). A ship anchored for one
date is an excursion too. The two are told apart by the spectral shape of the departure ``d`` from
the neighbours' mean ``s`` (both per band), under a physical model of the atmosphere:

- **cloud / haze**: the pixel mixes with a bright cloud: ``d = alpha C - a s + h H`` with
  ``C`` a typical cloud-top reflectance (spectrally flat in the visible and NIR, lower in the
  SWIR), ``a >= 0`` the opacity, ``alpha / a`` in ``[b_min, b_max]`` (a cloud is bright: a
  grey ship on the sea is *not* a dark cloud), ``H ~ lambda^-2`` a thin haze (Rayleigh-like)
  with ``h >= 0``;
- **shadow**: everything darkens in proportion: ``d = -s_shadow * s``.

The best of these (non-negative least squares over the few constrained forms) leaves a
residual; a region whose residual, beyond what noise alone leaves, is at most
``max_unexplained`` of its departure's energy (noise-weighted, summed over the region) is
atmospheric (so a faint shadow, mostly noise, is still told by its shape). A cloud or shadow
then fits to a fraction of a percent; a ship on water or a vehicle on soil leaves several
percent. A region that both brightens and darkens (:data:`MAX_BOTH_WAYS`) is an object
casting its shadow: a cloud and its shadow are never side by side.

:func:`clean_excursions` masks atmospheric excursions (grown by ``dilation_px``) and repeats
(a cloud on a neighbouring date spoils the test of its neighbours); what remains, two-sided,
object-like and strong, is returned as one-date objects: reported as an appearance and a
removal, and left out of the step test.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from pipeline.kernels.detect.multidate import excursion_stat
from pipeline.kernels.detect.segment import EIGHT, hysteresis_regions

CENTRE_UM: dict[str, float] = {
    "coastal": 0.443,
    "blue": 0.49,
    "green": 0.56,
    "red": 0.665,
    "rededge1": 0.705,
    "rededge2": 0.74,
    "rededge3": 0.783,
    "nir": 0.842,
    "nir08": 0.865,
    "nir09": 0.945,
    "swir16": 1.61,
    "swir22": 2.19,
}
"""Centre wavelength (micrometres) of Sentinel-2 bands, by Earth Search v1 asset key."""

CLOUD_TOP: dict[str, float] = {
    "coastal": 0.55,
    "blue": 0.55,
    "green": 0.55,
    "red": 0.54,
    "rededge1": 0.54,
    "rededge2": 0.53,
    "rededge3": 0.53,
    "nir": 0.53,
    "nir08": 0.53,
    "nir09": 0.5,
    "swir16": 0.40,
    "swir22": 0.28,
}
"""Typical reflectance of an optically thick water-cloud top: flat through the visible and NIR,
lower in the SWIR (ice and droplet absorption). Only its shape matters, scaled by
``brightness``."""


MAX_FORM_COEFFICIENTS = 3
"""Most coefficients any atmospheric form fits (cloud, opacity, haze): the residual of pure
noise under the right form is about ``B - 3`` squared noise units per pixel, not counted as
unexplained."""

MAX_BOTH_WAYS = 0.1
"""A region whose brightening and darkening parts each hold more than this share of its
departure energy is an object with its own shadow, never a cloud: a cloud's shadow falls
``height / tan(sun elevation)`` away, hundreds of metres at least."""


@dataclass(frozen=True)
class AtmosphereModel:
    """Spectral shapes of the atmospheric departures, for one list of bands."""

    cloud: np.ndarray
    """(B,) typical cloud-top reflectance."""
    haze: np.ndarray
    """(B,) thin-haze shape ``(0.49 / lambda)^2`` (1 in the blue)."""
    brightness: tuple[float, float]
    """Allowed cloud brightness relative to ``cloud``: (lowest, highest)."""
    shadow: bool = True
    """Allow the proportional-darkening (shadow) form."""
    use_haze: bool = True
    """Allow the haze term."""


def atmosphere_model(
    bands: Sequence[str],
    brightness: tuple[float, float] = (0.5, 1.6),
    *,
    shadow: bool = True,
    haze: bool = True,
) -> AtmosphereModel:
    """The model for ``bands`` (unknown band names get the mean NIR values).

    Parameters
    ----------
    bands
        Band names (Earth Search v1 keys).
    brightness
        Range of the cloud brightness factor.
    shadow, haze
        Forms allowed (the ablation switches).

    Returns
    -------
    AtmosphereModel
        Spectra over ``bands``.
    """
    lam = np.asarray([CENTRE_UM.get(b, 0.842) for b in bands], dtype=np.float32)
    cloud = np.asarray([CLOUD_TOP.get(b, 0.53) for b in bands], dtype=np.float32)
    return AtmosphereModel(
        cloud=cloud,
        haze=((0.49 / lam) ** 2).astype(np.float32),
        brightness=(float(brightness[0]), float(brightness[1])),
        shadow=shadow,
        use_haze=haze,
    )


def _lsq(cols: list[np.ndarray], d: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-pixel least squares of ``d`` (B, N) on columns (each (B, N)): coefficients, residual."""
    k = len(cols)
    gram = [[(a * b).sum(axis=0) for b in cols] for a in cols]
    rhs = [(a * d).sum(axis=0) for a in cols]
    if k == 1:
        coef = [rhs[0] / np.maximum(gram[0][0], 1e-12)]
    elif k == 2:
        det = gram[0][0] * gram[1][1] - gram[0][1] ** 2
        det = np.where(np.abs(det) > 1e-12, det, np.inf)
        coef = [
            (rhs[0] * gram[1][1] - rhs[1] * gram[0][1]) / det,
            (rhs[1] * gram[0][0] - rhs[0] * gram[0][1]) / det,
        ]
    else:
        mat = np.stack([np.stack(row, axis=-1) for row in gram], axis=-2)
        ok = np.abs(np.linalg.det(mat)) > 1e-9
        mat = np.where(ok[:, None, None], mat, np.eye(k))
        sol = np.linalg.solve(mat, np.stack(rhs, axis=-1)[..., None])[..., 0]
        coef = [np.where(ok, sol[:, q], np.nan) for q in range(k)]
    fit = sum(c * col for c, col in zip(coef, cols, strict=True))
    return coef, ((d - fit) ** 2).sum(axis=0)


def atmospheric_residual(
    delta: np.ndarray, base: np.ndarray, model: AtmosphereModel, sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Smallest residual of each pixel's departure under the atmospheric model.

    Parameters
    ----------
    delta
        (B, N) departure from the baseline, reflectance.
    base
        (B, N) baseline (what the pixel looks like without it), reflectance.
    model
        Spectral shapes.
    sigma
        (B,) noise sigma per band (residual and energy are in these units, squared).

    Returns
    -------
    residual, energy : numpy.ndarray
        (N,) squared residual of the best admissible form, and ``||delta / sigma||^2``.
    """
    w = (1.0 / np.asarray(sigma, dtype=np.float64))[:, None]
    d = delta.astype(np.float64) * w
    energy = (d**2).sum(axis=0)
    cw = np.broadcast_to(model.cloud[:, None] * w, d.shape)
    hw = np.broadcast_to(model.haze[:, None] * w, d.shape)
    bw = base.astype(np.float64) * w
    lo, hi = model.brightness
    best = energy.copy()

    def take(res: np.ndarray, ok: np.ndarray) -> None:
        np.copyto(best, res, where=ok & (res < best))

    extra = [hw] if model.use_haze else []
    with np.errstate(invalid="ignore", divide="ignore"):
        for cols in ([cw, -bw, *extra], [cw, -bw]):
            coef, res = _lsq(list(cols), d)
            alpha, a = coef[0], coef[1]
            ok = (a > 0) & (alpha >= lo * a) & (alpha <= hi * a)
            if len(coef) == 3:
                ok &= coef[2] >= 0
            take(res, ok)
        for bright in (lo, hi):
            col = bright * cw - bw
            for cols in ([col, *extra], [col]):
                coef, res = _lsq(list(cols), d)
                take(res, np.all([c >= 0 for c in coef], axis=0))
        if model.use_haze:
            coef, res = _lsq([hw], d)
            take(res, coef[0] >= 0)
        if model.shadow:
            coef, res = _lsq([-bw], d)
            take(res, coef[0] >= 0)
    return best, energy


def classify_regions(
    labels: np.ndarray,
    n_labels: int,
    delta: np.ndarray,
    base: np.ndarray,
    model: AtmosphereModel,
    sigma: np.ndarray,
    max_unexplained: float,
    possible: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Which labelled regions are atmospheric (cloud, haze or shadow).

    Parameters
    ----------
    labels
        (y, x) int regions 1..n_labels (0 = none).
    n_labels
        Number of regions.
    delta, base
        (B, y, x) departure and baseline, reflectance.
    model, sigma
        See :func:`atmospheric_residual`.
    max_unexplained
        Largest share of the region's departure energy the model may leave unexplained.
    possible
        (y, x) bool: where the atmosphere can explain a departure on this date
        (:func:`atmosphere_possible`); a region touching none of it is never atmospheric.
        None: everywhere.

    Returns
    -------
    atmospheric : numpy.ndarray
        (n_labels + 1,) bool (entry 0 False).
    unexplained : numpy.ndarray
        (n_labels + 1,) float share left unexplained.
    """
    inside = labels > 0
    lab = labels[inside]
    d = np.nan_to_num(delta[:, inside])
    res, energy = atmospheric_residual(d, np.nan_to_num(base[:, inside]), model, sigma)
    total = np.maximum(np.bincount(lab, energy, n_labels + 1), 1e-12)
    # noise leaves a residual under the right form too: about B - 3 (the most coefficients a
    # form fits) squared noise units per pixel; only the excess over it is unexplained
    floor = max(delta.shape[0] - MAX_FORM_COEFFICIENTS, 0) * np.bincount(lab, None, n_labels + 1)
    unexplained = np.maximum(np.bincount(lab, res, n_labels + 1) - floor, 0) / total
    brighter = (d / np.asarray(sigma, dtype=np.float64)[:, None]).sum(axis=0) > 0
    up = np.bincount(lab, energy * brighter, n_labels + 1) / total
    both_ways = np.minimum(up, 1 - up) > MAX_BOTH_WAYS
    atmospheric = (unexplained <= max_unexplained) & ~both_ways
    if possible is not None:
        atmospheric &= np.bincount(lab, possible[inside], n_labels + 1) > 0
    atmospheric[0] = False
    return atmospheric, unexplained


CONTEXT_FRAME_PX = 5
"""Masked pixels this close to the grid's edge give no atmospheric context: applying a
co-registration shift leaves the edge of each date without data, cloud or no cloud."""


def atmosphere_possible(
    masked: np.ndarray,
    distance_px: float | None,
    *,
    near: np.ndarray | None = None,
    edges: tuple[bool, bool, bool, bool] = (True, True, True, True),
) -> np.ndarray:
    """Where the atmosphere can explain a one-date departure: near what was masked that date.

    The SCL misses the thin edges, faint puffs and shadows *of* the clouds it flags, not whole
    cloud systems; and a shadow falls ``height * tan(sun zenith)`` from its cloud, a few
    kilometres at most. On a date with nothing masked near, a departure is no cloud, haze or
    shadow: it is an object (a ship leaving the sea is a near-total "darkening" in every band,
    one arriving a grey "veil").

    Parameters
    ----------
    masked
        (y, x) bool: pixels masked that date (the SCL's cloud, shadow and no data, and the
        departures already found atmospheric); those within :data:`CONTEXT_FRAME_PX` of the
        edge do not count.
    distance_px
        Farthest from a masked pixel (pixels) the atmosphere explains a departure; None:
        anywhere (no context test).
    near
        (y, x) bool: already known to be within ``distance_px`` of a masked pixel (a window
        of a grid: of the grid's loaded masks, :func:`context_near`); ORed with the result
        (the distance to a union is the smaller distance). None: nothing.
    edges
        Which sides of ``masked`` (top, bottom, left, right) are the grid's edges, whose
        frame does not count (a window's inner sides are not).

    Returns
    -------
    numpy.ndarray
        (y, x) bool.
    """
    if distance_px is None:
        return np.ones(masked.shape, dtype=bool)
    masked = masked.copy()
    e = CONTEXT_FRAME_PX  # a co-registration shift leaves the grid's edge without data
    top, bottom, left, right = edges
    if top:
        masked[:e] = False
    if bottom:
        masked[-e:] = False
    if left:
        masked[:, :e] = False
    if right:
        masked[:, -e:] = False
    if not masked.any():
        out = np.zeros(masked.shape, dtype=bool)
    else:
        out = ndimage.distance_transform_edt(~masked) <= distance_px
    return out if near is None else out | near


def context_near(
    masked: np.ndarray,
    distance_px: float | None,
    window: tuple[slice, slice],
    edges: tuple[bool, bool, bool, bool],
) -> np.ndarray | None:
    """:func:`atmosphere_possible` of each date of a widened window, cut to the window.

    Parameters
    ----------
    masked
        (T, y, x) bool masks of a grid's window widened by ``distance_px`` on every side
        (clipped to the grid).
    distance_px
        The context distance (None: no context test, returns None).
    window
        Slices of ``masked`` holding the window itself.
    edges
        Which sides of ``masked`` are the grid's edges.

    Returns
    -------
    numpy.ndarray or None
        (T, wy, wx) bool: within ``distance_px`` of a pixel masked that date, anywhere in the
        grid (the widened window holds every pixel that near).
    """
    if distance_px is None:
        return None
    out = np.zeros((masked.shape[0], *masked[0][window].shape), dtype=bool)
    for t, m in enumerate(masked):
        out[t] = atmosphere_possible(m, distance_px, edges=edges)[window]
    return out


@dataclass(frozen=True)
class Excursions:
    """What :func:`clean_excursions` found."""

    valid: np.ndarray
    """(T, y, x) bool: the valid mask with atmospheric excursions (and their margin) removed."""
    atmospheric: np.ndarray
    """(T, y, x) bool: observations masked as cloud, haze or shadow."""
    objects: np.ndarray
    """(T, y, x) bool: one-date object-like excursions (left out of the step test)."""
    baseline: np.ndarray
    """(T, B, y, x) float32 neighbours' mean at the object excursions (reflectance), NaN
    elsewhere."""
    stat: np.ndarray
    """(T, y, x) float32 the excursion statistic of the last pass (NaN where invalid)."""


def context_kwargs(
    context: tuple[np.ndarray | None, tuple[bool, bool, bool, bool]] | None,
    dates: tuple[int, ...],
) -> dict:
    """Keyword arguments of :func:`atmosphere_possible` for a window's dates (none: whole grid)."""
    if context is None:
        return {}
    near, edges = context
    return {"near": None if near is None else near[list(dates)].any(axis=0), "edges": edges}


def clean_excursions(
    z: np.ndarray,
    var: np.ndarray,
    valid: np.ndarray,
    sigma: np.ndarray,
    model: AtmosphereModel,
    *,
    candidate_threshold: float,
    grow_threshold: float,
    seed_threshold: float,
    min_pixels: int,
    max_unexplained: float,
    dilation_px: int,
    passes: int,
    mask: bool = True,
    min_seeds: int = 1,
    context_distance_px: float | None = None,
    context: tuple[np.ndarray, tuple[bool, bool, bool, bool]] | None = None,
) -> Excursions:
    """Mask atmospheric excursions, repeatedly; return the one-date objects (module docstring).

    Parameters
    ----------
    z, var
        (T, B, y, x) standardised observations and variances (:mod:`pipeline.kernels.detect.noise`).
    valid
        (T, y, x) bool observations to consider.
    sigma
        (B,) noise sigma per band, reflectance (``z * sigma`` is reflectance).
    model
        Atmospheric spectral model.
    candidate_threshold, grow_threshold
        Hysteresis thresholds of the excursion statistic for candidate regions.
    seed_threshold
        A one-date object needs ``min_seeds`` pixels this strong (and ``min_pixels``).
    min_pixels
        Smallest one-date object.
    min_seeds
        Fewest pixels above ``seed_threshold`` in a one-date object.
    max_unexplained
        See :func:`classify_regions`.
    dilation_px
        Margin masked around an atmospheric region (its faint edge).
    passes
        Masking passes.
    mask
        False: mask nothing (ablation), only report one-date objects.
    context_distance_px
        A departure is atmospheric only within this of a pixel masked that date (invalid in
        ``valid`` or found atmospheric in an earlier pass; :func:`atmosphere_possible`); None:
        anywhere.
    context
        For a window of a grid: ``(near, edges)``, :func:`context_near` of the grid's loaded
        masks and which sides of the window are the grid's edges (see
        :func:`atmosphere_possible`); None: the arrays are the whole grid.

    Returns
    -------
    Excursions
        Cleaned valid mask, what was masked, and the one-date objects.
    """
    t_len = z.shape[0]
    sig = np.asarray(sigma, dtype=np.float32)[:, None, None]
    current = valid.copy()
    atmospheric = np.zeros_like(valid)
    objects = np.zeros_like(valid)
    baseline = np.full(z.shape, np.nan, np.float32)
    settled = not mask
    for it in range(passes + 1):
        last = it == passes or settled
        stat, two, base = excursion_stat(z, var, current)
        new = np.zeros_like(valid)
        for t in range(t_len):
            cand = np.where(current[t], stat[t], np.nan)
            labels, n = hysteresis_regions(cand, candidate_threshold, grow_threshold, 1)
            atm_px = np.zeros(labels.shape, dtype=bool)
            if n:
                delta = (z[t] - base[t]) * sig
                possible = atmosphere_possible(
                    ~valid[t] | atmospheric[t],
                    context_distance_px,
                    **context_kwargs(context, (t,)),
                )
                atm, _ = classify_regions(
                    labels, n, delta, base[t] * sig, model, sigma, max_unexplained, possible
                )
                atm_px = atm[labels]
            if not last:
                if atm_px.any():
                    grown = ndimage.binary_dilation(atm_px, EIGHT, iterations=dilation_px)
                    new[t] = (grown if dilation_px > 0 else atm_px) & current[t]
                continue
            strong = np.where(current[t] & two[t], stat[t], np.nan)
            obj, m = hysteresis_regions(
                strong, seed_threshold, grow_threshold, min_pixels, min_seeds
            )
            if m:
                objects[t] = (obj > 0) & ~atm_px
                baseline[t] = np.where(objects[t][None], base[t] * sig, np.nan)
        if last:
            break
        if not new.any():
            settled = True
            continue
        current &= ~new
        atmospheric |= new
    return Excursions(
        valid=current, atmospheric=atmospheric, objects=objects, baseline=baseline, stat=stat
    )


__all__ = [
    "AtmosphereModel",
    "Excursions",
    "atmosphere_model",
    "atmosphere_possible",
    "atmospheric_residual",
    "classify_regions",
    "clean_excursions",
    "context_kwargs",
    "context_near",
]
