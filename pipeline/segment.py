"""Change scores -> signed objects of one date pair, and transients across pairs (pure numpy).

Runs after the scores are computed: a region must be seen whole, across chunk borders. See
:mod:`pipeline.detect` for the method.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.stats import chi2

EIGHT = np.ones((3, 3), dtype=bool)
"""8-connectivity structuring element."""


def segment_pair(
    score: np.ndarray,
    removed: np.ndarray,
    seed_threshold: float,
    grow_threshold: float,
    min_pixels: int,
    split_fraction: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signed objects of one pair: hysteresis, 8-connected regions, sign vote, area filter.

    Parameters
    ----------
    score
        (y, x) score, NaN where not scored.
    removed
        (y, x) removal margin (> 0: removed).
    seed_threshold, grow_threshold
        Hysteresis thresholds on ``score``.
    min_pixels
        Smallest object kept.
    split_fraction
        A region whose minority sign holds more than this share of its pixels is split.

    Returns
    -------
    labels : numpy.ndarray
        (y, x) int32, objects numbered 1..n (removed first, then appeared; raster order within).
    kinds : numpy.ndarray
        (n,) bool, True = removed.
    seed : numpy.ndarray
        (y, x) bool seed pixels.
    """
    with np.errstate(invalid="ignore"):
        seed = score >= seed_threshold
        grow = (score >= min(grow_threshold, seed_threshold)) | seed
    regions, n = ndimage.label(grow, EIGHT)
    labels = np.zeros(score.shape, dtype=np.int32)
    if n == 0:
        return labels, np.zeros(0, dtype=bool), seed
    seeded = np.zeros(n + 1, dtype=bool)
    seeded[regions[seed]] = True
    seeded[0] = False
    regions[~seeded[regions]] = 0
    is_removed = np.nan_to_num(removed) > 0
    flat = regions.ravel()
    n_px = np.bincount(flat, minlength=n + 1)
    frac = np.bincount(flat, weights=is_removed.ravel(), minlength=n + 1) / np.maximum(n_px, 1)
    f = frac[regions]
    kind_px = np.where(
        f >= 1 - split_fraction, True, np.where(f <= split_fraction, False, is_removed)
    )
    kinds: list[bool] = []
    for sign in (True, False):
        comp, m = ndimage.label((regions > 0) & (kind_px == sign), EIGHT)
        if m == 0:
            continue
        size = np.bincount(comp.ravel(), minlength=m + 1)
        keep = np.zeros(m + 1, dtype=bool)
        keep[comp[seed]] = True
        keep &= size >= min_pixels
        keep[0] = False
        new_id = np.zeros(m + 1, dtype=np.int32)
        new_id[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32) + len(kinds)
        labels = np.where(keep[comp], new_id[comp], labels)
        kinds += [sign] * int(keep.sum())
    return labels, np.asarray(kinds, dtype=bool), seed


def transient_objects(
    segments: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], score: np.ndarray
) -> list[np.ndarray]:
    """Flag objects undone at the next view: a change and its reversal (see the module doc).

    Parameters
    ----------
    segments
        Per pair, the ``(labels, kinds, seed)`` of :func:`segment_pair`.
    score
        (pair, y, x) scores (NaN where not scored).

    Returns
    -------
    list of numpy.ndarray
        Per pair, (n,) bool: object ``i + 1`` is transient.
    """
    flags = [np.zeros(len(k), dtype=bool) for _, k, _ in segments]
    scored = np.isfinite(score)
    for p, (labels, kinds, seed) in enumerate(segments):
        for i in range(len(kinds)):
            core = (labels == i + 1) & seed
            n_core = int(core.sum())
            for q in range(p + 1, len(segments)):
                if scored[q][core].sum() * 2 < n_core:
                    continue  # mostly hidden at q: look at the next view
                lab_q, kinds_q, _ = segments[q]
                hit = lab_q[core]
                undo = hit[hit > 0]
                undo = undo[kinds_q[undo - 1] != kinds[i]]
                if undo.size * 2 >= n_core:
                    flags[p][i] = True
                    flags[q][np.unique(undo) - 1] = True
                break
    return flags


def keep_labels(
    labels: np.ndarray, kinds: np.ndarray, keep: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop the objects not kept and renumber the rest 1..m in order."""
    if keep.all():
        return labels, kinds
    new_id = np.zeros(len(kinds) + 1, dtype=np.int32)
    new_id[1:][keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    return new_id[labels], kinds[keep]


def object_properties(
    labels: np.ndarray,
    kinds: np.ndarray,
    seed: np.ndarray,
    score: np.ndarray,
    before_idx: np.ndarray,
    dates: list[str],
    pair: int,
    n_scored: int,
    n_bands: int,
    site: str,
    *,
    offset: int,
) -> dict[int, dict[str, Any]]:
    """Properties of the objects of one pair, keyed by global label (local + ``offset``).

    ``id``, ``kind``, ``date_before`` (earliest last-valid date over the seed pixels),
    ``date_after``, ``date_before_latest``, ``score`` (mean), ``score_peak``, ``n_seed_pixels``,
    ``confidence`` (see :mod:`pipeline.detect`) and ``pair``.
    """
    n = len(kinds)
    if n == 0:
        return {}
    ids = np.arange(1, n + 1)
    mean = ndimage.mean(score, labels, ids)
    peak = ndimage.maximum(score, labels, ids)
    seed_labels = np.where(seed, labels, 0)
    n_seed = np.bincount(seed_labels.ravel(), minlength=n + 1)[1:]
    first = ndimage.minimum(before_idx, seed_labels, ids)
    last = ndimage.maximum(before_idx, seed_labels, ids)
    tail = chi2.sf(np.asarray(peak, dtype=np.float64), n_bands)
    confidence = np.exp(n_scored * np.log1p(-np.minimum(tail, 1 - 1e-12)))
    date_after = dates[pair + 1]
    out = {}
    for k in range(n):
        label = int(ids[k]) + offset
        out[label] = {
            "id": f"{site}-{date_after.replace('-', '')}-{label}",
            "kind": "removed" if kinds[k] else "appeared",
            "date_before": dates[int(first[k])],
            "date_after": date_after,
            "date_before_latest": dates[int(last[k])],
            "score": round(float(mean[k]), 3),
            "score_peak": round(float(peak[k]), 3),
            "n_seed_pixels": int(n_seed[k]),
            "confidence": round(float(confidence[k]), 4),
            "pair": pair,
        }
    return out
