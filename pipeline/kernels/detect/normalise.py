"""Radiometric normalisation and the no-change noise model of a date pair (pure).

Everything here is estimated from the data itself, on a regular sample of the jointly valid
pixels of the two observations (all of them at site scale, a strided grid of at most
``max_sample_px`` on a whole tile):

- **Gain and offset** per band, ``after ~ gain * before + offset``: a symmetric (reduced major axis)
  fit, started from quantile spreads and refitted on the inliers of its own residuals. Symmetric,
  so noise in both dates does not shrink the gain towards 0 the way least squares of ``after`` on
  ``before`` would (a flat, noisy scene gets gain 1, not 0); robust, because changed pixels are
  rare and fall outside 3.5 robust sigmas.
- **Noise sigma** per band: ``1.4826 * MAD`` of the normalised difference over all sampled pixels.
  Changes are rare, so the MAD is the no-change noise.
- **Band correlation**: the Gnanadesikan-Kettenring robust correlation of the standardised
  differences, made positive definite (eigenvalues floored), and its whitening matrix ``W`` with
  ``||W z||^2 = z' R^-1 z``, the Mahalanobis form of the score (chi-square with ``B`` degrees of
  freedom under no change).
- **Null scale**: median of the score over the used pixels divided by the median of chi-square
  with ``B`` dof, so thresholds taken from chi-square quantiles hold even when the noise model is
  somewhat off (e.g. spatially correlated noise after smoothing).

Each estimate is one small numpy function of the sample. :func:`on_sample` runs it directly on
numpy input and as one lazy task (``dask.delayed`` wrapped back into a dask array) on dask input,
so nothing is computed early.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
from scipy.stats import chi2

MAD_TO_SIGMA = 1.4826
"""Scale factor from the median absolute deviation to the sigma of a Gaussian."""

MIN_FIT_PX = 100
"""A pair with fewer jointly valid sampled pixels is not scored (its fit is not trusted)."""

CORRELATION_SAMPLE_PX = 10_000
"""The band correlation is estimated on at most about this many of the sampled pixels."""

MIN_GROUP_PX = 50
"""Fewest sampled pixels to estimate the level and sigma of one before-date group."""

INLIER_SIGMAS = 3.5
"""Residuals beyond this many robust sigmas are left out of the gain/offset refit."""

EIGEN_FLOOR = 0.05
"""Smallest eigenvalue kept in the band correlation matrix (keeps the whitening well posed)."""

_TINY = 1e-9


def is_dask(*arrays: Any) -> bool:
    """True when any of ``arrays`` is a dask array."""
    return any(isinstance(a, da.Array) for a in arrays)


def sample_stride(shape: tuple[int, ...], max_sample_px: int) -> int:
    """Stride ``k`` of the sampling lattice so that ``y * x / k**2 <= max_sample_px``.

    Parameters
    ----------
    shape
        Array shape; the last two axes are ``(y, x)``.
    max_sample_px
        Largest number of sampled pixels.

    Returns
    -------
    int
        Stride along y and x (1 = every pixel).
    """
    n = int(shape[-2]) * int(shape[-1])
    return max(1, math.ceil(math.sqrt(n / max(1, max_sample_px))))


def _lattice(a: Any, k: int) -> list[Any]:
    """Pieces of a sheared sampling lattice: rows ``i * k``, columns ``c = -i (mod k)``.

    Every row and every column is sampled at the same rate ``1 / k**2`` (a plain ``[::k, ::k]``
    grid never sees a one-pixel-wide column such as a border strip).
    """
    pieces = [a[..., j * k :: k * k, (-j) % k :: k] for j in range(k)]
    return [p for p in pieces if p.shape[-2] > 0 and p.shape[-1] > 0]


def _flat(pieces: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.reshape(p, (*p.shape[:-2], -1)) for p in pieces], axis=-1)


def on_sample(
    func: Callable[..., np.ndarray], size: int, max_sample_px: int, *arrays: Any
) -> np.ndarray | da.Array:
    """Apply a numpy reduction to a sample of same-grid arrays; lazily (one task) for dask.

    The sample is a sheared lattice of stride :func:`sample_stride` (every pixel when the grid
    holds at most ``max_sample_px``), the same pixels for numpy and dask input.

    Parameters
    ----------
    func
        Function of the sampled arrays, each flattened to ``(..., n)``, returning a float64
        array of ``(size,)``.
    size
        Length of the result.
    max_sample_px
        Largest number of sampled pixels.
    *arrays
        (..., y, x) inputs on one grid (numpy or dask).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        The result; lazy when any input is a dask array.
    """
    k = sample_stride(arrays[0].shape, max_sample_px)
    pieces = [_lattice(a, k) for a in arrays]
    if not is_dask(*arrays):
        return func(*[_flat([np.asarray(p) for p in ps]) for ps in pieces])
    # One blockwise task whose inputs are every block, concatenated (all input axes contracted).
    # (dask.delayed would copy the whole upstream graph under new keys at every call.)
    args: list[Any] = []
    counts = []
    letters = iter("abcdefghijlmnopqrstuvwxyzABCDEFGHIJLMNOPQRSTUVWXYZ")
    for ps in pieces:
        counts.append(len(ps))
        for p in ps:
            p = da.asarray(p)
            args += [p, "".join(next(letters) for _ in range(p.ndim))]

    def run(*blocks: np.ndarray) -> np.ndarray:
        groups, i = [], 0
        for n in counts:
            groups.append(_flat(blocks[i : i + n]))
            i += n
        return func(*groups)

    return da.blockwise(
        run,
        "k",
        *args,
        new_axes={"k": size},
        concatenate=True,
        align_arrays=False,  # every input axis has its own index: nothing to align
        dtype=np.float64,
        meta=np.empty((0,), dtype=np.float64),
    )


def robust_sigma(x: np.ndarray) -> float:
    """Gaussian-consistent robust sigma (``1.4826 * MAD``) of a 1-D sample; 0 when empty."""
    if x.size == 0:
        return 0.0
    return float(MAD_TO_SIGMA * np.median(np.abs(x - np.median(x))))


def fit_band(before: np.ndarray, after: np.ndarray) -> tuple[float, float]:
    """Robust symmetric gain/offset of ``after ~ gain * before + offset`` for one band.

    Parameters
    ----------
    before, after
        1-D float64 samples of the same pixels.

    Returns
    -------
    tuple of float
        ``(gain, offset)``; the gain is clipped to 0.2 .. 5.
    """
    qb = np.quantile(before, [0.1, 0.5, 0.9])
    qa = np.quantile(after, [0.1, 0.5, 0.9])
    spread_b, spread_a = qb[2] - qb[0], qa[2] - qa[0]
    gain = spread_a / spread_b if spread_b > _TINY and spread_a > _TINY else 1.0
    offset = qa[1] - gain * qb[1]
    for _ in range(3):
        resid = after - (gain * before + offset)
        centre = np.median(resid)
        scale = robust_sigma(resid)
        inlier = np.abs(resid - centre) <= INLIER_SIGMAS * max(scale, _TINY)
        if inlier.sum() < MIN_FIT_PX:
            break
        b_in, a_in = before[inlier], after[inlier]
        sd_b, sd_a = b_in.std(), a_in.std()
        gain = sd_a / sd_b if sd_b > _TINY and sd_a > _TINY else 1.0
        offset = a_in.mean() - gain * b_in.mean()
    return float(np.clip(gain, 0.2, 5.0)), float(offset)


def robust_correlation(z: np.ndarray) -> np.ndarray:
    """Gnanadesikan-Kettenring robust correlation of the columns of ``z`` (n, B).

    ``rho_ij = (s(u)^2 - s(v)^2) / (s(u)^2 + s(v)^2)`` with ``u = z_i + z_j``, ``v = z_i - z_j`` and
    ``s`` the MAD sigma; the columns should already be on a common robust scale.
    """
    n_bands = z.shape[1]
    corr = np.eye(n_bands)
    for i in range(n_bands):
        for j in range(i + 1, n_bands):
            su = robust_sigma(z[:, i] + z[:, j]) ** 2
            sv = robust_sigma(z[:, i] - z[:, j]) ** 2
            rho = (su - sv) / (su + sv) if su + sv > _TINY else 0.0
            corr[i, j] = corr[j, i] = rho
    return corr


def whitening_matrix(corr: np.ndarray, floor: float = EIGEN_FLOOR) -> np.ndarray:
    """``W`` with ``||W z||^2 = z' R^-1 z`` for the correlation ``R``, eigenvalues floored."""
    vals, vecs = np.linalg.eigh(corr)
    vals = np.maximum(vals, floor)
    return (vecs / np.sqrt(vals)).T


def _group_stats(
    resid: np.ndarray, groups: np.ndarray, n_groups: int, sigma: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Median residual and robust sigma per group of pixels (per band), floored at ``sigma``.

    A group too small to estimate gets no level shift and the largest sigma of the others.
    """
    n_bands = resid.shape[0]
    level = np.zeros((n_groups, n_bands))
    spread = np.zeros((n_groups, n_bands))
    known = np.zeros(n_groups, dtype=bool)
    for g in np.unique(groups):
        sel = groups == g
        if sel.sum() < MIN_GROUP_PX:
            continue
        r = resid[:, sel]
        level[g] = np.median(r, axis=1)
        spread[g] = [max(robust_sigma(r[k] - level[g, k]), sigma[k]) for k in range(n_bands)]
        known[g] = True
    fallback = spread[known].max(axis=0) if known.any() else sigma
    spread[~known] = np.maximum(fallback, sigma)
    return level, spread


def _radiometry_np(
    before: np.ndarray,
    after: np.ndarray,
    ok: np.ndarray,
    groups: np.ndarray,
    n_groups: int,
    decorrelate: bool,
) -> np.ndarray:
    """Packed ``[fit_ok, gain, offset, sigma, W, group level, group sigma]`` from samples."""
    n_bands = before.shape[0]
    gain, offset, sigma = np.ones(n_bands), np.zeros(n_bands), np.ones(n_bands)
    white = np.eye(n_bands)
    level, spread = np.zeros((n_groups, n_bands)), np.ones((n_groups, n_bands))
    ok = ok.astype(bool)
    if int(ok.sum()) < MIN_FIT_PX:
        return np.concatenate(
            [[0.0], gain, offset, sigma, white.ravel(), level.ravel(), spread.ravel()]
        )
    b = before[:, ok].astype(np.float64)
    a = after[:, ok].astype(np.float64)
    g = np.clip(groups[ok].astype(np.int64), 0, n_groups - 1)
    resid = np.empty_like(a)
    for k in range(n_bands):
        gain[k], offset[k] = fit_band(b[k], a[k])
        resid[k] = a[k] - (gain[k] * b[k] + offset[k])
        sigma[k] = max(robust_sigma(resid[k]), 1e-6)
    level, spread = _group_stats(resid, g, n_groups, sigma)
    if decorrelate and n_bands > 1:
        step = max(1, resid.shape[1] // CORRELATION_SAMPLE_PX)
        z = ((resid - level[g].T) / spread[g].T).T[::step]
        white = whitening_matrix(robust_correlation(z))
    return np.concatenate(
        [[1.0], gain, offset, sigma, white.ravel(), level.ravel(), spread.ravel()]
    )


@dataclass(frozen=True)
class PairRadiometry:
    """Relative radiometry of a date pair, fitted on its pixels (numpy or lazy 0-d/1-d/2-d dask
    arrays): the after view against the before view, and the noise of their difference.

    Not the DN-to-reflectance scale of an Item (:class:`pipeline.io.harmonise.ScaleOffset`).
    """

    fit_ok: Any
    """0-d bool: enough jointly valid pixels to trust the fit (else the pair is not scored)."""
    gain: Any
    """(B,) gain of ``after ~ gain * before + offset``."""
    offset: Any
    """(B,) offset, reflectance."""
    sigma: Any
    """(B,) robust no-change noise sigma of the normalised difference, reflectance."""
    whitening: Any
    """(B, B) whitening matrix of the robust band correlation (identity when not decorrelated)."""
    group_level: Any
    """(G, B) median normalised difference of the pixels whose before view is from date ``g``."""
    group_sigma: Any
    """(G, B) their robust sigma (at least ``sigma``): older views carry more surface change."""


def fit_radiometry(
    before: Any,
    after: Any,
    ok: Any,
    *,
    max_sample_px: int,
    decorrelate: bool = True,
    before_index: Any = None,
    n_groups: int = 1,
) -> PairRadiometry:
    """Gain/offset, noise sigma and band whitening of a date pair, from a sample of its pixels.

    Parameters
    ----------
    before, after
        (B, y, x) float32 observations (numpy or dask); ``before`` is the last valid observation
        of each pixel before the date of ``after``.
    ok
        (y, x) bool: pixels valid in both.
    max_sample_px
        Largest number of sampled pixels (regular grid).
    decorrelate
        Estimate the band correlation of the noise (else ``W`` = identity).
    before_index
        (y, x) int: date index of each pixel's before view (None: all one group). The level and
        sigma of the difference are also estimated per before date: a pixel last seen clear
        weeks ago carries more surface change (crops, soil moisture) than one seen last pass.
    n_groups
        Number of possible date indices (the cube's date count).

    Returns
    -------
    PairRadiometry
        The model; lazy when the input is.
    """
    n_bands = int(before.shape[0])
    if before_index is None:
        before_index, n_groups = _zeros_like_2d(ok), 1

    def func(b: np.ndarray, a: np.ndarray, m: np.ndarray, gi: np.ndarray) -> np.ndarray:
        return _radiometry_np(b, a, m, gi, n_groups, decorrelate)

    nb, ng = n_bands, n_groups
    size = 1 + 3 * nb + nb * nb + 2 * ng * nb
    packed = on_sample(func, size, max_sample_px, before, after, ok, before_index)
    w0 = 1 + 3 * nb
    l0 = w0 + nb * nb
    s0 = l0 + ng * nb
    return PairRadiometry(
        fit_ok=packed[0] > 0.5,
        gain=packed[1 : 1 + nb].astype(np.float32),
        offset=packed[1 + nb : 1 + 2 * nb].astype(np.float32),
        sigma=packed[1 + 2 * nb : w0].astype(np.float32),
        whitening=packed[w0:l0].reshape(nb, nb).astype(np.float32),
        group_level=packed[l0:s0].reshape(ng, nb).astype(np.float32),
        group_sigma=packed[s0:].reshape(ng, nb).astype(np.float32),
    )


def _zeros_like_2d(mask: Any) -> Any:
    if isinstance(mask, da.Array):
        return da.zeros(mask.shape, dtype=np.int16, chunks=mask.chunks)
    return np.zeros(np.shape(mask), dtype=np.int16)


def per_group(table: Any, index: Any) -> Any:
    """Look up a (G, B) table per pixel: (B, y, x) = ``table[index]`` (index clipped to 0..G-1).

    Parameters
    ----------
    table
        (G, B) per-group values (numpy or one-chunk dask).
    index
        (y, x) int group of each pixel.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        (B, y, x) float32.
    """

    def lookup(tab: np.ndarray, idx: np.ndarray) -> np.ndarray:
        i = np.clip(idx.astype(np.int64), 0, tab.shape[0] - 1)
        return np.moveaxis(tab[i], -1, 0).astype(np.float32)

    if not is_dask(table, index):
        return lookup(np.asarray(table), np.asarray(index))
    table = da.asarray(table).rechunk(-1)
    return da.blockwise(
        lookup,
        "byx",
        table,
        "gb",
        da.asarray(index),
        "yx",
        concatenate=True,
        dtype=np.float32,
        meta=np.empty((0, 0, 0), dtype=np.float32),
    )


def _null_scale_np(score: np.ndarray, used: np.ndarray, dof: int) -> np.ndarray:
    vals = score[used.astype(bool) & np.isfinite(score)]
    if vals.size < MIN_FIT_PX:
        return np.array([1.0])
    med = float(np.median(vals))
    return np.array([max(med / chi2.median(dof), 1.0)])


def null_scale(score: Any, used: Any, dof: int, *, max_sample_px: int) -> Any:
    """Scale of the score's no-change distribution relative to chi-square with ``dof``.

    Parameters
    ----------
    score
        (y, x) raw score (numpy or dask).
    used
        (y, x) bool: pixels scored.
    dof
        Degrees of freedom of the null chi-square (the number of bands).
    max_sample_px
        Largest number of sampled pixels.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        0-d float: ``median(score) / chi2.median(dof)`` over the used pixels (1 with too few).
    """

    def func(s: np.ndarray, m: np.ndarray) -> np.ndarray:
        return _null_scale_np(s, m, dof)

    return on_sample(func, 1, max_sample_px, score, used)[0]
