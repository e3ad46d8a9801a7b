"""What each date's metadata says, and whether its pixels agree: per-date checks of load.json.

Two checks per date, both reported beside the loader's verdict and shown in the report's scenes
table (they never change the cube: a user decides):

- **radiometry**: the harmonisation rule the metadata chose
  (:func:`pipeline.io.harmonise.band_radiometry`) against the date's dark objects
  (:func:`pipeline.io.harmonise.check_offset`), since Earth Search's
  ``earthsearch:boa_offset_applied`` is wrong on some Items;
- **geometry**: whether ESA's geometric refinement (GRI) was applied to the date, where the Item
  says so (:func:`geometric_refinement`). ESA skips refinement on datastrips with much sea or
  cloud, and an unrefined date can sit 10-20 m off its neighbours.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np
import pystac

from pipeline.io.harmonise import band_radiometry, check_offset

log = logging.getLogger(__name__)

REFINEMENT_KEYS: tuple[str, ...] = (
    "s2:image_refining",
    "image_refining",
    "s2:geometric_refinement",
    "sentinel:geometric_refinement",
)
"""Item properties read, in order, for ESA's geometric refinement flag: a boolean, or ESA's
``Image_Refining`` flag value (``"REFINED"`` / ``"NOT_REFINED"``) of the datastrip metadata
(``MTD_DS.xml``). Earth Search v1 and Planetary Computer Items carry none of them (the flag is
only in the datastrip metadata file), so their dates read as unknown."""

GEOMETRIC_QUALITY_KEYS: tuple[str, ...] = (
    "s2:geometric_quality",
    "s2:geometric_quality_flag",
    "s2:absolute_geolocation_accuracy",
)
"""Item properties kept as the date's geometric quality figure when present (ESA's
``GEOMETRIC_QUALITY`` check result, or a geolocation accuracy)."""


def geometric_refinement(item: pystac.Item) -> dict[str, Any]:
    """What ``item`` says of its geometric refinement and quality.

    Returns
    -------
    dict
        ``{"refined": True | False | None, "source": key or None, "quality": value or None,
        "quality_source": key or None}``; ``refined`` is None when the Item does not say
        (no key of :data:`REFINEMENT_KEYS`, or a value that is neither a boolean nor ESA's
        flag).
    """
    out: dict[str, Any] = {"refined": None, "source": None, "quality": None, "quality_source": None}
    for key in REFINEMENT_KEYS:
        value = item.properties.get(key)
        if isinstance(value, bool):
            out["refined"], out["source"] = value, key
            break
        if isinstance(value, str) and value.upper() in ("REFINED", "NOT_REFINED"):
            out["refined"], out["source"] = value.upper() == "REFINED", key
            break
    for key in GEOMETRIC_QUALITY_KEYS:
        if item.properties.get(key) is not None:
            out["quality"], out["quality_source"] = item.properties[key], key
            break
    return out


def _day_geometry(items: Sequence[pystac.Item]) -> dict[str, Any]:
    """The geometry verdict of one date from its Items (a date is refined when all say so)."""
    per_item = [geometric_refinement(it) for it in items]
    said = [g for g in per_item if g["refined"] is not None]
    quality = next((g for g in per_item if g["quality"] is not None), None)
    out: dict[str, Any] = {
        "refined": None,
        "source": None,
        "quality": quality["quality"] if quality else None,
        "quality_source": quality["quality_source"] if quality else None,
    }
    if said:
        out["refined"] = all(g["refined"] for g in said)
        out["source"] = said[0]["source"]
        out["note"] = "refined" if out["refined"] else "geometric refinement NOT applied"
    else:
        out["note"] = "unknown: the Items carry no refinement metadata"
    return out


def date_checks(
    site: str,
    dates: Sequence[str],
    day_items: Sequence[Sequence[pystac.Item]],
    bands: Sequence[str],
    counts: Sequence[np.ndarray],
) -> dict[str, Any]:
    """The ``radiometry`` and ``geometry`` parts of ``load.json`` for one site.

    Parameters
    ----------
    site
        Site name, for the log.
    dates
        ISO date of each time step of the cube.
    day_items
        The Items of each date, the one that stamps the date first.
    bands
        The loaded reflectance bands; the rule of the first is reported.
    counts
        Per date: valid AOI pixels, and those below the three dark levels
        (:func:`pipeline.io.harmonise.dark_masks`), each an array over dates.

    Returns
    -------
    dict
        ``{"radiometry": {date: check}, "radiometry_disagreements": [date, ...],
        "geometry": {date: verdict}, "geometry_unrefined": [date, ...]}``.
    """
    n_valid, n_dark, n_below, n_negative = (np.asarray(c, dtype=np.int64) for c in counts)
    radiometry: dict[str, Any] = {}
    geometry: dict[str, Any] = {}
    for i, d in enumerate(dates):
        geometry[d] = _day_geometry(day_items[i])
        if bands:
            rule = band_radiometry(day_items[i][0], bands[0])
            check = check_offset(
                rule, int(n_valid[i]), int(n_dark[i]), int(n_below[i]), int(n_negative[i])
            )
            radiometry[d] = check.to_dict()
    disagree = [d for d in radiometry if radiometry[d]["agrees"] is False]
    for d in disagree:
        c = radiometry[d]
        log.warning(
            "load %s %s: harmonisation rule '%s' (offset %s) disagrees with the pixels: %s",
            *(site, d, c["rule"], c["offset"], c["pixels"]),
        )
    return {
        "radiometry": radiometry,
        "radiometry_disagreements": disagree,
        "geometry": geometry,
        "geometry_unrefined": [d for d in dates if geometry[d]["refined"] is False],
    }
