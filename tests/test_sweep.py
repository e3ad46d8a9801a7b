"""The detection sweep: generated scenes, their truth, the scoring, and a fast run of the chain.

Not a benchmark (see ``benchmarks/bench_detect.py``): these check that the machinery measures
what it says, and that the detector finds big objects in a clear scene.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Point, box, shape

from pipeline.config import Config
from pipeline.evaluation.sweep import (
    NOMINAL_CONTRAST,
    default_plan,
    run_scenario,
    score_scene,
    summarise,
    unmodelled_plan,
)
from pipeline.kernels.coregister.shift import coregister_cube, shift_report
from pipeline.kernels.detect.clouds import CLOUD_TOP
from pipeline.simulate.sweep_scene import BANDS, ROLES, Scenario, SweepScene, make_scene
from pipeline.simulate.sweep_unmodelled import (
    MODELLED_SHADOW_DEPTH,
    cloud_spectrum,
    polygon_cover,
    shadow_depth,
    shape_outline,
)

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_detect.py"
SMALL = Scenario(0.2, 0.5, NOMINAL_CONTRAST, (20.0, 60.0, 130.0), 6, seed=4)


@pytest.fixture(scope="module")
def scene() -> SweepScene:
    return make_scene(SMALL)


def test_scene_cube_and_truth(scene: SweepScene) -> None:
    cube, truth = scene.cube, scene.truth
    n = SMALL.grid_px
    assert dict(cube.sizes) == {"time": 6, "y": n, "x": n}
    assert set(cube.data_vars) == {*BANDS, "valid"}  # the detector sees bands and masks only
    assert cube.attrs["crs"] == "EPSG:32636" and cube["valid"].dtype == bool
    for b in BANDS:
        values = cube[b].values
        assert values.dtype == np.float32
        assert np.isnan(values[~cube["valid"].values]).all()
        assert 0.0 < np.nanmedian(values) < 0.6
    assert 0.0 < 1 - cube["valid"].values.mean() < 0.8  # clouds, shadows and their dilation
    assert len(truth["objects"]) == len(SMALL.sizes_m) * len(ROLES)
    n_events = {"static": 0, "visit": 2}
    assert len(truth["events"]) == len(SMALL.sizes_m) * sum(n_events.get(r, 1) for r in ROLES)
    for ev in truth["events"]:
        obj = next(o for o in truth["objects"] if o["id"] == ev["object_id"])
        i = truth["dates"].index(ev["first_after"])
        assert truth["dates"][i - 1] == ev["last_before"]
        present = ev["first_after"] in obj["present"]
        assert present == (ev["kind"] == "appeared")
        assert (ev["last_before"] in obj["present"]) == (ev["kind"] == "removed")
        # the footprint polygon is the object's size, in lon/lat near Khmeimim
        g = shape(obj["geometry"])
        assert 35.85 < g.centroid.x < 36.05 and 35.3 < g.centroid.y < 35.5
    assert all(len(o["present"]) == 6 for o in truth["objects"] if o["role"] == "static")
    # a visit: there on one date, neither end, so it appears and is removed
    visits = [o for o in truth["objects"] if o["role"] == "visit"]
    assert visits and all(len(o["present"]) == 1 for o in visits)
    assert all(o["present"][0] not in (truth["dates"][0], truth["dates"][-1]) for o in visits)
    assert any(ev["observable"] for ev in truth["events"])
    shifts = np.array([[s["shift_x_px"], s["shift_y_px"]] for s in truth["shifts"].values()])
    assert np.hypot(shifts[:, 0], shifts[:, 1]).max() <= 0.5 + 1e-9


def test_scene_is_reproducible_and_contrast_changes_objects_only() -> None:
    a = make_scene(SMALL).cube
    b = make_scene(SMALL).cube
    np.testing.assert_array_equal(a["nir"].values, b["nir"].values)
    faint = make_scene(Scenario(0.2, 0.5, 0.03, SMALL.sizes_m, 6, seed=4))
    np.testing.assert_array_equal(a["valid"].values, faint.cube["valid"].values)  # same sky
    diff = np.abs(np.nan_to_num(a["red"].values - faint.cube["red"].values))
    assert 0 < (diff > 0.005).mean() < 0.1  # only around the objects


def test_coregister_cube_recovers_the_shifts(scene: SweepScene) -> None:
    aligned, estimates, ref = coregister_cube(scene.cube, Config().coregister, drop_nonfinite=True)
    report = shift_report(scene.cube["time"].values, estimates, ref)
    ref = scene.truth["shifts"][report["reference_date"]]
    for rec in report["dates"]:
        if rec["status"] == "failed":
            continue
        want = scene.truth["shifts"][rec["date"]]
        assert rec["shift_x_px"] == pytest.approx(want["shift_x_px"] - ref["shift_x_px"], abs=0.1)
        assert rec["shift_y_px"] == pytest.approx(want["shift_y_px"] - ref["shift_y_px"], abs=0.1)
    assert aligned.sizes["time"] >= 5 and aligned["valid"].values.mean() > 0.3
    for name in BANDS:  # drop_nonfinite: valid implies finite bands
        assert np.isfinite(aligned[name].values[aligned["valid"].values]).all()


def _perfect(truth: dict) -> list[dict]:
    """One exact detection per observable event: its footprint, kind and dates."""
    objects = {o["id"]: o for o in truth["objects"]}
    feats = []
    for i, ev in enumerate(truth["events"]):
        if ev["observable"]:
            props = {
                "id": f"d{i}",
                "kind": ev["kind"],
                "date_before": ev["last_before"],
                "date_before_latest": ev["last_before"],
                "date_after": ev["first_after"],
                "centroid_lon": 0.0,
                "centroid_lat": 0.0,
            }
            feats.append(
                {
                    "type": "Feature",
                    "geometry": objects[ev["object_id"]]["geometry"],
                    "properties": props,
                }
            )
    return feats


def test_score_scene_counts(scene: SweepScene) -> None:
    truth = scene.truth
    feats = _perfect(truth)
    r = score_scene(feats, truth, truth["dates"])
    n_obs = sum(e["observable"] for e in truth["events"])
    visit = {o["id"] for o in truth["objects"] if o["role"] == "visit"}
    n_visit = sum(e["observable"] and e["object_id"] in visit for e in truth["events"])
    assert n_visit > 0
    for counts in (r["by_size"], r["visits_by_size"]):
        assert sum(v[0] for v in counts.values()) == sum(v[1] for v in counts.values())
    assert sum(v[1] for v in r["visits_by_size"].values()) == n_visit
    assert sum(v[1] for v in r["by_size"].values()) == n_obs - n_visit
    assert r["fp"] == 0 and r["tp"] == n_obs
    assert r["removals_found"] == r["removals_dated"] > 0
    # a false alarm far from any object, a wrong kind, and a removal dated too late
    lon0, lat0 = shape(truth["objects"][0]["geometry"]).centroid.coords[0]
    extra = {
        "type": "Feature",
        "geometry": {"type": "Point", "coordinates": [lon0 + 0.05, lat0 + 0.05]},
        "properties": {**feats[0]["properties"], "id": "fa", "kind": "removed"},
    }
    extra["properties"]["centroid_lon"] = lon0 + 0.05
    extra["properties"]["centroid_lat"] = lat0 + 0.05
    wrong = [{**f, "properties": {**f["properties"], "kind": "appeared"}} for f in feats]
    r2 = score_scene([*feats, extra], truth, truth["dates"], scene.cube["valid"].values)
    assert r2["fp"] == 1 and r2["fp_ids"] == ["fa"] and sum(r2["fp_causes"].values()) == 1
    r3 = score_scene(wrong, truth, truth["dates"])
    removed = sum(e["observable"] and e["kind"] == "removed" for e in truth["events"])
    assert r3["fp"] == removed and r3["removals_found"] == 0
    late = []
    for f in feats:
        p = dict(f["properties"])
        if p["kind"] == "removed":
            i = truth["dates"].index(p["date_before"])
            p["date_before"] = truth["dates"][min(i + 1, len(truth["dates"]) - 1)]
        late.append({**f, "properties": p})
    r4 = score_scene(late, truth, truth["dates"])
    assert r4["removals_dated"] < r4["removals_found"]


def test_quick_sweep_finds_big_objects(tmp_path: Path) -> None:
    cfg = Config()
    plan = default_plan(quick=True)
    assert len(plan) == 3
    clear = run_scenario(plan[0], cfg.detect, cfg.coregister)
    assert clear["n_pairs"] == plan[0].n_dates - 1 and clear["masked_fraction"] == 0.0
    big = [clear["by_size"][k] for k in ("60", "130")]
    assert sum(h for h, _ in big) >= 0.8 * sum(n for _, n in big)  # big objects are found
    assert sum(n for _, n in big) == 2 * sum(r not in ("static", "visit") for r in ROLES)
    # the one-date path finds a clear scene's big visits (appearance and removal)
    visits = [clear["visits_by_size"][k] for k in ("60", "130")]
    assert sum(n for _, n in visits) == 2 * 2
    assert sum(h for h, _ in visits) >= 0.5 * sum(n for _, n in visits)
    cloudy = run_scenario(plan[1], cfg.detect, cfg.coregister)
    summary = summarise([clear, cloudy])
    env = summary["envelope"]
    assert env["n_scenes"] == 2 and set(env["meets"]) == set(env["targets"])
    assert [c["size_m"] for c in env["curve"]] == sorted(c["size_m"] for c in env["curve"])
    assert 0 <= env["precision"] <= 1 and env["false_alarms_per_km2_date"] >= 0
    assert env["n_visit_events"] > 0 and 0 <= env["recall_visits_40m_plus"] <= 1
    assert sum(env["false_alarm_causes"].values()) == env["fp_detections"]
    assert summary["scenes"][1]["cloud_fraction"] == 0.3
    json.dumps(summary)  # JSON-ready
    spec = importlib.util.spec_from_file_location("bench_detect", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.plot_curves(summary, tmp_path / "curve.png")
    assert (tmp_path / "curve.png").stat().st_size > 5000


# --- conditions the detector does not model (pipeline/sweep_unmodelled.py) ---------------------

UNMODELLED = replace(SMALL, cloud_spectrum="ice", shadow_spectrum="diffuse", object_shape="varied")


def test_unmodelled_cloud_spectra_are_not_the_detectors() -> None:
    rng = np.random.default_rng(0)
    top = np.array([CLOUD_TOP[b] for b in BANDS], dtype=np.float32)
    np.testing.assert_allclose(cloud_spectrum("water", rng), top, atol=0.011)  # modelled
    for _ in range(20):
        ice, haze = cloud_spectrum("ice", rng), cloud_spectrum("haze", rng)
        # shapes (scaled to the visible level) differ from CLOUD_TOP's where physics says
        assert ice[4] / ice[0] < 0.5 < top[4] / top[0]  # ice absorbs at 1.6 um
        assert ice[5] / ice[0] < 0.35 < top[5] / top[0]
        assert abs(ice[3] / ice[0] - top[3] / top[0]) < 0.1  # flat through the NIR
        assert np.all(np.diff(haze) < 0) and haze[0] > 1.5 * haze[3]  # rises toward the blue
    with pytest.raises(ValueError, match="cloud_spectrum"):
        cloud_spectrum("fog", rng)


def test_diffuse_shadow_darkens_blue_less_than_nir_and_swir() -> None:
    rng = np.random.default_rng(1)
    grey = shadow_depth("grey", rng)
    assert np.all(grey == MODELLED_SHADOW_DEPTH)
    for _ in range(20):
        depth = shadow_depth("diffuse", rng)
        assert np.all(np.diff(depth) > 0)  # darker with wavelength
        assert depth[BANDS.index("blue")] < depth[BANDS.index("nir")] - 0.03
        assert depth.mean() == pytest.approx(MODELLED_SHADOW_DEPTH, abs=1e-6)
        umbra = shadow_depth("umbra", rng)  # only the diffuse light left: deeper, still bluer
        assert np.all(np.diff(umbra) > 0) and umbra.mean() > 0.7 and umbra.max() < 1
    with pytest.raises(ValueError, match="shadow_spectrum"):
        shadow_depth("black", rng)


def test_unmodelled_scene_is_its_modelled_twin_but_for_the_conditions() -> None:
    twin = make_scene(SMALL)
    shadowed = make_scene(replace(SMALL, shadow_spectrum="diffuse"))
    assert replace(SMALL, shadow_spectrum="diffuse").modelled_twin() == SMALL
    assert UNMODELLED.unmodelled == ("cloud ice", "shadow diffuse", "shapes varied")
    assert SMALL.unmodelled == ()
    # same sky, same valid pixels; only shaded (unflagged) pixels change, blue less than NIR
    np.testing.assert_array_equal(twin.cube["valid"].values, shadowed.cube["valid"].values)
    ratio = {b: shadowed.cube[b].values / twin.cube[b].values for b in ("blue", "nir")}
    # (the same noise in both: any difference is the shadow's; visible shadows are the faint
    # edges beyond the flags)
    changed = np.isfinite(ratio["nir"]) & (np.abs(ratio["nir"] - 1) > 1e-4)
    assert 0 < changed.mean() < 0.3
    # under a shadow the diffuse-light scene is brighter in blue, darker in NIR than the twin
    assert np.median(ratio["blue"][changed]) > 1 > np.median(ratio["nir"][changed])
    # an ice cloud's thin edges are darker in SWIR 1.6 than the water cloud's, alike in blue
    iced = make_scene(replace(SMALL, cloud_spectrum="ice")).cube
    d16 = iced["swir16"].values - twin.cube["swir16"].values
    dblue = iced["blue"].values - twin.cube["blue"].values
    edge = np.isfinite(d16) & (np.abs(d16) > 0.01)
    assert edge.any() and np.median(d16[edge]) < 0 and np.median(np.abs(dblue[edge])) < 0.02


def test_non_rectangular_objects_are_not_rectangles() -> None:
    rng = np.random.default_rng(2)
    for kind in ("cross", "hull", "ellipse"):
        name, outline = shape_outline(kind, 60.0, rng)
        assert name == kind and outline.is_valid
        minu, minv, maxu, maxv = outline.bounds
        assert maxu - minu == pytest.approx(60.0)
        # well short of its bounding box: not a rectangle
        assert outline.area < 0.9 * (maxu - minu) * (maxv - minv)
        # rasterised with partial-pixel coverage: the covered area is the outline's, at any angle
        for angle in (0.0, 0.7, 2.0):
            _, cover = polygon_cover(200, (100.3, 99.6), outline, 2.0, angle)
            assert cover.sum() * 4.0 == pytest.approx(outline.area, rel=0.02)
            assert 0 < ((cover > 0) & (cover < 1)).sum()
    _, cross = shape_outline("cross", 40.0, rng)
    assert not cross.contains(Point(19.0, 10.0)) and cross.contains(Point(0.0, 0.0))
    _, hull = shape_outline("hull", 100.0, rng)
    beam = hull.bounds[3] - hull.bounds[1]
    assert 100 / 8.01 <= beam <= 100 / 5.49  # ship-like proportions
    # the bow is pointed: the hull narrows toward +u
    assert hull.intersection(box(45, -50, 50, 50)).area < 0.4 * 5 * beam
    scene = make_scene(UNMODELLED)
    shapes = {o["shape"] for o in scene.truth["objects"]}
    assert shapes == {"cross", "hull", "ellipse"}
    for o in scene.truth["objects"]:
        g = shape(o["geometry"])  # the truth's outline is the drawn shape, not a box
        assert len(g.exterior.coords) > 5
        assert o["area_m2"] < 0.9 * o["length_m"] * o["width_m"]


def test_summary_reports_unmodelled_apart() -> None:
    cfg = Config()
    assert all(not s.unmodelled for s in default_plan())
    plan = unmodelled_plan()
    assert plan and all(s.unmodelled for s in plan)
    twins = {s.modelled_twin() for s in plan}
    assert twins <= set(default_plan())  # each has its modelled twin in the default plan
    quick = unmodelled_plan(quick=True)
    twin = quick[0].modelled_twin()
    assert twin in default_plan(quick=True)
    modelled = run_scenario(twin, cfg.detect, cfg.coregister)
    other = run_scenario(quick[0], cfg.detect, cfg.coregister)
    alone = summarise([modelled])
    both = summarise([modelled, other])
    assert "unmodelled" not in alone
    # the modelled figures are computed as before: the unmodelled scene changes none of them
    for key in ("envelope", "curves", "by_contrast", "by_misregistration", "by_cloud"):
        assert both[key] == alone[key]
    assert len(both["scenes"]) == 2
    block = both["unmodelled"]
    assert block["n_scenes"] == 1 and set(block["conditions"]) >= set(quick[0].unmodelled)
    every = block["all"]
    for key in ("precision", "false_alarms_per_km2_date", "recall_40m_plus", "calibration"):
        assert key in every
    assert {"bins", "brier", "n"} <= set(every["calibration"])
    assert set(every["recall_by_shape"]) <= {"cross", "hull", "ellipse"}
    assert block["modelled_twins"]["precision"] == alone["envelope"]["precision"]
    assert set(block["modelled_twins"]["recall_by_shape"]) == {"rectangle"}
    ((label, row),) = block["by_condition"].items()
    assert label == "cloud ice + shadow diffuse + shapes varied"
    assert row["twins"]["tp_detections"] == alone["envelope"]["tp_detections"]
    json.dumps(both)
