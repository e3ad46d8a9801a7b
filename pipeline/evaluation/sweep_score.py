"""Scoring of the detection sweep: one scene's detections against its truth, and how well the
confidence is calibrated (helpers of :mod:`pipeline.evaluation.sweep`).

:func:`score_scene` compares a scene's features with its truth
(:func:`pipeline.evaluation.site.evaluate_objects`: same kind, polygons intersect, date intervals
overlap), scoring an event only when its object was seen clear on some date of each state;
lasting changes and visits (objects there on one date only) are counted apart. Each true or
false detection is kept as an outcome (:data:`OUTCOME_KEYS`), from which :func:`reliability`
tabulates the calibrated confidence.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import numpy as np

from pipeline.evaluation.site import evaluate_objects

__all__ = ["OUTCOME_KEYS", "RELIABILITY_BINS", "reliability", "score_scene"]


def _event_id(ev: dict) -> str:
    return f"{ev['object_id']}:{ev['kind']}:{ev['first_after']}"


CLOUD_NEAR_PX = 10
"""A false alarm with a pixel flagged invalid within this reach, at either of its dates, is
counted as ``near_cloud``."""


def _fp_causes(
    features: list[dict], fp_ids: Sequence[str], truth: dict, valid: np.ndarray | None
) -> dict[str, int]:
    """What the false alarms lie on: an object (wrong kind or time), a wet apron on or after its
    wet date, a cloud or shadow nearby, or nothing known (``other``). First cause wins."""
    causes = {"at_object": 0, "wet_apron": 0, "near_cloud": 0, "other": 0}
    if not fp_ids:
        return causes
    from pyproj import Transformer
    from shapely.geometry import shape

    to_xy = Transformer.from_crs(4326, truth["crs"], always_xy=True)
    x0, y0 = truth["origin_xy"]
    days = truth["dates"]
    objects = [shape(o["geometry"]) for o in truth["objects"]]
    wanted = set(fp_ids)
    for f in features:
        p = f.get("properties") or {}
        if p.get("id") not in wanted:
            continue
        x, y = to_xy.transform(p["centroid_lon"], p["centroid_lat"])
        row, col = int((y0 - y) // 10), int((x - x0) // 10)
        geom = shape(f["geometry"])
        r0, r1, c0, c1 = truth.get("wet_apron_px") or (0, 0, 0, 0)
        wet = truth.get("wet_date")
        if any(geom.intersects(o) for o in objects):
            causes["at_object"] += 1
        elif (
            wet and r0 <= row < r1 and c0 <= col < c1 and p["date_before"] <= wet <= p["date_after"]
        ):
            causes["wet_apron"] += 1
        elif valid is not None and any(
            not valid[
                days.index(d),
                max(0, row - CLOUD_NEAR_PX) : row + CLOUD_NEAR_PX + 1,
                max(0, col - CLOUD_NEAR_PX) : col + CLOUD_NEAR_PX + 1,
            ].all()
            for d in (p["date_before_latest"], p["date_after"])
            if d in days
        ):
            causes["near_cloud"] += 1
        else:
            causes["other"] += 1
    return causes


def score_scene(
    features: list[dict],
    truth: dict,
    observed_dates: Sequence[str],
    valid: np.ndarray | None = None,
) -> dict:
    """Per-scene counts: events per size found, true and false detections, date intervals.

    Parameters
    ----------
    features
        The detector's GeoJSON Features (lon/lat).
    truth
        The scene's truth (:func:`pipeline.simulate.sweep_scene.make_scene`).
    observed_dates
        Dates kept by the co-registration.
    valid
        (time, y, x) validity of the scene's dates (all of ``truth["dates"]``), to tell false
        alarms near clouds; None skips that cause.

    Returns
    -------
    dict
        ``by_size`` (length -> [found, scored] events of lasting changes),
        ``visits_by_size`` (the same for the appearance and removal of objects there on one
        date only), ``by_shape`` (object shape -> the same as ``by_size``), ``tp``, ``fp``,
        ``neutral``,
        ``removals_found`` (scored removals with a removal detected on their footprint, any
        dates), ``removals_dated`` (one of those holds the truth's interval), ``fp_ids``
        ``fp_causes`` (counts: ``at_object``, ``wet_apron``, ``near_cloud``, ``other``) and
        ``outcomes`` (each true or false detection's ``label`` and properties).
    """
    scored_truth = {
        **truth,
        "events": [
            {**e, "length_m": e["length_m"] if e["observable"] else 0.0} for e in truth["events"]
        ],
    }
    ev = evaluate_objects(
        features, scored_truth, min_object_size_m=1.0, observed_dates=list(observed_dates)
    )
    from shapely.geometry import shape

    removals = [
        (shape(f["geometry"]), f["properties"])
        for f in features
        if (f.get("properties") or {}).get("kind") == "removed"
    ]
    footprint = {o["id"]: shape(o["geometry"]) for o in truth["objects"]}
    role = {o["id"]: o.get("role") for o in truth["objects"]}
    outline = {o["id"]: o.get("shape", "rectangle") for o in truth["objects"]}
    by_size: dict[str, list[int]] = {}
    by_shape: dict[str, dict[str, list[int]]] = {}
    visits: dict[str, list[int]] = {}
    found = dated = 0
    for e in truth["events"]:
        eid = _event_id(e)
        if eid not in ev["event_matches"]:
            continue  # not scored (not observable, or a state never observed)
        key = f"{e['length_m']:g}"
        # an object there on one date only is scored on its own (one-date objects)
        counts = visits if role.get(e["object_id"]) == "visit" else by_size
        cell = counts.setdefault(key, [0, 0])
        cell[0] += bool(ev["event_matches"][eid])
        cell[1] += 1
        if counts is by_size:
            per = by_shape.setdefault(outline[e["object_id"]], {}).setdefault(key, [0, 0])
            per[0] += bool(ev["event_matches"][eid])
            per[1] += 1
        if e["kind"] != "removed" or counts is visits:
            continue
        # located: a removal on the footprint, whatever its dates (the recall above also
        # asks that the dates overlap, which for consecutive truth dates implies containment)
        here = [p for g, p in removals if g.intersects(footprint[e["object_id"]])]
        if here:
            found += 1
            dated += any(
                str(p["date_before"]) <= e["last_before"]
                and str(p["date_after"]) >= e["first_after"]
                for p in here
            )
    return {
        "by_size": by_size,
        "visits_by_size": visits,
        "by_shape": by_shape,
        "tp": ev["tp_detections"],
        "fp": ev["fp_detections"],
        "neutral": ev["neutral_detections"],
        "removals_found": found,
        "removals_dated": dated,
        "fp_ids": ev["fp_detection_ids"],
        "fp_causes": _fp_causes(features, ev["fp_detection_ids"], truth, valid),
        "outcomes": _outcomes(features, ev),
    }


OUTCOME_KEYS = (
    "confidence",
    "noise_confidence",
    "score",
    "score_peak",
    "n_seed_pixels",
    "transient",
    "n_dates_before",
    "n_dates_after",
    "mask_distance_px",
    "atm_unexplained",
)
"""The properties kept of each true or false detection (to calibrate and check confidence)."""


def _outcomes(features: list[dict], ev: dict) -> list[dict]:
    """``label`` (1 true, 0 false; neutral detections left out) and :data:`OUTCOME_KEYS` of
    each detection."""
    fp = set(ev["fp_detection_ids"])
    tp = {d for ids in ev["event_matches"].values() for d in ids}
    out = []
    for f in features:
        p = f.get("properties") or {}
        if p.get("id") in fp or p.get("id") in tp:
            out.append({"label": int(p["id"] in tp), **{k: p.get(k) for k in OUTCOME_KEYS}})
    return out


RELIABILITY_BINS = (0.0, 0.5, 0.8, 0.95, 0.99, 1.0)
"""Confidence bins of the reliability table."""


def reliability(outcomes: Sequence[dict]) -> dict[str, Any]:
    """How well ``confidence`` is calibrated: per confidence bin, the detections, their mean
    confidence and the share that is true; and the Brier score (mean squared error)."""
    conf = np.asarray([o["confidence"] for o in outcomes], dtype=float)
    label = np.asarray([o["label"] for o in outcomes], dtype=float)
    rows = []
    edges = RELIABILITY_BINS
    for i, (lo, hi) in enumerate(itertools.pairwise(edges)):
        sel = (conf >= lo) & ((conf < hi) if i < len(edges) - 2 else (conf <= hi))
        rows.append(
            {
                "bin": f"{lo:g}-{hi:g}",
                "n": int(sel.sum()),
                "mean_confidence": round(float(conf[sel].mean()), 4) if sel.any() else None,
                "true_share": round(float(label[sel].mean()), 4) if sel.any() else None,
            }
        )
    brier = round(float(np.mean((conf - label) ** 2)), 4) if len(conf) else None
    return {"bins": rows, "brier": brier, "n": len(conf)}
