"""The detection sweep: how small, how faint, how cloudy and how misregistered can it be?

Each :class:`~pipeline.simulate.sweep_scene.Scenario` is generated
(:func:`pipeline.simulate.sweep_scene.make_scene`), co-registered exactly as the site pipeline does
(:func:`pipeline.kernels.coregister.shift.coregister_cube`, the project's one co-register-a-stack
function: the shift of every date on the nir band against the most valid date, applied to every
band; a pixel where a shifted band is not finite is not valid), and detected with
:func:`pipeline.stages.detect.detect_cube`: the detector sees the cube only.
:func:`score_scene` then compares its features with the scene's truth
(:func:`pipeline.evaluation.site.evaluate_objects`: same kind, polygons intersect, date intervals
overlap), scoring an event only when its object was seen clear on some date of each state
(``observable``; others are neutral: finding them is no false alarm, missing them no miss).

Figures (:func:`summarise`), pooled over scenes:

- **detectability curve**: object recall per object length (m), per contrast, of lasting
  changes (removed, appeared);
- **visits**: recall of the appearance and removal of objects there on one date only (a ship
  anchored for one pass), 40 m and longer, reported apart (``recall_visits_40m_plus``): the
  one-date path, which a cloud nearby on that date silences by design;
- **precision**: true detections / (true + false detections);
- **false alarms per km2 per date**: false detections / (scene area x date pairs);
- **date interval**: of the true removals located (a removal detected on the footprint, at
  any dates), the share with a detection whose interval ``(date_before, date_after]`` contains
  the truth's ``(last_before, first_after]``;
- **co-registration RMSE** (px) against the generated shifts.

The ``envelope`` is the setting of issue 4's targets: cloud up to 30 %, misregistration up to
0.5 px before co-registration, the nominal contrast (:data:`NOMINAL_CONTRAST`). Other settings
(1 px misregistration, faint and strong objects) are reported beside it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, replace
from typing import Any

import numpy as np

from pipeline.config import CoregisterConfig, DetectConfig
from pipeline.evaluation.sweep_score import reliability, score_scene
from pipeline.io.calibration import active_model
from pipeline.kernels.coregister.shift import coregister_cube, shift_report
from pipeline.simulate.sweep_scene import Scenario, make_scene
from pipeline.stages.detect import detect_cube

__all__ = [
    "NOMINAL_CONTRAST",
    "default_plan",
    "reliability",
    "run_scenario",
    "run_sweep",
    "score_scene",
    "summarise",
    "summarise_unmodelled",
    "unmodelled_plan",
]

NOMINAL_CONTRAST = 0.08
"""Contrast of the envelope (RMS reflectance difference; a grey ship on water is about 0.08)."""

ENVELOPE_CLOUD = 0.3
ENVELOPE_MISREG_PX = 0.5
SIZE_BINS_M: tuple[tuple[float, float], ...] = ((0, 20), (20, 40), (40, 1e9))
"""Object length bins of the targets: under 20 m, 20-40 m, 40 m and over."""
TARGETS = {
    "recall_40m_plus": 0.95,
    "recall_20_40m": 0.8,
    "precision": 0.95,
    "false_alarms_per_km2_date": 0.05,
    "date_interval_share": 0.95,
}
"""Issue 4's targets in the envelope (``false_alarms`` is a ceiling, the rest floors)."""


def default_plan(quick: bool = False, seeds: Sequence[int] = (0,)) -> list[Scenario]:
    """The scenarios of the default sweep.

    Parameters
    ----------
    quick
        A small subset (3 scenarios, fewer sizes and dates) for tests.
    seeds
        Repeat every scenario with each seed.

    Returns
    -------
    list of Scenario
        The envelope grid (cloud 0, 0.1, 0.2, 0.3 x misregistration 0, 0.25, 0.5 px at the
        nominal contrast: 12 scenes), misregistration 1 px (cloud 0.1 and 0.3), and faint
        (0.03) and strong (0.15) objects at cloud 0.1 / 0.25 px and cloud 0.3 / 0.5 px.
    """
    if quick:
        sizes = (10.0, 20.0, 60.0, 130.0)
        base = [
            Scenario(0.0, 0.0, NOMINAL_CONTRAST, sizes, 6),
            Scenario(0.3, 0.5, NOMINAL_CONTRAST, sizes, 6),
            Scenario(0.1, 1.0, 0.15, sizes, 6),
        ]
    else:
        base = [
            Scenario(cloud, misreg, NOMINAL_CONTRAST)
            for cloud in (0.0, 0.1, 0.2, 0.3)
            for misreg in (0.0, 0.25, 0.5)
        ]
        base += [Scenario(cloud, 1.0, NOMINAL_CONTRAST) for cloud in (0.1, 0.3)]
        base += [
            Scenario(cloud, misreg, contrast)
            for contrast in (0.03, 0.15)
            for cloud, misreg in ((0.1, 0.25), (0.3, 0.5))
        ]
    return [replace(s, seed=seed) for seed in seeds for s in base]


def unmodelled_plan(quick: bool = False, seeds: Sequence[int] = (0,)) -> list[Scenario]:
    """Scenarios under conditions the detector does not model
    (:mod:`pipeline.simulate.sweep_unmodelled`).

    Each is a scenario of :func:`default_plan` (the *modelled twin*: same setting and seed, so
    the same ground, objects, cloud fields and shifts) with one or more conditions changed; all
    lie in the envelope (nominal contrast, cloud <= 0.3, misregistration <= 0.5 px).

    Parameters
    ----------
    quick
        One small scene with every condition changed (its twin is the second quick scenario).
    seeds
        Repeat every scenario with each seed.

    Returns
    -------
    list of Scenario
        Ice and haze clouds, and diffuse and umbra shadows, at cloud 0.1 / 0.25 px and
        0.3 / 0.5 px; non-rectangular objects (``varied``) at 0 / 0 px, 0.1 / 0.25 px and
        0.3 / 0.5 px; every condition together (diffuse shadows) at 0.2 / 0.25 px (ice) and
        0.2 / 0.5 px (haze): 13 scenes.
    """
    if quick:
        sizes = (10.0, 20.0, 60.0, 130.0)
        base = [
            Scenario(
                0.3, 0.5, NOMINAL_CONTRAST, sizes, 6,
                cloud_spectrum="ice", shadow_spectrum="diffuse", object_shape="varied",
            )
        ]  # fmt: skip
    else:
        cloudy = ((0.1, 0.25), (0.3, 0.5))
        base = [
            Scenario(cloud, misreg, NOMINAL_CONTRAST, cloud_spectrum=kind)
            for kind in ("ice", "haze")
            for cloud, misreg in cloudy
        ]
        base += [
            Scenario(cloud, misreg, NOMINAL_CONTRAST, shadow_spectrum=kind)
            for kind in ("diffuse", "umbra")
            for cloud, misreg in cloudy
        ]
        base += [
            Scenario(cloud, misreg, NOMINAL_CONTRAST, object_shape="varied")
            for cloud, misreg in ((0.0, 0.0), *cloudy)
        ]
        every = replace(Scenario(), shadow_spectrum="diffuse", object_shape="varied")
        base += [
            replace(every, cloud_fraction=0.2, misregistration_px=0.25, cloud_spectrum="ice"),
            replace(every, cloud_fraction=0.2, misregistration_px=0.5, cloud_spectrum="haze"),
        ]
    return [replace(s, seed=seed) for seed in seeds for s in base]


def _coreg_rmse(report: dict, truth: dict) -> float | None:
    """RMSE (px) of the estimated shifts against the truth, relative to the reference date."""
    ref = truth["shifts"][report["reference_date"]]
    errors = []
    for rec in report["dates"]:
        if rec["status"] == "failed" or rec["date"] == report["reference_date"]:
            continue
        want = truth["shifts"][rec["date"]]
        ex = rec["shift_x_px"] - (want["shift_x_px"] - ref["shift_x_px"])
        ey = rec["shift_y_px"] - (want["shift_y_px"] - ref["shift_y_px"])
        errors.append(ex * ex + ey * ey)
    return round(math.sqrt(float(np.mean(errors))), 4) if errors else None


def run_scenario(
    scn: Scenario, detect_cfg: DetectConfig, coreg_cfg: CoregisterConfig
) -> dict[str, Any]:
    """Generate, co-register, detect and score one scenario.

    Returns
    -------
    dict
        The scenario, the scores of :func:`score_scene`, ``area_km2``, ``n_pairs`` (date pairs
        detected), ``n_dates_dropped``, ``coreg_rmse_px``, ``masked_fraction`` and ``seconds``.
    """
    t0 = time.perf_counter()
    scene = make_scene(scn)
    aligned, estimates, ref = coregister_cube(scene.cube, coreg_cfg, drop_nonfinite=True)
    report = shift_report(scene.cube["time"].values, estimates, ref)
    ny, nx = aligned.sizes["y"], aligned.sizes["x"]
    result = detect_cube(
        aligned,
        np.zeros((ny, nx), dtype=np.int16),
        [],
        [],
        detect_cfg,
        calibration_model=active_model(),
    )
    days = [str(np.datetime_as_string(t, unit="D")) for t in aligned["time"].values]
    scores = score_scene(result.features, scene.truth, days, scene.cube["valid"].values)
    return {
        "scenario": asdict(scn),
        **scores,
        "area_km2": scene.truth["area_km2"],
        "n_pairs": max(0, len(days) - 1),
        "n_dates_dropped": scene.cube.sizes["time"] - len(days),
        "coreg_rmse_px": _coreg_rmse(report, scene.truth),
        "masked_fraction": round(1 - float(scene.cube["valid"].values.mean()), 4),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _ratio(num: float, den: float) -> float | None:
    return round(num / den, 4) if den else None


VISIT_MIN_SIZE_M = 40.0
"""Visits (objects there on one date) are reported for objects of this length and more."""


def _pool(records: Iterable[dict]) -> dict[str, Any]:
    """Pooled figures of a set of scene records."""
    recs = list(records)
    by_size: dict[float, list[int]] = {}
    for r in recs:
        for key, (hit, n) in r["by_size"].items():
            cell = by_size.setdefault(float(key), [0, 0])
            cell[0] += hit
            cell[1] += n
    tp, fp = sum(r["tp"] for r in recs), sum(r["fp"] for r in recs)
    exposure = sum(r["area_km2"] * r["n_pairs"] for r in recs)
    found = sum(r["removals_found"] for r in recs)
    dated = sum(r["removals_dated"] for r in recs)
    bins = {}
    for lo, hi in SIZE_BINS_M:
        hit = sum(v[0] for k, v in by_size.items() if lo <= k < hi)
        n = sum(v[1] for k, v in by_size.items() if lo <= k < hi)
        name = f"recall_{lo:g}_{hi:g}m" if hi < 1e8 else f"recall_{lo:g}m_plus"
        bins[name] = _ratio(hit, n)
    vis = [0, 0]
    for r in recs:
        for key, (hit, n) in r.get("visits_by_size", {}).items():
            if float(key) >= VISIT_MIN_SIZE_M:
                vis[0] += hit
                vis[1] += n
    rmse = [r["coreg_rmse_px"] for r in recs if r["coreg_rmse_px"] is not None]
    causes: dict[str, int] = {}
    for r in recs:
        for k, v in r.get("fp_causes", {}).items():
            causes[k] = causes.get(k, 0) + v
    return {
        "n_scenes": len(recs),
        "curve": [
            {"size_m": k, "recall": _ratio(v[0], v[1]), "n_events": v[1]}
            for k, v in sorted(by_size.items())
        ],
        **bins,
        "recall_visits_40m_plus": _ratio(vis[0], vis[1]),
        "n_visit_events": vis[1],
        "precision": _ratio(tp, tp + fp) if tp + fp else 1.0,
        "tp_detections": tp,
        "fp_detections": fp,
        "false_alarms_per_km2_date": _ratio(fp, exposure),
        "false_alarm_causes": causes,
        "date_interval_share": _ratio(dated, found),
        "removals_found": found,
        "coreg_rmse_px": round(float(np.sqrt(np.mean(np.square(rmse)))), 4) if rmse else None,
        "calibration": reliability([o for r in recs for o in r.get("outcomes", [])]),
    }


def _check(pooled: dict) -> dict[str, bool | None]:
    out: dict[str, bool | None] = {}
    for key, target in TARGETS.items():
        value = pooled.get(key)
        if value is None:
            out[key] = None
        elif key.startswith("false_alarms"):
            out[key] = value <= target
        else:
            out[key] = value >= target
    return out


SCENE_LEAVES_OUT = ("curve", "n_scenes", "calibration")
"""Pooled figures not repeated on each scene's line."""


def _scenario(r: dict) -> Scenario:
    """The scenario of a record (records of older runs lack the newer fields: defaults)."""
    return Scenario(**{**r["scenario"], "sizes_m": tuple(r["scenario"]["sizes_m"])})


HEADLINE_KEYS = (
    "n_scenes",
    "recall_0_20m",
    "recall_20_40m",
    "recall_40m_plus",
    "recall_visits_40m_plus",
    "precision",
    "tp_detections",
    "fp_detections",
    "false_alarms_per_km2_date",
    "false_alarm_causes",
    "date_interval_share",
)
"""The pooled figures repeated for each unmodelled condition and its modelled twins."""


def _headline(pooled: dict) -> dict[str, Any]:
    cal = pooled["calibration"]
    return {
        **{k: pooled[k] for k in HEADLINE_KEYS},
        "calibration": {"brier": cal["brier"], "n": cal["n"]},
    }


def _by_shape(records: Sequence[dict]) -> dict[str, dict[str, Any]]:
    """Recall of lasting changes per object shape and size bin, pooled."""
    cells: dict[str, dict[float, list[int]]] = {}
    for r in records:
        for name, sizes in r.get("by_shape", {}).items():
            for key, (hit, n) in sizes.items():
                cell = cells.setdefault(name, {}).setdefault(float(key), [0, 0])
                cell[0] += hit
                cell[1] += n
    out = {}
    for name, sizes in sorted(cells.items()):
        row: dict[str, Any] = {}
        for lo, hi in SIZE_BINS_M:
            hit = sum(v[0] for k, v in sizes.items() if lo <= k < hi)
            n = sum(v[1] for k, v in sizes.items() if lo <= k < hi)
            label = f"{lo:g}_{hi:g}m" if hi < 1e8 else f"{lo:g}m_plus"
            row[f"recall_{label}"] = _ratio(hit, n)
            row[f"n_events_{label}"] = n
        out[name] = row
    return out


def summarise_unmodelled(records: Sequence[dict]) -> dict[str, Any] | None:
    """The scenes under conditions the detector does not model, apart from the others.

    Parameters
    ----------
    records
        Every record of the run (modelled and not).

    Returns
    -------
    dict or None
        None without unmodelled records; else ``conditions`` (what each is),
        ``all`` (pooled over the unmodelled scenes: the envelope's figures, calibration
        included, ``targets``/``meets`` and ``recall_by_shape``), ``modelled_twins`` (the same
        pooled over the scenes of this run that are their twins: same setting and seed, every
        condition modelled; one twin per unmodelled scene, so a twin shared by several counts
        as often; None if any is absent), and ``by_condition`` (per combination of
        conditions: headline figures, and ``twins``: the same of its twins).
    """
    from pipeline.simulate.sweep_unmodelled import CONDITION_NOTES

    unmodelled = [r for r in records if _scenario(r).unmodelled]
    if not unmodelled:
        return None
    modelled = {_scenario(r): r for r in records if not _scenario(r).unmodelled}

    def twins(recs: Sequence[dict]) -> list[dict]:
        found = [modelled.get(_scenario(r).modelled_twin()) for r in recs]
        return [t for t in found if t is not None] if all(found) else []

    every = _pool(unmodelled)
    every["targets"] = TARGETS
    every["meets"] = _check(every)
    every["recall_by_shape"] = _by_shape(unmodelled)
    all_twins = twins(unmodelled)
    groups: dict[str, list[dict]] = {}
    for r in unmodelled:
        groups.setdefault(" + ".join(_scenario(r).unmodelled), []).append(r)
    by_condition = {}
    for label, recs in sorted(groups.items()):
        pair = twins(recs)
        by_condition[label] = {
            **_headline(_pool(recs)),
            "twins": _headline(_pool(pair)) if pair else None,
        }
    return {
        "conditions": CONDITION_NOTES,
        "n_scenes": len(unmodelled),
        "all": every,
        "modelled_twins": {**_pool(all_twins), "recall_by_shape": _by_shape(all_twins)}
        if all_twins
        else None,
        "by_condition": by_condition,
    }


def summarise(records: Sequence[dict]) -> dict[str, Any]:
    """Pooled figures of the sweep: the envelope (with the targets), each setting, and apart,
    the scenes under conditions the detector does not model.

    Every figure but ``unmodelled`` and ``scenes`` is pooled over the *modelled* scenes only
    (clouds of the detector's cloud-top spectrum, grey shadows, rectangles), as before those
    conditions existed, so they stay comparable.

    Returns
    -------
    dict
        ``envelope`` (pooled, ``targets`` and ``meets`` per target), ``curves`` (recall per
        size: the envelope, each other contrast, misregistration beyond 0.5 px), ``by_contrast``,
        ``by_misregistration`` and ``by_cloud`` (pooled per value), ``unmodelled``
        (:func:`summarise_unmodelled`, present when the run has such scenes) and ``scenes``
        (one line per scenario, every scene).
    """

    def sc(r: dict, key: str) -> float:
        return float(r["scenario"][key])

    everything = list(records)
    records = [r for r in everything if not _scenario(r).unmodelled]
    env = [
        r
        for r in records
        if sc(r, "cloud_fraction") <= ENVELOPE_CLOUD + 1e-9
        and sc(r, "misregistration_px") <= ENVELOPE_MISREG_PX + 1e-9
        and abs(sc(r, "contrast") - NOMINAL_CONTRAST) < 1e-9
    ]
    envelope = _pool(env)
    envelope["targets"] = TARGETS
    envelope["meets"] = _check(envelope)

    def group(key: str) -> dict[str, dict]:
        values = sorted({sc(r, key) for r in records})
        return {f"{v:g}": _pool(r for r in records if sc(r, key) == v) for v in values}

    curves = {"envelope": envelope["curve"]}
    for c in sorted({sc(r, "contrast") for r in records} - {NOMINAL_CONTRAST}):
        curves[f"contrast {c:g}"] = _pool(r for r in records if sc(r, "contrast") == c)["curve"]
    far = [
        r
        for r in records
        if sc(r, "misregistration_px") > ENVELOPE_MISREG_PX + 1e-9
        and abs(sc(r, "contrast") - NOMINAL_CONTRAST) < 1e-9
    ]
    if far:
        worst = max(sc(r, "misregistration_px") for r in far)
        curves[f"misregistration {worst:g} px"] = _pool(far)["curve"]
    out: dict[str, Any] = {
        "envelope": envelope,
        "curves": curves,
        "by_contrast": group("contrast"),
        "by_misregistration": group("misregistration_px"),
        "by_cloud": group("cloud_fraction"),
    }
    unmodelled = summarise_unmodelled(everything)
    if unmodelled is not None:
        out["unmodelled"] = unmodelled
    return {
        **out,
        "scenes": [
            {
                **r["scenario"],
                **{k: v for k, v in _pool([r]).items() if k not in SCENE_LEAVES_OUT},
                "n_dates_dropped": r["n_dates_dropped"],
                "masked_fraction": r["masked_fraction"],
                "seconds": r["seconds"],
            }
            for r in everything
        ],
    }


def run_sweep(
    plan: Sequence[Scenario], detect_cfg: DetectConfig, coreg_cfg: CoregisterConfig
) -> dict[str, Any]:
    """Run every scenario of ``plan`` and summarise (see :func:`summarise`)."""
    records = [run_scenario(s, detect_cfg, coreg_cfg) for s in plan]
    return {**summarise(records), "records": records}
