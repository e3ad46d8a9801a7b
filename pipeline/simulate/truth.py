"""Ground truth of a simulated site: objects present per date, their removals and appearances.

Read only by :mod:`pipeline.evaluation.site` (and the tests): nothing on the detection path may open
it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import numpy as np

from pipeline.simulate.geometry import reproject_geom
from pipeline.simulate.objects import PlacedObject
from pipeline.simulate.timeline import Acquisition


def presence(obj: PlacedObject, dates: Sequence[dt.date]) -> list[bool]:
    """Whether ``obj`` is present on each of ``dates``."""
    return [obj.spec.is_present(d) for d in dates]


def events(objects: Sequence[PlacedObject], dates: Sequence[dt.date]) -> list[dict]:
    """Removals and appearances between consecutive acquisition ``dates`` (sorted).

    An object present on one acquisition and absent on the next was *removed* (``last_before``
    = the former, ``first_after`` = the latter); the reverse is an *appearance*. Sorted by
    ``first_after`` then object id.
    """
    out: list[dict] = []
    for obj in objects:
        here = presence(obj, dates)
        for k in range(1, len(dates)):
            if here[k] == here[k - 1]:
                continue
            out.append(
                {
                    "object_id": obj.id,
                    "kind": "appeared" if here[k] else "removed",
                    "last_before": dates[k - 1].isoformat(),
                    "first_after": dates[k].isoformat(),
                    "length_m": round(obj.length_m, 2),
                }
            )
    out.sort(key=lambda e: (e["first_after"], e["object_id"]))
    return out


def truth_objects(
    objects: Sequence[PlacedObject], dates: Sequence[dt.date], site_epsg: int
) -> list[dict]:
    """Truth records of ``objects``: id, class, size, lon/lat footprint, dates present."""
    out = []
    for obj in objects:
        ring = np.asarray(reproject_geom(obj.footprint, site_epsg, 4326).exterior.coords)
        coords = [[round(float(x), 7), round(float(y), 7)] for x, y in ring]
        out.append(
            {
                "id": obj.id,
                "class": obj.model.cls,
                "length_m": round(obj.length_m, 2),
                "width_m": round(obj.width_m, 2),
                "geometry": {"type": "Polygon", "coordinates": [coords]},
                "present": [
                    d.isoformat() for d, p in zip(dates, presence(obj, dates), strict=True) if p
                ],
            }
        )
    return out


def site_truth(
    site: str,
    crs: str,
    site_epsg: int,
    acqs: Sequence[Acquisition],
    cloud_fractions: dict[str, float],
    objects: Sequence[PlacedObject],
) -> dict:
    """The truth document of one site (the layout of ``truth/<site>.json``)."""
    dates = [a.date for a in acqs]
    return {
        "site": site,
        "simulated": True,
        "crs": crs,
        "dates": [d.isoformat() for d in dates],
        "shifts": {
            a.date.isoformat(): {"shift_x_px": a.shift_px[0], "shift_y_px": a.shift_px[1]}
            for a in acqs
        },
        "cloud_fraction": dict(cloud_fractions),
        "objects": truth_objects(objects, dates, site_epsg),
        "events": events(objects, dates),
    }
