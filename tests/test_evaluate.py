"""Tests of pipeline.evaluation.site on hand-made truth and detections."""

from __future__ import annotations

import json
import math

import pytest
from shapely.geometry import box, mapping

from pipeline.errors import DataError
from pipeline.evaluation.site import evaluate_coregistration, evaluate_objects, evaluate_site

# Footprints in lon/lat near Khmeimim, far enough apart not to touch.
FOOT_A = box(35.9400, 35.4000, 35.9405, 35.4004)  # 50 m object, removed
FOOT_B = box(35.9420, 35.4000, 35.9422, 35.4001)  # 20 m object, removed (too small to score)
FOOT_C = box(35.9440, 35.4000, 35.9446, 35.4005)  # 60 m object, appeared
EMPTY = box(35.9500, 35.4100, 35.9503, 35.4103)  # nothing there


def _truth() -> dict:
    objects = [
        {"id": "A", "class": "transport", "length_m": 50.0, "geometry": mapping(FOOT_A)},
        {"id": "B", "class": "fighter", "length_m": 20.0, "geometry": mapping(FOOT_B)},
        {"id": "C", "class": "ship", "length_m": 60.0, "geometry": mapping(FOOT_C)},
    ]
    events = [
        {
            "object_id": "A",
            "kind": "removed",
            "last_before": "2024-11-20",
            "first_after": "2024-11-25",
            "length_m": 50.0,
        },
        {
            "object_id": "B",
            "kind": "removed",
            "last_before": "2024-11-20",
            "first_after": "2024-11-25",
            "length_m": 20.0,
        },
        {
            "object_id": "C",
            "kind": "appeared",
            "last_before": "2024-12-10",
            "first_after": "2024-12-15",
            "length_m": 60.0,
        },
    ]
    shifts = {
        "2024-11-02": {"shift_x_px": 0.2, "shift_y_px": -0.1},
        "2024-11-07": {"shift_x_px": 1.2, "shift_y_px": 0.4},
        "2024-11-12": {"shift_x_px": -0.5, "shift_y_px": 0.3},
        "2024-11-17": {"shift_x_px": 2.0, "shift_y_px": 2.0},
    }
    return {
        "site": "testsite",
        "simulated": True,
        "crs": "EPSG:32636",
        "dates": sorted(shifts),
        "shifts": shifts,
        "objects": objects,
        "events": events,
    }


def _det(did: str, kind: str, geom, before: str, after: str) -> dict:
    return {
        "type": "Feature",
        "geometry": mapping(geom),
        "properties": {"id": did, "kind": kind, "date_before": before, "date_after": after},
    }


def _scene_detections() -> list[dict]:
    return [
        _det("d1", "removed", FOOT_A.buffer(0.0002), "2024-11-20", "2024-11-25"),  # TP (A)
        _det("d2", "appeared", FOOT_A, "2024-11-20", "2024-11-25"),  # FP: wrong kind
        _det("d4", "removed", FOOT_B, "2024-11-20", "2024-11-25"),  # neutral: B too small
        _det("d5", "removed", EMPTY, "2024-11-20", "2024-11-25"),  # FP: nothing there
        _det("d6", "appeared", FOOT_C, "2024-12-15", "2024-12-20"),  # FP: after the event
    ]


def test_scene_counts_and_scores() -> None:
    m = evaluate_objects(_scene_detections(), _truth())
    assert m["n_detections"] == 5
    assert m["n_true_events"] == 2
    assert m["n_events_unscored"] == 1
    assert m["tp_events"] == 1
    assert m["tp_detections"] == 1
    assert m["fp_detections"] == 3
    assert m["neutral_detections"] == 1
    assert sorted(m["fp_detection_ids"]) == ["d2", "d5", "d6"]
    assert m["fp_wrong_kind"] == 1
    assert m["fp_wrong_time"] == 1
    assert m["object_recall"] == 0.5
    assert m["object_precision"] == 0.25
    assert m["object_f1"] == round(2 * 0.25 * 0.5 / 0.75, 4)
    assert m["fn_event_ids"] == ["C:appeared:2024-12-15"]
    assert m["event_matches"]["A:removed:2024-11-25"] == ["d1"]
    assert m["object_recall_removed"] == 1.0
    assert m["object_recall_appeared"] == 0.0


def test_small_objects_scored_when_threshold_lowered() -> None:
    m = evaluate_objects(_scene_detections(), _truth(), min_object_size_m=10.0)
    assert m["n_true_events"] == 3
    assert m["tp_detections"] == 2
    assert m["neutral_detections"] == 0
    assert m["object_recall"] == round(2 / 3, 4)


def test_missed_small_object_is_not_a_false_negative() -> None:
    dets = [_det("d1", "removed", FOOT_A, "2024-11-20", "2024-11-25")]
    m = evaluate_objects(dets, _truth())
    assert "B:removed:2024-11-25" not in m["fn_event_ids"]
    assert m["fn_event_ids"] == ["C:appeared:2024-12-15"]


@pytest.mark.parametrize(
    ("before", "after", "matches"),
    [
        ("2024-11-20", "2024-11-25", True),  # the exact interval
        ("2024-11-15", "2024-11-22", True),  # overlaps the start
        ("2024-11-22", "2024-11-30", True),  # overlaps the end
        ("2024-11-01", "2024-12-30", True),  # contains it
        ("2024-11-10", "2024-11-20", False),  # ends when the object was still there
        ("2024-11-25", "2024-11-30", False),  # starts when it was already gone
    ],
)
def test_interval_overlap(before: str, after: str, matches: bool) -> None:
    m = evaluate_objects([_det("d", "removed", FOOT_A, before, after)], _truth())
    assert m["tp_detections"] == int(matches)
    assert m["fp_detections"] == int(not matches)


def test_polygon_must_intersect_footprint() -> None:
    near = box(35.9406, 35.4000, 35.9410, 35.4004)  # just east of A, not touching
    m = evaluate_objects([_det("d", "removed", near, "2024-11-20", "2024-11-25")], _truth())
    assert m["tp_detections"] == 0
    assert m["fp_detections"] == 1


def test_two_detections_of_one_event_are_both_tp_event_counted_once() -> None:
    left = box(35.9399, 35.4000, 35.94025, 35.4004)
    right = box(35.94025, 35.4000, 35.9406, 35.4004)
    dets = [
        _det("l", "removed", left, "2024-11-20", "2024-11-25"),
        _det("r", "removed", right, "2024-11-20", "2024-11-25"),
    ]
    m = evaluate_objects(dets, _truth())
    assert m["tp_detections"] == 2
    assert m["tp_events"] == 1
    assert m["object_precision"] == 1.0


def test_feature_collection_accepted() -> None:
    fc = {"type": "FeatureCollection", "features": _scene_detections()}
    assert evaluate_objects(fc, _truth()) == evaluate_objects(_scene_detections(), _truth())


def test_zero_division_conventions() -> None:
    truth = _truth()
    none = evaluate_objects([], truth)
    assert (none["object_precision"], none["object_recall"], none["object_f1"]) == (0.0, 0.0, 0.0)
    assert len(none["fn_event_ids"]) == 2

    empty = {**truth, "events": []}
    quiet = evaluate_objects([], empty)
    assert (quiet["object_precision"], quiet["object_recall"], quiet["object_f1"]) == (
        1.0,
        1.0,
        1.0,
    )

    noisy = evaluate_objects([_det("x", "removed", EMPTY, "2024-11-20", "2024-11-25")], empty)
    assert (noisy["object_precision"], noisy["object_recall"], noisy["object_f1"]) == (
        0.0,
        1.0,
        0.0,
    )


def test_event_with_unknown_object_raises() -> None:
    truth = _truth()
    truth["events"].append({**truth["events"][0], "object_id": "ZZ"})
    with pytest.raises(DataError, match="ZZ"):
        evaluate_objects([], truth)


def test_bad_detection_date_raises() -> None:
    det = _det("bad", "removed", FOOT_A, "20-11-2024", "2024-11-25")
    with pytest.raises(DataError, match="bad"):
        evaluate_objects([det], _truth())


def _coreg() -> dict:
    return {
        "reference_date": "2024-11-02",
        "dates": [
            {"date": "2024-11-02", "shift_x_px": 0.0, "shift_y_px": 0.0, "status": "ok"},
            # expected (1.0, 0.5): error (0.3, 0.4) -> 0.5 px
            {"date": "2024-11-07", "shift_x_px": 1.3, "shift_y_px": 0.9, "status": "shifted"},
            # expected (-0.7, 0.4): exact
            {"date": "2024-11-12", "shift_x_px": -0.7, "shift_y_px": 0.4, "status": "ok"},
            # failed dates are not scored, however wrong
            {"date": "2024-11-17", "shift_x_px": 9.0, "shift_y_px": 9.0, "status": "failed"},
        ],
    }


def test_coregistration_rmse_exact() -> None:
    m = evaluate_coregistration(_coreg(), _truth())
    assert m["coreg_n_dates"] == 2
    assert m["coreg_n_failed"] == 1
    assert m["coreg_rmse_px"] == round(math.sqrt((0.5**2 + 0.0**2) / 2), 4)
    assert m["coreg_max_err_px"] == 0.5
    errs = {p["date"]: p["err_px"] for p in m["coreg_per_date"]}
    assert errs == {"2024-11-07": 0.5, "2024-11-12": 0.0}
    first = m["coreg_per_date"][0]
    assert (first["expected_x_px"], first["expected_y_px"]) == (1.0, 0.5)


def test_coregistration_sign_matters() -> None:
    coreg = _coreg()
    coreg["dates"][2] = {**coreg["dates"][2], "shift_x_px": 0.7, "shift_y_px": -0.4}
    m = evaluate_coregistration(coreg, _truth())
    errs = {p["date"]: p["err_px"] for p in m["coreg_per_date"]}
    assert errs["2024-11-12"] == round(2 * math.hypot(0.7, 0.4), 4)


def test_coregistration_no_scored_dates_and_missing_truth() -> None:
    only_ref = {"reference_date": "2024-11-02", "dates": [_coreg()["dates"][0]]}
    m = evaluate_coregistration(only_ref, _truth())
    assert m["coreg_n_dates"] == 0
    assert m["coreg_rmse_px"] is None

    unknown = {**_coreg(), "reference_date": "2023-01-01"}
    with pytest.raises(DataError, match="2023-01-01"):
        evaluate_coregistration(unknown, _truth())


def test_evaluate_site_keys_and_json_native() -> None:
    m = evaluate_site(_scene_detections(), _truth(), _coreg(), min_object_size_m=30.0)
    for key in ("object_precision", "object_recall", "object_f1", "coreg_rmse_px", "n_detections"):
        assert key in m
    assert m["site"] == "testsite"
    assert m["simulated"] is True
    assert json.loads(json.dumps(m)) == m
    assert all(type(v) in (int, float, str, bool, list, dict, type(None)) for v in m.values())
