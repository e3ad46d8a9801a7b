"""Scoring detections of changed ships on real port backgrounds, and the CVA + Otsu baseline.

The cases come from :mod:`pipeline.simulate.ports`; the detections from ``basewatch pair``
(:func:`pair_detections`: the GeoJSON features rasterised back onto the grid, as a user would
read ``detections.geojson``) or the site's multi-date detector (:func:`series_detections`:
its label raster). Definitions (one :class:`Detection` per object):

- a detection **touches** a ship when one of its pixels lies in the ship's mask dilated by
  :data:`TOUCH_PX` (masks are generous: wakes, moored groups; a found ship is a touched one);
- **recall**: the share of changed ships touched by a detection of the right kind (``removed``
  for a ship that left, ``appeared`` for one that arrived) whose interval holds the change
  (``date_before < change date <= date_after``; a pair's one interval always does);
- **sign accuracy**: of the detections touching a changed ship, the share whose kind is the
  kind of a changed ship they touch (dates aside);
- **false alarms**: detections touching no changed ship (one on a ship that stayed counts),
  per km2 of the scene (ground area) per date pair (a series of N dates has N - 1 pairs);
- recall per ship length bin (:data:`LENGTH_BINS_M`);
- each detection's **outcome** (:func:`label_detections`), to calibrate and check its
  confidence: true, false or neutral (see there).

Every ratio comes with the counts behind it (:func:`ratios`), so totals are pooled counts, not
means of ratios. Nothing on the detection path imports this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from affine import Affine
from scipy import ndimage

__all__ = [
    "LENGTH_BINS_M",
    "TOUCH_PX",
    "Detection",
    "add_counts",
    "cva_otsu_objects",
    "label_detections",
    "length_bin",
    "pair_detections",
    "ratios",
    "score_case",
    "series_detections",
]

TOUCH_PX = 1
"""A detection touches a ship when it reaches the ship's mask dilated by this (px)."""

LENGTH_BINS_M: tuple[tuple[str, float, float], ...] = (
    ("<50m", 0.0, 50.0),
    ("50-100m", 50.0, 100.0),
    ("100-200m", 100.0, 200.0),
    (">200m", 200.0, float("inf")),
)
"""Ship length bins (name, lower inclusive, upper exclusive), metres."""


@dataclass(frozen=True)
class Detection:
    """One detected object on the case's grid."""

    kind: str
    """``removed`` or ``appeared``."""
    rows: np.ndarray
    """Row indices of its pixels."""
    cols: np.ndarray
    """Column indices of its pixels."""
    date_index: tuple[int, int] = (0, 1)
    """Indices of ``date_before`` and ``date_after`` in the case's dates (a pair: 0, 1)."""
    properties: Mapping[str, Any] | None = None
    """The detector's properties of the feature (None for the baseline's components)."""


def length_bin(length_m: float) -> str:
    """Name of the :data:`LENGTH_BINS_M` bin holding ``length_m``."""
    for name, lo, hi in LENGTH_BINS_M:
        if lo <= length_m < hi:
            return name
    return LENGTH_BINS_M[-1][0]


def pair_detections(
    features: Sequence[dict], transform: Affine, crs: str, shape: tuple[int, int]
) -> list[Detection]:
    """Detections of ``basewatch pair``: each lon/lat GeoJSON feature rasterised onto the grid.

    Parameters
    ----------
    features
        Features of :func:`pipeline.stages.pair.detect_pair` (``kind`` property, lon/lat geometry).
    transform, crs, shape
        The grid the case lives on.

    Returns
    -------
    list of Detection
        One per feature with at least one pixel (pixel centres inside the polygon).
    """
    import shapely
    from pyproj import Transformer
    from rasterio.features import rasterize
    from shapely.geometry import shape as to_shape

    to_grid = Transformer.from_crs(4326, crs, always_xy=True).transform
    out = []
    for f in features:
        geom = shapely.transform(to_shape(f["geometry"]), to_grid, interleaved=False)
        mask = rasterize([(geom, 1)], out_shape=shape, transform=transform, dtype="uint8")
        rows, cols = np.nonzero(mask)
        if rows.size:
            p = f["properties"]
            out.append(Detection(str(p["kind"]), rows, cols, properties=p))
    return out


def series_detections(
    features: Sequence[dict], labels: np.ndarray, dates: Sequence[str]
) -> list[Detection]:
    """Detections of :func:`pipeline.stages.detect.detect_cube` from its (pair, y, x) label
    raster.

    Parameters
    ----------
    features
        Its features (``label``, ``pair``, ``kind``, ``date_before``, ``date_after``).
    labels
        Its ``labels`` array.
    dates
        The cube's dates (ISO), in order.

    Returns
    -------
    list of Detection
        One per feature, dated by its ``date_before`` / ``date_after``.
    """
    index = {d: i for i, d in enumerate(dates)}
    out = []
    for f in features:
        p = f["properties"]
        rows, cols = np.nonzero(labels[int(p["pair"])] == int(p["label"]))
        if rows.size:
            span = (index[p["date_before"]], index[p["date_after"]])
            out.append(Detection(str(p["kind"]), rows, cols, span, properties=p))
    return out


def cva_otsu_objects(
    before: np.ndarray,
    after: np.ndarray,
    ok: np.ndarray,
    min_px: int,
    date_index: tuple[int, int] = (0, 1),
) -> list[Detection]:
    """The baseline: change vector analysis, an Otsu threshold, signed connected components.

    Parameters
    ----------
    before, after
        (B, y, x) reflectance on one grid, co-registered.
    ok
        (y, x) bool: pixels usable in both.
    min_px
        Fewest pixels of an object (the detector's ``detect.min_area_m2`` on this grid).
    date_index
        Dates of the pair in its case.

    Returns
    -------
    list of Detection
        8-connected components of ``|after - before| > otsu`` with at least ``min_px``
        pixels, ``appeared`` when their mean band difference is positive, else ``removed``.
    """
    from skimage.filters import threshold_otsu

    diff = np.where(ok[None], after - before, np.nan)
    magnitude = np.sqrt(np.sum(diff**2, axis=0))
    change = ok & (np.nan_to_num(magnitude) > float(threshold_otsu(magnitude[ok])))
    labels, _n = ndimage.label(change, structure=np.ones((3, 3), bool))
    mean_diff = np.where(ok, np.nan_to_num(diff).mean(axis=0), 0.0)
    out = []
    for k, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        sub = labels[sl] == k
        if sub.sum() < min_px:
            continue
        rows, cols = np.nonzero(sub)
        rows, cols = rows + sl[0].start, cols + sl[1].start
        kind = "appeared" if mean_diff[rows, cols].mean() > 0 else "removed"
        out.append(Detection(kind, rows, cols, date_index))
    return out


def score_case(
    detections: Sequence[Detection],
    ship_masks: Sequence[np.ndarray],
    changes: dict[int, tuple[str, int]],
    lengths_m: np.ndarray,
) -> dict:
    """Counts of one case (see the module docstring for the definitions).

    Parameters
    ----------
    detections
        The detections of one method on the case.
    ship_masks
        Each ship's (y, x) bool mask, ship ``i`` at index ``i - 1``.
    changes
        Changed ship id -> (true kind, index of the first date showing the change; 1 for a
        pair). Ships not in it stayed.
    lengths_m
        Ship lengths, ship ``i`` at index ``i - 1``.

    Returns
    -------
    dict
        ``n_changed``, ``n_found`` (and ``n_found_any_kind``: touched by any detection),
        ``n_on_changed``, ``n_right_kind``, ``n_false_alarms``, ``n_on_stayed`` (false alarms
        touching a ship that stayed), ``n_detections``, ``by_length`` (bin -> ``n_changed``,
        ``n_found``) and ``missed`` / ``touched_not_found`` (ship ids; the latter touched
        only by detections of the wrong kind or date).
    """
    shape = ship_masks[0].shape if ship_masks else (0, 0)
    zones = _touch_zones(ship_masks, changes)
    changed_zone = np.logical_or.reduce([*zones.values(), np.zeros(shape, bool)])
    stayed = [i for i in range(1, len(ship_masks) + 1) if i not in changes]
    stayed_zone = np.logical_or.reduce(
        [*_touch_zones(ship_masks, stayed).values(), np.zeros(shape, bool)]
    )
    found, found_any = set(), set()
    n_on, n_right, n_fa, n_on_stayed = 0, 0, 0, 0
    for d in detections:
        if not changed_zone[d.rows, d.cols].any():
            n_fa += 1
            n_on_stayed += bool(stayed_zone[d.rows, d.cols].any())
            continue
        touched = [i for i, z in zones.items() if z[d.rows, d.cols].any()]
        n_on += 1
        n_right += any(changes[i][0] == d.kind for i in touched)
        for i in touched:
            found_any.add(i)
            kind, t = changes[i]
            if kind == d.kind and d.date_index[0] < t <= d.date_index[1]:
                found.add(i)
    by_length: dict[str, dict[str, int]] = {
        name: {"n_changed": 0, "n_found": 0} for name, _, _ in LENGTH_BINS_M
    }
    for i in changes:
        b = by_length[length_bin(float(lengths_m[i - 1]))]
        b["n_changed"] += 1
        b["n_found"] += i in found
    return {
        "n_changed": len(changes),
        "n_found": len(found),
        "n_found_any_kind": len(found_any),
        "n_detections": len(detections),
        "n_on_changed": n_on,
        "n_right_kind": n_right,
        "n_false_alarms": n_fa,
        "n_on_stayed": n_on_stayed,
        "by_length": by_length,
        "missed": sorted(set(changes) - found),
        "touched_not_found": sorted(found_any - found),
    }


def label_detections(
    detections: Sequence[Detection],
    ship_masks: Sequence[np.ndarray],
    changes: dict[int, tuple[str, int]],
) -> list[int | None]:
    """Each detection's outcome: 1 true, 0 false, None neutral (left out of a calibration).

    With "touch" as in :func:`score_case` (the ship's mask dilated by :data:`TOUCH_PX`):

    - **true** (1): it touches a changed ship of its own kind whose change its interval holds
      (``date_before < change date <= date_after``; always so for a pair);
    - **false** (0): it touches no changed ship (a false alarm, on a ship that stayed or not),
      or every changed ship it touches changed the other way (wrong kind);
    - **neutral** (None): it touches a changed ship of its own kind but not in its interval
      (a series detection dated wrong: right object, wrong time; neither a real change at that
      interval nor a false alarm on nothing).

    Parameters
    ----------
    detections
        The detections of one method on the case.
    ship_masks
        Each ship's (y, x) bool mask, ship ``i`` at index ``i - 1``.
    changes
        Changed ship id -> (true kind, index of the first date showing the change; 1 for a
        pair). Ships not in it stayed.

    Returns
    -------
    list
        One outcome per detection, in order.
    """
    zones = _touch_zones(ship_masks, changes)
    out: list[int | None] = []
    for d in detections:
        touched = [i for i, z in zones.items() if z[d.rows, d.cols].any()]
        same_kind = [i for i in touched if changes[i][0] == d.kind]
        if any(d.date_index[0] < changes[i][1] <= d.date_index[1] for i in same_kind):
            out.append(1)
        elif same_kind:
            out.append(None)
        else:
            out.append(0)
    return out


def _touch_zones(ship_masks: Sequence[np.ndarray], ids: Iterable[int]) -> dict[int, np.ndarray]:
    """Ship id -> where a detection touches it: its mask grown by :data:`TOUCH_PX` (8-connected)."""
    eight = np.ones((3, 3), bool)
    return {i: ndimage.binary_dilation(ship_masks[i - 1], eight, iterations=TOUCH_PX) for i in ids}


def add_counts(total: dict, counts: dict, area_km2: float, n_pairs: int) -> dict:
    """Add one case's counts (and its ``area_km2 x n_pairs`` exposure) into ``total``."""
    for key in (
        "n_changed",
        "n_found",
        "n_found_any_kind",
        "n_detections",
        "n_on_changed",
        "n_right_kind",
        "n_false_alarms",
        "n_on_stayed",
    ):
        total[key] = total.get(key, 0) + counts[key]
    total["km2_pairs"] = total.get("km2_pairs", 0.0) + area_km2 * n_pairs
    total["n_pairs"] = total.get("n_pairs", 0) + n_pairs
    by = total.setdefault("by_length", {})
    for name, c in counts["by_length"].items():
        b = by.setdefault(name, {"n_changed": 0, "n_found": 0})
        b["n_changed"] += c["n_changed"]
        b["n_found"] += c["n_found"]
    return total


def _ratio(num: float, den: float, digits: int = 4) -> float | None:
    return round(num / den, digits) if den else None


def ratios(total: dict) -> dict:
    """``recall``, ``sign_accuracy``, ``false_alarms_per_km2_per_pair`` and recall per length
    bin from pooled counts, with the counts themselves.

    Parameters
    ----------
    total
        Counts summed by :func:`add_counts`.

    Returns
    -------
    dict
        The three ratios (None when their denominator is 0), ``recall_by_length`` and
        ``counts``.
    """
    by = total.get("by_length", {})
    return {
        "recall": _ratio(total.get("n_found", 0), total.get("n_changed", 0)),
        "sign_accuracy": _ratio(total.get("n_right_kind", 0), total.get("n_on_changed", 0)),
        "false_alarms_per_km2_per_pair": _ratio(
            total.get("n_false_alarms", 0), total.get("km2_pairs", 0.0)
        ),
        "recall_by_length": {
            name: {"recall": _ratio(c["n_found"], c["n_changed"]), **c} for name, c in by.items()
        },
        "counts": {
            k: (round(v, 3) if isinstance(v, float) else v)
            for k, v in total.items()
            if k != "by_length"
        },
    }
