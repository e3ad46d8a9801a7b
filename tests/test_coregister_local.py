"""Tests of pipeline.kernels.coregister.local (tie points, outliers, affine model, verdicts) and
pipeline.kernels.coregister.affine (the model and its numpy/dask application).

Pairs come from the benchmark's analytic generator (``benchmarks/bench_coreg.py``): plane-wave
textures and pixel-area rectangles rendered exactly at any affine position, so the truth owes
nothing to the resampler under test.
"""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.errors import CoregistrationError
from pipeline.kernels.coregister.local import (
    AffineModel,
    LocalEstimate,
    TiePoint,
    _fit,
    apply_affine,
    apply_affine_mask,
    choose_model,
    estimate_local,
    fit_affine,
)
from pipeline.kernels.coregister.shift import (
    ShiftEstimate,
    apply_shift,
    apply_shift_mask,
    estimate_shift,
)

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_coreg.py"


def _load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_coreg", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_coreg"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


bench = _load_bench()
SHAPE = (512, 512)


def rotation_model(
    theta_deg: float, scale: float, shift: tuple[float, float], shape: tuple[int, int] = SHAPE
) -> AffineModel:
    """Content rotated counter-clockwise (map view) by ``theta_deg`` about the centre, scaled,
    then shifted by ``shift`` (east, north) px."""
    th = math.radians(theta_deg)
    m = scale * np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    centre = (np.array(shape, dtype=np.float64) - 1) / 2
    t = centre - m @ centre + np.array([-shift[1], shift[0]])
    return AffineModel.from_arrays(m, t)


def field_error(
    model: AffineModel, truth: AffineModel, shape: tuple[int, int] = SHAPE
) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    sx, sy = model.shift_at(rows, cols)
    tx, ty = truth.shift_at(rows, cols)
    return np.hypot(sx - tx, sy - ty)


@pytest.fixture(scope="module")
def affine_pair() -> tuple[np.ndarray, np.ndarray, AffineModel, object]:
    """A 512 x 512 pair: rotation 0.05 deg, scale 1.0005, shift (1.37, -2.21), noise and gain."""
    truth = rotation_model(0.05, 1.0005, (1.37, -2.21))
    scene = bench.make_scene(42, SHAPE)
    rng = np.random.default_rng(42)
    ref = bench.render(scene, SHAPE) + rng.normal(0, 0.005, SHAPE)
    tgt = 1.15 * bench.render(scene, SHAPE, truth) + 0.02 + rng.normal(0, 0.005, SHAPE)
    return ref, tgt, truth, scene


@pytest.fixture(scope="module")
def affine_local(affine_pair: tuple) -> LocalEstimate:
    """``estimate_local`` of the affine pair, default settings (seeded from a central crop)."""
    ref, tgt, _, _ = affine_pair
    return estimate_local(ref, tgt)


# --- the model ---------------------------------------------------------------------------------


def test_model_shift_convention_and_rotation_sign() -> None:
    model = AffineModel.from_shift(1.5, -0.5)
    assert model.shift_at(10.0, 20.0) == pytest.approx((1.5, -0.5))
    assert model.rotation_deg == 0.0 and model.scale == 1.0
    # content rotated counter-clockwise (map view): a point east of the centre moves north
    rot = rotation_model(1.0, 1.0, (0.0, 0.0), (101, 101))
    assert rot.rotation_deg == pytest.approx(1.0)
    _, sy = rot.shift_at(50.0, 100.0)  # 50 px east of the centre
    assert sy == pytest.approx(50 * math.sin(math.radians(1.0)), rel=1e-6) and sy > 0
    assert rot.max_displacement_px((101, 101)) == pytest.approx(
        math.hypot(50, 50) * 2 * math.sin(math.radians(0.5)), rel=1e-6
    )
    out = json.loads(json.dumps(rot.to_dict((101, 101))))
    assert out["rotation_deg"] == pytest.approx(1.0) and out["max_displacement_px"] > 1


def test_fit_affine_is_exact_on_exact_points() -> None:
    truth = rotation_model(0.3, 1.002, (2.0, -1.0), (1000, 1000))
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 1000, (20, 2))
    m, t = truth.arrays
    model = fit_affine(points, points @ m.T + t)
    assert np.allclose(model.arrays[0], m, atol=1e-12)
    assert np.allclose(model.arrays[1], t, atol=1e-9)


# --- local estimation ---------------------------------------------------------------------------


def test_local_affine_accuracy(affine_pair: tuple, affine_local: LocalEstimate) -> None:
    ref, tgt, truth, _ = affine_pair
    est = affine_local
    assert est.status == "shifted", est.reason
    assert est.n_tie_points == 25 and est.n_tie_points_good >= 23
    assert est.rmse_px <= 0.1
    err = field_error(est.model, truth)
    assert np.sqrt(np.mean(err**2)) <= 0.05 and err.max() <= 0.1
    assert est.model.rotation_deg == pytest.approx(0.05, abs=0.005)
    assert est.model.scale == pytest.approx(1.0005, abs=5e-5)
    # a translation alone cannot do this: the best one leaves > 0.1 px at the corners
    best_shift = AffineModel.from_shift(*truth.shift_at(255.5, 255.5))
    assert field_error(best_shift, truth).max() > 0.2
    # applying the model aligns the target (interior, gain removed)
    aligned = apply_affine(tgt, est.model)
    inner = (slice(16, -16), slice(16, -16))
    a, r = aligned[inner].ravel(), ref[inner].ravel()
    gain, offset = np.polyfit(a, r, 1)
    assert np.std(gain * a + offset - r) < 0.01  # about the noise (2 x 0.005 / sqrt 2)
    assert json.loads(json.dumps(est.to_dict(tie_points=True)))["tie_points"][0]["flag"] == "good"


def test_local_with_masked_clouds_keeps_subpixel_accuracy(affine_pair: tuple) -> None:
    ref, tgt, truth, _ = affine_pair
    clouds = bench.cloud_mask(np.random.default_rng(7), SHAPE, 0.35)
    tgt = tgt.copy()
    tgt[clouds] = 0.8  # bright, masked
    est = estimate_local(ref, tgt, None, ~clouds)
    assert est.usable, est.reason
    # windows mostly under cloud are skipped, not trusted; the partly cloudy ones are measured
    cloudy = [
        (r0 + 47.5, c0 + 47.5)
        for r0 in range(16, 401, 96)
        for c0 in range(16, 401, 96)
        if (~clouds[r0 : r0 + 96, c0 : c0 + 96]).mean() < 0.5
    ]
    skipped = [(p.row, p.col) for p in est.tie_points if p.reason == "too few valid pixels"]
    assert cloudy and skipped == cloudy
    assert est.n_tie_points_good >= 25 - len(cloudy) - 2
    assert est.rmse_px <= 0.1
    assert np.sqrt(np.mean(field_error(est.model, truth) ** 2)) <= 0.1


def test_outlier_tie_points_are_rejected(affine_pair: tuple) -> None:
    """Two windows whose content moved 1.5 px more (e.g. a moved ship) must not bend the model."""
    ref, tgt, truth, scene = affine_pair
    m, t = truth.arrays
    moved = AffineModel.from_arrays(m, t + np.array([0.0, 1.5]))
    other = 1.15 * bench.render(scene, SHAPE, moved) + 0.02
    tgt = tgt.copy()
    # the default grid: 5 x 5 windows of 96 px at corners 16 + 96 k
    for r0, c0 in [(112, 208), (304, 400)]:
        tgt[r0 : r0 + 96, c0 : c0 + 96] = other[r0 : r0 + 96, c0 : c0 + 96]
    est = estimate_local(ref, tgt)
    assert est.usable, est.reason
    bad = {(p.row, p.col): p for p in est.tie_points if p.flag != "good"}
    for r0, c0 in [(112, 208), (304, 400)]:
        point = bad[(r0 + 47.5, c0 + 47.5)]
        assert point.flag in ("inconsistent", "outlier")
        assert abs(point.shift_x_px - truth.shift_at(point.row, point.col)[0] - 1.5) < 0.2
    assert np.sqrt(np.mean(field_error(est.model, truth) ** 2)) <= 0.05


def test_choose_model_prefers_the_affine_only_when_it_matters(affine_local: LocalEstimate) -> None:
    local = affine_local
    shift = ShiftEstimate(1.37, -2.21, 0.9, 1000, "shifted")
    assert choose_model(shift, local) == local.model  # rotation: > 0.1 px off a shift at corners
    assert choose_model(shift, local, min_gain_px=5.0) == AffineModel.from_shift(1.37, -2.21)
    assert choose_model(shift, None) == AffineModel.from_shift(1.37, -2.21)
    failed = ShiftEstimate(float("nan"), float("nan"), 0.0, 0, "failed", "no")
    assert choose_model(failed, local) == local.model
    assert choose_model(failed, None) is None


def test_ransac_rejects_a_consistent_cluster_of_outliers() -> None:
    """Four neighbours agreeing on a wrong shift pass the neighbour check; RANSAC catches them."""
    truth = rotation_model(0.05, 1.0005, (0.8, 0.4), (1024, 1024))
    rng = np.random.default_rng(3)
    points = []
    for r in np.arange(64, 1024, 128, dtype=float):
        for c in np.arange(64, 1024, 128, dtype=float):
            sx, sy = truth.shift_at(r, c)
            sx, sy = sx + rng.normal(0, 0.02), sy + rng.normal(0, 0.02)
            if r < 300 and c < 300:  # a 2 x 2 block of windows on a moved object
                sx += 0.9
            points.append(TiePoint(r, c, sx, sy, 0.9, 9000, "good"))
    flagged, model, rmse = _fit(points, 128, 0.3, seed=0)
    flags = {(p.row, p.col): p.flag for p in flagged}
    cluster = [flags[(r, c)] for r in (64.0, 192.0) for c in (64.0, 192.0)]
    assert set(cluster) <= {"inconsistent", "outlier"}
    assert flags[(64.0, 64.0)] == "outlier"  # its neighbours agree with it: only RANSAC can tell
    assert sum(f == "good" for f in flags.values()) == 60
    assert rmse < 0.05
    assert field_error(model, truth, (1024, 1024)).max() < 0.05


def test_all_cloud_fails_with_reason(affine_pair: tuple) -> None:
    ref, tgt, _, _ = affine_pair
    est = estimate_local(ref, tgt, None, np.zeros(SHAPE, dtype=bool))
    assert est.status == "failed" and est.model is None
    assert est.n_tie_points_good == 0
    assert "tie points" in est.reason and "0 windows had enough valid pixels" in est.reason
    assert est.to_dict()["rmse_px"] is None


def test_unrelated_places_fail() -> None:
    shape = (384, 384)
    ref = bench.render(bench.make_scene(1, shape), shape)
    tgt = bench.render(bench.make_scene(2, shape), shape)
    assert estimate_shift(ref, tgt).status == "failed"  # the global verdict
    est = estimate_local(ref, tgt)  # no seed: every window is searched from scratch
    assert est.status == "failed"
    assert est.n_tie_points == 16 and est.n_tie_points_good < 6
    assert "reliable" in est.reason


def test_dask_input_is_read_window_by_window_and_agrees(
    affine_pair: tuple, affine_local: LocalEstimate
) -> None:
    ref, tgt, _, _ = affine_pair
    eager = affine_local
    lazy = estimate_local(da.from_array(ref, chunks=128), da.from_array(tgt, chunks=128))
    assert lazy.status == eager.status
    assert np.allclose(lazy.model.arrays[0], eager.model.arrays[0], atol=1e-12)
    assert np.allclose(lazy.model.arrays[1], eager.model.arrays[1], atol=1e-9)


def test_bad_inputs_raise() -> None:
    with pytest.raises(CoregistrationError, match="one shape"):
        estimate_local(np.zeros((200, 200)), np.zeros((200, 210)))
    with pytest.raises(CoregistrationError, match="smaller than one window"):
        estimate_local(np.zeros((50, 50)), np.zeros((50, 50)))


# --- applying the model: numpy and dask ---------------------------------------------------------


def _image_with_holes(shape: tuple[int, ...], seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(rng.normal(size=shape), (0,) * (len(shape) - 2) + (1.5, 1.5))
    image[..., 40:60, 30:90] = np.nan
    image[rng.random(shape) < 0.002] = np.nan
    return image


@pytest.mark.parametrize("shift", [(1.37, -2.61), (0.0, 2.0), (-3.2, 0.45)])
def test_translation_model_equals_apply_shift(shift: tuple[float, float]) -> None:
    image = _image_with_holes((2, 150, 170))
    model = AffineModel.from_shift(*shift)
    np.testing.assert_array_equal(apply_affine(image, model), apply_shift(image, *shift))
    valid = np.isfinite(image)
    np.testing.assert_array_equal(apply_affine_mask(valid, model), apply_shift_mask(valid, *shift))


def test_apply_affine_masks_support_and_keeps_dtype() -> None:
    image = np.ones((64, 64), dtype=np.float32)
    image[30, 30] = np.nan
    model = rotation_model(0.5, 1.001, (0.3, 0.2), (64, 64))
    out = apply_affine(image, model)
    assert out.dtype == np.float32
    assert np.array_equal(np.isfinite(out), apply_affine_mask(np.isfinite(image), model))
    assert 4 <= np.isnan(out[20:40, 20:40]).sum() <= 16  # the 4 x 4 cubic support of one hole
    assert np.nanmax(np.abs(out - 1.0)) < 1e-5
    assert np.isnan(out[0]).any() or np.isnan(out[:, 0]).any()  # edges beyond the image
    ints = apply_affine(np.full((32, 32), 7, dtype=np.uint16), model)
    assert ints.dtype == np.float32


@settings(max_examples=6, deadline=None)
@given(
    theta=st.floats(-1.0, 1.0),
    shift_x=st.floats(-4, 4),
    shift_y=st.floats(-4, 4),
    chunk_y=st.integers(16, 90),
    chunk_x=st.integers(16, 90),
)
def test_apply_affine_dask_matches_numpy(
    theta: float, shift_x: float, shift_y: float, chunk_y: int, chunk_x: int
) -> None:
    image = _image_with_holes((2, 150, 170)).astype(np.float32)
    model = rotation_model(theta, 1.0005, (shift_x, shift_y), (150, 170))
    lazy = apply_affine(da.from_array(image, chunks=(1, chunk_y, chunk_x)), model)
    assert isinstance(lazy, da.Array) and lazy.dtype == np.float32
    expected = apply_affine(image, model)
    out = lazy.compute()
    assert np.array_equal(np.isnan(out), np.isnan(expected))
    np.testing.assert_allclose(out, expected, atol=1e-5, equal_nan=True)
    mask = apply_affine_mask(da.from_array(np.isfinite(image), chunks=(1, chunk_y, chunk_x)), model)
    assert isinstance(mask, da.Array)
    assert np.array_equal(mask.compute(), np.isfinite(expected))


def test_chunked_global_and_local_apply_agree_with_numpy() -> None:
    """The bounded-memory path (chunks much smaller than the image) for both corrections."""
    image = _image_with_holes((600, 700), seed=5).astype(np.float32)
    lazy = da.from_array(image, chunks=128)
    model = rotation_model(0.05, 1.0005, (1.37, -1.62), (600, 700))
    np.testing.assert_allclose(
        apply_affine(lazy, model).compute(), apply_affine(image, model), atol=1e-5, equal_nan=True
    )
    np.testing.assert_allclose(
        apply_shift(lazy, 1.37, -1.62).compute(),
        apply_shift(image, 1.37, -1.62),
        atol=1e-5,
        equal_nan=True,
    )


def test_whole_tile_apply_is_lazy_and_chunked() -> None:
    """A 10980 x 10980 tile: one task per chunk, nothing computed until asked; one chunk runs."""
    tile = da.zeros((10980, 10980), dtype=np.float32, chunks=2048)
    model = rotation_model(0.05, 1.0005, (1.37, -1.62), (10980, 10980))
    assert model.max_displacement_px((10980, 10980)) > 5  # rotation moves tile corners far
    aligned = apply_affine(tile, model)
    shifted = apply_shift(tile, 1.37, -1.62)
    for out in (aligned, shifted):
        assert isinstance(out, da.Array) and out.shape == tile.shape
        assert out.numblocks == tile.numblocks
        assert max(max(c) for c in out.chunks) <= 2048
    corner = aligned.blocks[0, 0].compute()  # memory of one chunk plus its margin
    assert corner.shape == (2048, 2048)
    assert np.nanmax(np.abs(corner)) == 0.0 and np.isnan(corner[0]).any()
    mask = apply_affine_mask(da.ones((10980, 10980), dtype=bool, chunks=2048), model)
    assert mask.numblocks == tile.numblocks


def test_apply_affine_keeps_dataarray_coords() -> None:
    xr = pytest.importorskip("xarray")
    image = xr.DataArray(
        np.random.default_rng(1).random((2, 40, 30)),
        dims=("time", "y", "x"),
        coords={"y": np.arange(40) * -10.0, "x": np.arange(30) * 10.0},
        attrs={"crs": "EPSG:32636"},
    )
    model = rotation_model(0.2, 1.0, (0.5, -0.25), (40, 30))
    out = apply_affine(image, model)
    assert isinstance(out, xr.DataArray) and out.dims == image.dims and out.attrs == image.attrs
    np.testing.assert_array_equal(out.values, apply_affine(image.values, model))
    assert apply_affine_mask(image.notnull(), model).dtype == bool
