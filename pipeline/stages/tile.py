"""The detect stage over a whole tile and a long stack, in memory bounded by the chunk size.

:func:`detect_tile` runs one of two methods (``method=``). ``multidate`` is the site pipeline's
default test (every valid observation of a pixel, windows before and after each break) on each
chunk's whole series: :mod:`pipeline.stages.tile_series` says how, and
:mod:`pipeline.kernels.scale.series_block` what it leaves out of the site detector. ``pairwise``
(the default here, described below) runs the **pairwise** statistic
(:mod:`pipeline.kernels.detect.pairwise`, the ``pairwise`` method of
:mod:`pipeline.kernels.detect.core`): each date against the last valid view of each pixel, with
robust radiometry and noise, a chi-square score, false-alarm-rate thresholds with hysteresis,
signed objects and polygons; it holds one date at a time. Both work on a stack they never hold:
they read windows through a :class:`StackReader` (a zarr or dask-backed cube:
:class:`CubeReader`; generated data: :class:`pipeline.simulate.tile.SyntheticStack`).

1. **Radiometry from a sample.** Small windows spread over the tile (about ``max_sample_px``
   pixels) are read for every date; on them, date by date, the last valid view is carried
   forward and each pair's gain/offset, per-before-date level and noise, band whitening
   (:func:`pipeline.kernels.detect.normalise.fit_radiometry`) and null scale
   (:func:`pipeline.kernels.detect.normalise.null_scale`) are fitted. The last-view update is per
   pixel, so the sampled before views are exactly those the full stream will hold at those pixels.
2. **Stream.** One task per spatial chunk (plus a margin) reads the dates one after the other,
   keeps the chunk's last valid view (:func:`pipeline.kernels.scale.fused.update_last_view`), scores
   each pair with the fused kernel (:func:`pipeline.kernels.scale.change.change_core`) and returns
   only its candidate pixels with their removal margin (:mod:`pipeline.kernels.scale.tile_label`). A
   task holds a few windows, never a date of the whole tile, and never more than one date of its
   chunk: memory is constant in the tile size and in the number of dates. Tasks run on dask (threads
   by default, or any ``distributed`` client: :mod:`pipeline.io.cluster`).
3. **Objects.** Per pair, the candidates of all chunks are joined into regions
   (:func:`pipeline.kernels.scale.tile_label.sparse_components`: an object split by chunk edges is
   one object) and each group of regions is cut into signed objects by
   :func:`pipeline.kernels.detect.segment.segment_pair`, described by
   :func:`pipeline.kernels.detect.segment.object_properties` and drawn as lon/lat polygons by
   :func:`pipeline.kernels.detect.objects.region_features`.

Not done here, unlike :func:`pipeline.kernels.detect.pairwise.pair_scores`: the local change
level and local noise (block medians), the thin-cloud guard, Gaussian smoothing, transient flags,
zones.
The results do not depend on the chunking (``tests/test_tile.py``).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import dask
import numpy as np
from affine import Affine
from scipy import ndimage

from pipeline.config import DetectConfig
from pipeline.detect_config import DETECT_METHODS, DetectMethod
from pipeline.errors import ConfigError, DataError
from pipeline.io.tile_read import CubeReader, StackReader, read_sample, read_window, sample_windows
from pipeline.kernels.detect.normalise import fit_radiometry, null_scale
from pipeline.kernels.detect.objects import region_features
from pipeline.kernels.detect.pairwise import thresholds
from pipeline.kernels.detect.segment import object_properties, segment_pair
from pipeline.kernels.scale.change import change_core
from pipeline.kernels.scale.fused import CoreParams, core_params, update_last_view
from pipeline.kernels.scale.series_block import (
    SeriesParams,
    block_mb,
    stats_align_px,
    stats_reach_px,
)
from pipeline.kernels.scale.tile_label import (
    Candidates,
    Window,
    chunk_regions,
    margin_reach_px,
    removal_margin,
    sparse_components,
    window_grid,
)
from pipeline.stages.tile_series import fit_sample, stream_series_chunk

__all__ = [
    "PAIRWISE_CHUNK_PX",
    "CubeReader",
    "StackReader",
    "TileResult",
    "detect_tile",
    "fit_pairs",
    "series_chunk_px",
    "series_margin_px",
    "stream_chunk",
]

PAIRWISE_CHUNK_PX = 1024
"""Default chunk side of the pairwise method: a task holds a few single-date windows, whatever
the number of dates (a multi-date task holds every date of its chunk: :func:`series_chunk_px`)."""

SERIES_CHUNKS_PX = (256, 512, 1024)
"""Chunk sides :func:`series_chunk_px` chooses from: multiples of the 256 and 512 px blocks of
Sentinel-2 COGs and of the loader's chunks, so that a window's reads decode few blocks twice.
Up to 1024 px: on the whole COG tile at 4 dates (``benchmarks/bench_stage.py``, ItemsReader)
1024 px chunks took 149 s against 278 s with 512 px (reading 106 against 283 task-s) and
2048 px 176 s at 2.4x the peak memory of 1024 px (3.2 against 1.3 GiB)."""

GROUP_PX = 128
"""Regions whose first pixel lies in one cell of this side are cut into objects together (a
fixed grid, so results do not depend on the chunking)."""


@dataclass(frozen=True)
class TileResult:
    """What :func:`detect_tile` finds."""

    features: list[dict]
    """GeoJSON Features (lon/lat), one per object, pair by pair."""
    pairs: list[dict]
    """Per consecutive date pair: dates, radiometry, thresholds, counts."""
    params: list[CoreParams] = field(default_factory=list)
    """Per pair, the fitted parameters of the change core."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall time of each step: ``sample``, ``stream``, ``objects``; for the multi-date method
    also the task time (summed over tasks) of the stream's parts: ``stream_task_read``,
    ``stream_task_statistics``, ``stream_task_labels``."""
    method: str = "pairwise"
    """The method run."""
    series: SeriesParams | None = None
    """The multi-date method's fitted radiometry (None for the pairwise method)."""
    chunk_px: int = 0
    """Side of the spatial chunks the stream ran on."""


def fit_pairs(bands: np.ndarray, valid: np.ndarray, cfg: DetectConfig) -> list[CoreParams]:
    """Per-pair parameters of the stream, fitted on sample windows (step 1 of the module doc).

    Parameters
    ----------
    bands
        (T, n, B, h, w) float32: ``n`` sample windows of every date.
    valid
        (T, n, h, w) bool.
    cfg
        Detection parameters.

    Returns
    -------
    list of CoreParams
        One per consecutive pair (``T - 1``), with ``T`` before-date groups each.
    """
    n_dates, n_win, n_bands, h, w = bands.shape
    seed_thr, grow_thr = thresholds(cfg, n_bands)
    prev = np.ascontiguousarray(bands[0]).copy()
    prev_ok = np.ascontiguousarray(valid[0]).copy()
    prev_idx = np.where(prev_ok, 0, -1).astype(np.int16)

    def flat(a: np.ndarray) -> np.ndarray:  # (n, [B,] h, w) -> ([B,] n * h, w)
        return np.moveaxis(a, 0, -3).reshape(*a.shape[1:-2], n_win * h, w)

    out = []
    for t in range(1, n_dates):
        after, after_ok = bands[t], valid[t]
        rad = fit_radiometry(
            flat(prev),
            flat(after),
            flat(prev_ok & after_ok),
            max_sample_px=n_win * h * w + 1,
            decorrelate=cfg.decorrelate_bands,
            before_index=flat(prev_idx),
            n_groups=n_dates,
        )
        p = core_params(rad, cfg, seed_threshold=seed_thr, grow_threshold=grow_thr)
        raw = [
            change_core(prev[i], after[i], prev_ok[i], after_ok[i], p, before_index=prev_idx[i])
            for i in range(n_win)
        ]
        score = np.stack([r.score for r in raw])
        scale = null_scale(
            flat(score), flat(np.isfinite(score)), n_bands, max_sample_px=score.size + 1
        )
        p = p.with_scale(float(np.float32(scale)))
        for i in range(n_win):
            update_last_view(prev[i], prev_ok[i], prev_idx[i], after[i], after_ok[i], p, t)
        out.append(p)
    return out


def stream_chunk(
    reader: StackReader,
    window: Window,
    params: list[CoreParams],
    cfg: DetectConfig,
    min_pixels: int,
) -> tuple[list[Candidates], list[int]]:
    """Candidates of every pair in one chunk, reading its window date by date (step 2).

    Parameters
    ----------
    reader
        The stack.
    window
        The chunk and its window.
    params
        Per-pair parameters (:func:`fit_pairs`).
    cfg
        Detection parameters (``local_window_px`` of the removal margin).
    min_pixels
        Smallest object.

    Returns
    -------
    candidates : list of Candidates
        Per pair, the chunk's candidate pixels.
    n_scored : list of int
        Per pair, the chunk's scored pixels.
    """
    rows, cols = slice(*window.rows), slice(*window.cols)
    inner = window.inner
    prev, prev_ok = read_window(reader, 0, rows, cols)
    prev_idx = np.where(prev_ok, 0, -1).astype(np.int16)
    out, n_scored = [], []
    for t in range(1, reader.n_dates):
        p = params[t - 1]
        after, after_ok = read_window(reader, t, rows, cols)
        res = change_core(prev, after, prev_ok, after_ok, p, before_index=prev_idx)
        score, klass = res.score, res.cls
        labels = chunk_regions(klass, window, min_pixels)
        n_scored.append(int(np.count_nonzero(klass[inner] != 255)))
        if labels.any():
            margin = removal_margin(
                labels,
                window,
                prev,
                after,
                prev_ok,
                after_ok,
                klass,
                p.gain,
                p.offset,
                p.sigma,
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
                    before_index=prev_idx[inner][r, c],
                )
            )
        else:
            out.append(Candidates.empty())
        update_last_view(prev, prev_ok, prev_idx, after, after_ok, p, t)
    return out, n_scored


def pair_objects(
    cands: Candidates,
    reader: StackReader,
    cfg: DetectConfig,
    pair: int,
    n_scored: int,
    min_pixels: int,
    site: str,
    *,
    group_px: int,
    offset: int,
    levels: tuple[float, float] | None = None,
    split_fraction: float | None = None,
    weighted: bool = False,
    region_tests: bool = False,
) -> list[dict]:
    """Signed objects and their polygons from one pair's candidates (step 3).

    Parameters
    ----------
    cands
        All candidates of the pair.
    reader
        The stack (grid, dates, CRS).
    cfg
        Detection parameters.
    pair
        Pair index (the pair of dates ``pair`` and ``pair + 1``).
    n_scored
        Pixels scored in the pair (for the confidence).
    min_pixels
        Smallest object.
    site
        Name used in object ids.
    group_px
        Regions whose first pixel falls in one cell of this side are cut together.
    offset
        Labels already given (the first object is ``offset + 1``).
    levels
        Seed and grow thresholds (None: the pairwise ones,
        :func:`pipeline.kernels.detect.pairwise.thresholds`).
    split_fraction
        Sign split fraction of :func:`pipeline.kernels.detect.segment.segment_pair` (None:
        ``cfg.sign_split_fraction``).
    weighted
        Sign vote weighted by score x margin (the multi-date method's).
    region_tests
        Keep only objects with ``cfg.min_seed_pixels`` seeds and, with ``cfg.region_mean_test``,
        a mean score at the seed level (the multi-date method's region tests).

    Returns
    -------
    list of dict
        GeoJSON Features.
    """
    n_bands = reader.n_bands
    seed_thr, grow_thr = levels if levels is not None else thresholds(cfg, n_bands)
    split = cfg.sign_split_fraction if split_fraction is None else split_fraction
    comp = sparse_components(cands.rows, cands.cols, reader.shape[1])
    if comp.size == 0:
        return []
    n_comp = int(comp.max()) + 1
    seeded = np.zeros(n_comp, dtype=bool)
    seeded[comp[cands.seed]] = True
    keep = seeded[comp]
    cands, comp = cands.take(keep), comp[keep]
    width = reader.shape[1]
    first = np.full(n_comp, np.iinfo(np.int64).max)
    np.minimum.at(first, comp, cands.rows.astype(np.int64) * width + cands.cols)
    first_row, first_col = first[comp] // width, first[comp] % width
    cell = (first_row // group_px) * (-(-width // group_px)) + first_col // group_px
    features: list[dict] = []
    dates = reader.dates
    for key in np.unique(cell):
        g = cands.take(cell == key)
        r0, r1 = int(g.rows.min()), int(g.rows.max()) + 1
        c0, c1 = int(g.cols.min()), int(g.cols.max()) + 1
        shape = (r1 - r0, c1 - c0)
        rr, cc = g.rows - r0, g.cols - c0
        score = np.full(shape, np.nan, dtype=np.float32)
        removed = np.zeros(shape, dtype=np.float32)
        before_idx = np.zeros(shape, dtype=np.int16)
        score[rr, cc], removed[rr, cc], before_idx[rr, cc] = g.score, g.removed, g.before_index
        labels, kinds, seed = segment_pair(
            score, removed, seed_thr, grow_thr, min_pixels, split, weighted=weighted
        )
        if region_tests:
            labels, kinds = _region_tests(labels, kinds, seed, score, seed_thr, cfg)
        if len(kinds) == 0:
            continue
        base = offset + len(features)
        props = object_properties(
            labels,
            kinds,
            seed,
            score,
            before_idx,
            dates,
            pair,
            n_scored,
            n_bands,
            site,
            offset=base,
        )
        glob = np.where(labels > 0, labels + base, 0).astype(np.int32)
        transform = reader.transform @ Affine.translation(c0, r0)
        features += region_features(glob, transform, reader.crs, properties=props)
    return features


def _region_tests(
    labels: np.ndarray,
    kinds: np.ndarray,
    seed: np.ndarray,
    score: np.ndarray,
    seed_thr: float,
    cfg: DetectConfig,
) -> tuple[np.ndarray, np.ndarray]:
    """Objects passing the multi-date region tests of the site detector (``region_mean_test``:
    mean score at the seed level; ``min_seed_pixels``), renumbered 1..n in order."""
    n = len(kinds)
    if n == 0:
        return labels, kinds
    ids = np.arange(1, n + 1)
    keep = np.ones(n, dtype=bool)
    if cfg.region_mean_test:
        keep &= np.asarray(ndimage.mean(np.nan_to_num(score), labels, ids)) >= seed_thr
    if cfg.min_seed_pixels > 1:
        keep &= np.bincount(labels[seed], minlength=n + 1)[1:] >= cfg.min_seed_pixels
    if keep.all():
        return labels, kinds
    new_id = np.zeros(n + 1, dtype=np.int32)
    new_id[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_id[labels], kinds[keep]


def _halo_px(cfg: DetectConfig) -> int:
    """Window margin: the removal-margin crops (reach, snapped to the block grid) inside the
    trusted part (one pixel less), rounded up to 8 px."""
    align, reach = margin_reach_px(cfg.local_window_px)
    return 8 * math.ceil((reach + align + 1) / 8)


def series_margin_px(cfg: DetectConfig) -> int:
    """Pixels a multi-date task reads past each side of its chunk (the sign's window margin and
    the statistics' reach), at most: its window is the chunk plus twice this."""
    return _halo_px(cfg) + stats_reach_px(cfg)


def series_chunk_px(
    shape: tuple[int, int],
    n_dates: int,
    n_bands: int,
    cfg: DetectConfig,
    tasks: int,
) -> int:
    """Chunk side of the multi-date method under ``cfg.memory_budget_mb``.

    A multi-date task holds every date of its window (the chunk plus the margins of the sign
    and of the statistics), some 15 bytes per pixel, date and band
    (:func:`pipeline.kernels.scale.series_block.block_mb`), and
    ``tasks`` of them run at once on a worker. Larger chunks read and compute fewer margin
    pixels per chunk pixel and open fewer windows (on a site's grid one chunk beats four, each
    thread busy: ``basewatch tile`` on the Khmeimim demo took 5.4-5.8 s with one 512 px chunk
    against 6.5-6.6 s with four of 256 px); more dates need smaller ones. The results do not
    depend on the choice.

    Parameters
    ----------
    shape
        (rows, cols) of the grid.
    n_dates, n_bands
        Dates and bands of the stack.
    cfg
        Detection parameters (``memory_budget_mb``, and the neighbourhoods setting the margins).
    tasks
        Tasks running at once on one worker (its threads).

    Returns
    -------
    int
        The largest side of :data:`SERIES_CHUNKS_PX` (rounded down to a multiple of the drift
        block) whose ``tasks`` windows fit the budget; the smallest side when none fits.
    """
    align = stats_align_px(cfg)
    margin = series_margin_px(cfg)
    ny, nx = shape
    sides = [max(align, side // align * align) for side in SERIES_CHUNKS_PX]
    fits = [
        side
        for side in sides
        if max(1, tasks)
        * block_mb((min(side + 2 * margin, ny), min(side + 2 * margin, nx)), n_dates, n_bands)
        <= cfg.memory_budget_mb
    ]
    return max(fits) if fits else sides[0]


def _worker_threads(client: Any, n_threads: int | None) -> int:
    """Tasks that run at once on one worker: the most threads of any worker of ``client``, else
    ``n_threads`` (None: dask's default, one per core)."""
    if client is not None:
        return max(client.nthreads().values(), default=1)
    return n_threads or os.cpu_count() or 1


def detect_tile(
    reader: StackReader,
    cfg: DetectConfig,
    *,
    method: DetectMethod = "pairwise",
    chunk_px: int | None = None,
    site: str = "tile",
    client: Any = None,
    n_threads: int | None = None,
) -> TileResult:
    """Detect removed and appeared objects over a whole stack, chunk by chunk.

    Parameters
    ----------
    reader
        The stack (see :class:`StackReader`).
    cfg
        Detection parameters.
    method
        ``pairwise``: each date against the last valid view (this module's docstring);
        ``multidate``: the multi-date test on each chunk's whole series
        (:mod:`pipeline.stages.tile_series`). Pass ``cfg.method`` to follow the config.
    chunk_px
        Side of the spatial chunks. A pairwise task holds a few windows of this side plus a
        margin (None: :data:`PAIRWISE_CHUNK_PX`); a multi-date task every date of one (None: the
        largest that fits ``cfg.memory_budget_mb`` on each worker, :func:`series_chunk_px`).
    site
        Name used in object ids.
    client
        A ``distributed.Client`` to run the tasks on; None: dask's threads in this process.
    n_threads
        Threads when ``client`` is None (None: dask's default, one per core).

    Returns
    -------
    TileResult
        Features, per-pair summaries and step timings.

    Raises
    ------
    DataError
        When the stack has fewer than 2 dates or a grid smaller than 2 x 2.
    ConfigError
        When ``method`` is unknown, or a multi-date ``chunk_px`` is not a multiple of the
        drift smoothing's block.
    """
    if method not in DETECT_METHODS:
        raise ConfigError(f"tile method {method!r} is unknown: use 'pairwise' or 'multidate'")
    if reader.n_dates < 2:
        raise DataError(f"stack has {reader.n_dates} date(s): need at least 2 to find change")
    if min(reader.shape) < 2:
        raise DataError(f"grid of {reader.shape}: need at least 2 x 2 pixels")
    series = method == "multidate"
    if chunk_px is None and series:
        tasks = _worker_threads(client, n_threads)
        chunk_px = series_chunk_px(reader.shape, reader.n_dates, reader.n_bands, cfg, tasks)
    elif chunk_px is None:
        chunk_px = PAIRWISE_CHUNK_PX
    if series and chunk_px % stats_align_px(cfg):
        raise ConfigError(
            f"chunk_px {chunk_px} is not a multiple of the drift block "
            f"({stats_align_px(cfg)} px, from detect.drift_window_px): choose another chunk size"
        )
    transform = reader.transform
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    min_px = max(1, math.ceil(cfg.min_area_m2 / pixel_area - 1e-9))

    def run(tasks: list[Any]) -> list[Any]:
        if client is not None:
            return list(client.gather(client.compute(tasks)))
        return list(dask.compute(*tasks, scheduler="threads", num_workers=n_threads))

    seconds: dict[str, float] = {}
    start = time.perf_counter()
    reader_d = dask.delayed(reader, pure=True)
    windows = sample_windows(reader.shape, cfg.max_sample_px)
    samples = run([dask.delayed(read_sample)(reader_d, t, windows) for t in range(reader.n_dates)])
    bands, valid = np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples])
    del samples
    fitted: SeriesParams | None = None
    if series:
        fitted = fit_sample(bands, valid, reader.dates, cfg)
        params: list[CoreParams] = []
        levels = (fitted.seed_threshold, fitted.grow_threshold)
    else:
        params = fit_pairs(bands, valid, cfg)
        levels = thresholds(cfg, reader.n_bands)
    del bands, valid
    seconds["sample"] = time.perf_counter() - start

    start = time.perf_counter()
    grid = window_grid(reader.shape, chunk_px, _halo_px(cfg))
    if series:
        fitted_d = dask.delayed(fitted, pure=True)
        parts = run(
            [dask.delayed(stream_series_chunk)(reader_d, w, fitted_d, cfg, min_px) for w in grid]
        )
        for key in ("read", "statistics", "labels"):
            seconds[f"stream_task_{key}"] = sum(part[2][key] for part in parts)
    else:
        params_d = dask.delayed(params, pure=True)
        parts = run([dask.delayed(stream_chunk)(reader_d, w, params_d, cfg, min_px) for w in grid])
    seconds["stream"] = time.perf_counter() - start

    start = time.perf_counter()
    features: list[dict] = []
    pairs: list[dict] = []
    dates = reader.dates
    for k in range(reader.n_dates - 1):
        cands = Candidates.concat([part[0][k] for part in parts])
        n_scored = sum(part[1][k] for part in parts)
        found = pair_objects(
            cands,
            reader,
            cfg,
            k,
            n_scored,
            min_px,
            site,
            group_px=GROUP_PX,
            offset=len(features),
            levels=levels,
            split_fraction=cfg.series_sign_split_fraction if series else None,
            weighted=series,
            region_tests=series,
        )
        features += found
        summary: dict[str, Any] = {"date_before": dates[k], "date_after": dates[k + 1]}
        if fitted is not None:
            summary.update(
                gain=[round(float(v), 5) for v in fitted.gain[k + 1]],
                offset=[round(float(v), 6) for v in fitted.offset[k + 1]],
                noise_sigma=[round(float(v), 6) for v in fitted.date_sigma[k + 1]],
                null_scale=round(fitted.null_scale, 4),
            )
        else:
            p = params[k]
            summary.update(
                gain=[round(float(v), 5) for v in p.gain],
                offset=[round(float(v), 6) for v in p.offset],
                noise_sigma=[round(float(v), 6) for v in p.sigma],
                null_scale=round(p.null_scale, 4),
                fit_ok=p.fit_ok,
            )
        summary.update(
            threshold=round(levels[0], 4),
            grow_threshold=round(levels[1], 4),
            n_scored_px=int(n_scored),
            n_candidate_px=len(cands),
            n_objects=len(found),
        )
        pairs.append(summary)
    seconds["objects"] = time.perf_counter() - start
    return TileResult(
        features=features,
        pairs=pairs,
        params=params,
        seconds=seconds,
        method=method,
        series=fitted,
        chunk_px=chunk_px,
    )
