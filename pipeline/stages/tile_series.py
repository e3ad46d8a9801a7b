"""The ``multidate`` method of the whole-tile detect stage: one chunk's whole series at a time.

:func:`pipeline.stages.tile.detect_tile` with ``method="multidate"`` runs the site pipeline's
default test (:func:`pipeline.kernels.detect.core.multidate_objects`: every valid observation of a
pixel, windows before and after each break) on a stack it never holds:

1. **Global quantities from a sample** (:func:`fit_sample`): small windows spread over the tile
   are read for every date; on them the per-date gain/offset onto the temporal median, the
   per-date and per-band noise sigma and the null scale of the step statistic are fitted
   (:func:`pipeline.kernels.scale.series_block.fit_series`). Every chunk uses these: no chunk
   fits anything of its own, so results do not depend on the chunking.
2. **Stream over space** (:func:`stream_series_chunk`): one task per spatial chunk reads its
   window (the chunk, a halo for the removal-margin crops of the sign, and
   :func:`pipeline.kernels.scale.series_block.stats_reach_px` more for the statistics' own
   neighbourhoods) for *all* dates, runs
   :func:`pipeline.kernels.scale.series_block.block_series` (series noise and drift, excursions,
   the step test of :mod:`pipeline.kernels.detect.multidate`, through its public functions) and
   returns, per break date, only its candidate pixels (seed/grow classes at the chi-square levels
   of :func:`pipeline.kernels.detect.core.series_thresholds`, regions by
   :func:`pipeline.kernels.scale.tile_label.chunk_regions`) with their removal margin
   (:func:`pipeline.kernels.scale.tile_label.removal_margin` on the window means before and after
   the break). A task holds ``T x B x (chunk + 2 halo)^2`` float32 and a few arrays of that size
   inside the statistics: memory is set by the chunk and the number of dates, not by the tile,
   and :func:`pipeline.stages.tile.detect_tile` sizes the chunks so that the tasks running at
   once on a worker fit ``detect.memory_budget_mb``
   (:func:`pipeline.stages.tile.series_chunk_px`).
3. **Objects**: as the pairwise method (:func:`pipeline.stages.tile.pair_objects`), per break
   date, with the multi-date levels, the weighted sign vote and split fraction
   (``series_sign_split_fraction``), and the region tests of the site detector
   (``region_mean_test``, ``min_seed_pixels``).

What it leaves out of the site detector is listed in :mod:`pipeline.kernels.scale.series_block`.
"""

from __future__ import annotations

import time

import numpy as np

from pipeline.config import DetectConfig
from pipeline.io.tile_read import StackReader, read_window
from pipeline.kernels.detect.core import series_thresholds
from pipeline.kernels.scale.series_block import (
    SeriesParams,
    block_series,
    fit_series,
    series_classes,
    stats_align_px,
    stats_reach_px,
)
from pipeline.kernels.scale.tile_label import Candidates, Window, chunk_regions, removal_margin

__all__ = ["days_since_first", "fit_sample", "read_range", "stream_series_chunk"]


def days_since_first(dates: list[str]) -> np.ndarray:
    """(T,) float32 days from the first of ``dates`` (ISO strings)."""
    d = np.asarray(dates, dtype="datetime64[D]")
    return ((d - d[0]) / np.timedelta64(1, "D")).astype(np.float32)


def fit_sample(
    bands: np.ndarray, valid: np.ndarray, dates: list[str], cfg: DetectConfig
) -> SeriesParams:
    """The tile's radiometry and null scale from sample windows of every date (step 1).

    Parameters
    ----------
    bands
        (T, n, B, h, w) float32 sample windows.
    valid
        (T, n, h, w) bool.
    dates
        ISO date of each date index.
    cfg
        Detection parameters.

    Returns
    -------
    SeriesParams
        What every chunk shares.
    """
    levels = series_thresholds(cfg, bands.shape[2])
    return fit_series(bands, valid, days_since_first(dates), cfg, levels)


def read_range(lo: int, hi: int, reach: int, align: int, size: int) -> tuple[int, int]:
    """``[lo, hi)`` grown by ``reach``, its start snapped down to a multiple of ``align``."""
    return max(((lo - reach) // align) * align, 0), min(hi + reach, size)


def stream_series_chunk(
    reader: StackReader,
    window: Window,
    params: SeriesParams,
    cfg: DetectConfig,
    min_pixels: int,
) -> tuple[list[Candidates], list[int], dict[str, float]]:
    """Candidates of every break date in one chunk, from its whole series (step 2).

    Parameters
    ----------
    reader
        The stack.
    window
        The chunk and its window.
    params
        The tile's radiometry (:func:`fit_sample`).
    cfg
        Detection parameters.
    min_pixels
        Smallest object.

    Returns
    -------
    candidates : list of Candidates
        Per break date ``t = 1 .. T - 1`` (index ``t - 1``), the chunk's candidate pixels.
    n_scored : list of int
        Per break date, the chunk's pixels with a break there.
    seconds : dict
        Time this task spent reading, on the statistics and on labelling.
    """
    start = time.perf_counter()
    ny, nx = window.shape
    reach, align = stats_reach_px(cfg), stats_align_px(cfg)
    r0, r1 = read_range(*window.rows, reach, align, ny)
    c0, c1 = read_range(*window.cols, reach, align, nx)
    n_dates = reader.n_dates
    bands = np.empty((n_dates, reader.n_bands, r1 - r0, c1 - c0), np.float32)
    valid = np.empty((n_dates, r1 - r0, c1 - c0), bool)
    for t in range(n_dates):
        bands[t], valid[t] = read_window(reader, t, slice(r0, r1), slice(c0, c1))
    read_s = time.perf_counter() - start

    start = time.perf_counter()
    series = block_series(bands, valid, params, cfg)
    del bands, valid
    stats_s = time.perf_counter() - start

    start = time.perf_counter()
    crop = (
        slice(window.rows[0] - r0, window.rows[1] - r0),
        slice(window.cols[0] - c0, window.cols[1] - c0),
    )
    inner = window.inner
    ones = np.ones(reader.n_bands, np.float32)
    zeros = np.zeros(reader.n_bands, np.float32)
    out, n_scored = [], []
    for t in range(1, n_dates):
        score = series.score[t][crop]
        klass = series_classes(score, params)
        labels = chunk_regions(klass, window, min_pixels)
        n_scored.append(int(np.count_nonzero(klass[inner] != 255)))
        if not labels.any():
            out.append(Candidates.empty())
            continue
        before = series.mean_before[t][(slice(None), *crop)]
        after = series.mean_after[t][(slice(None), *crop)]
        ok = np.isfinite(before).all(axis=0) & np.isfinite(after).all(axis=0)
        margin = removal_margin(
            labels,
            window,
            before,
            after,
            ok,
            ok,
            klass,
            ones,
            zeros,
            params.sigma,
            cfg.local_window_px,
        )
        r, c = np.nonzero(labels)
        out.append(
            Candidates(
                rows=(r + window.inner_rows[0]).astype(np.int32),
                cols=(c + window.inner_cols[0]).astype(np.int32),
                score=score[inner][r, c],
                seed=klass[inner][r, c] == 2,
                removed=margin[r, c],
                before_index=series.before_index[t][crop][inner][r, c],
            )
        )
    label_s = time.perf_counter() - start
    return out, n_scored, {"read": read_s, "statistics": stats_s, "labels": label_s}
