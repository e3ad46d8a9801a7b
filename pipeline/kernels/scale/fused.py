"""The per-pixel change core fused into one pass over memory (pure: arrays in, arrays out).

:func:`core_numba` computes, for a before view and an after view of ``B`` bands, what
:func:`pipeline.kernels.detect.pairwise.pair_change` computes pixel by pixel, in a single compiled
loop (numba) that reads each input value once and writes a float32 score and a uint8 class:

- filled views: an invalid after view takes the before value, an invalid before view the filled
  after value, NaN becomes 0 (so the stencils below see no holes);
- normalisation: ``d_b = after_b - (gain_b * before_b + offset_b) - level[g, b]`` with ``g`` the
  date index of the pixel's before view (the per-before-date level of
  :mod:`pipeline.kernels.detect.normalise`; one group for a plain pair);
- noise: ``var_b = sigma[g, b]^2 + reg^2 max(min(|grad before|^2, |grad after|^2) - s_b^2/2, 0)
  + blur^2 max(min(lap before^2, lap after^2) - 20 s_b^2/2, 0)`` (registration and resampling
  noise where both views show the structure; central differences, one-sided at the array edges;
  5-point Laplacian, edges replicated: :mod:`pipeline.kernels.detect.neighbourhood`);
- score: ``||W z||^2 / null_scale`` with ``z_b = d_b / sqrt(var_b)`` (Mahalanobis, chi-square
  with ``B`` dof under no change); NaN where not scored (either view invalid, or the pair's fit
  not trusted);
- class: 255 not scored, 0 quiet, 1 above the grow threshold, 2 above the seed threshold (both
  compared in float64, exactly as :func:`pipeline.kernels.detect.segment.segment_pair` compares
  them).

What it does not do, and :mod:`pipeline.kernels.detect.pairwise` does: the local change level and
local noise (block medians over ``local_window_px``), the thin-cloud guard, smoothing. Those are
neighbourhood statistics, not per-pixel work.

The loop runs row by row over a four-row ring of filled rows per band (they stay in cache; the
row two ahead is read and filled while the current one is scored), and inside a row every step
is a flat loop over columns that LLVM vectorises; no full-size temporary is allocated. On
dask input the kernel runs per chunk with a one-pixel margin (``boundary="none"``), so numpy
and dask results are the same bits. Callers use the dispatcher
:func:`pipeline.kernels.scale.change.change_core` (``engine="numba"``, the default), which runs this
loop on numpy input and per chunk on dask input.
:func:`update_last_view` is the fused state update of a date-by-date stream (the last valid view
of each pixel, carried into each new date's radiometry).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from functools import partial
from itertools import pairwise
from typing import Any

import dask.array as da
import numpy as np

from pipeline.errors import DataError
from pipeline.kernels.scale import fused_numba as kern

NOT_SCORED = np.uint8(255)
"""Class of a pixel that is not scored."""


@dataclass(frozen=True)
class CoreParams:
    """Per-pair parameters of the change core (small numpy arrays, fitted on a sample)."""

    gain: np.ndarray
    """(B,) float32 gain of ``after ~ gain * before + offset``."""
    offset: np.ndarray
    """(B,) float32 offset, reflectance."""
    sigma: np.ndarray
    """(B,) float32 pair noise sigma (sets the noise share of the structure terms)."""
    whitening: np.ndarray
    """(B, B) float32 whitening matrix of the noise band correlation."""
    group_level: np.ndarray
    """(G, B) float32 level of the normalised difference per before date."""
    group_sigma: np.ndarray
    """(G, B) float32 noise sigma per before date."""
    null_scale: float = 1.0
    """Divides the raw score (its null median over the chi-square median, at least 1)."""
    seed_threshold: float = np.inf
    """Class 2 at or above this score."""
    grow_threshold: float = np.inf
    """Class 1 at or above this score."""
    registration_noise_px: float = 0.0
    """Residual misregistration (px); 0 leaves out the gradient term."""
    resampling_blur_px2: float = 0.0
    """Resampling blur (px^2); 0 leaves out the Laplacian term."""
    fit_ok: bool = True
    """False: the pair's fit is not trusted and nothing is scored."""

    @property
    def n_bands(self) -> int:
        """Number of bands ``B``."""
        return int(self.gain.shape[0])

    @property
    def stencil(self) -> bool:
        """True when a structure term needs the neighbours of each pixel."""
        return self.registration_noise_px > 0 or self.resampling_blur_px2 > 0

    def with_scale(self, null_scale: float) -> CoreParams:
        """The same parameters with another null scale (1 gives the raw score)."""
        return replace(self, null_scale=float(null_scale))


def core_params(
    radiometry: Any,
    cfg: Any,
    *,
    null_scale: float = 1.0,
    seed_threshold: float = np.inf,
    grow_threshold: float = np.inf,
) -> CoreParams:
    """:class:`CoreParams` from a fitted
    :class:`pipeline.kernels.detect.normalise.PairRadiometry` and a config.

    Parameters
    ----------
    radiometry
        Fitted radiometry (numpy values) of the pair.
    cfg
        :class:`pipeline.config.DetectConfig` (``registration_noise_px``,
        ``resampling_blur_px2``).
    null_scale, seed_threshold, grow_threshold
        Score scale and class thresholds.

    Returns
    -------
    CoreParams
        Float32 arrays, ready for the kernel.
    """

    def f32(a: Any) -> np.ndarray:
        return np.ascontiguousarray(np.asarray(a, dtype=np.float32))

    return CoreParams(
        gain=f32(radiometry.gain),
        offset=f32(radiometry.offset),
        sigma=f32(radiometry.sigma),
        whitening=f32(radiometry.whitening),
        group_level=f32(radiometry.group_level),
        group_sigma=f32(radiometry.group_sigma),
        null_scale=float(null_scale),
        seed_threshold=float(seed_threshold),
        grow_threshold=float(grow_threshold),
        registration_noise_px=float(cfg.registration_noise_px),
        resampling_blur_px2=float(cfg.resampling_blur_px2),
        fit_ok=bool(np.asarray(radiometry.fit_ok)),
    )


@dataclass(frozen=True)
class CoreResult:
    """Outputs of :func:`pipeline.kernels.scale.change.change_core` (numpy, or lazy dask for dask
    input)."""

    score: Any
    """(y, x) float32 score (chi-square units of ``B`` dof), NaN where not scored."""
    cls: Any
    """(y, x) uint8 class: 0 quiet, 1 grow, 2 seed, 255 not scored."""


def _ro(a: np.ndarray) -> np.ndarray:
    """A read-only view: inputs always have the same numba type, so one compiled (and cached)
    kernel serves writable and read-only arrays (e.g. chunks unpickled on a worker)."""
    view = a.view()
    view.flags.writeable = False
    return view


def _tables(p: CoreParams) -> tuple[np.ndarray, ...]:
    return p.gain, p.offset, p.sigma, p.whitening, p.group_level, p.group_sigma


def core_numba(
    before: np.ndarray,
    after: np.ndarray,
    before_ok: np.ndarray,
    after_ok: np.ndarray,
    index: np.ndarray | None,
    p: CoreParams,
    threads: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Score and class of one pair on numpy arrays, in the compiled (numba) loop.

    The ``"numba"`` engine of :func:`pipeline.kernels.scale.change.change_core` (call that: it
    checks the inputs and handles dask); ``index`` may be None when ``p`` holds one group.
    """
    before = _ro(np.ascontiguousarray(before, dtype=np.float32))
    after = _ro(np.ascontiguousarray(after, dtype=np.float32))
    before_ok = _ro(np.ascontiguousarray(before_ok, dtype=bool))
    after_ok = _ro(np.ascontiguousarray(after_ok, dtype=bool))
    if index is None or p.group_level.shape[0] == 1:
        index = np.zeros((1, 1), dtype=np.int16)
    index = _ro(np.ascontiguousarray(index, dtype=np.int16))
    shape = before.shape[1:]
    score = np.empty(shape, dtype=np.float32)
    cls = np.empty(shape, dtype=np.uint8)
    args = (
        before,
        after,
        before_ok,
        after_ok,
        index,
        *(_ro(np.ascontiguousarray(a, dtype=np.float32)) for a in _tables(p)),
        np.float32(p.registration_noise_px**2),
        np.float32(p.resampling_blur_px2**2),
        np.float32(p.null_scale),
        bool(p.fit_ok),
        float(p.seed_threshold),
        float(p.grow_threshold),
        score,
        cls,
    )
    compiled: Any = kern  # numba dispatchers (untyped for mypy)
    n_rows = shape[0]
    if threads <= 1 or n_rows < 2 * threads:
        compiled.core_rows(*args, 0, n_rows)
        return score, cls
    # Bands of rows on Python threads: the kernel releases the GIL, and each band writes its
    # own rows (a stencil only reads its neighbours' inputs), so the bits do not change.
    edges = [i * n_rows // threads for i in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        rows = partial(compiled.core_rows, *args)
        done = [pool.submit(rows, r0, r1) for r0, r1 in pairwise(edges)]
        for f in done:
            f.result()
    return score, cls


def classify(score: Any, seed_threshold: float, grow_threshold: float) -> Any:
    """Class of each score: 255 NaN (not scored), 0 quiet, 1 grow, 2 seed (numpy or dask).

    Parameters
    ----------
    score
        Float32 score, NaN where not scored.
    seed_threshold, grow_threshold
        Thresholds, compared in float64.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        uint8 classes, same shape.
    """

    def func(s: np.ndarray) -> np.ndarray:
        s = _ro(np.ascontiguousarray(s, dtype=np.float32))
        out = np.empty(s.shape, dtype=np.uint8)
        kern.classify_flat(s, float(seed_threshold), float(grow_threshold), out)
        return out

    if isinstance(score, da.Array):
        return da.map_blocks(func, score, dtype=np.uint8)
    return func(np.asarray(score))


def update_last_view(
    prev: np.ndarray,
    prev_ok: np.ndarray,
    prev_index: np.ndarray,
    after: np.ndarray,
    after_ok: np.ndarray,
    params: CoreParams,
    date_index: int,
) -> None:
    """Move the last valid view of each pixel to date ``date_index``, in place (one pass).

    Where the new view is valid (and the pair's fit trusted) it replaces the last view;
    elsewhere the last view is carried into the new date's radiometry (``gain * prev +
    offset``), as :func:`pipeline.kernels.detect.pairwise.pair_scores` does, so the before view
    stays one consistent image however old each pixel's last view is.

    Parameters
    ----------
    prev
        (B, y, x) float32 last valid views; updated.
    prev_ok
        (y, x) bool: a valid view exists; updated.
    prev_index
        (y, x) int16 date index of each last view; updated.
    after, after_ok
        (B, y, x) float32 views of the new date and their (y, x) validity.
    params
        Parameters of the pair (gain, offset, fit_ok).
    date_index
        Index of the new date.
    """
    for name, a in (("prev", prev), ("prev_ok", prev_ok), ("prev_index", prev_index)):
        if not a.flags.c_contiguous or not a.flags.writeable:
            raise DataError(f"{name} must be a writeable C-contiguous array: it is updated")
    kern.update_view(
        prev,
        prev_ok,
        prev_index,
        _ro(np.ascontiguousarray(after, dtype=np.float32)),
        _ro(np.ascontiguousarray(after_ok, dtype=bool)),
        _ro(np.ascontiguousarray(params.gain, dtype=np.float32)),
        _ro(np.ascontiguousarray(params.offset, dtype=np.float32)),
        np.int16(date_index),
        bool(params.fit_ok),
    )
