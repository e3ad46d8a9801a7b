"""Detect objects in an aligned cube: the detector's kernels, with the one compute between them.

The kernels of :mod:`pipeline.kernels.detect` return lazy results and never compute; this is
where the cube's lazy part is computed, once, before the objects are labelled on numpy (a region
must be seen whole across chunk borders):

- ``multidate`` (the default): the band stack and its validity
  (:func:`pipeline.kernels.detect.pairwise.stack_inputs`), then
  :func:`pipeline.kernels.detect.core.multidate_objects`. When the cube's in-memory estimate is
  over ``detect.memory_budget_mb`` (:func:`pipeline.kernels.detect.windows.plan`), the same
  detector runs window by window (:func:`multidate_windows`, the scheme and its exactness
  condition in :mod:`pipeline.kernels.detect.windows`): three passes of dask tasks (noise
  levels, null levels, objects), at most a budget's worth of windows in flight, on dask's
  threads or on the active ``distributed`` client (``cluster:`` in the config).
- ``pairwise``: every pair's score, removal margin, before-date index and fit summaries
  (:func:`pipeline.kernels.detect.pairwise.pair_scores`), then
  :func:`pipeline.kernels.detect.pairwise.pairwise_objects`; the result keeps the lazy score.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import dask
import numpy as np
import xarray as xr

from pipeline.config import Config, DetectConfig
from pipeline.grid import grid_transform
from pipeline.io.calibration import active_model
from pipeline.kernels.detect import calibration, clouds, noise, windows
from pipeline.kernels.detect.core import (
    GridLevels,
    NullLevels,
    candidate_objects,
    detection_occupancy,
    finish_objects,
    multidate_objects,
    null_levels,
    series_state,
    series_thresholds,
)
from pipeline.kernels.detect.pairwise import (
    DEFAULT_BANDS,
    DetectResult,
    check_inputs,
    detect_result,
    pair_coords,
    pair_scores,
    pairwise_objects,
    stack_inputs,
)
from pipeline.sites import Site

__all__ = ["DEFAULT_BANDS", "DetectResult", "detect_cube", "multidate_windows"]


def detect_cube(
    cube: xr.Dataset,
    zone_raster: np.ndarray,
    zone_names: Sequence[str],
    zone_kinds: Sequence[str],
    cfg: DetectConfig,
    bands: Sequence[str] = DEFAULT_BANDS,
    *,
    calibration_model: calibration.Model | None,
) -> DetectResult:
    """Detect removed and appeared objects in an aligned cube (:mod:`pipeline.kernels.detect.core`).

    Parameters
    ----------
    cube
        Aligned cube: bands float32 and ``valid`` bool on (time, y, x), ``crs`` attribute, x/y
        pixel-centre coordinates; numpy or dask backed.
    zone_raster
        (y, x) int zones on the cube's grid (0 = none, i + 1 = ``zone_names[i]``).
    zone_names, zone_kinds
        Name and kind of each zone.
    cfg
        Detection parameters (``cfg.method`` picks the method).
    bands
        Bands compared.
    calibration_model
        The confidence model of the multi-date method (the stages pass
        :func:`pipeline.io.calibration.active_model`); None: confidence stays noise-only and
        nothing is dropped by ``cfg.min_confidence``.

    Returns
    -------
    DetectResult
        Features, per-pair summaries, the (pair, y, x) score and labels (pair ``p`` = the
        change first seen at date ``p + 1``) and the zone occupancy per date. The score is lazy
        for a dask cube with the pairwise method (writing it recomputes it), numpy otherwise.

    Raises
    ------
    DataError
        When bands, ``valid``, the ``crs`` attribute or a matching zone raster are missing.

    Notes
    -----
    One ``dask.compute`` for dask input when the multi-date method's in-memory estimate fits
    ``cfg.memory_budget_mb``: the band stack is loaded whole. Over it,
    :func:`multidate_windows` gives the same detections window by window.
    """
    bands, _, checked_zones = check_inputs(cube, zone_raster, bands)
    shape = (cube.sizes["time"], len(bands), cube.sizes["y"], cube.sizes["x"])
    if cfg.method == "multidate" and shape[0] >= 2 and windows.plan(shape, cfg).windowed:
        result = multidate_windows(
            cube,
            checked_zones,
            zone_names,
            zone_kinds,
            cfg,
            bands,
            calibration_model=calibration_model,
        )
    elif cfg.method == "pairwise":
        lazy = pair_scores(cube, cfg, bands)
        (scores,) = dask.compute(lazy)
        result = pairwise_objects(
            cube, scores, checked_zones, zone_names, zone_kinds, cfg, bands, score=lazy.score
        )
    else:
        stack, valid = dask.compute(*stack_inputs(cube, bands))
        result = multidate_objects(
            cube,
            stack,
            valid,
            checked_zones,
            zone_names,
            zone_kinds,
            cfg,
            bands,
            calibration_model=calibration_model,
        )
    result.occupancy = detection_occupancy(result, zone_raster, zone_names, cube)
    return result


def detect_site(cube: xr.Dataset, site: Site, cfg: Config) -> DetectResult:
    """:func:`detect_cube` on a site's aligned cube: its zones on the load grid, the configured
    bands the cube holds, and the active calibration model
    (:func:`pipeline.io.calibration.active_model`)."""
    return detect_cube(
        cube,
        site.zone_raster(site.geobox(cfg.load.resolution_m)),
        [z.name for z in site.zones],
        [z.kind for z in site.zones],
        cfg.detect,
        bands=[b for b in cfg.load.bands if b in cube],
        calibration_model=active_model(),
    )


def _window_cube(cube: xr.Dataset, w: windows.Window) -> xr.Dataset:
    return cube.isel(y=slice(*w.rows), x=slice(*w.cols))


def _residual_sample(
    sub: xr.Dataset,
    w: windows.Window,
    bands: Sequence[str],
    radiometry: tuple[np.ndarray, np.ndarray],
    cfg: DetectConfig,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 1 of a window: its core's residuals on the noise lattice, and its core's validity."""
    stack, valid = (np.asarray(a) for a in stack_inputs(sub, bands))
    x = np.where(valid[:, None], stack, np.nan).astype(np.float32)
    _, resid = noise.residuals(noise.apply_gain_offset(x, *radiometry), cfg.local_window_px)
    (rs, cs), _ = windows.lattice_in_core(w, k)
    core = windows.core_slices(w)
    return np.ascontiguousarray(resid[..., rs, cs]), np.ascontiguousarray(valid[(..., *core)])


def _grid_levels(
    w: windows.Window,
    valid: np.ndarray,
    context_px: float | None,
    radiometry: tuple[np.ndarray, np.ndarray],
    levels: tuple[np.ndarray, np.ndarray],
) -> GridLevels:
    """The global levels a window takes, with the context of the loaded masks around it."""
    ny, nx = w.shape
    edges = (w.rows[0] == 0, w.rows[1] == ny, w.cols[0] == 0, w.cols[1] == nx)
    near = None
    if context_px is not None:
        d = math.ceil(context_px) + 1
        r0, r1 = max(w.rows[0] - d, 0), min(w.rows[1] + d, ny)
        c0, c1 = max(w.cols[0] - d, 0), min(w.cols[1] + d, nx)
        inner = (slice(w.rows[0] - r0, w.rows[1] - r0), slice(w.cols[0] - c0, w.cols[1] - c0))
        wide_edges = (r0 == 0, r1 == ny, c0 == 0, c1 == nx)
        near = clouds.context_near(~valid[:, r0:r1, c0:c1], context_px, inner, wide_edges)
    return GridLevels(*radiometry, *levels, near=near, edges=edges)


def _context_px(cube: xr.Dataset, cfg: DetectConfig) -> float | None:
    """The atmosphere's context distance in pixels (as :func:`series_state` takes it)."""
    if cfg.atmosphere_context_m is None or "scl" not in cube:
        return None
    transform = grid_transform(cube["x"].values, cube["y"].values)
    return cfg.atmosphere_context_m / math.sqrt(abs(transform.a * transform.e))


def _null_pass(
    sub: xr.Dataset,
    w: windows.Window,
    bands: Sequence[str],
    cfg: DetectConfig,
    grid: GridLevels,
    k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2 of a window: its core's raw step statistic on the null lattice, and per date the
    core's pixels scored, used and masked atmospheric (3, T)."""
    stack, valid = (np.asarray(a) for a in stack_inputs(sub, bands))
    state = series_state(sub, stack, valid, cfg, bands, grid=grid)
    (rs, cs), _ = windows.lattice_in_core(w, k)
    core = (slice(None), *windows.core_slices(w))
    raw = state.series.score
    counts = np.stack(
        [
            np.isfinite(raw[core]).sum(axis=(1, 2)),
            state.used[core].sum(axis=(1, 2)),
            state.exc.atmospheric[core].sum(axis=(1, 2)),
        ]
    ).astype(np.int64)
    return np.ascontiguousarray(raw[:, rs, cs]), counts


def _objects_pass(
    sub: xr.Dataset,
    w: windows.Window,
    zones: np.ndarray,
    zone_names: Sequence[str],
    zone_kinds: Sequence[str],
    cfg: DetectConfig,
    bands: Sequence[str],
    grid: GridLevels,
    null: NullLevels,
) -> tuple[list[tuple[tuple, dict, tuple[np.ndarray, ...]]], np.ndarray, np.ndarray]:
    """Pass 3 of a window: the objects it keeps, each as ``(sort key, feature, (pair, y, x)
    pixel mask in the window)``, its core's score and its core's labels."""
    stack, valid = (np.asarray(a) for a in stack_inputs(sub, bands))
    state = series_state(sub, stack, valid, cfg, bands, grid=grid)
    del stack
    first: dict[int, tuple[int, int]] = {}
    wz = zones[slice(*w.rows), slice(*w.cols)]
    feats, labels, _, score = candidate_objects(
        sub, state, null, wz, zone_names, zone_kinds, cfg, bands, first_pixels=first
    )
    (cr, cc), wx = windows.core_slices(w), labels.shape[-1]
    nx = w.shape[1]
    kept = []
    for f in feats:
        p = f["properties"]
        label = int(p["label"])
        t, flat = first[label]
        r, c = divmod(flat, wx)
        if not (cr.start <= r < cr.stop and cc.start <= c < cc.stop):
            continue
        glob = (r + w.rows[0]) * nx + (c + w.cols[0])
        if p.get("transient"):
            key: tuple = (1, t, glob, label)
        else:
            key = (0, t, 0 if p["kind"] == "removed" else 1, glob)
        kept.append((key, f, np.nonzero(labels[int(p["pair"])] == label)))
    return kept, score[:, cr, cc], labels[:, cr, cc]


def multidate_windows(
    cube: xr.Dataset,
    zone_raster: np.ndarray,
    zone_names: Sequence[str],
    zone_kinds: Sequence[str],
    cfg: DetectConfig,
    bands: Sequence[str],
    *,
    calibration_model: calibration.Model | None,
    chunk_px: int | None = None,
) -> DetectResult:
    """The multi-date detector window by window (:mod:`pipeline.kernels.detect.windows`).

    Parameters
    ----------
    cube, zone_raster, zone_names, zone_kinds, cfg, bands, calibration_model
        As :func:`detect_cube` (``zone_raster`` checked).
    chunk_px
        Core side of the windows (None: from ``cfg.memory_budget_mb``).

    Returns
    -------
    DetectResult
        The same features, pairs, score and labels as
        :func:`pipeline.kernels.detect.core.multidate_objects` on the whole cube, under the
        exactness condition of :mod:`pipeline.kernels.detect.windows`. The score and labels
        are numpy (the outputs, 8 bytes per pixel and pair, are held whole).

    Notes
    -----
    Tasks run on dask's default scheduler: threads, or the active ``distributed`` client
    (:func:`pipeline.io.cluster.client_from_config`); at most
    :attr:`~pipeline.kernels.detect.windows.WindowPlan.in_flight` windows at once.
    """
    t_len, ny, nx = cube.sizes["time"], cube.sizes["y"], cube.sizes["x"]
    n_bands = len(bands)
    shape = (t_len, n_bands, ny, nx)
    the_plan = windows.plan(shape, cfg)
    if chunk_px is not None:
        the_plan = windows.WindowPlan(
            True,
            the_plan.estimate_mb,
            the_plan.budget_mb,
            chunk_px,
            the_plan.halo_px,
            the_plan.window_mb,
            the_plan.in_flight,
        )
    grid_windows = the_plan.windows((ny, nx))

    def run(make: Callable[[windows.Window], Any]) -> list[Any]:
        out: list[Any] = []
        step = max(1, the_plan.in_flight)
        for i in range(0, len(grid_windows), step):
            batch = [make(w) for w in grid_windows[i : i + step]]
            out += list(dask.compute(*batch))
        return out

    # 0. gain and offset from the fit's lattice of the whole grid
    k_fit = noise.fit_sample_stride(shape, cfg.max_sample_px)
    lattice = cube.isel(y=slice(None, None, k_fit), x=slice(None, None, k_fit))
    xs, vs = dask.compute(*stack_inputs(lattice, bands))
    xs = np.where(vs[:, None], xs, np.nan).astype(np.float32)
    radiometry = noise.fit_gain_offset(xs, vs)
    # 1. noise levels from the residual lattice; the grid's validity
    k_noise = noise.noise_sample_stride(shape)
    resid_s = np.full((t_len, n_bands, -(-ny // k_noise), -(-nx // k_noise)), np.nan, np.float32)
    valid = np.zeros((t_len, ny, nx), dtype=bool)
    pieces = run(
        lambda w: dask.delayed(_residual_sample)(
            _window_cube(cube, w), w, bands, radiometry, cfg, k_noise
        )
    )
    for w, (piece, core_valid) in zip(grid_windows, pieces, strict=True):
        _, (sr, sc) = windows.lattice_in_core(w, k_noise)
        resid_s[..., sr, sc] = piece
        valid[:, slice(*w.inner_rows), slice(*w.inner_cols)] = core_valid
    del pieces
    levels = noise.date_noise(resid_s, valid[:, ::k_noise, ::k_noise])
    del resid_s
    context_px = _context_px(cube, cfg)
    grids = {w: _grid_levels(w, valid, context_px, radiometry, levels) for w in grid_windows}
    # 2. the score's null scale and tail, the per-date counts
    k_null = windows.null_stride(shape)
    raw_s = np.full((t_len, -(-ny // k_null), -(-nx // k_null)), np.nan, np.float32)
    counts = np.zeros((3, t_len), np.int64)
    pieces = run(
        lambda w: dask.delayed(_null_pass)(_window_cube(cube, w), w, bands, cfg, grids[w], k_null)
    )
    for w, (piece, c) in zip(grid_windows, pieces, strict=True):
        _, (sr, sc) = windows.lattice_in_core(w, k_null)
        raw_s[:, sr, sc] = piece
        counts += c
    del pieces
    scale, tail = null_levels(raw_s, n_bands)
    null = NullLevels(
        scale=scale,
        tail=tail,
        n_scored=tuple(int(n) for n in counts[0]),
        n_used=tuple(int(n) for n in counts[1]),
        n_atmospheric=tuple(int(n) for n in counts[2]),
    )
    # 3. objects: each kept by the window whose core holds its first pixel
    score = np.full((t_len - 1, ny, nx), np.nan, np.float32)
    labels_all = np.zeros((t_len - 1, ny, nx), np.int32)
    kept: list[tuple[tuple, dict, tuple[np.ndarray, ...], windows.Window]] = []
    pieces = run(
        lambda w: dask.delayed(_objects_pass)(
            _window_cube(cube, w),
            w,
            zone_raster,
            zone_names,
            zone_kinds,
            cfg,
            bands,
            grids[w],
            null,
        )
    )
    for w, (objs, core_score, _) in zip(grid_windows, pieces, strict=True):
        score[:, slice(*w.inner_rows), slice(*w.inner_cols)] = core_score
        kept += [(key, f, mask, w) for key, f, mask in objs]
    del pieces
    kept.sort(key=lambda item: item[0])
    site = str(cube.attrs.get("site", "site"))
    features: list[dict] = []
    n_changed = np.zeros(t_len - 1, np.int64)
    n_objects = np.zeros(t_len - 1, np.int64)
    for new, (_, f, mask, w) in enumerate(kept, start=1):
        p = f["properties"]
        pair = int(p["pair"])
        p["label"] = new
        p["id"] = f"{site}-{p['date_after'].replace('-', '')}-{new}"
        view = labels_all[pair, slice(*w.rows), slice(*w.cols)]
        view[mask] = new
        if not p.get("transient"):
            n_changed[pair] += int(p["n_pixels"])
            n_objects[pair] += 1
        features.append(f)
    coords = pair_coords(cube["time"].values, cube)
    _, crs, _ = check_inputs(cube, zone_raster, bands)
    pairs = _window_pairs(cube, cfg, n_bands, radiometry, levels, null, n_changed, n_objects)
    features = finish_objects(features, labels_all, pairs, cfg, n_bands, calibration_model)
    return detect_result(features, pairs, score, labels_all, coords, crs, n_bands)


def _window_pairs(
    cube: xr.Dataset,
    cfg: DetectConfig,
    n_bands: int,
    radiometry: tuple[np.ndarray, np.ndarray],
    levels: tuple[np.ndarray, np.ndarray],
    null: NullLevels,
    n_changed: np.ndarray,
    n_objects: np.ndarray,
) -> list[dict]:
    """Per-pair summaries of the windowed detector (as the whole-array path writes them)."""
    dates = [str(np.datetime_as_string(t, unit="D")) for t in cube["time"].values]
    seed_thr, grow_thr = series_thresholds(cfg, n_bands)
    gain, offset = radiometry
    date_sigma = levels[1]
    return [
        {
            "date_before": dates[t - 1],
            "date_after": dates[t],
            "n_changed_px": int(n_changed[t - 1]),
            "noise_sigma": [round(float(s), 6) for s in date_sigma[t]],
            "gain": [round(float(g), 5) for g in gain[t]],
            "offset": [round(float(o), 6) for o in offset[t]],
            "threshold": round(seed_thr, 4),
            "grow_threshold": round(grow_thr, 4),
            "null_scale": round(null.scale, 4),
            "n_scored_px": null.n_scored[t],
            "n_objects": int(n_objects[t - 1]),
            "n_cloud_masked_px": null.n_atmospheric[t],
        }
        for t in range(1, len(dates))
    ]
