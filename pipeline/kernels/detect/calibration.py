"""Calibrated confidence of detections: the probability that a detection is a real change.

The step test's tail probability (``noise_confidence``) says how unlikely the score is under
*noise*; nearly every detection is far beyond it, false alarms included, because false alarms
are model failures (a cloud seen on two dates, a wrong sign next to a pier), not noise
exceedances. What an analyst needs is the share of detections *like this one* that are real.
That is fitted on outcomes: a logistic model of a few properties of each detection against
whether it matched a planted change, on generated scenes whose truth is known
(``benchmarks/calibrate.py`` fits it and writes :data:`pipeline.io.calibration.MODEL_PATH`; the
scenes it fits on are never the ones reported by ``benchmarks/bench_detect.py`` or the demo).

The properties (:func:`design`) are what the detector knows of a detection: how far its peak
and mean scores pass the seed level, how many seed pixels it has, whether it is a one-date
object, whether its change is seen on one date only on either side, and how close it lies to a
pixel the detector masked (SCL or its own cloud checks) on either of its dates
(:func:`add_mask_distance`). How much of its change a cloud, haze or shadow leaves unexplained
(``atm_unexplained``) is reported but not a feature: the generated objects are spectrally flat
offsets of their apron, as cloud-like as a haze, so the model would learn that quirk of the
generator (a fit with it ranked a dark hull leaving the water as unlikely).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage, optimize

MASK_DISTANCE_CAP_PX = 30
"""Distances to a masked pixel are capped here (farther is as good as no cloud at all)."""

FEATURES: tuple[str, ...] = (
    "log_peak",
    "log_mean",
    "log_seeds",
    "transient",
    "one_sided",
    "mask_near",
    "mask_distance",
)
"""The columns of :func:`design`, in order."""


@dataclass(frozen=True)
class Model:
    """A logistic model: ``p = 1 / (1 + exp(-(intercept + coef . x)))`` on :data:`FEATURES`."""

    intercept: float
    coef: tuple[float, ...]
    features: tuple[str, ...] = FEATURES
    meta: Mapping[str, Any] | None = None

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Probabilities of the rows of ``x`` (n, len(features))."""
        z = self.intercept + np.asarray(x, dtype=float) @ np.asarray(self.coef, dtype=float)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50.0, 50.0)))

    def to_json(self) -> dict[str, Any]:
        """The model as a JSON-native dict."""
        return {
            "kind": "basewatch-calibration",
            "features": list(self.features),
            "intercept": round(self.intercept, 6),
            "coef": [round(c, 6) for c in self.coef],
            "meta": dict(self.meta or {}),
        }


def add_mask_distance(
    features: list[dict],
    labels: np.ndarray,
    masked: np.ndarray,
    dates: Sequence[str],
    cap: int = MASK_DISTANCE_CAP_PX,
) -> None:
    """Set ``mask_distance_px`` on each feature: its distance to the nearest masked pixel.

    Parameters
    ----------
    features
        Features with ``label``, ``pair``, ``date_before_latest`` and ``date_after``.
    labels
        (pair, y, x) int labels of the features.
    masked
        (T, y, x) bool: pixels the detector did not use on each date (SCL and its own checks).
    dates
        ISO dates of the T dates.
    cap
        Distances are capped at this many pixels.
    """
    if not features:
        return
    index = {d: i for i, d in enumerate(dates)}
    cache_dt: dict[int, np.ndarray] = {}

    def dist(t: int) -> np.ndarray:
        if t not in cache_dt:
            m = masked[t]
            if not m.any():
                cache_dt[t] = np.full(m.shape, float(cap), dtype=np.float32)
            else:
                d = ndimage.distance_transform_edt(~m)
                cache_dt[t] = np.minimum(d, cap).astype(np.float32)
        return cache_dt[t]

    by_pair: dict[int, list[dict]] = {}
    for f in features:
        by_pair.setdefault(int(f["properties"]["pair"]), []).append(f)
    for pair, feats in by_pair.items():
        lab = labels[pair]
        ids = [int(f["properties"]["label"]) for f in feats]
        for f, lid in zip(feats, ids, strict=True):
            p = f["properties"]
            sel = lab == lid
            if not sel.any():
                p["mask_distance_px"] = float(cap)
                continue
            near = float(cap)
            for key in ("date_before_latest", "date_after"):
                t = index.get(str(p.get(key)))
                if t is not None:
                    near = min(near, float(dist(t)[sel].min()))
            p["mask_distance_px"] = round(near, 2)


def design(props: Sequence[Mapping[str, Any]], seed_level: float) -> np.ndarray:
    """The model's inputs for detections' properties (n, len(:data:`FEATURES`)).

    Parameters
    ----------
    props
        Detection properties (``score_peak``, ``score``, ``n_seed_pixels``, ``transient``,
        ``n_dates_before``, ``n_dates_after``, ``mask_distance_px``).
    seed_level
        The seed threshold of the step test (chi-square), the unit of the scores.
    """
    rows = []
    for p in props:
        peak = max(float(p.get("score_peak") or 0.0), 1e-6)
        mean = max(float(p.get("score") or 0.0), 1e-6)
        dist = float(p.get("mask_distance_px", MASK_DISTANCE_CAP_PX))
        one_sided = min(int(p.get("n_dates_before", 1)), int(p.get("n_dates_after", 1))) <= 1
        rows.append(
            [
                math.log(peak / seed_level),
                math.log(mean / seed_level),
                math.log(max(int(p.get("n_seed_pixels", 1)), 1)),
                float(bool(p.get("transient", False))),
                float(one_sided),
                float(dist <= 3.0),
                dist / MASK_DISTANCE_CAP_PX,
            ]
        )
    return np.asarray(rows, dtype=float).reshape(len(rows), len(FEATURES))


def design_outcomes(outcomes: Sequence[Mapping[str, Any]], seed_level: float) -> np.ndarray:
    """:func:`design` of stored outcomes, each row in units of its own ``seed_level`` when the
    outcome carries one (real-background pair and series cases have different seed levels),
    else of ``seed_level``."""
    if not outcomes:
        return np.zeros((0, len(FEATURES)))
    return np.vstack([design([o], float(o.get("seed_level") or seed_level)) for o in outcomes])


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, meta: Mapping | None = None) -> Model:
    """Fit a logistic model by penalised maximum likelihood (L2 on the coefficients).

    Parameters
    ----------
    x
        (n, k) inputs from :func:`design`.
    y
        (n,) 1 for a true detection, 0 for a false alarm.
    l2
        Ridge penalty on the coefficients (not the intercept), in units of the log-likelihood.
    meta
        Provenance stored with the model.
    """
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        z = w[0] + x @ w[1:]
        # log(1 + exp(z)) - y z, stable
        ll = np.logaddexp(0.0, z) - y * z
        p = 1.0 / (1.0 + np.exp(-z))
        g = np.concatenate([[np.sum(p - y)], x.T @ (p - y)])
        g[1:] += 2 * l2 * w[1:]
        return float(ll.sum() + l2 * np.sum(w[1:] ** 2)), g

    w0 = np.zeros(x.shape[1] + 1)
    res = optimize.minimize(loss, w0, jac=True, method="L-BFGS-B")
    return Model(float(res.x[0]), tuple(float(c) for c in res.x[1:]), meta=meta)


def calibrate(features: list[dict], seed_level: float, model: Model | None) -> None:
    """Set each feature's ``confidence`` from ``model`` (the noise-only one kept as
    ``noise_confidence``); without a model, ``confidence`` stays the noise-only one."""
    for f in features:
        p = f["properties"]
        p.setdefault("noise_confidence", p.get("confidence"))
    if model is None or not features:
        return
    prob = model.predict(design([f["properties"] for f in features], seed_level))
    for f, q in zip(features, prob, strict=True):
        f["properties"]["confidence"] = round(float(q), 4)
