"""Occupancy of each zone at each date, from the signed objects (pure numpy).

A detection says that at its pixels something was present up to ``date_before`` and gone by
``date_after`` (``removed``), or the reverse (``appeared``). Per pixel the detections, in time
order, give its state at every date: *occupied* after an appearance and before a removal,
*empty* after a removal and before an appearance, unknown at pixels no detection touches.
Between two detections the later one's "before" state and the earlier one's "after" state
should agree; where they do not (a missed change), the earlier one's after state wins up to the
later detection.

The **occupancy** of a zone at a date is the share of its pixels occupied then: the area of the
objects that come or go, seen through their changes. An object present throughout the period
is never seen, so it is a lower bound of the true occupancy, and its changes are exact.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence

import numpy as np

ALL_ZONES = "all_zones"
"""Column of the occupancy of all zones together."""


def pixel_state(
    labels: np.ndarray, kinds_by_label: dict[int, str], break_date: Sequence[int], n_dates: int
) -> np.ndarray:
    """State of every pixel at every date: 1 occupied, -1 empty, 0 unknown.

    Parameters
    ----------
    labels
        (P, y, x) int object labels per break (0 = none); break ``p`` separates dates
        ``break_date[p] - 1`` and ``break_date[p]``.
    kinds_by_label
        Label -> ``"removed"`` or ``"appeared"``.
    break_date
        (P,) index of the first date after each break.
    n_dates
        Number of dates.

    Returns
    -------
    numpy.ndarray
        (n_dates, y, x) int8.
    """
    ny, nx = labels.shape[1:]
    events = np.zeros((n_dates, ny, nx), dtype=np.int8)
    if kinds_by_label:
        top = max(kinds_by_label) + 1
        sign = np.zeros(max(top, int(labels.max()) + 1), dtype=np.int8)
        for label, kind in kinds_by_label.items():
            sign[label] = 1 if kind == "appeared" else -1 if kind == "removed" else 0
        for p, t in enumerate(break_date):
            if 0 <= t < n_dates:
                ev = sign[labels[p]]
                events[t] = np.where(ev != 0, ev, events[t])
    after = np.zeros((ny, nx), dtype=np.int8)
    forward = np.zeros_like(events)
    for t in range(n_dates):
        after = np.where(events[t] != 0, events[t], after)
        forward[t] = after
    before = np.zeros((ny, nx), dtype=np.int8)
    backward = np.zeros_like(events)
    for t in range(n_dates - 1, -1, -1):
        backward[t] = before
        before = np.where(events[t] != 0, -events[t], before)
    return np.where(forward != 0, forward, backward).astype(np.int8)


def zone_occupancy(
    state: np.ndarray,
    zone_raster: np.ndarray,
    zone_names: Sequence[str],
    dates: Sequence[str],
    pixel_area_m2: float,
) -> list[dict]:
    """Occupied share and area of each zone at each date.

    Parameters
    ----------
    state
        (T, y, x) from :func:`pixel_state`.
    zone_raster
        (y, x) int zones (0 = none, i + 1 = ``zone_names[i]``).
    zone_names
        Zone names.
    dates
        (T,) dates, ``YYYY-MM-DD``.
    pixel_area_m2
        Area of one pixel.

    Returns
    -------
    list of dict
        One row per date: ``date``, then per zone ``<zone>`` (share 0..1, 4 decimals) and
        ``<zone>_m2`` (occupied area), and the same for :data:`ALL_ZONES`.
    """
    zones = np.asarray(zone_raster)
    rows = []
    occupied = state == 1
    for t, day in enumerate(dates):
        row: dict = {"date": str(day)[:10]}
        for i, name in enumerate(zone_names):
            inside = zones == i + 1
            n = int(inside.sum())
            k = int((occupied[t] & inside).sum())
            row[name] = round(k / n, 4) if n else 0.0
            row[f"{name}_m2"] = round(k * pixel_area_m2, 1)
        inside = zones > 0
        n, k = int(inside.sum()), int((occupied[t] & inside).sum())
        row[ALL_ZONES] = round(k / n, 4) if n else 0.0
        row[f"{ALL_ZONES}_m2"] = round(k * pixel_area_m2, 1)
        rows.append(row)
    return rows


def to_csv(rows: Sequence[dict]) -> str:
    """The rows of :func:`zone_occupancy` as CSV text (header from the first row)."""
    if not rows:
        return "date\n"
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()
