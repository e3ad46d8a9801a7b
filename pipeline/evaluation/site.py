"""Scores of a site's detections and co-registration against ground truth (pure).

This is the only module on the detection side that knows the answer: it receives the parsed truth
dict (``truth/<site>.json`` of the demo catalog; the stage reads the file) and never feeds anything
back into detection.

Object scores
-------------
A detection *matches* a truth event when all of these hold:

- same ``kind`` (``removed`` / ``appeared``);
- the detection polygon intersects the footprint of the event's object (lon/lat; touching counts);
- the time intervals overlap: ``date_before < first_after`` and ``last_before < date_after``. The
  detection says "the change happened after ``date_before`` and by ``date_after``"; the truth says
  "after ``last_before`` (last acquisition in the old state) and by ``first_after``".

An event is *scored* when its object is at least ``min_object_size_m`` long (the event's own
``length_m``, else its object's). Then:

- ``object_recall`` = scored events matched by at least one detection / scored events;
- a detection is a true positive when it matches at least one scored event, a false positive when
  it matches no event at all (scored or not); a detection that matches only events of objects too
  small to score is *neutral*: neither TP nor FP (seeing a small object is not a false alarm, and
  missing it is not counted either);
- ``object_precision`` = TP detections / (TP + FP detections);
- ``object_f1`` = harmonic mean of the two (0 when both are 0).

Zero divisions: with no scored events, recall is 1.0 (nothing was missed). With no TP or FP
detection, precision is 1.0 if there are no scored events either (nothing to find, nothing claimed)
and 0.0 otherwise (a silent detector is not rewarded with a perfect precision). Per-kind recall
follows the same rule.

Co-registration scores
----------------------
For every date that co-registration did not reject (status other than ``failed``) and that is not
the reference date, the expected shift is ``truth_shift(date) - truth_shift(reference_date)``
(both components, site-grid px, east/north positive); the error is the vector difference between
the estimated and the expected shift. ``coreg_rmse_px`` is the square root of the mean squared
vector error, ``coreg_max_err_px`` the largest; both are ``None`` when no date was scored.

All floats in the outputs are rounded to 4 decimals; outputs are JSON-native (dict, list, str,
int, float, bool, None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import shapely
from shapely.geometry import shape

from pipeline.errors import DataError

KINDS: tuple[str, ...] = ("removed", "appeared")
"""Kinds of change a detection or a truth event can have."""

_NDIGITS = 4


def _r(value: float) -> float:
    return round(float(value), _NDIGITS)


def _as_date(value: Any, where: str) -> date:
    try:
        return date.fromisoformat(str(value)[:10])
    except (TypeError, ValueError):
        raise DataError(f"{where}: {value!r} is not a YYYY-MM-DD date: fix the input") from None


def _features(detections: list[dict] | dict) -> list[dict]:
    if isinstance(detections, dict):
        return list(detections.get("features", []))
    return list(detections)


def _geometry(geojson: Any, where: str) -> shapely.Geometry:
    if not geojson:
        raise DataError(f"{where}: has no geometry: every detection and truth object needs one")
    try:
        geom = shape(geojson)
    except Exception:
        raise DataError(f"{where}: geometry cannot be read as GeoJSON: fix it") from None
    return geom if geom.is_valid else shapely.make_valid(geom)


def _ratio(num: int, den: int, *, empty: float) -> float:
    return num / den if den else empty


def _f1(precision: float, recall: float) -> float:
    total = precision + recall
    return 2.0 * precision * recall / total if total > 0 else 0.0


def _event_id(event: dict) -> str:
    if event.get("id"):
        return str(event["id"])
    return f"{event.get('object_id')}:{event.get('kind')}:{str(event.get('first_after'))[:10]}"


def evaluate_objects(
    detections: list[dict] | dict,
    truth: dict,
    *,
    min_object_size_m: float = 30.0,
    observed_dates: Sequence[str] | None = None,
) -> dict:
    """Object-level precision, recall and F1 of detections against truth events.

    Parameters
    ----------
    detections
        GeoJSON Features (lon/lat) with properties ``id``, ``kind``, ``date_before`` and
        ``date_after``; a FeatureCollection dict is accepted too.
    truth
        The parsed truth file: ``objects`` (``id``, ``length_m``, ``geometry``) and ``events``
        (``object_id``, ``kind``, ``last_before``, ``first_after``, ``length_m``).
    min_object_size_m
        Events of objects shorter than this are not scored (see the module docstring).
    observed_dates
        Dates the detector was given (YYYY-MM-DD). When set, an event is scored only if both of
        its states were observed: some date on or before ``last_before`` and some date on or
        after ``first_after``. Other events are treated like events of small objects.

    Returns
    -------
    dict
        ``object_precision``, ``object_recall``, ``object_f1``, ``n_detections``,
        ``n_true_events`` (scored), ``n_events_total``, ``n_events_unscored``, ``tp_events``,
        ``fn_events``, ``tp_detections``, ``fp_detections``, ``neutral_detections``,
        ``fp_wrong_kind`` and ``fp_wrong_time`` (false positives that would match a scored event
        if kind, or time, were ignored), ``object_recall_<kind>``, ``n_true_events_<kind>``,
        ``tp_events_<kind>``, ``fn_event_ids``, ``fp_detection_ids``, ``event_matches`` (event id
        -> matching detection ids, scored events only) and ``min_object_size_m``.

    Raises
    ------
    DataError
        When a detection or truth record lacks a geometry, date or kind, or an event names an
        object missing from ``objects``.
    """
    feats = _features(detections)
    obs = (
        np.sort(np.asarray([str(d)[:10] for d in observed_dates], dtype="datetime64[D]"))
        if observed_dates is not None
        else None
    )
    objects = {str(o.get("id")): o for o in truth.get("objects", [])}
    events = list(truth.get("events", []))

    det_ids: list[str] = []
    det_geoms: list[shapely.Geometry] = []
    det_kind: list[str] = []
    det_before: list[date] = []
    det_after: list[date] = []
    for i, feat in enumerate(feats):
        props = feat.get("properties") or {}
        did = str(props.get("id", f"#{i}"))
        where = f"detection {did}"
        det_ids.append(did)
        det_geoms.append(_geometry(feat.get("geometry"), where))
        det_kind.append(str(props.get("kind")))
        det_before.append(_as_date(props.get("date_before"), f"{where} date_before"))
        det_after.append(_as_date(props.get("date_after"), f"{where} date_after"))

    ev_ids: list[str] = []
    ev_geoms: list[shapely.Geometry] = []
    ev_kind: list[str] = []
    ev_last_before: list[date] = []
    ev_first_after: list[date] = []
    ev_scored: list[bool] = []
    for event in events:
        eid = _event_id(event)
        where = f"truth event {eid}"
        obj = objects.get(str(event.get("object_id")))
        if obj is None:
            raise DataError(
                f"{where}: object_id {event.get('object_id')!r} is not in truth 'objects': "
                "regenerate the truth file"
            )
        length = event.get("length_m", obj.get("length_m"))
        if length is None:
            raise DataError(f"{where}: no length_m on the event or its object: fix the truth file")
        ev_ids.append(eid)
        ev_geoms.append(_geometry(obj.get("geometry"), f"truth object {obj.get('id')}"))
        ev_kind.append(str(event.get("kind")))
        ev_last_before.append(_as_date(event.get("last_before"), f"{where} last_before"))
        ev_first_after.append(_as_date(event.get("first_after"), f"{where} first_after"))
        observable = True
        if obs is not None and len(obs):
            observable = bool(obs[0] <= np.datetime64(ev_last_before[-1], "D")) and bool(
                obs[-1] >= np.datetime64(ev_first_after[-1], "D")
            )
        ev_scored.append(float(length) >= min_object_size_m and observable)

    n_det, n_ev = len(det_ids), len(ev_ids)
    if n_det and n_ev:
        space = shapely.intersects(
            np.asarray(det_geoms, dtype=object)[:, None],
            np.asarray(ev_geoms, dtype=object)[None, :],
        )
        kind = np.asarray(det_kind, dtype=str)[:, None] == np.asarray(ev_kind, dtype=str)[None, :]
        d_b = np.asarray(det_before, dtype="datetime64[D]")[:, None]
        d_a = np.asarray(det_after, dtype="datetime64[D]")[:, None]
        e_lb = np.asarray(ev_last_before, dtype="datetime64[D]")[None, :]
        e_fa = np.asarray(ev_first_after, dtype="datetime64[D]")[None, :]
        time = (d_b < e_fa) & (e_lb < d_a)
    else:
        space = kind = time = np.zeros((n_det, n_ev), dtype=bool)
    match = space & kind & time
    scored = np.asarray(ev_scored, dtype=bool).reshape(n_ev)

    det_tp = match[:, scored].any(axis=1)
    det_any = match.any(axis=1)
    det_fp = ~det_any
    det_neutral = det_any & ~det_tp
    ev_hit = match.any(axis=0) & scored

    n_true = int(scored.sum())
    tp_events = int(ev_hit.sum())
    tp_det, fp_det = int(det_tp.sum()), int(det_fp.sum())
    precision = _ratio(tp_det, tp_det + fp_det, empty=1.0 if n_true == 0 else 0.0)
    recall = _ratio(tp_events, n_true, empty=1.0)

    out: dict[str, Any] = {
        "object_precision": _r(precision),
        "object_recall": _r(recall),
        "object_f1": _r(_f1(precision, recall)),
        "n_detections": n_det,
        "n_true_events": n_true,
        "n_events_total": n_ev,
        "n_events_unscored": n_ev - n_true,
        "tp_events": tp_events,
        "fn_events": n_true - tp_events,
        "tp_detections": tp_det,
        "fp_detections": fp_det,
        "neutral_detections": int(det_neutral.sum()),
        "fp_wrong_kind": int((det_fp & (space & time)[:, scored].any(axis=1)).sum()),
        "fp_wrong_time": int((det_fp & (space & kind)[:, scored].any(axis=1)).sum()),
    }
    ev_kind_arr = np.asarray(ev_kind, dtype=str).reshape(n_ev)
    for k in KINDS:
        of_kind = scored & (ev_kind_arr == k)
        n_k, tp_k = int(of_kind.sum()), int((ev_hit & of_kind).sum())
        out[f"object_recall_{k}"] = _r(_ratio(tp_k, n_k, empty=1.0))
        out[f"n_true_events_{k}"] = n_k
        out[f"tp_events_{k}"] = tp_k
    out["min_object_size_m"] = _r(min_object_size_m)
    out["fn_event_ids"] = [ev_ids[j] for j in np.flatnonzero(scored & ~ev_hit)]
    out["fp_detection_ids"] = [det_ids[i] for i in np.flatnonzero(det_fp)]
    out["event_matches"] = {
        ev_ids[j]: [det_ids[i] for i in np.flatnonzero(match[:, j])] for j in np.flatnonzero(scored)
    }
    return out


def _shift(shifts: dict, day: str, where: str) -> tuple[float, float]:
    rec = shifts.get(day)
    if rec is None:
        raise DataError(
            f"truth 'shifts' has no entry for {day} ({where}): regenerate the truth file"
        )
    try:
        return float(rec["shift_x_px"]), float(rec["shift_y_px"])
    except (KeyError, TypeError, ValueError):
        raise DataError(f"truth 'shifts'[{day}] lacks numeric shift_x_px/shift_y_px") from None


def evaluate_coregistration(coreg: dict, truth: dict) -> dict:
    """Error of the estimated shifts against the true relative shifts.

    Parameters
    ----------
    coreg
        Co-registration results: ``reference_date`` and ``dates`` (records with ``date``,
        ``shift_x_px``, ``shift_y_px``, ``status``).
    truth
        The parsed truth file; uses ``shifts`` (date -> ``shift_x_px``, ``shift_y_px``).

    Returns
    -------
    dict
        ``coreg_rmse_px`` and ``coreg_max_err_px`` (``None`` when no date was scored),
        ``coreg_n_dates`` (dates scored), ``coreg_n_failed`` and ``coreg_per_date``: one record per
        scored date with the estimated and expected shifts and the error ``err_px``.

    Raises
    ------
    DataError
        When the reference date is missing, or a scored date has no true shift.
    """
    ref = coreg.get("reference_date")
    if not ref:
        raise DataError("coreg results have no 'reference_date': rerun the coregister stage")
    ref = str(ref)[:10]
    shifts = {str(k)[:10]: v for k, v in (truth.get("shifts") or {}).items()}
    ref_x, ref_y = _shift(shifts, ref, "the reference date")

    per_date: list[dict] = []
    n_failed = 0
    for rec in coreg.get("dates", []):
        day = str(rec.get("date"))[:10]
        if rec.get("status") == "failed":
            n_failed += 1
            continue
        if day == ref:
            continue
        true_x, true_y = _shift(shifts, day, "a co-registered date")
        exp_x, exp_y = true_x - ref_x, true_y - ref_y
        est_x, est_y = float(rec["shift_x_px"]), float(rec["shift_y_px"])
        per_date.append(
            {
                "date": day,
                "status": rec.get("status"),
                "est_x_px": _r(est_x),
                "est_y_px": _r(est_y),
                "expected_x_px": _r(exp_x),
                "expected_y_px": _r(exp_y),
                "err_px": math.hypot(est_x - exp_x, est_y - exp_y),
            }
        )
    errs = np.array([p["err_px"] for p in per_date], dtype=float)
    for p in per_date:
        p["err_px"] = _r(p["err_px"])
    return {
        "coreg_rmse_px": _r(np.sqrt(np.mean(errs**2))) if errs.size else None,
        "coreg_max_err_px": _r(errs.max()) if errs.size else None,
        "coreg_n_dates": int(errs.size),
        "coreg_n_failed": n_failed,
        "coreg_reference_date": ref,
        "coreg_per_date": per_date,
    }


def evaluate_site(
    detections: list[dict] | dict,
    truth: dict,
    coreg: dict,
    *,
    min_object_size_m: float = 30.0,
) -> dict:
    """All scores of one site: objects and co-registration, in one JSON-native dict.

    Parameters
    ----------
    detections
        GeoJSON Features (or a FeatureCollection) of the site's detections, lon/lat.
    truth
        The parsed truth file of the site.
    coreg
        The site's co-registration results.
    min_object_size_m
        Events of objects shorter than this are not scored.

    Returns
    -------
    dict
        ``site`` and ``simulated`` (from the truth), then every key of :func:`evaluate_objects`
        and :func:`evaluate_coregistration`.
    """
    out: dict[str, Any] = {
        "site": truth.get("site"),
        "simulated": bool(truth.get("simulated", False)),
    }
    observed = [d["date"] for d in coreg.get("dates", []) if d.get("status") != "failed"]
    out.update(
        evaluate_objects(
            detections,
            truth,
            min_object_size_m=min_object_size_m,
            observed_dates=observed or None,
        )
    )
    out.update(evaluate_coregistration(coreg, truth))
    return out
