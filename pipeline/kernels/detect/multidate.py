"""Per-pixel multi-date change statistics over a stack of dates (pure: numpy in -> numpy out,
dask in -> dask out).

Every function here works on one pixel's time series at a time (vectorised over pixels), so on
dask input it runs block by block with :func:`dask.array.map_blocks` (time and band axes whole,
any spatial chunking) and gives exactly the numpy result.

The series of a pixel are its *valid* observations in time order ("ranks"). Inputs are
standardised: ``z`` = (level-corrected reflectance) / (band noise sigma), ``var`` = variance of
each observation in those units (>= 1 on a clean date, more where texture, haze or a poor
resampling make it noisier; see :mod:`pipeline.kernels.detect.noise`).

- :func:`series_noise`: per pixel and band, the noise of the series itself from its consecutive
  differences (a trimmed root mean square, so a few real changes do not count), and the robust
  drift rate (median of the consecutive slopes: a greening field is a slope, not a step).
- :func:`excursion_stat`: how far each observation stands from *both* of its neighbours in time
  (an excursion: a cloud, a shadow, a ship anchored for one date) or from its only neighbour at
  either end of the series.
- :func:`series_change`: the multi-date step test. For every break between two consecutive
  valid observations, the weighted mean of up to ``window`` observations before it is compared
  with up to ``window`` after it (a two-sample test over all valid observations, drift removed):
  ``G = sum_b (mean_after_b - mean_before_b)^2 / v_b`` with ``v_b = 1/W_after + 1/W_before +
  (dt * slope_sd)^2``, chi-square with ``B`` degrees of freedom under no change. Windows never
  cross another change: the breaks are found greedily (strongest first, up to ``max_changes``
  per pixel), each bounding the windows of the others. One noisy date moves a window mean by
  at most a third, so it alone cannot raise an alarm.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from itertools import pairwise
from typing import Any, Literal

import dask.array as da
import numpy as np
from scipy.stats import chi2

from pipeline.errors import DataError
from pipeline.kernels.detect import multidate_numba as kern
from pipeline.kernels.detect.ranks import from_rank, nanmedian_time, rank_order, to_rank

DAYS_PER_UNIT = 30.0
"""Time unit of drift rates: about a month."""

Engine = Literal["numba", "numpy"]
"""``"numba"``: the compiled loops of :mod:`pipeline.kernels.detect.multidate_numba` (the
default); ``"numpy"``: the vectorised numpy reference. Both give the same bits."""

ENGINES = ("numba", "numpy")
"""Accepted engines."""


def check_engine(engine: str) -> None:
    """Raise :class:`pipeline.errors.DataError` for an unknown engine."""
    if engine not in ENGINES:
        raise DataError(f"engine {engine!r} is not one of {', '.join(ENGINES)}: pick one of them")


def run_rows(kernel: Callable[..., None], ny: int, threads: int, *args: Any) -> None:
    """Run a row kernel of :mod:`pipeline.kernels.detect.multidate_numba` (``kernel(*args, r0,
    r1)``) over rows ``0:ny``, in ``threads`` bands of rows on threads (the kernels release the
    GIL; each band writes only its own rows, so the bits do not depend on ``threads``)."""
    threads = max(1, min(int(threads), ny))
    if threads == 1:
        kernel(*args, 0, ny)
        return
    edges = [i * ny // threads for i in range(threads + 1)]
    with ThreadPoolExecutor(threads) as pool:
        rows = partial(kernel, *args)
        done = [pool.submit(rows, r0, r1) for r0, r1 in pairwise(edges)]
        for job in done:
            job.result()


def _f32(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=np.float32)


def _ok(a: Any) -> np.ndarray:
    return np.ascontiguousarray(a, dtype=bool)


def is_dask(*arrays: Any) -> bool:
    """True when any of ``arrays`` is a dask array."""
    return any(isinstance(a, da.Array) for a in arrays)


def _trim_factor(kept_fraction: np.ndarray) -> np.ndarray:
    """E[x^2 | x^2 below its q-quantile] for x ~ N(0, 1): the bias of a trimmed mean square."""
    q = np.clip(kept_fraction, 1e-6, 1.0)
    cut = chi2.ppf(np.minimum(q, 1 - 1e-12), 1)
    return np.where(q < 1, chi2.cdf(cut, 3) / q, 1.0)


def _series_noise_np(
    z: np.ndarray, valid: np.ndarray, days: np.ndarray, trim: float, min_obs: int
) -> np.ndarray:
    t_len = z.shape[0]
    order, n = rank_order(valid)
    zs = to_rank(z, order)
    ts = days[order]
    ok = (np.arange(1, t_len)[:, None, None] < n)[:, None]
    diff = np.where(ok, zs[1:] - zs[:-1], np.nan).astype(np.float32)
    dt = np.maximum(ts[1:] - ts[:-1], 1e-3)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = nanmedian_time(diff / dt)
    sq = np.sort(np.where(np.isnan(diff), np.inf, diff**2 / 2), axis=0)
    n_diff = np.maximum(n - 1, 0)
    # a change leaves one jump in a series, a one-date object (or cloud) two: trim at least
    # two where at least three remain
    keep = n_diff - np.maximum(np.ceil(trim * n_diff).astype(int), np.minimum(2, n_diff - 3))
    csum = np.cumsum(np.where(np.isfinite(sq), sq, 0.0), axis=0)
    total = np.take_along_axis(csum, np.clip(keep - 1, 0, t_len - 2)[None, None], axis=0)[0]
    factor = _trim_factor(keep / np.maximum(n_diff, 1)).astype(np.float32)
    noise = np.sqrt(total / np.maximum(keep, 1) / factor)
    enough = (n >= min_obs)[None]
    noise = np.where(enough, noise, np.nan)
    slope = np.where(enough, slope, 0.0)
    return np.stack([noise, slope]).astype(np.float32)


def trim_tables(t_len: int, trim: float) -> tuple[np.ndarray, np.ndarray]:
    """Per number of consecutive differences (0 .. ``t_len - 1``): how many the trimmed mean
    square keeps, and its bias factor (:func:`_series_noise_np` computes the same per pixel)."""
    n_diff = np.arange(max(t_len, 1))
    keep = n_diff - np.maximum(np.ceil(trim * n_diff).astype(int), np.minimum(2, n_diff - 3))
    factor = _trim_factor(keep / np.maximum(n_diff, 1)).astype(np.float32)
    return keep.astype(np.int64), factor


def _series_noise_nb(
    z: np.ndarray, valid: np.ndarray, t_units: np.ndarray, trim: float, min_obs: int, threads: int
) -> np.ndarray:
    t_len, n_bands, ny, nx = z.shape
    if t_len < 2:
        return _series_noise_np(z, valid, t_units, trim, min_obs)
    keep, factor = trim_tables(t_len, trim)
    net_i, net_j = kern.sorting_network(t_len - 1)
    out = np.empty((2, n_bands, ny, nx), np.float32)
    args = (_f32(z), _ok(valid), _f32(t_units), keep, factor, np.float32(1e-3), int(min_obs))
    run_rows(kern.noise_rows, ny, threads, *args, net_i, net_j, out)
    return out


def series_noise(
    z: Any,
    valid: Any,
    days: np.ndarray,
    *,
    trim: float = 0.15,
    min_obs: int = 6,
    engine: Engine = "numba",
    threads: int = 1,
) -> tuple[Any, Any]:
    """Noise and drift rate of each pixel's own series.

    Parameters
    ----------
    z
        (T, B, y, x) standardised observations (NaN where invalid).
    valid
        (T, y, x) bool.
    days
        (T,) float days since the first date.
    trim
        Share of the largest consecutive differences left out (real changes); at least two
        (a one-date object makes two) where three or more remain.
    min_obs
        Fewer valid observations: NaN noise, zero drift.
    engine
        ``"numba"`` (compiled loops) or ``"numpy"`` (the reference); same bits.
    threads
        Threads of the numba engine on numpy input (bands of rows); a dask block runs on one.

    Returns
    -------
    noise : array
        (B, y, x) float32 sigma of one observation from the trimmed RMS of the consecutive
        differences (divided by sqrt 2, corrected for the trimming), NaN with too few.
    slope : array
        (B, y, x) float32 median consecutive slope, z units per :data:`DAYS_PER_UNIT` days.
    """
    check_engine(engine)
    t_units = np.asarray(days, dtype=np.float32) / np.float32(DAYS_PER_UNIT)
    lazy = is_dask(z, valid)

    def func(zb: np.ndarray, vb: np.ndarray) -> np.ndarray:
        if engine == "numpy":
            return _series_noise_np(zb, vb, t_units, trim, min_obs)
        return _series_noise_nb(zb, vb, t_units, trim, min_obs, 1 if lazy else threads)

    out = _blocks(func, z, valid)
    return out[0], out[1]


def _blocks(func: Callable[..., np.ndarray], z: Any, valid: Any, *more: Any) -> Any:
    """Run ``func(z, valid, *more) -> (..., y, x)`` on numpy, or per spatial block on dask.

    ``z`` is (T, B, y, x), ``valid`` (T, y, x); each of ``more`` has the same last two axes.
    """
    if not is_dask(z, valid, *more):
        return func(np.asarray(z), np.asarray(valid), *[np.asarray(m) for m in more])
    z = da.asarray(z).rechunk({0: -1, 1: -1})
    valid = da.asarray(valid).rechunk({0: -1, 1: z.chunks[2], 2: z.chunks[3]})
    args: list[Any] = [z, "tbyx", valid, "tyx"]
    for m in more:
        m = da.asarray(m)
        index = "tbyx"[4 - m.ndim :]
        spec = {ax: -1 for ax in range(m.ndim - 2)}
        spec.update({m.ndim - 2: z.chunks[2], m.ndim - 1: z.chunks[3]})
        args += [m.rechunk(spec), index]
    probe = func(
        np.zeros((z.shape[0], z.shape[1], 1, 1), np.float32),
        np.zeros((z.shape[0], 1, 1), bool),
        *[np.zeros((*m.shape[:-2], 1, 1), m.dtype) for m in more],
    )
    mid = "".join("pqrs"[i] for i in range(probe.ndim - 2))
    sizes = {"pqrs"[i]: probe.shape[i] for i in range(probe.ndim - 2)}
    return da.blockwise(
        func,
        mid + "yx",
        *args,
        new_axes=sizes,
        concatenate=True,
        dtype=probe.dtype,
        meta=np.empty((0,) * probe.ndim, dtype=probe.dtype),
    )


def _excursion_np(z: np.ndarray, valid: np.ndarray, var: np.ndarray) -> np.ndarray:
    t_len = z.shape[0]
    order, n = rank_order(valid)
    zs, vs = to_rank(z, order), to_rank(var, order)
    ok = np.arange(t_len)[:, None, None] < n
    with np.errstate(invalid="ignore", divide="ignore"):  # past a pixel's count: set NaN below
        step = ((zs[1:] - zs[:-1]) ** 2 / (vs[1:] + vs[:-1])).sum(axis=1)
    step[~ok[1:]] = np.nan
    nan_row = np.full((1, *step.shape[1:]), np.nan, dtype=np.float32)
    left = np.concatenate([nan_row, step])
    right = np.concatenate([step, nan_row])
    two = ~np.isnan(left) & ~np.isnan(right)
    stat = np.where(two, np.fmin(left, right), np.where(np.isnan(left), right, left))
    stat[~ok] = np.nan
    base = np.empty_like(zs)
    base[1:-1] = (zs[:-2] + zs[2:]) * np.float32(0.5)
    base[0], base[-1] = zs[min(1, t_len - 1)], zs[max(t_len - 2, 0)]
    one = ~two[:, None]
    nxt = np.concatenate([zs[1:], zs[-1:]])
    prev = np.concatenate([zs[:1], zs[:-1]])
    first = np.zeros((t_len, 1, 1, 1), dtype=bool)
    first[0] = True
    np.copyto(base, np.where(first, nxt, prev), where=one)
    out = np.empty((2 + z.shape[1], t_len, *z.shape[2:]), dtype=np.float32)
    out[0] = from_rank(stat.astype(np.float32), order, n, np.nan)
    out[1] = from_rank(two.astype(np.float32), order, n, 0.0)
    out[2:] = np.moveaxis(from_rank(base, order, n, np.nan), 1, 0)
    return out


def _excursion_nb(
    z: np.ndarray, valid: np.ndarray, var: np.ndarray, threads: int = 1, baseline: bool = True
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    t_len, _, ny, nx = z.shape
    stat = np.empty((t_len, ny, nx), np.float32)
    two = np.empty((t_len, ny, nx), bool)
    # without the baseline the kernel gets a stand-in of the same type (no second compilation)
    base = np.empty(z.shape if baseline else (1, 1, 1, 1), np.float32)
    args = (_f32(z), _ok(valid), _f32(var), baseline, stat, two, base)
    run_rows(kern.excursion_rows, ny, threads, *args)
    return stat, two, base if baseline else None


def _excursion_nb_stacked(z: np.ndarray, valid: np.ndarray, var: np.ndarray) -> np.ndarray:
    """:func:`_excursion_nb` in the stacked layout of :func:`_excursion_np` (dask blocks)."""
    stat, two, base = _excursion_nb(z, valid, var)
    assert base is not None
    out = np.empty((2 + z.shape[1], *stat.shape), dtype=np.float32)
    out[0] = stat
    out[1] = two
    out[2:] = np.moveaxis(base, 1, 0)
    return out


def excursion_stat(
    z: Any,
    var: Any,
    valid: Any,
    *,
    engine: Engine = "numba",
    threads: int = 1,
    baseline: bool = True,
) -> tuple[Any, Any, Any]:
    """How much each observation departs from its neighbours in time.

    Parameters
    ----------
    z
        (T, B, y, x) standardised observations.
    var
        (T, B, y, x) their variances (same units).
    valid
        (T, y, x) bool: observations to use.
    engine
        ``"numba"`` (compiled loops) or ``"numpy"`` (the reference); same bits.
    threads
        Threads of the numba engine on numpy input (bands of rows); a dask block runs on one.
    baseline
        False: no ``baseline`` (None), which the numba engine on numpy input then neither
        computes nor writes (a third less memory traffic).

    Returns
    -------
    stat : array
        (T, y, x) float32 ``min`` over the two neighbours of ``sum_b (z_t - z_n)^2 / (v_t +
        v_n)`` (chi-square with ``B`` dof when nothing changed); the single neighbour's at
        either end of the series; NaN where invalid or alone.
    two_sided : array
        (T, y, x) bool: the observation has a valid neighbour on both sides.
    baseline : array
        (T, B, y, x) float32 what the observation is compared with: the mean of its two
        neighbours (two-sided), else its single neighbour; None unless ``baseline``.
    """
    check_engine(engine)
    if engine == "numba" and not is_dask(z, var, valid):
        zn, okn, vn = np.asarray(z), np.asarray(valid), np.asarray(var)
        return _excursion_nb(zn, okn, vn, threads, baseline)
    out = _blocks(_excursion_np if engine == "numpy" else _excursion_nb_stacked, z, valid, var)
    move = da.moveaxis if is_dask(out) else np.moveaxis
    return out[0], out[1] > 0.5, move(out[2:], 0, 1) if baseline else None


@dataclass(frozen=True)
class SeriesChange:
    """Outputs of :func:`series_change`, in date order (index ``t`` = break just before date
    ``t``: the pixel's last valid observation before ``t`` and its observation at ``t``)."""

    score: Any
    """(T, y, x) float32 step statistic G (chi-square, ``B`` dof), NaN where no break."""
    mean_before: Any
    """(T, B, y, x) float32 weighted mean of the window before the break (drift removed)."""
    mean_after: Any
    """(T, B, y, x) float32 weighted mean of the window after the break."""
    n_before: Any
    """(T, y, x) float32 observations in the window before."""
    n_after: Any
    """(T, y, x) float32 observations in the window after."""
    before_index: Any
    """(T, y, x) int16 date index of the last valid observation before the break (-1: none)."""


def _windows(
    wz: np.ndarray,
    w: np.ndarray,
    wt: np.ndarray,
    cnt: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    window: int,
) -> tuple[np.ndarray, ...]:
    """Sums over ranks ``[lo, r-1]`` (before) and ``[r, hi]`` (after) for every break ``r``."""
    t_len = wz.shape[0]
    r = np.arange(t_len)[:, None]
    arrays = (wz, w, wt, cnt)
    sums_b = [np.zeros_like(a) for a in arrays]
    sums_a = [np.zeros_like(a) for a in arrays]
    for k in range(min(window, t_len)):
        m_b = (r[k + 1 :] - k - 1) >= lo[k + 1 :]
        m_a = (r[: t_len - k] + k) <= hi[: t_len - k]
        for acc, arr in zip(sums_b, arrays, strict=True):
            if k + 1 < t_len:
                m = m_b[:, None] if arr.ndim == 3 else m_b
                np.add(acc[k + 1 :], arr[: t_len - k - 1], out=acc[k + 1 :], where=m)
        for acc, arr in zip(sums_a, arrays, strict=True):
            m = m_a[:, None] if arr.ndim == 3 else m_a
            np.add(acc[: t_len - k], arr[k:], out=acc[: t_len - k], where=m)
    return (*sums_b, *sums_a)


def _step_pass(
    zs: np.ndarray,
    vs: np.ndarray,
    ts: np.ndarray,
    n: np.ndarray,
    strong: np.ndarray,
    window: int,
    slope_var: np.ndarray,
) -> tuple[np.ndarray, ...]:
    """Step statistic of every break of pixels laid out as (T, B, P), windows bounded by
    ``strong`` breaks."""
    t_len = zs.shape[0]
    r = np.arange(t_len)[:, None]
    ok = r < n[None]
    with np.errstate(divide="ignore", invalid="ignore"):
        w = np.where(ok[:, None], 1.0 / vs, 0.0).astype(np.float32)
    wz = np.where(ok[:, None], zs * w, 0.0).astype(np.float32)
    wt = (w * ts[:, None]).astype(np.float32)
    cnt = ok.astype(np.float32)
    seg_start = np.maximum.accumulate(np.where(strong, r, 0), axis=0)
    start_prev = np.concatenate([np.zeros_like(seg_start[:1]), seg_start[:-1]])
    lo = np.maximum(r - window, start_prev)
    nxt = np.where(strong, r, t_len)
    after_next = np.minimum.accumulate(nxt[::-1], axis=0)[::-1]
    next_strong = np.concatenate([after_next[1:], np.full_like(after_next[:1], t_len)])
    hi = np.minimum(np.minimum(r + window - 1, next_strong - 1), n[None] - 1)
    sz_b, w_b, t_b, n_b, sz_a, w_a, t_a, n_a = _windows(wz, w, wt, cnt, lo, hi, window)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_b = sz_b / w_b
        mean_a = sz_a / w_a
        gap = t_a / w_a - t_b / w_b
        v = 1.0 / w_a + 1.0 / w_b + gap**2 * slope_var[None]
        g = ((mean_a - mean_b) ** 2 / v).sum(axis=1)
    good = (r >= 1) & (r < n[None]) & (n_b > 0) & (n_a > 0)
    g = np.where(good, g, np.nan).astype(np.float32)
    return g, mean_b.astype(np.float32), mean_a.astype(np.float32), n_b, n_a


def _series_change_np(
    z: np.ndarray,
    var: np.ndarray,
    valid: np.ndarray,
    slope: np.ndarray,
    slope_var: np.ndarray,
    days: np.ndarray,
    window: int,
    threshold: float,
    max_changes: int,
) -> np.ndarray:
    t_len, n_bands, ny, nx = z.shape
    order, n = rank_order(valid)
    ts = (np.asarray(days, np.float32) / DAYS_PER_UNIT)[order]
    zs = to_rank(z, order) - slope[None] * ts[:, None]
    vs = to_rank(var, order)
    flat = (t_len, n_bands, ny * nx)
    zs, vs = zs.reshape(flat), vs.reshape(flat)
    ts, nf = ts.reshape(t_len, -1), n.reshape(-1)
    sv = slope_var.reshape(n_bands, -1)
    strong = np.zeros((t_len, ny * nx), dtype=bool)
    g, mb, ma, nb, na = _step_pass(zs, vs, ts, nf, strong, window, sv)
    busy = np.flatnonzero(np.nanmax(np.where(np.isnan(g), -np.inf, g), axis=0) >= threshold)
    if busy.size:
        sub = (zs[..., busy], vs[..., busy], ts[:, busy], nf[busy])
        s_strong = strong[:, busy]
        s_out = _step_pass(*sub, s_strong, window, sv[:, busy])
        for _ in range(max_changes):
            cand = np.where(s_strong | np.isnan(s_out[0]), -np.inf, s_out[0])
            best = np.argmax(cand, axis=0)
            add = np.take_along_axis(cand, best[None], axis=0)[0] >= threshold
            if not add.any():
                break
            s_strong[best[add], np.flatnonzero(add)] = True
            s_out = _step_pass(*sub, s_strong, window, sv[:, busy])
        for full, part in zip((g, mb, ma, nb, na), s_out, strict=True):
            full[..., busy] = part
    prev_idx = np.concatenate([np.full((1, *order.shape[1:]), -1), order[:-1]]).astype(np.float32)
    shape3 = (t_len, ny, nx)
    parts = [
        from_rank(g.reshape(shape3), order, n, np.nan)[None],
        from_rank(nb.reshape(shape3), order, n, 0.0)[None],
        from_rank(na.reshape(shape3), order, n, 0.0)[None],
        from_rank(prev_idx, order, n, -1.0)[None],
        np.moveaxis(from_rank(mb.reshape(z.shape), order, n, np.nan), 1, 0),
        np.moveaxis(from_rank(ma.reshape(z.shape), order, n, np.nan), 1, 0),
    ]
    return np.concatenate(parts).astype(np.float32)


def _series_change_nb(
    z: np.ndarray,
    var: np.ndarray,
    valid: np.ndarray,
    slope: np.ndarray,
    slope_var: np.ndarray,
    days: np.ndarray,
    window: int,
    threshold: float,
    max_changes: int,
    threads: int = 1,
) -> SeriesChange:
    t_len, _, ny, nx = z.shape
    t_units = (np.asarray(days, np.float32) / DAYS_PER_UNIT).astype(np.float32)
    plane = (t_len, ny, nx)
    outs = SeriesChange(
        score=np.empty(plane, np.float32),
        n_before=np.empty(plane, np.float32),
        n_after=np.empty(plane, np.float32),
        before_index=np.empty(plane, np.int16),
        mean_before=np.empty(z.shape, np.float32),
        mean_after=np.empty(z.shape, np.float32),
    )
    args = (
        _f32(z),
        _f32(var),
        _ok(valid),
        _f32(slope),
        _f32(slope_var),
        t_units,
        max(1, min(int(window), t_len)),
        # numpy compares the float32 statistic with a Python float in float32 (NEP 50)
        np.float32(threshold),
        int(max_changes),
        outs.score,
        outs.n_before,
        outs.n_after,
        outs.before_index,
        outs.mean_before,
        outs.mean_after,
    )
    run_rows(kern.change_rows, ny, threads, *args)
    return outs


def series_change(
    z: Any,
    var: Any,
    valid: Any,
    days: np.ndarray,
    *,
    slope: Any,
    slope_var: Any,
    window: int,
    threshold: float,
    max_changes: int = 4,
    engine: Engine = "numba",
    threads: int = 1,
) -> SeriesChange:
    """The multi-date step test of every pixel (see the module docstring).

    Parameters
    ----------
    z, var
        (T, B, y, x) standardised observations and their variances.
    valid
        (T, y, x) bool: observations used (clouds and excursions already left out).
    days
        (T,) days since the first date.
    slope
        (B, y, x) drift rate removed from the series (z units per :data:`DAYS_PER_UNIT`
        days; zeros for none).
    slope_var
        (B, y, x) variance of that rate (its error adds ``(dt * sd)^2`` to each step's
        variance, ``dt`` the time between the windows' centres).
    window
        Largest number of observations on each side of a break.
    threshold
        A break at least this strong bounds the windows of the others.
    max_changes
        Most breaks bounding windows per pixel.
    engine
        ``"numba"`` (compiled loops) or ``"numpy"`` (the reference); same bits.
    threads
        Threads of the numba engine on numpy input (bands of rows); a dask block runs on one.

    Returns
    -------
    SeriesChange
        Per-break arrays in date order; lazy for dask input.
    """
    check_engine(engine)
    days = np.asarray(days, dtype=np.float32)
    if engine == "numba" and not is_dask(z, var, valid, slope, slope_var):
        zn, vn, okn, sln, svn = (np.asarray(a) for a in (z, var, valid, slope, slope_var))
        return _series_change_nb(
            zn, vn, okn, sln, svn, days, window, threshold, max_changes, threads
        )

    def func(
        zb: np.ndarray, ok: np.ndarray, vb: np.ndarray, sl: np.ndarray, sv: np.ndarray
    ) -> np.ndarray:
        if engine == "numpy":
            return _series_change_np(zb, vb, ok, sl, sv, days, window, threshold, max_changes)
        sc = _series_change_nb(zb, vb, ok, sl, sv, days, window, threshold, max_changes)
        parts = (sc.score, sc.n_before, sc.n_after, sc.before_index)
        means = (np.moveaxis(sc.mean_before, 1, 0), np.moveaxis(sc.mean_after, 1, 0))
        return np.concatenate([*(p[None] for p in parts), *means]).astype(np.float32)

    out = _blocks(func, z, valid, var, slope, slope_var)
    n_bands = int(z.shape[1])
    move = da.moveaxis if is_dask(out) else np.moveaxis
    return SeriesChange(
        score=out[0],
        n_before=out[1],
        n_after=out[2],
        before_index=out[3].astype(np.int16),
        mean_before=move(out[4 : 4 + n_bands], 0, 1),
        mean_after=move(out[4 + n_bands :], 0, 1),
    )
