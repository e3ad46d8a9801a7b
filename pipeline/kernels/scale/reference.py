"""The change core written plainly: unfused xarray expressions, for tests and the benchmark.

:func:`change_core_reference` computes what :func:`pipeline.kernels.scale.fused.change_core`
computes, the way one would first write it (and the way
:func:`pipeline.kernels.detect.pairwise.pair_change` writes the same steps): one whole-array xarray
expression per step, each allocating its own full-size temporaries. It is the yardstick of the fused
kernel's speed (``benchmarks/bench_core.py``) and of its correctness (``tests/test_fastcore.py``);
the detection path never uses it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import xarray as xr

from pipeline.kernels.scale.fused import NOT_SCORED, CoreParams


def _grid(a: np.ndarray, dims: tuple[str, ...]) -> xr.DataArray:
    coords = {d: np.arange(n, dtype=np.float32) for d, n in zip(dims, a.shape, strict=True)}
    coords.pop("band", None)
    return xr.DataArray(a, dims=dims, coords=coords)


def gradient_sq(img: xr.DataArray) -> xr.DataArray:
    """Squared gradient (central differences, one-sided at the edges), float32."""
    out = xr.zeros_like(img)
    for dim in ("y", "x"):
        if img.sizes[dim] >= 2:
            out = out + img.differentiate(dim).astype(np.float32) ** 2
    return out


def laplacian_sq(img: xr.DataArray) -> xr.DataArray:
    """Squared 5-point Laplacian with replicated edges, float32."""
    lap = xr.zeros_like(img)
    for dim in ("y", "x"):
        lo = img.shift({dim: 1}).fillna(img)
        hi = img.shift({dim: -1}).fillna(img)
        lap = lap + (lo - 2 * img + hi)
    return lap**2


def change_core_reference(
    before: np.ndarray,
    after: np.ndarray,
    before_ok: np.ndarray,
    after_ok: np.ndarray,
    params: CoreParams,
    *,
    before_index: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Score and class of :func:`pipeline.kernels.scale.fused.change_core`, in plain xarray
    expressions.

    Parameters
    ----------
    before, after
        (B, y, x) float32 views.
    before_ok, after_ok
        (y, x) bool validity.
    params
        Per-pair parameters.
    before_index
        (y, x) int before-date index (None: group 0 everywhere).

    Returns
    -------
    score : numpy.ndarray
        (y, x) float32, NaN where not scored.
    cls : numpy.ndarray
        (y, x) uint8: 0 quiet, 1 grow, 2 seed, 255 not scored.
    """
    p = params
    b = _grid(np.asarray(before, dtype=np.float32), ("band", "y", "x"))
    a = _grid(np.asarray(after, dtype=np.float32), ("band", "y", "x"))
    bok = _grid(np.asarray(before_ok, dtype=bool), ("y", "x"))
    aok = _grid(np.asarray(after_ok, dtype=bool), ("y", "x"))
    after_f = a.where(aok, b).fillna(0)
    before_f = b.where(bok, after_f).fillna(0)
    gain = xr.DataArray(p.gain, dims="band")
    offset = xr.DataArray(p.offset, dims="band")
    sigma = xr.DataArray(p.sigma, dims="band")
    n_groups = p.group_level.shape[0]
    idx = np.zeros(b.shape[1:], dtype=np.int64) if before_index is None else before_index
    group = xr.DataArray(np.clip(np.asarray(idx, dtype=np.int64), 0, n_groups - 1), dims=("y", "x"))
    level = xr.DataArray(p.group_level, dims=("group", "band")).isel(group=group)
    group_sigma = xr.DataArray(p.group_sigma, dims=("group", "band")).isel(group=group)
    norm_before = before_f * gain + offset
    diff = after_f - norm_before - level
    var = group_sigma**2
    view_var = sigma**2 / np.float32(2)
    if p.registration_noise_px > 0:
        grad = np.minimum(gradient_sq(norm_before), gradient_sq(after_f)) - view_var
        var = var + np.float32(p.registration_noise_px**2) * grad.clip(min=0)
    if p.resampling_blur_px2 > 0:
        curv = np.minimum(laplacian_sq(norm_before), laplacian_sq(after_f)) - 20 * view_var
        var = var + np.float32(p.resampling_blur_px2**2) * curv.clip(min=0)
    ok = bok & aok
    z = (diff / np.sqrt(var)).where(ok, np.float32(0))
    white = xr.dot(xr.DataArray(p.whitening, dims=("k", "band")), z, dim="band")
    raw = (white**2).sum("k")
    used = ok & p.fit_ok
    score = (raw / np.float32(p.null_scale)).where(used).astype(np.float32)
    cls: Any = (score >= p.grow_threshold).astype(np.uint8) + (score >= p.seed_threshold)
    cls = cls.where(used, NOT_SCORED).astype(np.uint8)
    return score.transpose("y", "x").values, cls.transpose("y", "x").values
