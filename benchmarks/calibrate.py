"""Fit the calibrated confidence of detections on generated scenes (writes the shipped model).

Run from the project root (about 2 minutes on 2 cores; with the five fitting ports about 3 more)::

    .venv/bin/python benchmarks/calibrate.py [--seeds 1 2 3] [--jobs 2] [--out PATH]
        [--real-ports algiers busan cartagena durban genoa] [--real-seed 1]
        [--real-paths series pair]

The scenes are those of the detection sweep (:func:`pipeline.evaluation.sweep.default_plan`) with
other generator seeds than the sweep that ``benchmarks/bench_detect.py`` reports (seed 0), so the
reported reliability and precision are measured on scenes the model never saw. Every candidate
is kept while fitting (``min_confidence`` 0); each true or false detection (neutral ones, on
objects too small to score, are left out) is one sample of a logistic model
(:mod:`pipeline.kernels.detect.calibration`). The model is written to
``pipeline/calibration.json`` (or ``--out``) and the fit, with its in-sample
reliability, printed as JSON.

``--real-ports`` adds the real-background cases of those sen2ships ports (only
:data:`pipeline.evaluation.ports_bench.CALIBRATION_FIT_PORTS`; the report ports are refused), run as
``benchmarks/bench_real.py`` runs them but with run seed ``--real-seed`` (1: not the cases
``bench_real.py`` reports, seed 0), and fits on the sweep's outcomes and theirs together
(every candidate of the series cases, and of the pair cases with ``--real-paths ... pair``;
:func:`pipeline.evaluation.ports_bench.case_outcomes`). Without ``../shared/data/sen2ships`` it
prints
why and exits 0, writing nothing. The model's ``meta.fitted_on`` records the data it was
fitted on (sweep seeds; real ports, seed and paths).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_detect import _sweep, _with
from bench_real import SHARED, run_port

from pipeline.config import load_config
from pipeline.evaluation.ports_bench import CALIBRATION_FIT_PORTS
from pipeline.evaluation.sweep import default_plan, reliability
from pipeline.io import calibration as model_file
from pipeline.io.atomic import write_json
from pipeline.kernels.detect import calibration
from pipeline.kernels.detect.core import DEFAULT_BANDS, series_thresholds

TRAINING_SEEDS = (1, 2, 3)
"""Generator seeds of the scenes fitted on (the reported sweep uses seed 0)."""


def real_outcomes(
    ports: list[str], seed: int, paths: list[str], config: Path | None, jobs: int
) -> list[dict]:
    """Outcomes of the real-background cases of ``ports`` (run as ``bench_real.py`` runs them,
    with run seed ``seed``), of the case kinds in ``paths``."""
    if not ports:
        return []
    work = [(p, seed, tuple(paths), str(config) if config else None) for p in ports]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as pool:
            runs = list(pool.map(run_port, work))
    else:
        runs = [run_port(w) for w in work]
    return [o for r in runs for o in r["outcomes"] if o["path"] in paths]


def main(argv: list[str] | None = None) -> int:
    """Run the training scenes, fit the model, write it and print the fit."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(TRAINING_SEEDS))
    parser.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--config", type=Path, default=None, help="Config YAML (params.yaml).")
    parser.add_argument("--out", type=Path, default=model_file.MODEL_PATH)
    parser.add_argument("--l2", type=float, default=1.0, help="Ridge penalty of the fit.")
    parser.add_argument(
        "--real-ports",
        nargs="+",
        default=[],
        metavar="PORT",
        help="Also fit on these ports' real-background cases (some of: "
        + " ".join(CALIBRATION_FIT_PORTS)
        + ").",
    )
    parser.add_argument("--real-seed", type=int, default=1, help="Run seed of the port cases.")
    parser.add_argument(
        "--real-paths",
        nargs="+",
        default=["series"],
        choices=["series", "pair"],
        help="Which port cases to fit on (the model is the multi-date detector's).",
    )
    args = parser.parse_args(argv)
    if 0 in args.seeds:
        parser.error("seed 0 is the reported sweep's: fit on other seeds")
    other = sorted(set(args.real_ports) - set(CALIBRATION_FIT_PORTS))
    if other:
        parser.error(
            f"--real-ports {' '.join(other)}: not a fitting port; use some of "
            f"{' '.join(CALIBRATION_FIT_PORTS)} (the others are where the fit is reported)"
        )
    if args.real_ports and args.real_seed == 0:
        parser.error("--real-seed 0 is the reported real-background run's: fit on another seed")
    if args.real_ports and not (SHARED / "sen2ships").is_dir():
        print(
            json.dumps(
                {"benchmark": "calibrate", "skipped": f"no shared data at {SHARED / 'sen2ships'}"}
            )
        )
        return 0

    # the detector runs without a model here (the one being fitted may not match it yet)
    os.environ[model_file.MODEL_ENV] = "none"
    config = load_config(args.config)
    detect_cfg = _with(config.detect, {"min_confidence": "0"})
    t0 = time.perf_counter()
    records = _sweep(default_plan(seeds=args.seeds), detect_cfg, config.coregister, args.jobs)
    outcomes = [o for r in records for o in r["outcomes"]]
    real = real_outcomes(args.real_ports, args.real_seed, args.real_paths, args.config, args.jobs)
    seed_level, _ = series_thresholds(detect_cfg, len(DEFAULT_BANDS))
    x = calibration.design_outcomes(outcomes + real, seed_level)
    y = np.asarray([o["label"] for o in outcomes + real])
    meta: dict[str, Any] = {
        "fitted_by": "benchmarks/calibrate.py",
        "fitted_on": {
            "sweep_seeds": list(args.seeds),
            "real_ports": list(args.real_ports),
            **({"real_seed": args.real_seed, "real_paths": args.real_paths} if real else {}),
        },
        "seeds": list(args.seeds),
        "n_scenes": len(records),
        "n_true": int(y.sum()),
        "n_false": int(len(y) - y.sum()),
        **(
            {
                "n_real_true": sum(o["label"] for o in real),
                "n_real_false": sum(1 - o["label"] for o in real),
            }
            if real
            else {}
        ),
        "l2": args.l2,
        "seed_level": round(seed_level, 4),
    }
    model = calibration.fit(x, y, l2=args.l2, meta=meta)
    probs = model.predict(x)
    fitted = [{**o, "confidence": float(p)} for o, p in zip(outcomes + real, probs, strict=True)]
    n_sweep = len(outcomes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json(args.out, model.to_json())
    print(
        json.dumps(
            {
                "benchmark": "calibrate",
                "simulated": True,
                "model": model.to_json(),
                "in_sample": reliability(fitted),
                "in_sample_sweep": reliability(fitted[:n_sweep]),
                "in_sample_real": reliability(fitted[n_sweep:]) if real else None,
                "seconds": round(time.perf_counter() - t0, 1),
                "out": str(args.out),
            },
            indent=1,
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
