"""The real-background benchmark: port cases through basewatch and through CVA + Otsu, scored.

For each sen2ships port (:mod:`pipeline.simulate.ports` makes the cases):

- **pair cases** go through ``basewatch pair``'s library, the same code path as the command:
  each date is written as a band folder of float32 reflectance GeoTIFFs, then
  :func:`pipeline.stages.pair.prepare_pair` (grid, validity, co-registration) and
  :func:`pipeline.stages.pair.detect_pair` in ``objects`` mode; the baseline
  (:func:`pipeline.evaluation.ports.cva_otsu_objects`) runs on the same prepared pair;
- **series cases** go through the site's multi-date detector: an in-memory cube (the format of
  :mod:`pipeline.io.load`), co-registered as the ``coregister`` stage does
  (:func:`coregister_cube`), then :func:`pipeline.kernels.detect.core.detect_cube` with no zones;
  the baseline runs on each consecutive pair of the same aligned cube.

Scores: :mod:`pipeline.evaluation.ports`. Used by ``benchmarks/bench_real.py``.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import xarray as xr

from pipeline.config import Config
from pipeline.evaluation.ports import (
    Detection,
    cva_otsu_objects,
    pair_detections,
    score_case,
    series_detections,
)
from pipeline.io.calibration import active_model
from pipeline.simulate.ports import PairCase, PortScene, SeriesCase, ship_lengths_m

__all__ = [
    "area_km2",
    "coregister_cube",
    "min_area_px",
    "run_pair_case",
    "run_series_case",
    "series_cube",
    "write_band_folder",
]


def area_km2(scene: PortScene) -> float:
    """Ground area of the scene (km2), at its ground pixel size."""
    ny, nx = scene.ships.shape
    return ny * nx * scene.pixel_size_m**2 / 1e6


def min_area_px(cfg: Config, grid_pixel_m2: float) -> int:
    """``detect.min_area_m2`` in pixels of the grid, rounded as the detector rounds it."""
    return max(1, math.ceil(cfg.detect.min_area_m2 / grid_pixel_m2 - 1e-9))


def write_band_folder(
    folder: Path, bands: np.ndarray, band_names: tuple[str, ...], scene: PortScene
) -> Path:
    """Write one date as a band folder (``blue.tif`` ...; float32 reflectance) on the
    scene's grid."""
    folder.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "dtype": "float32",
        "count": 1,
        "height": bands.shape[1],
        "width": bands.shape[2],
        "crs": scene.crs,
        "transform": scene.transform,
    }
    for b, name in enumerate(band_names):
        with rasterio.open(folder / f"{name}.tif", "w", **profile) as dst:
            dst.write(bands[b].astype(np.float32), 1)
    return folder


def run_pair_case(
    case: PairCase, scene: PortScene, cfg: Config
) -> tuple[dict, dict, dict[str, Any]]:
    """One pair case through ``basewatch pair`` (objects mode) and through CVA + Otsu.

    Returns
    -------
    tuple
        Counts of basewatch, counts of the baseline (:func:`pipeline.evaluation.ports.score_case`)
        and what was run (co-registration, thresholds).
    """
    from pipeline.grid import pixel_size_m
    from pipeline.stages.pair import detect_pair, prepare_pair

    with tempfile.TemporaryDirectory(prefix="bench_real_") as tmp:
        before = write_band_folder(Path(tmp) / "20240101", case.before, scene.band_names, scene)
        after = write_band_folder(Path(tmp) / "20240106", case.after, scene.band_names, scene)
        prep = prepare_pair(before, after, cfg)
    result = detect_pair(prep, cfg.detect, "objects")
    ours = pair_detections(result.features, prep.grid.transform, scene.crs, prep.grid.shape)
    px, py = pixel_size_m(prep.grid)
    base = cva_otsu_objects(
        prep.before, prep.after, prep.before_ok & prep.after_ok, min_area_px(cfg, px * py)
    )
    changes = {i: (kind, 1) for i, kind in case.changes.items()}
    lengths = ship_lengths_m(scene)
    info = {
        "coregistration": prep.shift.to_dict(),
        "true_shift_px": [e.to_dict()["shift_px"] for e in case.effects],
        "threshold": result.summary["detect"]["threshold"],
        "noise_sigma": result.summary["detect"]["noise_sigma"],
    }
    return (
        score_case(ours, scene.ship_masks, changes, lengths),
        score_case(base, scene.ship_masks, changes, lengths),
        info,
    )


def series_cube(case: SeriesCase, scene: PortScene) -> xr.Dataset:
    """The series as a cube in :mod:`pipeline.io.load`'s format (numpy backed)."""
    _t_len, _, ny, nx = case.stack.shape
    t = scene.transform
    x = t.c + t.a * (np.arange(nx) + 0.5)
    y = t.f + t.e * (np.arange(ny) + 0.5)
    times = np.array(case.dates, dtype="datetime64[ns]")
    coords = {"time": times, "y": y, "x": x}
    data: dict[str, Any] = {
        name: (("time", "y", "x"), case.stack[:, b].astype(np.float32))
        for b, name in enumerate(scene.band_names)
    }
    data["valid"] = (("time", "y", "x"), np.isfinite(case.stack).all(axis=1))
    # the ports are clear Level-2A scenes: their SCL (not exported with them) flags no cloud
    data["scl"] = (("time", "y", "x"), np.full(case.stack[:, 0].shape, SCL_WATER, np.uint8))
    return xr.Dataset(data, coords=coords, attrs={"crs": scene.crs, "site": scene.name})


SCL_WATER = 6
"""SCL class of every pixel of a series case's clear dates (any clear class would do)."""


def coregister_cube(cube: xr.Dataset, cfg: Config) -> tuple[xr.Dataset, list[dict]]:
    """Co-register a cube with the project's one co-register-a-stack function
    (:func:`pipeline.kernels.coregister.shift.coregister_cube`, as the ``coregister`` stage and
    ``basewatch series`` do); returns the aligned cube and each date's estimate."""
    from pipeline.kernels.coregister import shift as coregister

    aligned, estimates, _ = coregister.coregister_cube(cube, cfg.coregister)
    return aligned, [e.to_dict() for e in estimates]


def run_series_case(
    case: SeriesCase, scene: PortScene, cfg: Config
) -> tuple[dict, dict, dict[str, Any]]:
    """One series case through the multi-date detector and through CVA + Otsu per date pair.

    Returns
    -------
    tuple
        Counts of basewatch, counts of the baseline and what was run.
    """
    from pipeline.kernels.detect.core import detect_cube

    cube = series_cube(case, scene)
    aligned, estimates = coregister_cube(cube, cfg)
    dates = [str(np.datetime_as_string(t, unit="D")) for t in aligned["time"].values]
    if dates != case.dates:
        raise RuntimeError(
            f"{case.port}: co-registration dropped dates {set(case.dates) - set(dates)}"
        )
    bands = [b for b in cfg.load.bands if b in aligned]
    result = detect_cube(
        aligned,
        np.zeros(scene.ships.shape, np.int32),
        [],
        [],
        cfg.detect,
        bands,
        calibration_model=active_model(),
    )
    ours = series_detections(result.features, np.asarray(result.labels.values), dates)
    stack = np.stack([aligned[b].values for b in bands], axis=1)
    valid = aligned["valid"].values
    min_px = min_area_px(cfg, abs(scene.transform.a * scene.transform.e))
    base: list[Detection] = []
    for t in range(1, len(dates)):
        base += cva_otsu_objects(
            stack[t - 1], stack[t], valid[t - 1] & valid[t], min_px, (t - 1, t)
        )
    lengths = ship_lengths_m(scene)
    info = {
        "dates": dates,
        "coregistration": estimates,
        "true_shift_px": [e.to_dict()["shift_px"] for e in case.effects],
    }
    return (
        score_case(ours, scene.ship_masks, case.events, lengths),
        score_case(base, scene.ship_masks, case.events, lengths),
        info,
    )
