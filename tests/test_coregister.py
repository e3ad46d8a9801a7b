"""Tests of pipeline.kernels.coregister.shift: shift estimation, its verdicts, and shift
application.

Scenes are synthetic and of known truth: smooth random fields (shifted exactly in Fourier space)
plus sharp rectangles (runways, buildings) rendered by exact pixel-area coverage at any sub-pixel
offset, blurred by a small PSF. The target is the same world with its content displaced by a
known (east, north) shift, so the estimator is never checked against its own resampler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage

from pipeline.errors import CoregistrationError
from pipeline.kernels.coregister.shift import (
    ShiftEstimate,
    apply_shift,
    apply_shift_mask,
    coregister_stack,
    estimate_shift,
)

PAD = 16
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@dataclass
class World:
    """A random world: smooth fields (white noise to be filtered) and rectangles."""

    shape: tuple[int, int]
    noise_coarse: np.ndarray
    noise_fine: np.ndarray
    noise_veg: np.ndarray
    rects: list[tuple[float, float, float, float, float]]  # row0, row1, col0, col1, value


def make_world(seed: int, shape: tuple[int, int] = (256, 256)) -> World:
    rng = np.random.default_rng(seed)
    padded = (shape[0] + 2 * PAD, shape[1] + 2 * PAD)
    rects = []
    for _ in range(40):
        h, w = rng.uniform(2, 30), rng.uniform(2, 30)
        if rng.random() < 0.15:  # a runway: long and thin
            h, w = (rng.uniform(150, 250), rng.uniform(3, 6))
            if rng.random() < 0.5:
                h, w = w, h
        r0, c0 = rng.uniform(0, padded[0] - h), rng.uniform(0, padded[1] - w)
        rects.append((r0, r0 + h, c0, c0 + w, float(rng.uniform(-0.08, 0.25))))
    return World(
        shape,
        rng.normal(size=padded),
        rng.normal(size=padded),
        rng.normal(size=padded),
        rects,
    )


def _fourier_shifted(noise: np.ndarray, sigma: float, d: tuple[float, float]) -> np.ndarray:
    spectrum = ndimage.fourier_gaussian(np.fft.fft2(noise), sigma)
    field = np.fft.ifft2(ndimage.fourier_shift(spectrum, d)).real
    return field / (field.std() + 1e-12)


def _coverage(n: int, lo: float, hi: float) -> np.ndarray:
    edges = np.arange(n, dtype=np.float64)
    return np.clip(np.minimum(edges + 1, hi) - np.maximum(edges, lo), 0.0, 1.0)


def render(
    world: World, shift_x: float = 0.0, shift_y: float = 0.0, season: float = 0.0
) -> np.ndarray:
    """The world seen with its content displaced by (shift_x east, shift_y north) pixels."""
    d = (-shift_y, shift_x)  # array displacement of the content (rows, cols)
    coarse = _fourier_shifted(world.noise_coarse, 4.0, d)
    fine = _fourier_shifted(world.noise_fine, 1.2, d)
    veg = 1.0 / (1.0 + np.exp(-(_fourier_shifted(world.noise_veg, 10.0, d) - 0.3) / 0.15))
    image = 0.2 + 0.05 * coarse + 0.015 * fine + season * veg * (0.08 + 0.03 * fine)
    n_rows, n_cols = image.shape
    for r0, r1, c0, c1, value in world.rects:
        rows = _coverage(n_rows, r0 + d[0], r1 + d[0])
        cov = np.outer(rows, _coverage(n_cols, c0 + d[1], c1 + d[1]))
        image = image * (1 - cov) + (0.2 + value) * cov
    image = ndimage.gaussian_filter(image, 0.5, mode="nearest")  # sensor PSF
    return image[PAD:-PAD, PAD:-PAD]


def cloud_mask(seed: int, shape: tuple[int, int], fraction: float) -> np.ndarray:
    """Blobby clouds covering ``fraction`` of the image (True = cloud)."""
    if fraction <= 0:
        return np.zeros(shape, dtype=bool)
    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 12.0)
    return field > np.quantile(field, 1.0 - fraction)


def make_pair(
    seed: int,
    shift: tuple[float, float],
    *,
    noise: float = 0.0,
    gain: float = 1.0,
    offset: float = 0.0,
    cloud: float = 0.0,
    season: float = 0.0,
    shape: tuple[int, int] = (256, 256),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reference, target, reference_valid, target_valid for one synthetic pair."""
    world = make_world(seed, shape)
    rng = np.random.default_rng(seed + 10_000)
    ref = render(world) + rng.normal(0, noise, shape)
    tgt = gain * render(world, *shift, season=season) + offset + rng.normal(0, noise, shape)
    ref_valid = np.ones(shape, dtype=bool)
    tgt_cloud = cloud_mask(seed + 20_000, shape, cloud)
    tgt[tgt_cloud] = 0.8  # bright cloud, masked
    return ref, tgt, ref_valid, ~tgt_cloud


# --- sign convention and accuracy -------------------------------------------------------------


def test_sign_convention_feature_moves_east_and_north() -> None:
    ref = np.zeros((64, 64))
    ref[30:34, 20:24] = 1.0
    ref = ndimage.gaussian_filter(ref, 1.0) + ndimage.gaussian_filter(
        np.random.default_rng(0).normal(size=(64, 64)), 2.0
    )
    # content 2 px east and 1 px north: (row, col) -> (row - 1, col + 2)
    tgt = np.roll(ref, (-1, 2), axis=(0, 1))
    est = estimate_shift(ref, tgt, max_shift_px=4)
    assert est.status == "shifted"
    assert est.shift_x_px == pytest.approx(2.0, abs=0.02)
    assert est.shift_y_px == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_recovers_random_subpixel_shifts_clean_and_noisy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shift = tuple(rng.uniform(-3, 3, 2))
    for kwargs in ({}, {"noise": 0.005, "gain": 1.25, "offset": 0.03, "season": 0.6}):
        ref, tgt, rv, tv = make_pair(seed, shift, **kwargs)
        est = estimate_shift(ref, tgt, rv, tv)
        assert est.status == "shifted", est
        assert abs(est.shift_x_px - shift[0]) < 0.05, (est, shift)
        assert abs(est.shift_y_px - shift[1]) < 0.05, (est, shift)
        assert est.quality > 0.5


@pytest.mark.parametrize("seed", [4, 5])
def test_masked_clouds_keep_subpixel_accuracy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    shift = tuple(rng.uniform(-3, 3, 2))
    ref, tgt, rv, tv = make_pair(seed, shift, noise=0.005, gain=0.9, cloud=0.35)
    assert 0.3 <= 1 - tv.mean() <= 0.4
    est = estimate_shift(ref, tgt, rv, tv)
    assert est.status == "shifted", est
    assert np.hypot(est.shift_x_px - shift[0], est.shift_y_px - shift[1]) < 0.05
    assert est.n_valid < 0.7 * tgt.size


def test_coastal_scene_with_seasonal_change() -> None:
    """85 % calm sea beside a textured coast strip (a port): flat areas must not set the scale."""
    shift = (-1.42, 2.37)
    world = make_world(20)
    n = world.shape[1]
    coast_col = 0.15 * n

    def scene(sx: float, sy: float, season: float) -> np.ndarray:
        sea = np.clip(np.arange(n)[None, :] + 1 - (coast_col + sx), 0, 1)  # area coverage
        return render(world, sx, sy, season=season) * (1 - sea) + 0.02 * sea

    rng = np.random.default_rng(20)
    ref = scene(0, 0, 0.0) + rng.normal(0, 0.005, world.shape)
    tgt = 1.2 * scene(*shift, 0.5) + rng.normal(0, 0.005, world.shape)
    est = estimate_shift(ref, tgt)
    assert est.status == "shifted", est
    assert np.hypot(est.shift_x_px - shift[0], est.shift_y_px - shift[1]) < 0.05


def test_nan_counts_as_invalid() -> None:
    ref, tgt, _, tv = make_pair(6, (0.7, -1.3), cloud=0.3)
    tgt[~tv] = np.nan
    est = estimate_shift(ref, tgt)
    assert abs(est.shift_x_px - 0.7) < 0.05 and abs(est.shift_y_px + 1.3) < 0.05


def test_no_shift_is_ok() -> None:
    ref, tgt, rv, tv = make_pair(7, (0.0, 0.0), noise=0.005, gain=1.1)
    est = estimate_shift(ref, tgt, rv, tv)
    assert est.status == "ok"
    assert abs(est.shift_x_px) < 0.05 and abs(est.shift_y_px) < 0.05
    assert est.reason is None


# --- failures ---------------------------------------------------------------------------------


def test_all_cloud_fails() -> None:
    ref, tgt, rv, _ = make_pair(8, (1.0, 1.0))
    est = estimate_shift(ref, tgt, rv, np.zeros_like(rv))
    assert est.status == "failed"
    assert "valid" in est.reason
    assert est.n_valid == 0
    assert est.to_dict()["shift_x_px"] is None


def test_mostly_cloud_fails_on_min_valid_fraction() -> None:
    ref, tgt, rv, tv = make_pair(9, (1.0, 1.0), cloud=0.9)
    est = estimate_shift(ref, tgt, rv, tv, min_valid_fraction=0.2)
    assert est.status == "failed"


@pytest.mark.parametrize("seeds", [(10, 11), (12, 13), (14, 15)])
def test_unrelated_places_fail(seeds: tuple[int, int]) -> None:
    ref = render(make_world(seeds[0]))
    tgt = render(make_world(seeds[1]))
    est = estimate_shift(ref, tgt)
    assert est.status == "failed"
    assert est.quality < 0.3 or "max_shift" in est.reason


def test_large_shift_fails() -> None:
    ref, tgt, rv, tv = make_pair(16, (6.3, -0.4))
    est = estimate_shift(ref, tgt, rv, tv, max_shift_px=4.0)
    assert est.status == "failed"
    assert "max_shift_px" in est.reason
    assert est.shift_x_px == pytest.approx(6.3, abs=0.5)
    # with a larger bound the same pair is fine
    est = estimate_shift(ref, tgt, rv, tv, max_shift_px=8.0)
    assert est.status == "shifted" and abs(est.shift_x_px - 6.3) < 0.05


def test_refinement_that_does_not_converge_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    import pipeline.kernels.coregister.refine as refine

    ref, tgt, rv, tv = make_pair(19, (1.23, 0.61), noise=0.005)
    monkeypatch.setattr(refine, "MAX_ITERATIONS", 1)
    est = estimate_shift(ref, tgt, rv, tv)
    assert est.status == "failed"
    assert "converge" in est.reason


def test_shape_mismatch_raises() -> None:
    with pytest.raises(CoregistrationError):
        estimate_shift(np.zeros((10, 10)), np.zeros((10, 12)))


def test_to_dict_is_plain() -> None:
    est = ShiftEstimate(0.5, -0.25, 0.9, 100, "shifted", None)
    assert est.to_dict() == {
        "shift_x_px": 0.5,
        "shift_y_px": -0.25,
        "quality": 0.9,
        "n_valid": 100,
        "status": "shifted",
        "reason": None,
    }


# --- applying a shift -------------------------------------------------------------------------


def test_apply_shift_aligns_target_to_reference() -> None:
    shift = (1.37, -2.21)
    ref, tgt, rv, tv = make_pair(17, shift)
    inner = (slice(8, -8), slice(8, -8))
    before = np.abs(tgt[inner] - ref[inner]).mean()
    err_cubic = np.abs(apply_shift(tgt, *shift)[inner] - ref[inner])
    err_linear = np.abs(apply_shift(tgt, *shift, order=1)[inner] - ref[inner])
    assert not np.isnan(err_cubic).any()
    assert err_cubic.mean() < before / 20
    assert err_cubic.mean() < 0.7 * err_linear.mean()  # the cubic spline blurs less
    # estimated then applied
    est = estimate_shift(ref, tgt, rv, tv)
    aligned = apply_shift(tgt, est.shift_x_px, est.shift_y_px)
    assert np.abs(aligned[inner] - ref[inner]).mean() < 1.1 * err_cubic.mean()


def test_apply_shift_masks_nodata_and_edges() -> None:
    image = np.ones((40, 50))
    image[20, 25] = np.nan
    out = apply_shift(image, 0.5, 0.0)  # aligned[r, c] = image[r, c + 0.5]: reads c - 1 .. c + 2
    expected = apply_shift_mask(np.isfinite(image), 0.5, 0.0)
    assert np.array_equal(np.isfinite(out), expected)
    assert np.isnan(out[20, 23:27]).all() and np.isfinite(out[20, 1:23]).all()
    assert np.isnan(out[:, 0]).all() and np.isnan(out[:, -2:]).all()
    assert np.isnan(out).sum() == 3 * 40 + 4
    assert np.nanmax(np.abs(out - 1.0)) < 1e-9
    # whole-pixel shifts read one pixel: the NaN moves, it does not grow
    out = apply_shift(image, 2.0, -1.0)  # aligned[r, c] = image[r + 1, c + 2]
    assert np.isnan(out).sum() == 1 + 2 * 40 + 1 * 50 - 2
    assert np.isnan(out[19, 23]) and np.isfinite(out[20, 25])


def test_apply_shift_mask_semantics() -> None:
    valid = np.ones((20, 20), dtype=bool)
    valid[10, 10] = False
    out = apply_shift_mask(valid, 1.0, 1.0)  # aligned[r, c] = target[r - 1, c + 1]
    assert not out[11, 9] and out[10, 10]
    assert not out[0].any() and not out[:, -1].any()


@pytest.mark.parametrize("shift", [(1.37, -2.61), (-3.2, 0.45), (0.0, 2.0)])
def test_apply_shift_dask_matches_numpy(shift: tuple[float, float]) -> None:
    rng = np.random.default_rng(3)
    stack = ndimage.gaussian_filter(rng.normal(size=(2, 150, 170)), (0, 1.5, 1.5))
    stack[0, 40:60, 30:90] = np.nan
    stack[1, 100:, 120:] = np.nan
    lazy = da.from_array(stack, chunks=(1, 48, 64))
    out_lazy = apply_shift(lazy, *shift)
    assert isinstance(out_lazy, da.Array)
    out_np = apply_shift(stack, *shift)
    out_da = out_lazy.compute()
    assert np.array_equal(np.isnan(out_np), np.isnan(out_da))
    np.testing.assert_allclose(out_da, out_np, atol=1e-5, equal_nan=True)
    mask_lazy = apply_shift_mask(da.from_array(np.isfinite(stack), chunks=(1, 48, 64)), *shift)
    assert isinstance(mask_lazy, da.Array)
    assert np.array_equal(mask_lazy.compute(), np.isfinite(out_np))


@settings(max_examples=8, deadline=None)
@given(
    shift_x=st.floats(-4, 4),
    shift_y=st.floats(-4, 4),
    chunk_y=st.integers(8, 70),
    chunk_x=st.integers(8, 70),
)
def test_apply_shift_dask_matches_numpy_any_chunking(
    shift_x: float, shift_y: float, chunk_y: int, chunk_x: int
) -> None:
    rng = np.random.default_rng(4)
    image = ndimage.gaussian_filter(rng.normal(size=(70, 60)), 1.0).astype(np.float32)
    image[rng.random(image.shape) < 0.02] = np.nan
    out_np = apply_shift(image, shift_x, shift_y)
    out_da = apply_shift(da.from_array(image, chunks=(chunk_y, chunk_x)), shift_x, shift_y)
    assert out_da.dtype == np.float32
    np.testing.assert_allclose(out_da.compute(), out_np, atol=1e-5, equal_nan=True)


def test_apply_shift_keeps_float32_and_leading_axes() -> None:
    image = np.random.default_rng(0).random((3, 32, 32)).astype(np.float32)
    out = apply_shift(image, 0.3, 0.3)
    assert out.dtype == np.float32 and out.shape == image.shape
    np.testing.assert_allclose(out[1], apply_shift(image[1], 0.3, 0.3))


def test_apply_shift_keeps_dataarray_coords() -> None:
    xr = pytest.importorskip("xarray")
    image = xr.DataArray(
        np.random.default_rng(1).random((2, 20, 30)),
        dims=("time", "y", "x"),
        coords={"y": np.arange(20) * -10.0, "x": np.arange(30) * 10.0},
        attrs={"crs": "EPSG:32636"},
    )
    out = apply_shift(image, 0.5, -0.25)
    assert isinstance(out, xr.DataArray) and out.dims == image.dims
    assert out.attrs == image.attrs and np.array_equal(out.x, image.x)
    np.testing.assert_array_equal(out.values, apply_shift(image.values, 0.5, -0.25))
    mask = apply_shift_mask(image.notnull(), 0.5, -0.25)
    assert isinstance(mask, xr.DataArray) and mask.dtype == bool


# --- stacks -----------------------------------------------------------------------------------


def test_coregister_stack_picks_most_valid_reference() -> None:
    world = make_world(18)
    shifts = [(0.8, -0.5), (0.0, 0.0), (-1.6, 2.2), (0.3, 0.4)]
    clouds = [0.3, 0.05, 0.25, 1.0]
    rng = np.random.default_rng(18)
    bands, valid = [], []
    for i, ((sx, sy), cloud) in enumerate(zip(shifts, clouds, strict=True)):
        band = render(world, sx, sy) + rng.normal(0, 0.003, world.shape)
        cloudy = cloud_mask(100 + i, world.shape, cloud) if cloud < 1 else np.ones_like(band, bool)
        band[cloudy] = 0.9
        bands.append(band)
        valid.append(~cloudy)
    ref_index, estimates = coregister_stack(np.stack(bands), np.stack(valid))
    assert ref_index == 1
    assert estimates[1] == ShiftEstimate(0.0, 0.0, 1.0, int(valid[1].sum()), "ok", None)
    for i in (0, 2):
        est = estimates[i]
        assert est.status == "shifted"
        # relative to the reference date, which itself is unshifted here
        assert abs(est.shift_x_px - shifts[i][0]) < 0.05
        assert abs(est.shift_y_px - shifts[i][1]) < 0.05
    assert estimates[3].status == "failed"
    # an explicit reference is honoured: shifts are then relative to date 0
    ref_index, estimates = coregister_stack(
        da.from_array(np.stack(bands)), np.stack(valid), reference_index=0
    )
    assert ref_index == 0
    assert abs(estimates[2].shift_x_px - (-1.6 - 0.8)) < 0.05
    assert abs(estimates[2].shift_y_px - (2.2 + 0.5)) < 0.05
    with pytest.raises(CoregistrationError):
        coregister_stack(np.stack(bands), np.stack(valid), reference_index=9)


# --- real Sentinel-2 pairs (../shared/data/oscd; skipped when absent) --------------------------


def _oscd_band(city: str, date_dir: str, band: str) -> np.ndarray:
    rasterio = pytest.importorskip("rasterio")
    files = sorted((SHARED_DATA / "oscd" / city / date_dir).glob(f"*_{band}.tif"))
    if not files:
        pytest.skip(f"no OSCD {city} {date_dir} {band} under {SHARED_DATA}")
    with rasterio.open(files[0]) as src:
        return src.read(1).astype(np.float64) / 10000.0


@pytest.mark.shared
def test_real_pair_recovers_an_added_known_shift() -> None:
    """Mumbai 2016 vs 2018 (real radiometric and urban change): an extra, known content
    displacement of the second date must show up exactly in the estimate."""
    ref = _oscd_band("mumbai", "imgs_1", "B08")[:400, :400]
    tgt = _oscd_band("mumbai", "imgs_2", "B08")[:400, :400]
    base = estimate_shift(ref, tgt)
    assert base.status != "failed" and base.quality > 0.5
    for extra in [(1.73, -0.41), (-2.26, 2.58)]:
        padded = np.pad(tgt, 32, mode="reflect")
        spectrum = ndimage.fourier_shift(np.fft.fft2(padded), (-extra[1], extra[0]))
        moved = np.fft.ifft2(spectrum).real[32:-32, 32:-32]
        est = estimate_shift(ref, moved)
        assert est.status == "shifted"
        assert abs(est.shift_x_px - base.shift_x_px - extra[0]) < 0.03
        assert abs(est.shift_y_px - base.shift_y_px - extra[1]) < 0.03


@pytest.mark.shared
def test_real_unrelated_cities_fail() -> None:
    abudhabi = _oscd_band("abudhabi", "imgs_1", "B08")[:400, :400]
    mumbai = _oscd_band("mumbai", "imgs_1", "B08")[:400, :400]
    est = estimate_shift(abudhabi, mumbai)
    assert est.status == "failed"
    assert est.quality < 0.3 or "max_shift" in est.reason
