"""Scoring a pair's change mask on real labels, and the classic baseline it is compared with.

- :func:`cva_otsu`: plain change vector analysis (the magnitude of the band difference vector)
  thresholded by Otsu's method, on the same bands, grid and co-registration as
  :func:`pipeline.pair.detect_pair` (it takes the same :class:`pipeline.pair.PreparedPair`).
  On the OSCD benchmark this scores pixel F1 of about 0.15-0.35.
- :func:`pixel_scores`: pixel precision, recall and F1 of a mask against a reference mask.

Used by ``tests/test_oscd.py`` and ``benchmarks/bench_detect.py --oscd``; nothing on the
detection path imports this module.
"""

from __future__ import annotations

import numpy as np

from pipeline.pair import PreparedPair

__all__ = ["cva_otsu", "pixel_scores"]


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
