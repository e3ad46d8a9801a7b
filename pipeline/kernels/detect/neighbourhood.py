"""Neighbourhood kernels of the change core: numpy in -> numpy out, dask in -> dask out (pure).

Each kernel is one numpy function of a block; the dask path runs it with
:meth:`dask.array.Array.map_overlap` (``boundary="none"``, so the outer edges of the array are
treated exactly as the numpy path treats them) with a margin at least as wide as the kernel's
reach, so both paths give the same values everywhere, chunk borders included.

Images are (B, y, x) stacks of bands or (y, x) masks; only the last two axes are spatial.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import dask.array as da
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

BACKGROUND_WINDOW_BLOCKS = 3
"""The local background is the median of the block medians in this many blocks square."""


def _run(func: Callable[[np.ndarray], np.ndarray], arr: Any, depth_px: int, dtype: Any) -> Any:
    """Run a block function on numpy, or with a ``depth_px`` spatial margin on dask."""
    if not isinstance(arr, da.Array):
        return func(np.asarray(arr))
    if depth_px == 0:
        return da.map_blocks(func, arr, dtype=dtype)
    depth = {ax: 0 for ax in range(arr.ndim)}
    depth[arr.ndim - 2] = depth[arr.ndim - 1] = depth_px
    return arr.map_overlap(func, depth=depth, boundary="none", dtype=dtype)


def gradient_sq(img: Any) -> Any:
    """Squared gradient magnitude per band, reflectance per pixel squared.

    Central differences inside, one-sided at the array edges (:func:`numpy.gradient`).

    Parameters
    ----------
    img
        (..., y, x) float array without NaN.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        Same shape, float32: ``(dI/dy)^2 + (dI/dx)^2``.
    """

    def func(a: np.ndarray) -> np.ndarray:
        out = np.zeros(a.shape, dtype=np.float32)
        for ax in (a.ndim - 2, a.ndim - 1):
            if a.shape[ax] >= 2:
                out += np.gradient(a, axis=ax).astype(np.float32) ** 2
        return out

    return _run(func, img, 1, np.float32)


def dilate(mask: Any, radius_px: int) -> Any:
    """Grow a (y, x) bool mask by ``radius_px`` (square window: Chebyshev distance).

    Parameters
    ----------
    mask
        (y, x) bool.
    radius_px
        Reach in pixels; 0 returns the mask unchanged.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        (y, x) bool: True within ``radius_px`` of a True pixel.
    """
    if radius_px <= 0:
        return mask

    def func(m: np.ndarray) -> np.ndarray:
        return ndimage.maximum_filter(m, size=2 * radius_px + 1, mode="constant", cval=False)

    return _run(func, mask, radius_px, bool)


MEDIAN9_NETWORK = (
    (1, 2), (4, 5), (7, 8), (0, 1), (3, 4), (6, 7), (1, 2), (4, 5), (7, 8), (0, 3),
    (5, 8), (4, 7), (3, 6), (1, 4), (2, 5), (4, 7), (4, 2), (6, 4), (4, 2),
)  # fmt: skip
"""Compare-exchanges ``(i, j)`` (``min`` to ``i``, ``max`` to ``j``) that leave the median of
nine values in slot 4 (Paeth's median-of-9 network, 19 exchanges)."""


def median3x3(img: Any) -> Any:
    """Median of each pixel's 3 x 3 neighbourhood, per band (edges repeated).

    The same values as ``scipy.ndimage.median_filter(img, size=(1, 3, 3))`` (its default
    ``reflect`` mode repeats the edge pixel at a reach of one) about five times faster: every
    output is one of its nine inputs, chosen by :data:`MEDIAN9_NETWORK` over whole shifted
    copies of the array.

    Parameters
    ----------
    img
        (..., y, x) float array without NaN (a NaN would not sort).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        Same shape and dtype.
    """

    def func(a: np.ndarray) -> np.ndarray:
        ny, nx = a.shape[-2:]
        pad = ((0, 0),) * (a.ndim - 2) + ((1, 1), (1, 1))
        p = np.pad(a, pad, mode="edge")
        v = [p[..., dy : dy + ny, dx : dx + nx].copy() for dy in range(3) for dx in range(3)]
        spare = np.empty_like(a)
        for i, j in MEDIAN9_NETWORK:
            np.minimum(v[i], v[j], out=spare)
            np.maximum(v[i], v[j], out=v[j])
            v[i], spare = spare, v[i]
        return v[4]

    return _run(func, img, 1, img.dtype)


def gaussian_weights_sq(sigma_px: float) -> float:
    """Sum of squared weights of the Gaussian kernel of :func:`smooth` (its variance factor)."""
    size = 2 * _gauss_radius(sigma_px) + 1
    delta = np.zeros((size, size))
    delta[size // 2, size // 2] = 1.0
    w = ndimage.gaussian_filter(delta, sigma_px, mode="constant", truncate=4.0)
    return float((w**2).sum())


def _gauss_radius(sigma_px: float) -> int:
    return int(4.0 * sigma_px + 0.5)


def smooth(img: Any, sigma_px: float) -> Any:
    """Gaussian smoothing of each band (zero outside the array).

    Parameters
    ----------
    img
        (B, y, x) float.
    sigma_px
        Gaussian sigma, pixels; 0 returns the input.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        (B, y, x) float32. Under white noise of unit variance, the result has variance
        :func:`gaussian_weights_sq` (away from the edges).
    """
    if sigma_px <= 0:
        return img
    sig = (0.0,) * (img.ndim - 2) + (sigma_px, sigma_px)

    def func(a: np.ndarray) -> np.ndarray:
        return ndimage.gaussian_filter(
            a.astype(np.float32), sig, mode="constant", cval=0.0, truncate=4.0
        )

    return _run(func, img, _gauss_radius(sigma_px), np.float32)


BLOCK_SUBSAMPLE = 2
"""Blocks of 6 px or more take their median from every other row and column (4x less sorting)."""


def background_block_px(window_px: int) -> int:
    """Block size of :func:`local_background` for a background window of ``window_px``."""
    return max(1, round(window_px / BACKGROUND_WINDOW_BLOCKS))


def _nanmedian_last(a: np.ndarray) -> np.ndarray:
    """Median over the last axis ignoring NaN (NaN when all are NaN); sort-based, for short axes."""
    srt = np.sort(a, axis=-1)  # NaN sorts last
    n = (~np.isnan(a)).sum(axis=-1, keepdims=True)
    lo = np.take_along_axis(srt, np.maximum((n - 1) // 2, 0), axis=-1)
    hi = np.take_along_axis(srt, np.minimum(n // 2, a.shape[-1] - 1), axis=-1)
    med = ((lo + hi) / 2)[..., 0]
    return np.where(n[..., 0] > 0, med, np.nan).astype(a.dtype)


def _background_np(img: np.ndarray, block: int) -> np.ndarray:
    """Median of block medians over 3 x 3 blocks, NaN-aware, blocks anchored at (0, 0)."""
    lead, (ny, nx) = img.shape[:-2], img.shape[-2:]
    pad_y, pad_x = -ny % block, -nx % block
    pad = [(0, 0)] * len(lead) + [(0, pad_y), (0, pad_x)]
    a = np.pad(img.astype(np.float32), pad, constant_values=np.nan)
    nby, nbx = a.shape[-2] // block, a.shape[-1] // block
    sub = BLOCK_SUBSAMPLE if block >= 3 * BLOCK_SUBSAMPLE else 1
    blocks = a.reshape(*lead, nby, block, nbx, block)[..., ::sub, :, ::sub]
    blocks = np.moveaxis(blocks, -3, -2).reshape(*lead, nby, nbx, -1)
    half = BACKGROUND_WINDOW_BLOCKS // 2
    med = _nanmedian_last(blocks)
    med = np.pad(med, [(0, 0)] * len(lead) + [(half, half)] * 2, constant_values=np.nan)
    win = sliding_window_view(med, (BACKGROUND_WINDOW_BLOCKS,) * 2, axis=(-2, -1))
    bg = _nanmedian_last(win.reshape(*win.shape[:-2], -1))
    full = np.repeat(np.repeat(bg, block, axis=-2), block, axis=-1)
    return full[..., :ny, :nx].astype(np.float32)


def _aligned_chunks(chunks: tuple[int, ...], block: int) -> tuple[int, ...]:
    """Chunks whose every border is a multiple of ``block`` (and at least two blocks long)."""
    size = max(2 * block, (max(chunks) // block) * block)
    total = sum(chunks)
    out = [size] * (total // size)
    if total % size:
        out.append(total % size)
    if len(out) > 1 and out[-1] < block + 1:
        last = out.pop()
        out[-1] += last
    return tuple(out)


def local_background(img: Any, window_px: int) -> Any:
    """Local background of each band: a NaN-aware median over about ``window_px`` square.

    The image is cut into blocks of ``b = window_px / 3`` px anchored at the array's origin; the
    background of a pixel is the median of the medians of its block and the 8 around it (a
    median-of-medians over ``3b`` px, blocky by design: it only has to tell an object from its
    surroundings; blocks of 6 px or more use every other row and column). Invalid pixels are
    NaN and ignored; a pixel with no valid surroundings gets NaN.

    Parameters
    ----------
    img
        (..., y, x) float with NaN where invalid.
    window_px
        Side of the background window, pixels (objects should cover well under half of it).

    Returns
    -------
    numpy.ndarray or dask.array.Array
        Same shape, float32. On dask the spatial chunks are first aligned to the block grid, so
        both paths agree exactly.
    """
    block = background_block_px(window_px)

    def func(a: np.ndarray) -> np.ndarray:
        return _background_np(a, block)

    if isinstance(img, da.Array):
        ny_ax, nx_ax = img.ndim - 2, img.ndim - 1
        want = {
            ny_ax: _aligned_chunks(img.chunks[ny_ax], block),
            nx_ax: _aligned_chunks(img.chunks[nx_ax], block),
        }
        if want[ny_ax] != img.chunks[ny_ax] or want[nx_ax] != img.chunks[nx_ax]:
            img = img.rechunk(want)
    return _run(func, img, block * (BACKGROUND_WINDOW_BLOCKS // 2), np.float32)


def surroundings(img: Any, quiet: Any, window_px: int) -> Any:
    """Background of each pixel from its *quiet* neighbours only, finest scale first.

    :func:`local_background` of ``img`` where ``quiet`` (NaN elsewhere) over windows of about
    ``window_px / 4`` and ``window_px``: each pixel takes the finer window if it holds a quiet
    pixel. Leaving the changed pixels out lets the window hug an object of any size, so its
    background is its near surroundings (a parking lot, not the fields around it).

    Parameters
    ----------
    img
        (B, y, x) float.
    quiet
        (y, x) bool: valid, unchanged pixels.
    window_px
        Largest window side, pixels.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        (B, y, x) float32, NaN where no quiet pixel lies within reach.
    """
    xp = da if isinstance(img, da.Array) or isinstance(quiet, da.Array) else np
    masked = xp.where(quiet[None], img, np.float32(np.nan))
    out = None
    for w in sorted({max(3, window_px // 4), max(3, window_px)}):
        bg = local_background(masked, w)
        out = bg if out is None else xp.where(xp.isnan(out), bg, out)
    return out


def laplacian_sq(img: Any) -> Any:
    """Squared 5-point Laplacian per band, (reflectance per px^2)^2; edges replicate.

    Parameters
    ----------
    img
        (..., y, x) float without NaN.

    Returns
    -------
    numpy.ndarray or dask.array.Array
        Same shape, float32.
    """

    def func(a: np.ndarray) -> np.ndarray:
        lap = np.zeros(a.shape, dtype=np.float32)
        for ax in (a.ndim - 2, a.ndim - 1):
            lap += ndimage.correlate1d(a, [1.0, -2.0, 1.0], axis=ax, mode="nearest")
        return lap**2

    return _run(func, img, 1, np.float32)
