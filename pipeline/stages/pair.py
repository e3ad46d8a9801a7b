"""``basewatch pair``: change between any two local Sentinel-2 rasters, one per date.

:func:`run_pair` chains, for a ``--before`` and an ``--after`` input (each a band folder, a
multi-band GeoTIFF or a STAC Item JSON, see :mod:`pipeline.io.rasters`):

1. **Grid.** The grid of the before input's finest (10 m) band. The before date's 20 m bands,
   and every band of the after date when its grid or CRS differs (OSCD Abu Dhabi), are
   reprojected onto it (cubic; SCL nearest). Bands compared: those of blue, green, red, nir,
   swir16, swir22 present in both dates.
2. **Valid pixels.** Finite in every band, and not cloud, shadow, cirrus, saturated or no data
   per the SCL (masks dilated by ``load.cloud_dilation_px``) when the input has an SCL. Level-1C
   inputs have none: every pixel with data is used.
3. **Co-registration.** :func:`pipeline.kernels.coregister.shift.estimate_shift` of the after date
   on the before date (band ``coregister.band``, in a window of at most :data:`COREG_WINDOW_PX`
   where both are valid), applied to every after band with
   :func:`pipeline.kernels.coregister.shift.apply_shift` (the mask with ``apply_shift_mask``). A
   failed estimate leaves the after date as it is and is reported (``coregistration.status`` in
   ``pair.json``).
4. **Score.** The project's pairwise change core, :func:`pipeline.kernels.detect.core.pair_change`:
   robust gain/offset normalisation, noise from the data itself, a chi-square score (one degree of
   freedom per band) calibrated to its null.
5. **Decision**, by ``mode``:

   - ``objects`` (default; the detector of the site pipeline): seeds at the chi-square quantile
     ``1 - detect.false_alarm_rate``, hysteresis down to ``detect.grow_false_alarm_rate``,
     regions of at least ``detect.min_area_m2``; the mask is their pixels.
   - ``area`` (large change: construction, clearing, flooding): the same core, set for change
     that is wide rather than compact. The local window that takes out wide change (haze, a
     season) grows to :data:`AREA_WINDOW_M`, several times the largest area of interest, and the
     standardised differences are smoothed by a Gaussian of :data:`AREA_SMOOTH_M` (a matched
     filter for changes a few pixels wide; the null is recalibrated for it). The mask is every
     pixel whose score passes the seed threshold (``1 - detect.false_alarm_rate``), with no
     hysteresis and no area filter; the objects are its connected parts of at least
     ``detect.min_area_m2``.

6. **Outputs** in ``out``, each written to a temporary name then renamed: ``change_score.tif``
   (float32, chi-square units, NaN = not scored), ``change_mask.tif`` (uint8: 1 = change, 0 = no
   change, 255 = not scored; nodata 255), ``detections.geojson`` (signed objects, lon/lat, with
   ``kind``, ``area_m2``, ``score``, ``confidence``) and ``pair.json`` (what was done: inputs,
   harmonisation, grid, shift, noise, thresholds, counts).

Everything is numpy in memory (about 60 bytes per pixel of the grid): fine for a city or a
site, not for a whole 110 km tile at once.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from scipy.stats import chi2

from pipeline.config import Config, DetectConfig
from pipeline.errors import DataError
from pipeline.grid import pixel_size_m
from pipeline.io.atomic import atomic_file, write_json
from pipeline.io.catalog import BANDS
from pipeline.io.harmonise import SCL_DILATED, valid_mask
from pipeline.io.rasters import Grid, InputSpec, describe_input, read_bands, reference_grid
from pipeline.kernels.coregister.shift import (
    ShiftEstimate,
    apply_shift,
    apply_shift_mask,
    estimate_shift,
)
from pipeline.kernels.coregister.window import best_window
from pipeline.kernels.detect.core import pair_change, thresholds
from pipeline.kernels.detect.objects import region_features
from pipeline.kernels.detect.onedate import QUIET_RATE, sign_margin
from pipeline.kernels.detect.segment import object_properties, segment_pair

__all__ = [
    "AREA_SMOOTH_M",
    "AREA_WINDOW_M",
    "PAIR_MODES",
    "PairResult",
    "PreparedPair",
    "detect_pair",
    "mode_config",
    "prepare_pair",
    "run_pair",
    "write_pair",
]

PAIR_MODES: tuple[str, ...] = ("objects", "area")
"""Decisions of :func:`detect_pair` (see the module docstring)."""

AREA_WINDOW_M = 1920.0
"""Area mode: side of the local window (m) whose median change is taken out as not-an-object
(haze, a season); several times the largest change of interest (a few hundred metres)."""

AREA_SMOOTH_M = 15.0
"""Area mode: Gaussian sigma (m) of the smoothing of the standardised differences; matches
changes three or more 10 m pixels wide."""

COREG_WINDOW_PX = 512
"""The shift is estimated in one window of at most this side (AROSICS uses 256), placed where
both dates are most valid: a global translation needs no more, and it bounds the cost."""

OUTPUT_MODE = 0o644
"""Permissions of the written files."""

MASK_NODATA = 255
"""Value of ``change_mask.tif`` where no score exists (no data, cloud)."""


@dataclass(frozen=True)
class PreparedPair:
    """Both dates on one grid, co-registered, with their validity (numpy)."""

    before: np.ndarray
    """(B, y, x) float32 reflectance of the before date."""
    after: np.ndarray
    """(B, y, x) float32 reflectance of the after date, co-registered to the before date."""
    before_ok: np.ndarray
    """(y, x) bool: usable before pixels."""
    after_ok: np.ndarray
    """(y, x) bool: usable after pixels."""
    cloud: np.ndarray
    """(y, x) bool: cloud, shadow or cirrus in the after date's SCL (drives the thin-cloud
    guard); all False without an SCL."""
    bands: tuple[str, ...]
    """Vocabulary bands of the first axis."""
    grid: Grid
    """The before input's 10 m grid."""
    specs: tuple[InputSpec, InputSpec]
    """The before and after inputs."""
    regridded: bool
    """The after date was reprojected onto the before grid (its 10 m grid differed)."""
    shift: ShiftEstimate
    """Co-registration of the after date on the before date."""
    pixel_size_m: tuple[float, float]
    """Ground size of a grid pixel (x, y), metres."""


@dataclass(frozen=True)
class PairResult:
    """What :func:`detect_pair` finds."""

    score: np.ndarray
    """(y, x) float32 null-calibrated score (chi-square, ``B`` dof); NaN where not scored."""
    mask: np.ndarray
    """(y, x) uint8: 1 = change, 0 = no change, :data:`MASK_NODATA` = not scored."""
    features: list[dict]
    """Signed objects as GeoJSON Features (lon/lat)."""
    summary: dict[str, Any]
    """JSON-ready account of the run (``pair.json``)."""


def _validity(stack: np.ndarray, scl: np.ndarray | None, dilation_px: int) -> np.ndarray:
    ok = np.isfinite(stack).all(axis=0)
    if scl is not None:
        ok &= valid_mask(scl, dilation_px)
    return ok


def _coregister(
    stack_b: np.ndarray,
    stack_a: np.ndarray,
    ok_b: np.ndarray,
    ok_a: np.ndarray,
    bands: tuple[str, ...],
    cfg: Config,
) -> ShiftEstimate:
    """Shift of the after date on the before date, in the most structured valid window."""
    c = cfg.coregister
    ref_band = bands.index(next((b for b in (c.band, "nir", "red") if b in bands), bands[-1]))
    rows, cols = best_window(ok_b & ok_a, COREG_WINDOW_PX, stack_b[ref_band])
    return estimate_shift(
        stack_b[ref_band, rows, cols],
        stack_a[ref_band, rows, cols],
        ok_b[rows, cols],
        ok_a[rows, cols],
        upsample=c.upsample,
        max_shift_px=c.max_shift_px,
        min_valid_fraction=c.min_valid_fraction,
        min_quality=c.min_quality,
    )


def prepare_pair(
    before: str | Path,
    after: str | Path,
    config: Config | None = None,
    *,
    band_order: tuple[str, ...] | None = None,
    shift: tuple[float, float] | None = None,
) -> PreparedPair:
    """Read both dates onto the before input's 10 m grid and co-register the after date.

    Parameters
    ----------
    before, after
        Band folder, multi-band GeoTIFF or STAC Item JSON of each date.
    config
        ``coregister`` (band, limits) and ``load.cloud_dilation_px`` are used; defaults if None.
    band_order
        Band order of multi-band files without band descriptions.
    shift
        A known ``(shift_x_px, shift_y_px)`` of the after date (e.g. ``pair.json`` of an
        earlier run): applied without estimating it again.

    Returns
    -------
    PreparedPair
        Bands, masks, grid and the co-registration estimate.

    Raises
    ------
    DataError
        Naming the input at fault: unreadable, no common band, no overlap.
    """
    cfg = config or Config.model_validate({})
    spec_b = describe_input(before, band_order)
    spec_a = describe_input(after, band_order)
    bands = tuple(b for b in BANDS if b in spec_b.bands and b in spec_a.bands)
    if not bands:
        raise DataError(
            f"{spec_a.path}: shares no band with {spec_b.path} "
            f"({', '.join(spec_b.bands)} vs {', '.join(spec_a.bands)})"
        )
    grid = reference_grid(spec_b)
    stack_b, scl_b = read_bands(spec_b, grid, bands)
    stack_a, scl_a = read_bands(spec_a, grid, bands)
    a_grid = reference_grid(spec_a)
    dilation = cfg.load.cloud_dilation_px
    ok_b = _validity(stack_b, scl_b, dilation)
    ok_a = _validity(stack_a, scl_a, dilation)
    if not (ok_b & ok_a).any():
        raise DataError(
            f"{spec_a.path}: no pixel usable in both dates on the grid of {spec_b.path}: "
            "pass two views of the same area"
        )
    if shift is not None:
        n_ok = int((ok_b & ok_a).sum())
        est = ShiftEstimate(float(shift[0]), float(shift[1]), math.nan, n_ok, "shifted", None)
    else:
        est = _coregister(stack_b, stack_a, ok_b, ok_a, bands, cfg)
    if est.usable and (est.shift_x_px != 0.0 or est.shift_y_px != 0.0):
        stack_a = np.asarray(apply_shift(stack_a, est.shift_x_px, est.shift_y_px), np.float32)
        ok_a = np.asarray(apply_shift_mask(ok_a, est.shift_x_px, est.shift_y_px))
        ok_a &= np.isfinite(stack_a).all(axis=0)
    cloud = np.zeros_like(ok_a)
    if scl_a is not None:  # flagged cloud, shadow or cirrus at the after date (thin-cloud guard)
        cloud = np.isin(scl_a, SCL_DILATED) & ok_b
        if est.usable:
            cloud = ~np.asarray(apply_shift_mask(~cloud, est.shift_x_px, est.shift_y_px))
    return PreparedPair(
        before=stack_b,
        after=stack_a,
        before_ok=ok_b,
        after_ok=ok_a,
        cloud=cloud,
        bands=bands,
        grid=grid,
        specs=(spec_b, spec_a),
        regridded=not a_grid.same_as(grid),
        shift=est,
        pixel_size_m=pixel_size_m(grid),
    )


def mode_config(cfg: DetectConfig, mode: str, pixel_m: float) -> DetectConfig:
    """The detection parameters of ``mode`` on pixels of ``pixel_m`` metres.

    ``objects`` returns ``cfg``; ``area`` widens the local window to :data:`AREA_WINDOW_M` (never
    below ``cfg.local_window_px``) and smooths by :data:`AREA_SMOOTH_M`.
    """
    if mode not in PAIR_MODES:
        raise DataError(f"unknown pair mode {mode!r}: use one of {', '.join(PAIR_MODES)}")
    if mode == "objects":
        return cfg
    window = max(cfg.local_window_px, round(AREA_WINDOW_M / pixel_m))
    return cfg.model_copy(
        update={"local_window_px": int(window), "smooth_sigma_px": AREA_SMOOTH_M / pixel_m}
    )


def detect_pair(prep: PreparedPair, cfg: DetectConfig, mode: str = "objects") -> PairResult:
    """Score, decide and delineate the change of a prepared pair (see the module docstring).

    Parameters
    ----------
    prep
        Output of :func:`prepare_pair`.
    cfg
        Detection parameters (``false_alarm_rate`` and the rest, as in ``configs/params.yaml``).
    mode
        ``objects`` or ``area``.

    Returns
    -------
    PairResult
        Score, mask, objects and the summary.
    """
    px, py = prep.pixel_size_m
    run_cfg = mode_config(cfg, mode, math.sqrt(px * py))
    n_bands = len(prep.bands)
    blue = prep.bands.index("blue") if "blue" in prep.bands else None
    pc = pair_change(
        prep.before,
        prep.after,
        prep.before_ok,
        prep.after_ok,
        prep.cloud,
        run_cfg,
        blue_index=blue,
    )
    score = np.asarray(pc.score, dtype=np.float32)
    removed = np.asarray(pc.removed, dtype=np.float32)
    used = np.asarray(pc.used, dtype=bool)
    seed_thr, grow_thr = thresholds(run_cfg, n_bands)
    pixel_area = px * py
    min_px = max(1, math.ceil(cfg.min_area_m2 / pixel_area - 1e-9))
    grow = grow_thr if mode == "objects" else seed_thr
    if mode == "objects":
        # sign each change region as the site detector does: which view its surroundings (a
        # ring of quiet pixels, two surfaces at a quay) explain the better, voted over the
        # region with the score as weight; a pixel-level margin splits a ship at a quay in two
        with np.errstate(invalid="ignore"):
            changed = np.nan_to_num(score, nan=-1.0) >= grow
            quiet = used & (np.nan_to_num(score, nan=np.inf) < chi2.isf(QUIET_RATE, n_bands))
        removed = sign_margin(
            prep.before,
            prep.after,
            changed,
            quiet,
            np.asarray(pc.radiometry.sigma, dtype=np.float64),
            np.zeros(score.shape, np.int32),
            cfg,
            prep.bands,
        )
    labels, kinds, seed = segment_pair(
        score,
        removed,
        seed_thr,
        grow,
        min_px,
        cfg.sign_split_fraction,
        weighted=mode == "objects",
    )
    with np.errstate(invalid="ignore"):
        change = labels > 0 if mode == "objects" else score >= seed_thr
    mask = np.where(used, change, MASK_NODATA).astype(np.uint8)
    spec_b, spec_a = prep.specs
    dates = [spec_b.date or "before", spec_a.date or "after"]
    n_used = int(used.sum())
    props = object_properties(
        labels,
        kinds,
        seed,
        score,
        np.zeros(score.shape, np.int16),
        dates,
        0,
        n_used,
        n_bands,
        "pair",
        offset=0,
    )
    features = region_features(labels, prep.grid.transform, prep.grid.crs_name, properties=props)
    for f in features:  # the grid may be lon/lat: area from the ground pixel size
        f["properties"]["area_m2"] = round(f["properties"]["n_pixels"] * pixel_area, 1)
        f["properties"]["mode"] = mode
    rad = pc.radiometry
    n_change = int((mask == 1).sum())
    summary = {
        "mode": mode,
        "before": _input_summary(spec_b),
        "after": _input_summary(spec_a),
        "bands": list(prep.bands),
        "grid": {
            "crs": prep.grid.crs_name,
            "shape": list(prep.grid.shape),
            "transform": [float(v) for v in prep.grid.transform[:6]],
            "pixel_size_m": [round(px, 3), round(py, 3)],
        },
        "after_regridded": prep.regridded,
        "coregistration": prep.shift.to_dict(),
        "detect": {
            "false_alarm_rate": cfg.false_alarm_rate,
            "threshold": round(seed_thr, 4),
            "grow_threshold": round(grow, 4),
            "local_window_px": run_cfg.local_window_px,
            "smooth_sigma_px": round(run_cfg.smooth_sigma_px, 4),
            "min_area_px": min_px,
            "null_scale": round(float(pc.null_scale), 4),
            "noise_sigma": [round(float(s), 6) for s in np.asarray(rad.sigma)],
            "gain": [round(float(g), 5) for g in np.asarray(rad.gain)],
            "offset": [round(float(o), 6) for o in np.asarray(rad.offset)],
            "fit_ok": bool(rad.fit_ok),
        },
        "n_scored_px": n_used,
        "n_change_px": n_change,
        "change_fraction": round(n_change / max(n_used, 1), 6),
        "n_objects": len(features),
        "n_removed": sum(f["properties"]["kind"] == "removed" for f in features),
        "n_appeared": sum(f["properties"]["kind"] == "appeared" for f in features),
    }
    return PairResult(score=score, mask=mask, features=features, summary=summary)


def _input_summary(spec: InputSpec) -> dict[str, Any]:
    return {
        "path": str(spec.path),
        "kind": spec.kind,
        "date": spec.date,
        "level": spec.level,
        "scl": spec.scl is not None,
        "harmonisation": spec.harmonisation,
    }


def _write_tif(path: Path, array: np.ndarray, grid: Grid, nodata: float) -> None:
    """One-band tiled GeoTIFF on ``grid``, written to a temporary name then renamed."""
    profile = {
        "driver": "GTiff",
        "dtype": array.dtype.name,
        "count": 1,
        "height": grid.shape[0],
        "width": grid.shape[1],
        "crs": grid.crs,
        "transform": grid.transform,
        "nodata": nodata,
        "compress": "deflate",
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
    }
    if array.dtype.kind == "f":
        profile["predictor"] = 3
    with (
        atomic_file(path, suffix=".tmp.tif", mode=OUTPUT_MODE) as tmp,
        rasterio.open(tmp, "w", **profile) as dst,
    ):
        dst.write(array, 1)


def write_pair(result: PairResult, grid: Grid, out: str | Path) -> dict[str, str]:
    """Write the outputs of a pair into ``out`` (created if needed), each file atomically.

    Returns
    -------
    dict
        Output name -> path.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder: give a folder for --out")
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "change_score": out / "change_score.tif",
        "change_mask": out / "change_mask.tif",
        "detections": out / "detections.geojson",
        "summary": out / "pair.json",
    }
    _write_tif(paths["change_score"], result.score.astype(np.float32), grid, float("nan"))
    _write_tif(paths["change_mask"], result.mask.astype(np.uint8), grid, MASK_NODATA)
    write_json(
        paths["detections"], {"type": "FeatureCollection", "features": result.features}, indent=None
    )
    write_json(paths["summary"], result.summary)
    for key in ("detections", "summary"):
        os.chmod(paths[key], OUTPUT_MODE)  # readable like any GIS output, not 0600
    return {k: str(v) for k, v in paths.items()}


def run_pair(
    before: str | Path,
    after: str | Path,
    out: str | Path,
    config: Config | None = None,
    *,
    mode: str = "objects",
    band_order: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Detect the change between two local inputs and write it to ``out`` (the ``pair`` command).

    Parameters
    ----------
    before, after
        Band folder, multi-band GeoTIFF or STAC Item JSON of each date.
    out
        Output folder.
    config
        Project configuration (``detect``, ``coregister``, ``load.cloud_dilation_px``).
    mode
        ``objects`` or ``area`` (see the module docstring).
    band_order
        Band order of multi-band files without band descriptions.

    Returns
    -------
    dict
        The summary written to ``pair.json``, with ``outputs`` (name -> path).

    Raises
    ------
    DataError
        Naming the input or output at fault.
    """
    cfg = config or Config.model_validate({})
    mode_config(cfg.detect, mode, 10.0)  # reject a bad mode before reading anything
    prep = prepare_pair(before, after, cfg, band_order=band_order)
    result = detect_pair(prep, cfg.detect, mode)
    outputs = write_pair(result, prep.grid, out)
    return {**result.summary, "outputs": outputs}
