"""The multi-date detector window by window: the plan, the halo, and who keeps each object (pure).

:func:`pipeline.stages.detect.detect_cube` runs the multi-date detector
(:func:`pipeline.kernels.detect.core.multidate_objects`) on the whole cube when its in-memory
estimate (:func:`in_memory_mb`) fits ``detect.memory_budget_mb``, else over spatial windows
holding every date, with the same detections. The scheme:

1. **Global quantities first**, from regular lattices of the whole grid, the same lattices the
   whole-array path samples: the per-date gain and offset (the fit's strided sample), the date and
   band noise levels (the residuals on the noise lattice, each window giving its core's lattice
   points), then the score's null scale and its tail fit (the raw score on :func:`null_stride`'s
   lattice: every pixel for a grid up to :data:`NULL_SAMPLE_PX`, so a site's results do not
   change) and the per-date counts a confidence needs (pixels scored, pixels used).
2. **Windows**: a chunk (the window's *core*) plus a halo of :func:`halo_px` on every side,
   anchored on the block grid of every block median. Each window runs the whole detector with
   the global quantities; everything a core pixel depends on through the neighbourhood steps
   (block medians, gradients, structure window, drift smoothing, median floor, excursion
   dilation, sign rings, region growth, mask distance) lies in its window. The atmosphere's
   context distance (kilometres) is not in the halo: each window reads the validity of its
   window widened by that distance (booleans only) and takes the distance to the loaded masks
   from it.
3. **Ownership**: an object is kept by the one window whose core holds its first pixel in raster
   order (at its creation: the step object's own pixels, the one-date object's region) and
   dropped by the others; the kept objects are numbered as the whole-array path numbers them
   (step objects by date, removed before appeared, in raster order of their first pixel; then
   one-date objects by date and region), per-pair counts are summed over the cores.

**Exactness.** The windowed detections equal the in-memory ones (features, labels, scores) when
every object and every atmospheric excursion region, with its rings and dilation, spans less than
:data:`MAX_EXTENT_PX` (so that it lies inside the window of the core holding its first pixel).
A larger region cut by a window's edge may be classified, signed or measured differently there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.config import DetectConfig
from pipeline.kernels.detect.calibration import MASK_DISTANCE_CAP_PX
from pipeline.kernels.detect.neighbourhood import BACKGROUND_WINDOW_BLOCKS, background_block_px
from pipeline.kernels.detect.normalise import sample_stride

__all__ = [
    "IN_MEMORY_FACTOR",
    "MAX_EXTENT_PX",
    "NULL_SAMPLE_PX",
    "Window",
    "WindowPlan",
    "block_grid_px",
    "core_slices",
    "halo_px",
    "in_memory_mb",
    "lattice_in_core",
    "null_stride",
    "plan",
    "window_grid",
]

IN_MEMORY_FACTOR = 13
"""Peak memory of the in-memory multi-date detector over the size of its float32 band stack
(measured with the numba statistics, VmHWM over the interpreter's: generated 512^2 and 640^2 x
24 dates x 4 bands, 96 and 150 MB of stack, 12.4x and 12.2x; the numpy engine took 32x)."""

MAX_EXTENT_PX = 64
"""Largest object or atmospheric region (pixels, any direction) the windows reproduce exactly."""

NULL_SAMPLE_PX = 1 << 20
"""Most pixels per date of the lattice giving the score's null scale and tail fit (a site's grid
is under it: every pixel)."""

MIN_CHUNK_PX = 64
"""Smallest window core side."""


@dataclass(frozen=True)
class Window:
    """A window of the grid: its core and the core plus halo (half-open pixel ranges)."""

    rows: tuple[int, int]
    """Rows of the window in the grid."""
    cols: tuple[int, int]
    """Columns of the window in the grid."""
    inner_rows: tuple[int, int]
    """Rows of its core in the grid."""
    inner_cols: tuple[int, int]
    """Columns of its core in the grid."""
    shape: tuple[int, int]
    """Shape of the whole grid."""


def window_grid(shape: tuple[int, int], chunk_px: int, halo: int) -> list[Window]:
    """Cores of ``chunk_px`` square tiling ``shape`` (row-major), each with a ``halo`` margin
    clipped to the grid."""
    ny, nx = shape
    return [
        Window(
            rows=(max(i0 - halo, 0), min(i0 + chunk_px + halo, ny)),
            cols=(max(j0 - halo, 0), min(j0 + chunk_px + halo, nx)),
            inner_rows=(i0, min(i0 + chunk_px, ny)),
            inner_cols=(j0, min(j0 + chunk_px, nx)),
            shape=(ny, nx),
        )
        for i0 in range(0, ny, chunk_px)
        for j0 in range(0, nx, chunk_px)
    ]


def block_grid_px(cfg: DetectConfig) -> int:
    """Common multiple of the block sizes of every block median (local level, drift): window
    cores and halos are multiples of it, so a window's blocks are the grid's blocks."""
    return math.lcm(
        background_block_px(cfg.local_window_px), background_block_px(cfg.drift_window_px)
    )


def halo_px(cfg: DetectConfig) -> int:
    """Window margin: the reach of the chained neighbourhood steps plus :data:`MAX_EXTENT_PX`.

    The reach: residual level and local spread (two chained block medians, each up to two blocks
    and a partial one), the structure window and its gradients, the 3 x 3 median floor, the drift
    smoothing (a block median), the excursion dilation over every pass, the one-date cloud
    distance, the sign ring (or window) and the mask distance cap; rounded up to
    :func:`block_grid_px`.
    """
    half = BACKGROUND_WINDOW_BLOCKS // 2 + 1
    local = background_block_px(cfg.local_window_px)
    drift = background_block_px(cfg.drift_window_px)
    noise_reach = 2 * local * (half + 1) + cfg.structure_window_px // 2 + 4
    drift_reach = drift * (half + 1) + 2
    regions = max(
        cfg.excursion_dilation_px * (cfg.excursion_passes + 1),
        cfg.one_date_cloud_distance_px,
        max(cfg.sign_ring_px, cfg.sign_window_px),
        MASK_DISTANCE_CAP_PX,
    )
    reach = noise_reach + drift_reach + regions + MAX_EXTENT_PX
    grid = block_grid_px(cfg)
    return grid * math.ceil(reach / grid)


def in_memory_mb(stack_shape: tuple[int, ...]) -> float:
    """Estimated peak memory (MB) of the in-memory multi-date detector on a (T, B, y, x) stack."""
    return float(np.prod(stack_shape)) * 4 * IN_MEMORY_FACTOR / 2**20


@dataclass(frozen=True)
class WindowPlan:
    """How :func:`pipeline.stages.detect.detect_cube` runs the multi-date detector."""

    windowed: bool
    """True: window by window; False: the whole cube in memory."""
    estimate_mb: float
    """In-memory estimate of the whole cube (:func:`in_memory_mb`)."""
    budget_mb: float
    """``detect.memory_budget_mb``."""
    chunk_px: int
    """Core side of a window (the grid's larger side when not windowed)."""
    halo_px: int
    """Window margin (:func:`halo_px`)."""
    window_mb: float
    """In-memory estimate of one full window."""
    in_flight: int
    """Windows computed at once (their estimates fit the budget; at least one)."""

    def windows(self, shape: tuple[int, int]) -> list[Window]:
        """The windows over a (y, x) grid, in row-major order of their cores."""
        return window_grid(shape, self.chunk_px, self.halo_px)


def plan(stack_shape: tuple[int, int, int, int], cfg: DetectConfig) -> WindowPlan:
    """Whole cube or windows, for a (T, B, y, x) band stack under ``cfg.memory_budget_mb``.

    Parameters
    ----------
    stack_shape
        Shape of the band stack (dates, bands, rows, columns).
    cfg
        Detection parameters (``memory_budget_mb`` and the neighbourhood sizes).

    Returns
    -------
    WindowPlan
        Windowed when the in-memory estimate is over the budget. The core side is the largest
        multiple of :func:`block_grid_px` whose window (core plus two halos) fits half the
        budget (at least :data:`MIN_CHUNK_PX`); as many windows run at once as fit the budget.
    """
    t_len, n_bands, ny, nx = stack_shape
    estimate = in_memory_mb(stack_shape)
    halo = halo_px(cfg)
    budget = float(cfg.memory_budget_mb)
    if estimate <= budget:
        side = max(ny, nx, 1)
        return WindowPlan(False, estimate, budget, side, halo, estimate, 1)
    per_px_mb = in_memory_mb((t_len, n_bands, 1, 1))
    grid = block_grid_px(cfg)
    side = int(math.sqrt(max(budget / 2 / max(per_px_mb, 1e-12), 1.0))) - 2 * halo
    side = grid * max(1, max(MIN_CHUNK_PX, side) // grid)
    win = min(side + 2 * halo, ny) * min(side + 2 * halo, nx)
    window_mb = per_px_mb * win
    in_flight = max(1, int(budget // max(window_mb, 1e-9)))
    return WindowPlan(True, estimate, budget, side, halo, window_mb, in_flight)


def null_stride(shape: tuple[int, ...]) -> int:
    """Stride of the null-scale lattice of a (..., y, x) grid: rows and columns ``0, k, 2k...``
    with ``y * x / k**2 <= NULL_SAMPLE_PX`` (1 for a site)."""
    return sample_stride(shape, NULL_SAMPLE_PX)


def core_slices(w: Window) -> tuple[slice, slice]:
    """Slices of a window's arrays holding its core."""
    r0, c0 = w.inner_rows[0] - w.rows[0], w.inner_cols[0] - w.cols[0]
    return (
        slice(r0, r0 + w.inner_rows[1] - w.inner_rows[0]),
        slice(c0, c0 + w.inner_cols[1] - w.inner_cols[0]),
    )


def lattice_in_core(w: Window, k: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Where a window's core meets the global ``[::k, ::k]`` lattice.

    Returns
    -------
    window : tuple of slice
        Slices of the window's arrays picking the core's lattice points.
    sample : tuple of slice
        Slices of the (``ceil(y / k)``, ``ceil(x / k)``) lattice array they fill.
    """
    out_w, out_s = [], []
    for (lo, hi), wlo in ((w.inner_rows, w.rows[0]), (w.inner_cols, w.cols[0])):
        first = -(-lo // k) * k
        count = max(0, -(-(hi - first) // k))
        out_w.append(slice(first - wlo, first - wlo + (count - 1) * k + 1 if count else 0, k))
        out_s.append(slice(first // k, first // k + count))
    return (out_w[0], out_w[1]), (out_s[0], out_s[1])
