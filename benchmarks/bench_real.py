"""Real-background benchmark: ships removed from / added to real port scenes, and real OSCD pairs.

Run from the project root (``make bench-real``; about 8-10 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_real.py [--out benchmarks/real.json] [--seed 0]
        [--ports algiers busan] [--parts pair series oscd sweep] [--jobs 2] [--config FILE]
        [--compare-model PATH ...] [--outcomes PATH]

Built only from ``../shared/data`` (the sen2ships ports and the OSCD cities); without it, prints
one JSON line saying why and exits 0, writing nothing. For each port
(:mod:`pipeline.simulate.ports` makes the cases, :mod:`pipeline.evaluation.ports_bench` runs them,
:mod:`pipeline.evaluation.ports` scores them):

- the scene is cut to its ships (bounding box + 48 px, at most :data:`MAX_PX` pixels: the
  window with the most ship pixels; ships it cuts are dropped and counted in ``crop``);
- *pair cases* (``basewatch pair``, objects mode): all ships removed, a random half removed, a
  random half arriving;
- *series cases* (the site's multi-date detector): :data:`SERIES_DATES` dates 5 days apart,
  each ship leaving at one date, arriving at one date or staying;
- both through CVA + Otsu (signed components of at least ``detect.min_area_m2``) on the same
  co-registered bands.

Every date has its own shift (<= 0.5 px), gain, haze and noise. ``oscd``: every OSCD city,
``pair --mode area`` pixel F1 against CVA + Otsu and the objects mode's detections outside the
labelled change per km2. The JSON (``--out``) holds ``total`` (basewatch over all ports, pair
and series cases together: ``recall``, ``sign_accuracy``, ``false_alarms_per_km2_per_pair``),
``pair``, ``series``, ``baseline``, ``ports``, ``oscd``, ``calibration`` and what was run.

``calibration`` (:func:`calibration_block`): how well the calibrated confidence of the active
model (the shipped ``pipeline/calibration.json`` unless ``BASEWATCH_CALIBRATION`` says
otherwise) holds on real backgrounds, from the outcomes of the runs above (every candidate
detection labelled true, false or neutral, :func:`pipeline.evaluation.ports.label_detections`; no
extra detector run), on the report ports only
(:data:`pipeline.evaluation.ports_bench.CALIBRATION_REPORT_PORTS`, never fitted on): the
reliability table
and Brier score of the series cases (every candidate, and those reported at
``detect.min_confidence``), of the pair cases (``basewatch pair`` reports the noise-only
confidence: both it and the model applied offline), and beside them the same of the generated
sweep (``sweep``: :func:`pipeline.evaluation.sweep.default_plan` seed 0, the scenes
``benchmarks/bench_detect.py`` reports, run here with ``min_confidence`` 0; about 1 minute).
``--compare-model`` adds the same figures for other model files on the same outcomes;
``--outcomes`` writes every outcome (JSON) for offline fits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_core import project_path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MAX_PX = 600_000
"""Largest port window (pixels): keeps ``make bench-real`` near 10 minutes on 2 cores."""
SERIES_DATES = 7
"""Dates of a series case."""
METHODS = ("basewatch", "baseline")


def _port_seed(seed: int, port: str) -> int:
    """A port's seed: the run seed and the port's name (independent of which ports run)."""
    return seed * 1_000_003 + zlib.crc32(port.encode())


def run_port(args: tuple[str, int, tuple[str, ...], str | None]) -> dict[str, Any]:
    """Every case of one port through basewatch and the baseline; counts per case, and
    basewatch's outcomes (``outcomes``: each tagged with its ``port`` and ``case``)."""
    port, seed, parts, config_path = args
    from pipeline.config import load_config
    from pipeline.evaluation.ports_bench import area_km2, run_pair_case, run_series_case
    from pipeline.simulate.ports import crop_scene, pair_cases, read_port, series_case

    cfg = load_config(config_path)
    t0 = time.perf_counter()
    scene, crop = crop_scene(read_port(SHARED / "sen2ships" / port), MAX_PX)
    km2 = area_km2(scene)
    pseed = _port_seed(seed, port)
    out: dict[str, Any] = {"port": port, "seed": pseed, "crop": crop, "area_km2": round(km2, 3)}
    out["pixel_size_m"] = round(scene.pixel_size_m, 3)
    cases = []
    outcomes: list[dict] = []
    if "pair" in parts:
        for case in pair_cases(scene, pseed):
            ours, base, info, outs = run_pair_case(case, scene, cfg)
            outcomes += [{"port": port, "case": case.name, **o} for o in outs]
            cases.append(
                {
                    "kind": "pair",
                    "case": case.name,
                    "n_pairs": 1,
                    "basewatch": ours,
                    "baseline": base,
                    "info": info,
                }
            )
    if "series" in parts:
        case = series_case(scene, pseed + 1, n_dates=SERIES_DATES)
        ours, base, info, outs = run_series_case(case, scene, cfg)
        outcomes += [{"port": port, "case": "series", **o} for o in outs]
        cases.append(
            {
                "kind": "series",
                "case": "series",
                "n_pairs": len(case.dates) - 1,
                "basewatch": ours,
                "baseline": base,
                "info": info,
                "events": {str(i): [k, case.dates[t]] for i, (k, t) in case.events.items()},
            }
        )
    out["cases"] = cases
    out["outcomes"] = outcomes
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def summarise(port_runs: list[dict]) -> dict[str, Any]:
    """Pooled figures: per port and in total, pair and series apart and together."""
    from pipeline.evaluation.ports import add_counts, ratios

    pooled: dict[tuple[str, str, str], dict] = {}  # (method, scope, port or "all")
    for run in port_runs:
        for case in run["cases"]:
            for method in METHODS:
                for scope in (case["kind"], "all"):
                    for where in (run["port"], "all"):
                        total = pooled.setdefault((method, scope, where), {})
                        add_counts(total, case[method], run["area_km2"], case["n_pairs"])

    def fig(method: str, scope: str, where: str) -> dict | None:
        total = pooled.get((method, scope, where))
        return ratios(total) if total else None

    headline = ("recall", "sign_accuracy", "false_alarms_per_km2_per_pair")
    total = fig("basewatch", "all", "all") or {}
    ports: dict[str, Any] = {}
    table = []
    for run in port_runs:
        p = run["port"]
        ports[p] = {
            "crop": run["crop"],
            "area_km2": run["area_km2"],
            "pixel_size_m": run["pixel_size_m"],
            "seed": run["seed"],
            "seconds": run["seconds"],
            **{m: {s: fig(m, s, p) for s in ("pair", "series", "all")} for m in METHODS},
            "cases": [
                {k: v for k, v in c.items() if k not in ("basewatch", "baseline")}
                | {m: {k: v for k, v in c[m].items() if k != "by_length"} for m in METHODS}
                for c in run["cases"]
            ],
        }
        for scope in ("pair", "series"):
            if fig("basewatch", scope, p) is None:
                continue
            row: dict[str, Any] = {"port": p, "cases": scope}
            for m in METHODS:
                f = fig(m, scope, p)
                for k in headline:
                    row[f"{m}_{k}"] = f[k] if f else None
            table.append(row)
    return {
        "total": {k: total.get(k) for k in headline},
        "total_counts": total.get("counts"),
        "total_recall_by_length": total.get("recall_by_length"),
        "pair": fig("basewatch", "pair", "all"),
        "series": fig("basewatch", "series", "all"),
        "baseline": {k: (fig("baseline", "all", "all") or {}).get(k) for k in headline}
        | {s: fig("baseline", s, "all") for s in ("all", "pair", "series")},
        "table": table,
        "ports": ports,
    }


def sweep_outcomes(config_path: str | None, jobs: int) -> list[dict]:
    """Outcomes of every candidate detection of the generated sweep the detection benchmark
    reports (:func:`pipeline.evaluation.sweep.default_plan`, seed 0), run with ``min_confidence``
    0."""
    from itertools import repeat

    from pipeline.config import load_config
    from pipeline.evaluation.sweep import default_plan, run_scenario

    cfg = load_config(config_path)
    detect_cfg = cfg.detect.model_copy(update={"min_confidence": 0.0})
    plan = default_plan(seeds=SWEEP_SEEDS)
    args = (plan, repeat(detect_cfg), repeat(cfg.coregister))
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            records = list(pool.map(run_scenario, *args))
    else:
        records = list(map(run_scenario, *args))
    return [o for r in records for o in r["outcomes"]]


SWEEP_SEEDS = (0,)
"""Generator seeds of the sweep reference (those ``benchmarks/bench_detect.py`` reports)."""


def _reliability(outcomes: list[dict], confidence: Any) -> dict[str, Any]:
    from pipeline.evaluation.sweep_score import reliability

    pairs = zip(outcomes, confidence, strict=True)
    rel = reliability([{"label": o["label"], "confidence": float(c)} for o, c in pairs])
    return rel | {"n_true": sum(o["label"] for o in outcomes)}


def model_figures(
    outcomes: list[dict], model: Any, seed_level: float, min_confidence: float
) -> dict[str, Any]:
    """Reliability and Brier score of ``model`` on outcomes: every candidate, and those it
    would report (confidence at least ``min_confidence``)."""
    import numpy as np

    from pipeline.kernels.detect.calibration import design_outcomes

    conf = model.predict(design_outcomes(outcomes, seed_level)) if outcomes else np.zeros(0)
    kept = conf >= min_confidence
    return {
        "candidates": _reliability(outcomes, conf),
        "reported": _reliability([o for o, k in zip(outcomes, kept, strict=True) if k], conf[kept]),
    }


def calibration_block(
    outcomes: list[dict],
    sweep: list[dict] | None,
    models: dict[str, Any],
    seed_level: float,
    min_confidence: float,
) -> dict[str, Any]:
    """The ``calibration`` block: each model's reliability on the report ports and the sweep.

    Parameters
    ----------
    outcomes
        Real-background outcomes (``port``, ``path`` ``series`` or ``pair``, ``label``, the
        detection's properties and ``seed_level``); only the report ports' are used.
    sweep
        Outcomes of the generated sweep (None: not run).
    models
        Name -> :class:`pipeline.kernels.detect.calibration.Model` (or None: no model, noise-only
        confidence).
    seed_level
        Seed level of outcomes that carry none (the sweep's).
    min_confidence
        ``detect.min_confidence``: the ``reported`` figures keep detections at least this likely.

    Returns
    -------
    dict
        ``split``, ``report_ports`` (those run), ``n`` (true / false outcomes per path), per
        model ``models[name]``: ``fitted_on`` and ``series``, ``pair`` (the model applied
        offline), ``sweep`` (each ``candidates`` and ``reported``: :func:`reliability` plus
        ``n_true``), and ``pair_noise_only`` (the noise-only confidence ``basewatch pair``
        reports).
    """
    from pipeline.evaluation.ports_bench import CALIBRATION_FIT_PORTS, CALIBRATION_REPORT_PORTS

    held_out = [o for o in outcomes if o["port"] in CALIBRATION_REPORT_PORTS]
    by_path = {k: [o for o in held_out if o["path"] == k] for k in ("series", "pair")}
    block: dict[str, Any] = {
        "what": "reliability (per confidence bin: detections, mean confidence, share true) and "
        "Brier score of the calibrated confidence on the report ports' cases (never fitted on), "
        "every candidate and those reported at detect.min_confidence, beside the generated sweep",
        "split": {
            "fit_ports": list(CALIBRATION_FIT_PORTS),
            "report_ports": list(CALIBRATION_REPORT_PORTS),
            "chosen": "fixed before any calibration figure of a port was seen",
        },
        "report_ports": sorted({o["port"] for o in held_out}),
        "min_confidence": min_confidence,
        "n": {
            k: {"true": sum(o["label"] for o in v), "false": sum(1 - o["label"] for o in v)}
            for k, v in (*by_path.items(), ("sweep", sweep))
            if v is not None
        },
        "sweep_source": None
        if sweep is None
        else "pipeline.evaluation.sweep.default_plan seeds "
        f"{list(SWEEP_SEEDS)} (bench_detect.py's), "
        "min_confidence 0, run by this benchmark",
        "pair_noise_only": _reliability(
            by_path["pair"], [o.get("noise_confidence") or 0.0 for o in by_path["pair"]]
        ),
        "models": {},
    }
    for name, model in models.items():
        if model is None:
            block["models"][name] = None
            continue
        fig = {k: model_figures(v, model, seed_level, min_confidence) for k, v in by_path.items()}
        if sweep is not None:
            fig["sweep"] = model_figures(sweep, model, seed_level, min_confidence)
        meta = dict(model.meta or {})
        fitted_on = meta.get("fitted_on") or {"sweep_seeds": meta.get("seeds"), "real_ports": []}
        block["models"][name] = {"fitted_on": fitted_on, **fig}
    return block


def oscd_summary(config_path: str | None) -> dict[str, Any]:
    """Every OSCD city: area-mode F1 against CVA + Otsu, objects outside the labelled change."""
    from pipeline.config import load_config
    from pipeline.evaluation.pair import oscd_city

    folder = SHARED / "oscd"
    cfg = load_config(config_path)
    cities = {
        c: oscd_city(folder / c, cfg)
        for c in sorted(p.name for p in folder.iterdir() if (p / "imgs_1").is_dir())
    }
    n = len(cities)
    if not n:
        return {"cities": {}}
    f1 = [c["pair_area"]["f1"] for c in cities.values()]
    f1_base = [c["cva_otsu"]["f1"] for c in cities.values()]
    ratios = [c["f1_ratio"] for c in cities.values() if c["f1_ratio"] is not None]
    outside = [c["objects"]["outside_change_per_km2"] for c in cities.values()]
    mean_f1, mean_base = sum(f1) / n, sum(f1_base) / n
    return {
        "cities": cities,
        "mean_f1_pair_area": round(mean_f1, 4),
        "mean_f1_cva_otsu": round(mean_base, 4),
        "ratio_of_means": round(mean_f1 / mean_base, 3) if mean_base else None,
        "mean_of_ratios": round(sum(ratios) / len(ratios), 3) if ratios else None,
        "mean_objects_outside_change_per_km2": round(
            sum(o for o in outside if o is not None) / n, 4
        ),
    }


def _calibration(runs: list[dict], args: argparse.Namespace, config: Any) -> dict[str, Any]:
    """The calibration block of this run (the sweep run here when asked), and ``--outcomes``."""
    from pipeline.io import calibration
    from pipeline.kernels.detect.core import DEFAULT_BANDS, series_thresholds

    outcomes = [o for r in runs for o in r["outcomes"]]
    sweep = sweep_outcomes(args.config, args.jobs) if "sweep" in args.parts else None
    chosen = os.environ.get(calibration.MODEL_ENV, "").strip() or str(calibration.MODEL_PATH)
    models = {f"active ({project_path(chosen)})": calibration.active_model()}
    models |= {f"compared ({p})": calibration.load_model(p.resolve()) for p in args.compare_model}
    seed_level, _ = series_thresholds(config.detect, len(DEFAULT_BANDS))
    if args.outcomes is not None:
        _write(args.outcomes, {"real": outcomes, "sweep": sweep, "sweep_seed_level": seed_level})
    return calibration_block(outcomes, sweep, models, seed_level, config.detect.min_confidence)


def _git_commit() -> str | None:
    try:
        r = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
        return r.stdout.strip() + ("-dirty" if dirty else "") if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def _write(path: Path, result: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, write ``--out`` and print the headline figures as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "real.json")
    parser.add_argument("--seed", type=int, default=0, help="Run seed (each port derives its own).")
    parser.add_argument("--ports", nargs="+", default=None, help="Ports (default: every one).")
    parser.add_argument(
        "--parts",
        nargs="+",
        default=["pair", "series", "oscd", "sweep"],
        choices=["pair", "series", "oscd", "sweep"],
        help="sweep: the generated sweep beside the real cases in the calibration block.",
    )
    parser.add_argument(
        "--compare-model",
        type=Path,
        action="append",
        default=[],
        help="Another calibration model file to report on the same outcomes (repeatable).",
    )
    parser.add_argument("--outcomes", type=Path, default=None, help="Write every outcome here.")
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--config", type=str, default=None, help="Config YAML (params.yaml).")
    args = parser.parse_args(argv)

    ships_dir = SHARED / "sen2ships"
    if not ships_dir.is_dir():
        print(json.dumps({"benchmark": "real", "skipped": f"no shared data at {ships_dir}"}))
        return 0
    from pipeline.config import load_config

    config = load_config(args.config)
    ports = args.ports or sorted(p.name for p in ships_dir.iterdir() if p.is_dir())
    parts = tuple(p for p in args.parts if p in ("pair", "series"))
    t0 = time.perf_counter()
    work = [(p, args.seed, parts, args.config) for p in ports]
    if parts:
        if args.jobs > 1:
            with ProcessPoolExecutor(args.jobs) as pool:
                runs = list(pool.map(run_port, work))
        else:
            runs = [run_port(w) for w in work]
    else:
        runs = []
    t_ports = time.perf_counter() - t0
    result: dict[str, Any] = {
        "benchmark": "real",
        "what": "annotated ships removed from / added to real Sentinel-2 port scenes "
        "(sen2ships), plus real OSCD pairs; the changes are simulated, the backgrounds real",
        **(summarise(runs) if runs else {"total": None}),
    }
    t_cal = time.perf_counter()
    result["calibration"] = _calibration(runs, args, config) if runs else None
    t_cal = time.perf_counter() - t_cal
    t1 = time.perf_counter()
    result["oscd"] = oscd_summary(args.config) if "oscd" in args.parts else None
    result["run"] = {
        "git_commit": _git_commit(),
        "seed": args.seed,
        "port_seeds": {r["port"]: r["seed"] for r in runs},
        "ports": ports,
        "parts": args.parts,
        "max_port_px": MAX_PX,
        "series_dates": SERIES_DATES,
        "config": config.model_dump(mode="json", include={"detect", "coregister", "load"}),
        "seconds": round(time.perf_counter() - t0, 1),
        "seconds_ports": round(t_ports, 1),
        "seconds_calibration": round(t_cal, 1),
        "seconds_oscd": round(time.perf_counter() - t1, 1),
        "platform": {"python": platform.python_version(), "cpus": os.cpu_count()},
    }
    _write(args.out, result)
    print(
        json.dumps(
            {
                "benchmark": "real",
                "out": str(args.out),
                "total": result["total"],
                "baseline": (result.get("baseline") or {}).get("all"),
                "seconds": result["run"]["seconds"],
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
