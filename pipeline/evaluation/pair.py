"""Scoring a pair's change mask on real labels, and the classic baseline it is compared with.

- :func:`cva_otsu`: plain change vector analysis (the magnitude of the band difference vector)
  thresholded by Otsu's method, on the same bands, grid and co-registration as
  :func:`pipeline.stages.pair.detect_pair` (it takes the same
  :class:`pipeline.stages.pair.PreparedPair`).
  On the OSCD benchmark this scores pixel F1 of about 0.15-0.35.
- :func:`pixel_scores`: pixel precision, recall and F1 of a mask against a reference mask.

- :func:`oscd_city`: both on one OSCD city (area-mode pixel scores against CVA + Otsu, and
  the objects mode's detections outside the labelled change).

Used by ``tests/test_oscd.py``, ``benchmarks/bench_detect.py --oscd`` and
``benchmarks/bench_real.py``; nothing on the detection path imports this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.stages.pair import PreparedPair

__all__ = ["cva_otsu", "oscd_city", "pixel_scores"]


def cva_otsu(prep: PreparedPair) -> tuple[np.ndarray, np.ndarray]:
    """Plain change vector analysis with an Otsu threshold, the classic unsupervised baseline.

    Parameters
    ----------
    prep
        A prepared pair (same bands, grid and co-registration as :func:`detect_pair` sees).

    Returns
    -------
    tuple
        ``(y, x)`` float32 magnitude of the band difference vector (NaN where either date is
        unusable) and the bool change mask ``magnitude > otsu(magnitude)``.
    """
    from skimage.filters import threshold_otsu

    ok = prep.before_ok & prep.after_ok
    diff = np.where(ok[None], prep.after - prep.before, np.nan)
    magnitude = np.sqrt(np.sum(diff**2, axis=0)).astype(np.float32)
    threshold = float(threshold_otsu(magnitude[ok]))
    return magnitude, ok & (np.nan_to_num(magnitude) > threshold)


def pixel_scores(
    predicted: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None
) -> dict[str, float | int]:
    """Pixel precision, recall and F1 of a change mask against a reference mask.

    Parameters
    ----------
    predicted, truth
        (y, x) bool: change.
    valid
        (y, x) bool: pixels scored (default all).

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (rounded to 4 decimals) and ``tp``, ``fp``, ``fn``.
    """
    p, t = np.asarray(predicted, bool), np.asarray(truth, bool)
    v = np.ones_like(p) if valid is None else np.asarray(valid, bool)
    tp, fp, fn = int((p & t & v).sum()), int((p & ~t & v).sum()), int((~p & t & v).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(f1, 4),
        "tp": tp,
        "fp": fp,
        "fn": fn,
    }


def oscd_city(folder: str | Path, config: Config) -> dict[str, Any]:
    """``basewatch pair`` on one OSCD city against its labels, beside CVA + Otsu.

    Parameters
    ----------
    folder
        ``.../oscd/<city>`` with ``imgs_1``, ``imgs_2`` and ``cm/<city>-cm.tif`` (1 = no
        change, 2 = change).
    config
        Project configuration.

    Returns
    -------
    dict
        ``pair_area`` and ``cva_otsu`` (:func:`pixel_scores` of the area mode and of the
        baseline on the same prepared pair), ``f1_ratio``, ``objects`` (objects mode: count,
        the count touching no labelled change and that per km2 of the scored area: an upper
        bound of false alarms, as the labels miss cars, ships and crops), the shift and the
        area mode's change fraction.
    """
    import warnings

    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    from pipeline.evaluation.ports import pair_detections
    from pipeline.grid import pixel_size_m
    from pipeline.stages.pair import detect_pair, prepare_pair

    folder = Path(folder)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # the OSCD labels have no CRS
        with rasterio.open(folder / "cm" / f"{folder.name}-cm.tif") as src:
            truth = src.read(1) == 2
    prep = prepare_pair(folder / "imgs_1", folder / "imgs_2", config)
    mask = detect_pair(prep, config.detect, "area").mask
    ours = pixel_scores(mask == 1, truth)
    base = pixel_scores(cva_otsu(prep)[1], truth)
    objects = detect_pair(prep, config.detect, "objects")
    dets = pair_detections(
        objects.features, prep.grid.transform, prep.grid.crs_name, prep.grid.shape
    )
    n_out = sum(not truth[d.rows, d.cols].any() for d in dets)
    px, py = pixel_size_m(prep.grid)
    km2 = float(np.sum(objects.mask != 255)) * px * py / 1e6
    return {
        "pair_area": ours,
        "cva_otsu": base,
        "f1_ratio": round(ours["f1"] / base["f1"], 3) if base["f1"] else None,
        "objects": {
            "n_detections": len(dets),
            "n_outside_change": int(n_out),
            "scored_km2": round(km2, 3),
            "outside_change_per_km2": round(n_out / km2, 4) if km2 else None,
        },
        "shift_px": [round(prep.shift.shift_x_px, 3), round(prep.shift.shift_y_px, 3)],
        "change_fraction": round(float(np.mean(mask == 1)), 4),
    }
