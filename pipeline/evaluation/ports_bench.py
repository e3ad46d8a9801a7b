"""The real-background benchmark: port cases through basewatch and through CVA + Otsu, scored.

For each sen2ships port (:mod:`pipeline.simulate.ports` makes the cases):

- **pair cases** go through ``basewatch pair``'s library, the same code path as the command:
  each date is written as a band folder of float32 reflectance GeoTIFFs, then
  :func:`pipeline.stages.pair.prepare_pair` (grid, validity, co-registration) and
  :func:`pipeline.stages.pair.detect_pair` in ``objects`` mode; the baseline
  (:func:`pipeline.evaluation.ports.cva_otsu_objects`) runs on the same prepared pair;
- **series cases** go through the site's multi-date detector: an in-memory cube (the format of
  :mod:`pipeline.io.load`), co-registered as the ``coregister`` stage does
  (:func:`coregister_cube`), then :func:`pipeline.stages.detect.detect_cube` with no zones;
  the baseline runs on each consecutive pair of the same aligned cube.

Scores: :mod:`pipeline.evaluation.ports`. Both runners also return the **outcomes** of every
candidate detection (:func:`case_outcomes`: its properties and whether it is true, false or
neutral, :func:`pipeline.evaluation.ports.label_detections`), to fit and check the calibrated
confidence on real backgrounds. The series detector runs with ``detect.min_confidence`` 0 so
every candidate is kept; the detections scored are those it would have reported (confidence
at least ``detect.min_confidence`` under the active model, as
:func:`pipeline.stages.detect.detect_cube`
drops them), so the counts are those of the configured detector.

Used by ``benchmarks/bench_real.py`` and ``benchmarks/calibrate.py --real-ports``.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import xarray as xr

from pipeline.config import Config
from pipeline.evaluation.ports import (
    Detection,
    cva_otsu_objects,
    label_detections,
    pair_detections,
    score_case,
    series_detections,
)
from pipeline.io.calibration import active_model
from pipeline.kernels.detect import calibration
from pipeline.simulate.ports import PairCase, PortScene, SeriesCase, ship_lengths_m

__all__ = [
    "CALIBRATION_FIT_PORTS",
    "CALIBRATION_REPORT_PORTS",
    "PAIR_FILLED",
    "area_km2",
    "case_outcomes",
    "coregister_cube",
    "min_area_px",
    "reported",
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


CALIBRATION_FIT_PORTS: tuple[str, ...] = ("algiers", "busan", "cartagena", "durban", "genoa")
"""Ports whose cases a calibration model may be fitted on (``benchmarks/calibrate.py
--real-ports``). The split was fixed before any calibration figure of a port was seen."""

CALIBRATION_REPORT_PORTS: tuple[str, ...] = ("casablanca", "hedland", "honolulu", "klang")
"""Ports the calibration is reported on (``calibration`` of ``benchmarks/real.json``); never
fitted on."""

PAIR_FILLED: dict[str, Any] = {"n_dates_before": 1, "n_dates_after": 1, "transient": False}
"""Calibration properties ``basewatch pair`` does not write, as they stand for a pair: one date
on each side; no later date to tell a transient (a pair cannot flag one). Its
``mask_distance_px`` is measured here (:func:`case_outcomes`) from its unusable pixels."""


def case_outcomes(
    detections: Sequence[Detection],
    ship_masks: Sequence[np.ndarray],
    changes: dict[int, tuple[str, int]],
    path: str,
    seed_level: float,
    unusable: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """The true and false detections of a case as calibration outcomes (neutral ones left out).

    Parameters
    ----------
    detections
        basewatch's detections of the case, every candidate (with their ``properties``).
    ship_masks, changes
        As :func:`pipeline.evaluation.ports.label_detections` takes them.
    path
        ``series`` (the multi-date detector) or ``pair`` (``basewatch pair``).
    seed_level
        The seed level the detection's scores are in units of (the model's ``seed_level``).
    unusable
        (y, x) bool, pair only: pixels not usable on either date; gives ``mask_distance_px``
        (distance of the detection's nearest pixel to one, capped as the detector caps it),
        with :data:`PAIR_FILLED` for the other properties a pair does not write.

    Returns
    -------
    list of dict
        ``label`` (1 true, 0 false), ``path``, ``kind``, ``seed_level`` and the properties of
        :data:`pipeline.evaluation.sweep_score.OUTCOME_KEYS` (``confidence``: the one the path
        reported).
    """
    from scipy import ndimage

    from pipeline.evaluation.sweep_score import OUTCOME_KEYS

    distance = None
    if unusable is not None:
        cap = float(calibration.MASK_DISTANCE_CAP_PX)
        distance = (
            np.minimum(ndimage.distance_transform_edt(~unusable), cap)
            if unusable.any()
            else np.full(unusable.shape, cap)
        )
    out = []
    for d, label in zip(detections, label_detections(detections, ship_masks, changes), strict=True):
        if label is None or d.properties is None:
            continue
        props = {k: d.properties.get(k) for k in OUTCOME_KEYS}
        if distance is not None:
            props |= {k: v for k, v in PAIR_FILLED.items() if props.get(k) is None}
            props["mask_distance_px"] = round(float(distance[d.rows, d.cols].min()), 2)
        if props.get("noise_confidence") is None:
            props["noise_confidence"] = props.get("confidence")
        out.append(
            {"label": label, "path": path, "kind": d.kind, "seed_level": seed_level, **props}
        )
    return out


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
) -> tuple[dict, dict, dict[str, Any], list[dict]]:
    """One pair case through ``basewatch pair`` (objects mode) and through CVA + Otsu.

    Returns
    -------
    tuple
        Counts of basewatch, counts of the baseline (:func:`pipeline.evaluation.ports.score_case`),
        what was run (co-registration, thresholds) and basewatch's outcomes
        (:func:`case_outcomes`; ``basewatch pair`` keeps every candidate: it has no
        confidence filter).
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
    outcomes = case_outcomes(
        ours,
        scene.ship_masks,
        changes,
        "pair",
        float(result.summary["detect"]["threshold"]),
        unusable=~(prep.before_ok & prep.after_ok),
    )
    return (
        score_case(ours, scene.ship_masks, changes, lengths),
        score_case(base, scene.ship_masks, changes, lengths),
        info,
        outcomes,
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
) -> tuple[dict, dict, dict[str, Any], list[dict]]:
    """One series case through the multi-date detector and through CVA + Otsu per date pair.

    Returns
    -------
    tuple
        Counts of basewatch (the detections it reports), counts of the baseline, what was run
        and the outcomes of every candidate (:func:`case_outcomes`).
    """
    from pipeline.kernels.detect.core import series_thresholds
    from pipeline.stages.detect import detect_cube

    cube = series_cube(case, scene)
    aligned, estimates = coregister_cube(cube, cfg)
    dates = [str(np.datetime_as_string(t, unit="D")) for t in aligned["time"].values]
    if dates != case.dates:
        raise RuntimeError(
            f"{case.port}: co-registration dropped dates {set(case.dates) - set(dates)}"
        )
    bands = [b for b in cfg.load.bands if b in aligned]
    every = cfg.detect.model_copy(update={"min_confidence": 0.0})
    result = detect_cube(
        aligned,
        np.zeros(scene.ships.shape, np.int32),
        [],
        [],
        every,
        bands,
        calibration_model=active_model(),
    )
    candidates = series_detections(result.features, np.asarray(result.labels.values), dates)
    ours = reported(candidates, cfg.detect.min_confidence)
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
    seed_level, _ = series_thresholds(cfg.detect, len(bands))
    outcomes = case_outcomes(candidates, scene.ship_masks, case.events, "series", seed_level)
    return (
        score_case(ours, scene.ship_masks, case.events, lengths),
        score_case(base, scene.ship_masks, case.events, lengths),
        info,
        outcomes,
    )


def reported(detections: Sequence[Detection], min_confidence: float) -> list[Detection]:
    """The detections the multi-date detector reports at ``min_confidence``: all of them
    without a calibration model, else those whose confidence reaches it (as
    :func:`pipeline.stages.detect.detect_cube` filters them)."""
    if active_model() is None or min_confidence <= 0:
        return list(detections)
    return [d for d in detections if float((d.properties or {})["confidence"]) >= min_confidence]
