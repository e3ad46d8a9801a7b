"""Benchmark of basewatch's detection: the scenario sweep on generated data (and OSCD, if asked).

Run from the project root (prints one JSON object; about 3-4 minutes on 2 cores)::

    .venv/bin/python benchmarks/bench_detect.py [--quick] [--seeds 0 1] [--jobs 2]
        [--plot docs/img/detectability.png] [--oscd ../shared/data/oscd]
        [--set KEY=VALUE ...] [--ablation] [--modelled-only]

The sweep (:mod:`pipeline.evaluation.sweep`, scenes from :mod:`pipeline.simulate.sweep_scene`)
generates small time series of 8 dates with planted objects of 10 to 130 m that are removed, appear,
or stay, under clouds (0-30 % per date on average, thin edges beyond the mask, shadows),
misregistration before co-registration (0-0.5 px, and 1 px), three contrasts with the
background, seasonal vegetation and now and then a wet apron. Each scene is co-registered and
detected by the project's own stages (``detect`` parameters from ``configs/params.yaml``); the
detector never sees the truth. Reported (pooled over scenes):

- ``envelope``: issue 4's setting (cloud <= 30 %, misregistration <= 0.5 px, nominal contrast):
  recall per object length (the detectability curve) and per size bin, precision, false alarms
  per km2 per date (and what they lie on), the share of detected true removals whose date
  interval holds the truth's, the co-registration RMSE, and whether each target is met;
- ``curves``: the detectability curve of the envelope, of each other contrast and of 1 px
  misregistration; ``by_contrast``, ``by_misregistration``, ``by_cloud``: the same figures per
  setting; ``scenes``: one line per scene;
- ``unmodelled``: apart, the scenes under conditions the detector does not model
  (:mod:`pipeline.simulate.sweep_unmodelled`: ice and haze clouds, shadows that keep the bluer
  diffuse
  light, aircraft-, ship- and ellipse-shaped objects;
  :func:`pipeline.evaluation.sweep.unmodelled_plan`),
  with the same figures (calibration included), recall per object shape, the same figures of
  their modelled twins (same scenes with the modelled conditions) and per condition. Every
  other figure is pooled over the modelled scenes only, as before these existed;
  ``--modelled-only`` leaves them out of the run.

``--set`` overrides a ``detect`` parameter for the run. ``--ablation`` reruns the sweep with
each cloud check beyond the SCL switched off in turn (:data:`ABLATIONS`) and reports, per
variant, the envelope's precision, recall and false alarms (with what they lie on): what each
check adds.

``--plot`` draws the curves (``docs/img/detectability.png``, shown in the README). ``--oscd``
adds, for each OSCD city found, the pixel precision/recall/F1 of ``basewatch pair --mode area``
and of plain CVA with an Otsu threshold on the same bands, grid and co-registration.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config import CoregisterConfig, DetectConfig, load_config
from pipeline.evaluation.sweep import default_plan, run_scenario, summarise, unmodelled_plan

ROOT = Path(__file__).resolve().parents[1]


def _one(args: tuple[Any, Any, Any]) -> dict:
    scn, detect_cfg, coreg_cfg = args
    return run_scenario(scn, detect_cfg, coreg_cfg)


def plot_curves(summary: dict, path: Path) -> None:
    """Recall against object length for each curve of the sweep; the targets dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    env = summary["envelope"]
    unmodelled = summary.get("unmodelled")
    fig, ax = plt.subplots(figsize=(7.0, 4.2), dpi=100)
    styles = {"envelope": dict(color="#1f4e79", lw=2.4, marker="o", zorder=3)}
    others = ["#c55a11", "#548235", "#7f7f7f", "#7030a0"]
    for i, (name, curve) in enumerate(summary["curves"].items()):
        xs = [c["size_m"] for c in curve if c["recall"] is not None]
        ys = [c["recall"] for c in curve if c["recall"] is not None]
        style = styles.get(name, dict(color=others[i % len(others)], lw=1.4, marker=".", ls="-"))
        label = (
            "cloud 0-30 %, misregistration 0-0.5 px, contrast 0.08" if name == "envelope" else name
        )
        ax.plot(xs, ys, label=label, **style)
    if unmodelled is not None:
        curve = [c for c in unmodelled["all"]["curve"] if c["recall"] is not None]
        ax.plot(
            [c["size_m"] for c in curve],
            [c["recall"] for c in curve],
            label="unmodelled conditions (other cloud/shadow spectra, shapes)",
            color="#1f4e79",
            lw=1.4,
            ls="--",
            marker="x",
        )
    ax.hlines(0.8, 20, 40, colors="k", linestyles="--", lw=1)
    ax.hlines(0.95, 40, 130, colors="k", linestyles="--", lw=1, label="targets (issue 4)")
    ax.set_xscale("log")
    ax.set_xticks([10, 15, 20, 30, 40, 60, 90, 130])
    ax.set_xticklabels(["10", "15", "20", "30", "40", "60", "90", "130"])
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("object length (m); width 0.4 x length; Sentinel-2 pixel 10 m")
    ax.set_ylabel("object recall (removed or appeared)")
    fa = env["false_alarms_per_km2_date"]
    ax.set_title(
        f"Detectability on generated scenes (SIMULATED): precision {env['precision']:.2f}, "
        f"{fa:.3f} false alarms/km$^2$/date",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7.5, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    fig.savefig(tmp)
    plt.close(fig)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def oscd_figures(oscd: Path, config: Any) -> dict[str, Any]:
    """Pixel scores of ``basewatch pair --mode area`` and CVA + Otsu on each OSCD city found."""
    from pipeline.evaluation.pair import oscd_city

    return {
        city: oscd_city(oscd / city, config)
        for city in sorted(p.name for p in oscd.iterdir() if (p / "imgs_1").is_dir())
    }


ABLATIONS: dict[str, dict[str, str]] = {
    "no excursion mask": {"excursion_mask": "false"},
    "no shadow form": {"shadow_model": "false"},
    "no haze form": {"haze_model": "false"},
    "no cloud-distance rule": {"one_date_cloud_distance_px": "0"},
    "no end check": {"end_check": "false"},
    "SCL only": {
        "excursion_mask": "false",
        "one_date_cloud_distance_px": "0",
        "end_check": "false",
    },
}
"""The cloud checks beyond the SCL, each switched off in turn (``--ablation``)."""


def _with(cfg: DetectConfig, overrides: dict[str, str]) -> DetectConfig:
    """``cfg`` with YAML-parsed overrides (validated again)."""
    if not overrides:
        return cfg
    values = {k: yaml.safe_load(v) for k, v in overrides.items()}
    return DetectConfig.model_validate({**cfg.model_dump(), **values})


def _sweep(
    plan: list, detect_cfg: DetectConfig, coreg_cfg: CoregisterConfig, jobs: int
) -> list[dict]:
    """Run every scene of ``plan`` (in ``jobs`` processes)."""
    work = [(s, detect_cfg, coreg_cfg) for s in plan]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            return list(pool.map(_one, work))
    return [_one(w) for w in work]


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    """The envelope figures a cloud check moves: precision, recall, false alarms (and the same
    of the unmodelled scenes, if run)."""
    env = summary.get("envelope", {})
    keys = (
        "precision",
        "recall_20_40m",
        "recall_40m_plus",
        "false_alarms_per_km2_date",
        "false_alarm_causes",
    )
    out = {k: env[k] for k in keys if k in env}
    unmodelled = summary.get("unmodelled")
    if unmodelled is not None:
        out["unmodelled"] = {k: unmodelled["all"][k] for k in keys}
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the sweep, print the JSON summary, optionally plot and score OSCD."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 small scenes (seconds).")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0], help="Seeds per scenario.")
    parser.add_argument(
        "--jobs", type=int, default=min(2, os.cpu_count() or 1), help="Scenes run in parallel."
    )
    parser.add_argument("--config", type=Path, default=None, help="Config YAML (params.yaml).")
    parser.add_argument("--plot", type=Path, default=None, help="Write the curves as a PNG.")
    parser.add_argument("--oscd", type=Path, default=None, help="OSCD folder (../shared/...).")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="Override a detect parameter (YAML value), e.g. --set excursion_mask=false.",
    )
    parser.add_argument(
        "--ablation",
        action="store_true",
        help="Also rerun the sweep with each cloud check beyond the SCL switched off.",
    )
    parser.add_argument(
        "--modelled-only",
        action="store_true",
        help="Leave out the scenes under conditions the detector does not model.",
    )
    args = parser.parse_args(argv)

    config = load_config(args.config)
    detect_cfg = _with(config.detect, dict(o.split("=", 1) for o in args.overrides))
    plan = default_plan(quick=args.quick, seeds=args.seeds)
    if not args.modelled_only:
        plan += unmodelled_plan(quick=args.quick, seeds=args.seeds)
    t0 = time.perf_counter()
    records = _sweep(plan, detect_cfg, config.coregister, args.jobs)
    summary = summarise(records)
    result: dict[str, Any] = {
        "benchmark": "detect",
        "simulated": True,
        "n_scenes": len(records),
        "seconds": round(time.perf_counter() - t0, 1),
        "platform": {"python": platform.python_version(), "cpus": os.cpu_count()},
        **summary,
    }
    if args.ablation:
        result["ablation"] = {
            name: _headline(
                summarise(_sweep(plan, _with(detect_cfg, o), config.coregister, args.jobs))
            )
            for name, o in ABLATIONS.items()
        }
        result["ablation"]["all checks"] = _headline(summary)
    if args.plot is not None:
        plot_curves(summary, args.plot)
        result["plot"] = str(args.plot)
    if args.oscd is not None:
        result["oscd"] = oscd_figures(args.oscd, config) if args.oscd.is_dir() else None
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
