"""Tests of the fused change core: against the plain xarray reference, numpy vs dask, updates."""

from __future__ import annotations

from dataclasses import replace

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import DataError
from pipeline.kernels.scale.change import change_core
from pipeline.kernels.scale.fused import (
    NOT_SCORED,
    CoreParams,
    classify,
    update_last_view,
)


def _params(n_bands: int = 4, n_groups: int = 1, stencil: bool = True, seed: int = 0) -> CoreParams:
    rng = np.random.default_rng(seed)
    corr = np.full((n_bands, n_bands), 0.3) + 0.7 * np.eye(n_bands)
    white = np.linalg.cholesky(np.linalg.inv(corr)).T.astype(np.float32)
    return CoreParams(
        gain=rng.uniform(0.9, 1.1, n_bands).astype(np.float32),
        offset=rng.uniform(-0.01, 0.01, n_bands).astype(np.float32),
        sigma=np.full(n_bands, 0.014, np.float32),
        whitening=white,
        group_level=rng.normal(0, 0.002, (n_groups, n_bands)).astype(np.float32),
        group_sigma=rng.uniform(0.012, 0.02, (n_groups, n_bands)).astype(np.float32),
        null_scale=1.2,
        seed_threshold=28.0,
        grow_threshold=13.0,
        registration_noise_px=0.2 if stencil else 0.0,
        resampling_blur_px2=0.125 if stencil else 0.0,
    )


def _pair(shape: tuple[int, int], n_bands: int = 4, n_groups: int = 1, seed: int = 0) -> tuple:
    """A textured pair with noise, a planted change, invalid pixels and NaN."""
    rng = np.random.default_rng(seed)
    ny, nx = shape
    scene = np.repeat(np.repeat(rng.random((n_bands, ny // 4 + 1, nx // 4 + 1)), 4, 1), 4, 2)
    scene = scene[:, :ny, :nx].astype(np.float32) * 0.3
    before = scene + rng.normal(0, 0.01, scene.shape).astype(np.float32)
    after = 1.05 * scene + 0.01 + rng.normal(0, 0.01, scene.shape).astype(np.float32)
    after[:, ny // 3 : ny // 3 + 3, nx // 2 : nx // 2 + 4] += 0.2
    before_ok = rng.random(shape) > 0.1
    after_ok = rng.random(shape) > 0.1
    before[:, ~before_ok] = np.nan
    after[0, 0, 0] = np.nan  # NaN under a valid flag is the caller's to mask: stays finite here
    after_ok[0, 0] = False
    index = rng.integers(-1, n_groups, shape).astype(np.int16)
    return before, after, before_ok, after_ok, index


def _assert_matches_reference(shape: tuple[int, int], n_groups: int, stencil: bool) -> None:
    before, after, bok, aok, idx = _pair(shape, n_groups=n_groups)
    p = _params(n_groups=n_groups, stencil=stencil)
    res = change_core(before, after, bok, aok, p, before_index=idx)
    ref = change_core(before, after, bok, aok, p, before_index=idx, engine="numpy")
    ref_score, ref_cls = ref.score, ref.cls
    assert res.score.dtype == np.float32 and res.cls.dtype == np.uint8
    np.testing.assert_array_equal(np.isnan(res.score), np.isnan(ref_score))
    np.testing.assert_allclose(res.score, ref_score, rtol=2e-4, atol=1e-4, equal_nan=True)
    near = np.isclose(ref_score, p.seed_threshold, rtol=1e-3) | np.isclose(
        ref_score, p.grow_threshold, rtol=1e-3
    )
    np.testing.assert_array_equal(res.cls[~near], ref_cls[~near])


@pytest.mark.parametrize("n_groups", [1, 3])
@pytest.mark.parametrize("stencil", [True, False])
def test_core_matches_the_plain_reference(n_groups: int, stencil: bool) -> None:
    _assert_matches_reference((37, 41), n_groups, stencil)


@pytest.mark.parametrize("shape", [(1, 9), (9, 1), (2, 2), (1, 1), (3, 2)])
def test_core_matches_the_reference_on_degenerate_grids(shape: tuple[int, int]) -> None:
    _assert_matches_reference(shape, 2, True)


def test_core_classes_and_masks() -> None:
    before, after, bok, aok, _ = _pair((40, 40))
    fitted = {"gain": np.full(4, 1.05, np.float32), "offset": np.full(4, 0.01, np.float32)}
    p = replace(_params(), **fitted, group_level=np.zeros((1, 4), np.float32))
    res = change_core(before, after, bok, aok, p)
    not_scored = ~(bok & aok)
    assert (res.cls[not_scored] == NOT_SCORED).all()
    assert np.isnan(res.score[not_scored]).all()
    assert np.isfinite(res.score[~not_scored]).all()
    # The planted change (0.2 in every band) is a seed; most of the rest is quiet.
    assert (res.cls[13:16, 20:24][(bok & aok)[13:16, 20:24]] == 2).all()
    assert (res.cls[~not_scored] == 0).mean() > 0.9
    off = change_core(before, after, bok, aok, replace(p, fit_ok=False))
    assert (off.cls == NOT_SCORED).all()


def test_core_score_is_chi_square_under_pure_noise() -> None:
    rng = np.random.default_rng(5)
    shape = (300, 300)
    before = rng.normal(0.2, 0.01, (4, *shape)).astype(np.float32)
    after = rng.normal(0.2, 0.01, (4, *shape)).astype(np.float32)
    ok = np.ones(shape, bool)
    p = CoreParams(
        gain=np.ones(4, np.float32),
        offset=np.zeros(4, np.float32),
        sigma=np.full(4, 0.01 * np.sqrt(2), np.float32),
        whitening=np.eye(4, dtype=np.float32),
        group_level=np.zeros((1, 4), np.float32),
        group_sigma=np.full((1, 4), 0.01 * np.sqrt(2), np.float32),
    )
    score = change_core(before, after, ok, ok, p).score
    assert abs(float(np.mean(score)) - 4.0) < 0.1  # chi-square with 4 dof has mean 4


@settings(max_examples=12, deadline=None)
@given(
    ny=st.integers(3, 40),
    nx=st.integers(3, 40),
    cy=st.integers(2, 17),
    cx=st.integers(2, 17),
    stencil=st.booleans(),
    engine=st.sampled_from(["numba", "numpy"]),
)
def test_dask_path_is_the_numpy_path_bit_for_bit(
    ny: int, nx: int, cy: int, cx: int, stencil: bool, engine: str
) -> None:
    before, after, bok, aok, idx = _pair((ny, nx), n_groups=3, seed=ny * 100 + nx)
    p = _params(n_groups=3, stencil=stencil)
    ref = change_core(before, after, bok, aok, p, before_index=idx, engine=engine)
    lazy = change_core(
        da.from_array(before, chunks=(4, cy, cx)),
        da.from_array(after, chunks=(4, cy, cx)),
        da.from_array(bok, chunks=(cy, cx)),
        da.from_array(aok, chunks=(cy, cx)),
        p,
        before_index=da.from_array(idx, chunks=(cy, cx)),
        engine=engine,
    )
    assert isinstance(lazy.score, da.Array) and isinstance(lazy.cls, da.Array)
    np.testing.assert_array_equal(lazy.score.compute(), ref.score)
    np.testing.assert_array_equal(lazy.cls.compute(), ref.cls)


def test_update_last_view_matches_numpy() -> None:
    before, after, bok, aok, idx = _pair((20, 30))
    p = _params()
    prev, prev_ok, prev_idx = before.copy(), bok.copy(), idx.copy()
    update_last_view(prev, prev_ok, prev_idx, after, aok, p, 7)
    carried = before * p.gain[:, None, None] + p.offset[:, None, None]
    np.testing.assert_allclose(prev, np.where(aok[None], after, carried), rtol=1e-6)
    np.testing.assert_array_equal(prev_ok, bok | aok)
    np.testing.assert_array_equal(prev_idx, np.where(aok, 7, idx))
    frozen = before.copy()
    update_last_view(frozen, bok.copy(), idx.copy(), after, aok, replace(p, fit_ok=False), 7)
    np.testing.assert_allclose(frozen, carried, rtol=1e-6)  # an untrusted pair refreshes nothing


def test_classify_numpy_and_dask() -> None:
    score = np.array([[np.nan, 0.0, 13.0], [27.9, 28.0, 100.0]], dtype=np.float32)
    want = np.array([[255, 0, 1], [1, 2, 2]], dtype=np.uint8)
    np.testing.assert_array_equal(classify(score, 28.0, 13.0), want)
    np.testing.assert_array_equal(classify(da.from_array(score, chunks=1), 28.0, 13.0), want)


def test_bad_inputs_raise_data_error() -> None:
    before, after, bok, aok, idx = _pair((10, 10))
    with pytest.raises(DataError, match="bands"):
        change_core(before[:3], after[:3], bok, aok, _params())
    with pytest.raises(DataError, match="masks"):
        change_core(before, after, bok[:5], aok, _params())
    with pytest.raises(DataError, match="before_index"):
        change_core(before, after, bok, aok, _params(n_groups=2))
    with pytest.raises(DataError, match="engine 'cuda'"):
        change_core(before, after, bok, aok, _params(), engine="cuda")  # type: ignore[arg-type]
    with pytest.raises(DataError, match="writeable"):
        update_last_view(before[:, ::2], bok, idx, after, aok, _params(), 1)


def test_threads_give_the_same_bits() -> None:
    before, after, bok, aok, idx = _pair((61, 45), n_groups=3)
    p = _params(n_groups=3)
    one = change_core(before, after, bok, aok, p, before_index=idx)
    two = change_core(before, after, bok, aok, p, before_index=idx, threads=2)
    np.testing.assert_array_equal(two.score, one.score)
    np.testing.assert_array_equal(two.cls, one.cls)
