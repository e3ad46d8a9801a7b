"""The calibration block of the real-background benchmark (``benchmarks/bench_real.py``).

Hand-made outcomes, no shared data: which outcomes it reports, with which keys and figures.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.evaluation.ports_bench import CALIBRATION_FIT_PORTS, CALIBRATION_REPORT_PORTS
from pipeline.kernels.detect.calibration import Model

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_real.py"


def _load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_real", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_real"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


bench = _load_bench()

SEED_LEVEL = 50.0


def _outcome(port: str, path: str, label: int, peak: float, **extra: float) -> dict:
    return {
        "port": port,
        "path": path,
        "label": label,
        "score_peak": peak,
        "score": peak / 2,
        "n_seed_pixels": 4,
        "n_dates_before": 3,
        "n_dates_after": 3,
        "mask_distance_px": 30.0,
        "seed_level": SEED_LEVEL,
        **extra,
    }


def test_the_split_is_disjoint_and_covers_the_ports() -> None:
    assert not set(CALIBRATION_FIT_PORTS) & set(CALIBRATION_REPORT_PORTS)
    assert len(CALIBRATION_FIT_PORTS) + len(CALIBRATION_REPORT_PORTS) == 9


def test_calibration_block_reports_held_out_ports_beside_the_sweep() -> None:
    # confidence rises with the peak score only: log(peak / seed level) is the first feature
    model = Model(0.0, (1.0, 0, 0, 0, 0, 0, 0), meta={"fitted_on": {"real_ports": ["busan"]}})
    report, fit_port = CALIBRATION_REPORT_PORTS[0], CALIBRATION_FIT_PORTS[0]
    real = [
        _outcome(report, "series", 1, SEED_LEVEL * np.e**3),  # confidence 0.953
        _outcome(report, "series", 0, SEED_LEVEL),  # confidence 0.5
        _outcome(report, "series", 0, SEED_LEVEL / np.e),  # 0.269: not reported at 0.5
        _outcome(report, "pair", 1, SEED_LEVEL * np.e**5, noise_confidence=0.999),
        _outcome(fit_port, "series", 1, SEED_LEVEL),  # a fitting port: left out
    ]
    sweep = [{**_outcome("sweep", "series", 1, 1.0), "seed_level": None}]  # 1 / 50: conf 0.02
    block = bench.calibration_block(
        real, sweep, {"shipped": model, "off": None}, SEED_LEVEL, min_confidence=0.5
    )
    assert block["report_ports"] == [report]
    assert block["n"] == {
        "series": {"true": 1, "false": 2},
        "pair": {"true": 1, "false": 0},
        "sweep": {"true": 1, "false": 0},
    }
    assert block["models"]["off"] is None
    shipped = block["models"]["shipped"]
    assert shipped["fitted_on"] == {"real_ports": ["busan"]}
    assert set(shipped) == {"fitted_on", "series", "pair", "sweep"}
    conf = 1 / (1 + np.exp(-np.array([3.0, 0.0, -1.0])))
    series = shipped["series"]
    expected = np.mean((conf - [1, 0, 0]) ** 2)
    assert series["candidates"]["brier"] == pytest.approx(expected, abs=1e-4)
    assert series["candidates"]["n"] == 3 and series["reported"]["n"] == 2
    bins = {b["bin"]: b for b in series["candidates"]["bins"]}
    assert bins["0-0.5"]["n"] == 1 and bins["0.5-0.8"]["n"] == 1 and bins["0.95-0.99"]["n"] == 1
    assert bins["0.95-0.99"]["true_share"] == 1.0
    # the sweep's outcomes carry no seed level: the block's is used (peak 1 -> log(1/50))
    sweep_conf = 1 / (1 + 50.0)
    assert shipped["sweep"]["candidates"]["brier"] == pytest.approx((1 - sweep_conf) ** 2, 1e-3)
    assert shipped["sweep"]["reported"]["n"] == 0
    assert block["pair_noise_only"]["brier"] == pytest.approx(1e-6, abs=1e-4)
    assert block["split"]["report_ports"] == list(CALIBRATION_REPORT_PORTS)
