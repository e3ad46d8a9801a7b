"""Calibrated confidence: the logistic fit, the mask distance, the shipped model, reliability."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipeline.errors import ConfigError
from pipeline.evaluation.sweep import reliability
from pipeline.io import calibration as model_file
from pipeline.io.calibration import load_model
from pipeline.kernels.detect import calibration
from pipeline.kernels.detect.calibration import (
    FEATURES,
    Model,
    add_mask_distance,
    design,
    fit,
)
from pipeline.kernels.detect.core import _drop_unlikely


def test_fit_recovers_a_known_logistic_model() -> None:
    rng = np.random.default_rng(3)
    n, k = 20_000, len(FEATURES)
    x = rng.normal(size=(n, k))
    true_w = np.linspace(-1.5, 1.5, k)
    p = 1 / (1 + np.exp(-(0.7 + x @ true_w)))
    y = (rng.random(n) < p).astype(float)
    model = fit(x, y, l2=0.0)
    assert model.intercept == pytest.approx(0.7, abs=0.08)
    np.testing.assert_allclose(model.coef, true_w, atol=0.08)
    # the ridge shrinks the coefficients towards 0
    shrunk = fit(x, y, l2=2000.0)
    assert np.abs(shrunk.coef).sum() < np.abs(model.coef).sum()


def test_mask_distance_is_the_distance_to_the_nearest_masked_pixel_of_either_date() -> None:
    labels = np.zeros((2, 40, 40), np.int32)
    labels[1, 10:13, 10:13] = 1  # feature 1: pair 1 (dates 1 -> 2)
    labels[0, 30:32, 30:32] = 2  # feature 2: pair 0 (dates 0 -> 1)
    masked = np.zeros((3, 40, 40), bool)
    masked[2, 10:13, 20] = True  # 8 px right of feature 1's edge (col 12 -> 20), date 2
    masked[0, 0, 0] = True  # date 0 is not a date of feature 1
    dates = ["2024-01-01", "2024-01-06", "2024-01-11"]

    def feat(label: int, pair: int) -> dict:
        return {
            "properties": {
                "label": label,
                "pair": pair,
                "date_before_latest": dates[pair],
                "date_after": dates[pair + 1],
            }
        }

    feats = [feat(1, 1), feat(2, 0)]
    add_mask_distance(feats, labels, masked, dates, cap=30)
    assert feats[0]["properties"]["mask_distance_px"] == pytest.approx(8.0)
    # feature 2's dates are 0 and 1: the masked pixel (0, 0) is 30 * sqrt(2) away: capped
    assert feats[1]["properties"]["mask_distance_px"] == 30.0


def test_design_orders_the_features_and_scales_scores_by_the_seed_level() -> None:
    props = {
        "score_peak": 200.0,
        "score": 100.0,
        "n_seed_pixels": 4,
        "transient": True,
        "n_dates_before": 3,
        "n_dates_after": 1,
        "mask_distance_px": 2.0,
    }
    row = design([props], seed_level=100.0)[0]
    assert dict(zip(FEATURES, row, strict=True)) == pytest.approx(
        {
            "log_peak": np.log(2.0),
            "log_mean": 0.0,
            "log_seeds": np.log(4),
            "transient": 1.0,
            "one_sided": 1.0,
            "mask_near": 1.0,
            "mask_distance": 2.0 / calibration.MASK_DISTANCE_CAP_PX,
        }
    )


def test_the_model_can_be_switched_off_or_replaced(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv(model_file.MODEL_ENV, "none")
    assert model_file.active_model() is None
    other = Model(0.5, tuple(0.0 for _ in FEATURES))
    path = tmp_path / "mine.json"
    path.write_text(json.dumps(other.to_json()))
    monkeypatch.setenv(model_file.MODEL_ENV, str(path))
    assert model_file.active_model().intercept == 0.5
    monkeypatch.delenv(model_file.MODEL_ENV)
    assert model_file.active_model() == load_model()


def test_the_shipped_model_ranks_as_its_training_outcomes_say() -> None:
    model = load_model()
    assert model is not None, "pipeline/calibration.json is missing: run benchmarks/calibrate.py"
    assert 0 not in model.meta["seeds"], "fitted on the reported sweep's seed"
    base = {
        "score_peak": 300.0,
        "score": 120.0,
        "n_seed_pixels": 10,
        "transient": False,
        "n_dates_before": 3,
        "n_dates_after": 3,
        "mask_distance_px": 30.0,
    }
    variants = [
        base,
        {**base, "mask_distance_px": 1.0},
        {**base, "n_dates_after": 1},
        {**base, "score_peak": 60.0, "score": 50.0},
    ]
    p = model.predict(design(variants, seed_level=53.0))
    # a strong two-sided change far from clouds is confident; next to a masked pixel, seen on
    # one date only after, or barely over the seed level, less so
    assert p[0] > 0.95
    assert p[1] < p[0] and p[2] < p[0] and p[3] < p[0]


def test_a_model_of_other_features_is_refused(tmp_path) -> None:
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({**Model(0.0, (1.0,), features=("x",)).to_json()}))
    with pytest.raises(ConfigError, match=r"refit it with benchmarks/calibrate\.py"):
        load_model.__wrapped__(path)
    assert load_model.__wrapped__(tmp_path / "absent.json") is None


def test_unlikely_detections_are_dropped_with_their_labels() -> None:
    labels = np.zeros((2, 5, 5), np.int32)
    labels[0, 0, 0], labels[0, 1, 1], labels[1, 2, 2] = 1, 2, 3
    feats = [
        {"properties": {"label": 1, "pair": 0, "confidence": 0.9}},
        {"properties": {"label": 2, "pair": 0, "confidence": 0.2}},
        {"properties": {"label": 3, "pair": 1, "confidence": 0.7}},
    ]
    pairs = [{"n_objects": 2, "n_changed_px": 2}, {"n_objects": 1, "n_changed_px": 1}]
    kept = _drop_unlikely(feats, labels, pairs, 0.5)
    assert [f["properties"]["label"] for f in kept] == [1, 3]
    assert labels[0, 1, 1] == 0 and labels[0, 0, 0] == 1 and labels[1, 2, 2] == 3
    assert pairs == [{"n_objects": 1, "n_changed_px": 1}, {"n_objects": 1, "n_changed_px": 1}]


def test_reliability_bins_count_and_share() -> None:
    outcomes = [{"confidence": 0.3, "label": 0}, {"confidence": 0.3, "label": 1}]
    outcomes += [{"confidence": 1.0, "label": 1}] * 3
    rel = reliability(outcomes)
    first, last = rel["bins"][0], rel["bins"][-1]
    assert (first["n"], first["true_share"]) == (2, 0.5)
    assert (last["n"], last["true_share"], last["mean_confidence"]) == (3, 1.0, 1.0)
    assert rel["brier"] == pytest.approx((0.09 + 0.49) / 5)
    assert rel["n"] == 5
