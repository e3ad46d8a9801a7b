"""The change core on small synthetic cubes of known truth (pipeline.kernels.detect.core and its
kernels)."""

from __future__ import annotations

from collections.abc import Callable

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from hypothesis import Phase, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from scipy import ndimage

from pipeline.config import DetectConfig
from pipeline.errors import DataError
from pipeline.io.calibration import active_model
from pipeline.kernels.detect.core import DEFAULT_BANDS, pair_change
from pipeline.kernels.detect.neighbourhood import (
    dilate,
    gradient_sq,
    laplacian_sq,
    local_background,
    median3x3,
    smooth,
    surroundings,
)
from pipeline.kernels.detect.normalise import (
    fit_radiometry,
    on_sample,
    per_group,
    robust_correlation,
    whitening_matrix,
)
from pipeline.kernels.detect.segment import segment_pair
from pipeline.stages.detect import detect_cube

NY, NX = 100, 120
X0, Y0, RES = 766000.0, 3920000.0, 10.0
SOIL = np.array([0.10, 0.13, 0.17, 0.25, 0.32, 0.26], dtype=np.float32)
APRON = np.array([0.22, 0.23, 0.24, 0.25, 0.28, 0.25], dtype=np.float32)
WATER = np.array([0.06, 0.05, 0.03, 0.015, 0.008, 0.005], dtype=np.float32)
HULL = np.array([0.04, 0.035, 0.03, 0.05, 0.04, 0.03], dtype=np.float32)  # darker in VIS, not NIR
APRON_ROWS, APRON_COLS = slice(10, 45), slice(10, 90)
WATER_ROWS = slice(65, NY)
AIRCRAFT = (slice(20, 25), slice(30, 37))  # 5 x 7 px on the apron
HULL_BOX = (slice(75, 78), slice(40, 52))  # 3 x 12 px on the water
ZONE_NAMES, ZONE_KINDS = ("apron-north", "harbour"), ("apron", "pier")
NOISE = 0.004


def _scene() -> np.ndarray:
    base = np.empty((6, NY, NX), dtype=np.float32)
    base[:] = SOIL[:, None, None]
    base[:, APRON_ROWS, APRON_COLS] = APRON[:, None, None]
    base[:, WATER_ROWS, :] = WATER[:, None, None]
    return base


def _zones() -> np.ndarray:
    z = np.zeros((NY, NX), dtype=np.int16)
    z[APRON_ROWS, APRON_COLS] = 1
    z[60:, :] = 2
    return z


def _put(img: np.ndarray, box: tuple[slice, slice], value: np.ndarray, blur: bool = True) -> None:
    """Paint an object (band values ``value``) into ``img`` in place, lightly PSF-blurred."""
    cover = np.zeros(img.shape[1:], dtype=np.float32)
    cover[box] = 1.0
    if blur:
        cover = ndimage.gaussian_filter(cover, 0.5)
    img[:] = img * (1 - cover) + value[:, None, None] * cover


def _cube(data: np.ndarray, valid: np.ndarray | None = None) -> xr.Dataset:
    """A cube per the contract from (T, 6, y, x) reflectance and (T, y, x) validity."""
    n_t, _, ny, nx = data.shape
    times = (np.datetime64("2024-11-02") + 5 * np.arange(n_t) * np.timedelta64(1, "D")).astype(
        "datetime64[ns]"
    )
    x = X0 + RES / 2 + RES * np.arange(nx)
    y = Y0 - RES / 2 - RES * np.arange(ny)
    if valid is None:
        valid = np.ones((n_t, ny, nx), dtype=bool)
    ds = xr.Dataset(
        {
            b: (("time", "y", "x"), data[:, i].astype(np.float32))
            for i, b in enumerate(DEFAULT_BANDS)
        },
        coords={"time": times, "y": y, "x": x},
        attrs={"crs": "EPSG:32636", "site": "testsite"},
    )
    for b in DEFAULT_BANDS:
        ds[b] = ds[b].where(xr.DataArray(valid, dims=("time", "y", "x")))
    ds["valid"] = (("time", "y", "x"), valid)
    return ds


def _stack(n_t: int, paint: Callable[[int, np.ndarray], None] | None = None, seed: int = 0):
    rng = np.random.default_rng(seed)
    data = np.empty((n_t, 6, NY, NX), dtype=np.float32)
    for t in range(n_t):
        img = _scene()
        if paint is not None:
            paint(t, img)
        data[t] = img + rng.normal(0, NOISE, img.shape).astype(np.float32)
    return data


PAIRWISE = DetectConfig(method="pairwise")


def _run(cube: xr.Dataset, cfg: DetectConfig | None = None):
    return detect_cube(
        cube,
        _zones(),
        ZONE_NAMES,
        ZONE_KINDS,
        cfg or DetectConfig(),
        calibration_model=active_model(),
    )


def _dates(n_t: int) -> list[str]:
    return [str(d)[:10] for d in _cube(np.zeros((n_t, 6, 2, 2))).time.values]


def _centroid_xy(box: tuple[slice, slice]) -> tuple[float, float]:
    row = (box[0].start + box[0].stop - 1) / 2
    col = (box[1].start + box[1].stop - 1) / 2
    return X0 + RES / 2 + RES * col, Y0 - RES / 2 - RES * row


def _feature_xy(feature: dict) -> tuple[float, float]:
    from pyproj import Transformer

    tr = Transformer.from_crs(4326, 32636, always_xy=True)
    p = feature["properties"]
    return tr.transform(p["centroid_lon"], p["centroid_lat"])


def _assert_at(feature: dict, box: tuple[slice, slice], tol_m: float = 10.0) -> None:
    fx, fy = _feature_xy(feature)
    tx, ty = _centroid_xy(box)
    assert abs(fx - tx) <= tol_m and abs(fy - ty) <= tol_m, ((fx, fy), (tx, ty))


# --- planted objects -------------------------------------------------------------------------


def test_aircraft_leaving_apron_is_one_removed_object_with_its_interval() -> None:
    aircraft = APRON + 0.10

    def paint(t: int, img: np.ndarray) -> None:
        if t <= 2:
            _put(img, AIRCRAFT, aircraft)

    res = _run(_cube(_stack(6, paint)))
    assert len(res.features) == 1
    p = res.features[0]["properties"]
    dates = _dates(6)
    assert p["kind"] == "removed"
    assert (p["date_before"], p["date_after"]) == (dates[2], dates[3])
    assert p["zone"] == "apron-north" and p["zone_kind"] == "apron"
    assert 25 <= p["n_pixels"] <= 70 and p["area_m2"] == p["n_pixels"] * 100.0
    assert 0.0 <= p["confidence"] <= 1.0 and p["confidence"] > 0.99
    assert p["score"] > res.pairs[2]["threshold"]
    _assert_at(res.features[0], AIRCRAFT)
    assert [q["n_objects"] for q in res.pairs] == [0, 0, 1, 0, 0]
    assert res.labels.sel(pair=2).values[22, 33] == 1 and int(res.labels.max()) == 1


def test_dark_hull_leaving_water_is_removed() -> None:
    def paint(t: int, img: np.ndarray) -> None:
        if t <= 1:
            _put(img, HULL_BOX, HULL)

    res = _run(_cube(_stack(5, paint)))
    assert len(res.features) == 1
    p = res.features[0]["properties"]
    dates = _dates(5)
    assert p["kind"] == "removed"
    assert (p["date_before"], p["date_after"]) == (dates[1], dates[2])
    assert p["zone"] == "harbour"
    _assert_at(res.features[0], HULL_BOX)


def test_dark_vehicles_arriving_on_soil_appear() -> None:
    box = (slice(52, 56), slice(95, 104))
    vehicles = SOIL * 0.4

    def paint(t: int, img: np.ndarray) -> None:
        if t >= 3:
            _put(img, box, vehicles)

    res = _run(_cube(_stack(6, paint)))
    assert len(res.features) == 1
    p = res.features[0]["properties"]
    dates = _dates(6)
    assert p["kind"] == "appeared"
    assert (p["date_before"], p["date_after"]) == (dates[2], dates[3])
    assert p["zone"] is None and p["zone_kind"] is None
    _assert_at(res.features[0], box)


def test_adjacent_removal_and_arrival_are_split_by_sign() -> None:
    left, right = (slice(25, 31), slice(50, 56)), (slice(25, 31), slice(56, 62))

    def paint(t: int, img: np.ndarray) -> None:
        if t <= 1:
            _put(img, left, APRON + 0.12, blur=False)
        else:
            _put(img, right, APRON * 0.3, blur=False)

    res = _run(_cube(_stack(4, paint)))
    kinds = sorted(f["properties"]["kind"] for f in res.features)
    assert kinds == ["appeared", "removed"]
    for f in res.features:
        assert f["properties"]["n_pixels"] >= 30
        _assert_at(f, left if f["properties"]["kind"] == "removed" else right, tol_m=6.0)


# --- no change -------------------------------------------------------------------------------


def test_global_gain_and_offset_drift_alone_gives_no_detection() -> None:
    data = _stack(6, seed=3)
    rng = np.random.default_rng(7)
    for t in range(6):
        gain = rng.uniform(0.85, 1.15, 6).astype(np.float32)
        offset = rng.uniform(-0.02, 0.02, 6).astype(np.float32)
        data[t] = data[t] * gain[:, None, None] + offset[:, None, None]
    res = _run(_cube(data))
    assert res.features == []
    assert all(q["n_changed_px"] == 0 for q in res.pairs)


def test_pure_noise_false_alarms_match_the_false_alarm_rate() -> None:
    rng = np.random.default_rng(11)
    n_t, size = 6, 300
    base = np.array([0.1, 0.12, 0.15, 0.3, 0.25, 0.2], dtype=np.float32)
    data = base[None, :, None, None] + rng.normal(0, 0.01, (n_t, 6, size, size)).astype(np.float32)
    zones = np.zeros((size, size), np.int16)
    assert (
        detect_cube(
            _cube(data), zones, (), (), DetectConfig(), calibration_model=active_model()
        ).features
        == []
    )  # multidate
    cfg = DetectConfig(method="pairwise", false_alarm_rate=1e-5, grow_false_alarm_rate=1e-2)
    res = detect_cube(_cube(data), zones, (), (), cfg, calibration_model=active_model())
    assert res.features == []
    score = res.score.values
    n = np.isfinite(score).sum()
    assert n == (n_t - 1) * size * size
    seed_rate = (score >= res.pairs[0]["threshold"]).sum() / n
    grow_rate = (score >= res.pairs[0]["grow_threshold"]).sum() / n
    # The rates are bounds: the structure-noise terms and the local noise only add variance.
    assert seed_rate < 5e-5  # at most 4.5 expected seed pixels in 450 000
    assert 1e-3 < grow_rate < 1.5e-2
    assert all(0.8 < q["null_scale"] < 1.25 for q in res.pairs)
    assert all(np.allclose(q["noise_sigma"], 0.01 * np.sqrt(2), rtol=0.1) for q in res.pairs)


def test_static_edge_with_residual_misregistration_is_not_change() -> None:
    # A bright runway with soft edges; date 2 is shifted by 0.25 px across it.
    from scipy.special import erf

    cols = np.arange(NX, dtype=np.float32)

    def runway(shift: float) -> np.ndarray:
        prof = 0.5 * (erf((cols - 40 - shift) / 1.2) - erf((cols - 60 - shift) / 1.2))
        return prof[None, None, :] * np.ones((1, NY, 1), np.float32)

    rng = np.random.default_rng(5)
    data = np.empty((4, 6, NY, NX), dtype=np.float32)
    for t in range(4):
        cover = runway(0.25 if t == 2 else 0.0)
        img = SOIL[:, None, None] * (1 - cover) + (APRON + 0.15)[:, None, None] * cover
        data[t] = img + rng.normal(0, NOISE, img.shape).astype(np.float32)
    assert _run(_cube(data)).features == []  # multidate: texture noise per date
    assert _run(_cube(data), PAIRWISE).features == []
    naive = _run(_cube(data), DetectConfig(method="pairwise", registration_noise_px=0.0))
    assert len(naive.features) >= 2  # the mechanism is what keeps the edges quiet


# --- clouds ----------------------------------------------------------------------------------


def test_change_under_cloud_is_found_at_the_next_clear_date_once() -> None:
    aircraft = APRON + 0.10
    valid = np.ones((6, NY, NX), dtype=bool)
    valid[2, 12:35, 22:45] = False  # cloud over the aircraft on date 2

    def paint(t: int, img: np.ndarray) -> None:
        if t <= 1:
            _put(img, AIRCRAFT, aircraft)
        if t == 2:
            img[:, 12:35, 22:45] = 0.6

    res = _run(_cube(_stack(6, paint), valid))
    assert len(res.features) == 1
    p = res.features[0]["properties"]
    dates = _dates(6)
    assert p["kind"] == "removed"
    assert (p["date_before"], p["date_after"]) == (dates[1], dates[3])
    _assert_at(res.features[0], AIRCRAFT)
    assert np.isnan(res.score.sel(pair=1).values[22, 33])  # not scored under the cloud


def test_interval_of_a_partly_clouded_object_holds_every_pixel() -> None:
    box = (slice(20, 26), slice(30, 40))
    valid = np.ones((5, NY, NX), dtype=bool)
    valid[2, 14:32, 20:35] = False  # the left part of the aircraft is under cloud on date 2

    def paint(t: int, img: np.ndarray) -> None:
        if t <= 2:
            _put(img, box, APRON + 0.10)

    res = _run(_cube(_stack(5, paint), valid))
    assert len(res.features) == 1
    p = res.features[0]["properties"]
    dates = _dates(5)
    assert p["date_after"] == dates[3]
    assert p["date_before"] == dates[1]  # earliest last clear view: holds the cloudy part too
    assert p["date_before_latest"] == dates[2]


def test_thin_cloud_edge_next_to_a_cloud_is_not_an_object() -> None:
    haze = np.array([0.05, 0.035, 0.02, 0.012, 0.006, 0.004], dtype=np.float32)
    valid = np.ones((5, NY, NX), dtype=bool)
    valid[2, 46:58, 5:70] = False

    def paint(t: int, img: np.ndarray) -> None:
        if t == 2:
            img[:, 46:58, 5:70] = 0.6
            img[:, 58:61, 5:70] += haze[:, None, None]  # edge SCL missed, beside the cloud
            img[:, 85:88, 60:110] += haze[:, None, None]  # same signature, no cloud near

    data = _stack(5, paint)
    # multidate: both one-date hazes have the spectral shape of haze and are masked
    assert _run(_cube(data, valid)).features == []
    kept = _run(
        _cube(data, valid),
        DetectConfig(excursion_mask=False, one_date_cloud_distance_px=0, min_confidence=0),
    )
    assert len(kept.features) >= 2  # what the check removes (the confidence filter off)
    res = _run(_cube(data, valid), PAIRWISE)
    assert len(res.features) == 2  # the far patch: appeared on date 2, gone on date 3
    assert all(f["properties"]["centroid_lat"] < _lat_of_row(80) for f in res.features)
    unguarded = _run(_cube(data, valid), DetectConfig(method="pairwise", haze_distance_px=0))
    near = [f for f in unguarded.features if f["properties"]["centroid_lat"] > _lat_of_row(80)]
    assert {f["properties"]["kind"] for f in near} == {"appeared", "removed"}  # what it guards


def _lat_of_row(row: int) -> float:
    from pyproj import Transformer

    tr = Transformer.from_crs(32636, 4326, always_xy=True)
    return tr.transform(X0 + 500.0, Y0 - RES / 2 - RES * row)[1]


def test_large_object_is_signed_by_its_near_surroundings() -> None:
    box = (slice(14, 32), slice(40, 58))  # 18 x 18 px: most of a 24 px window

    def paint(t: int, img: np.ndarray) -> None:
        if t <= 1:
            _put(img, box, APRON + 0.12)

    res = _run(_cube(_stack(4, paint)))
    assert [f["properties"]["kind"] for f in res.features] == ["removed"]
    assert res.features[0]["properties"]["n_pixels"] >= 18 * 18


def test_single_date_patch_is_flagged_transient_and_can_be_dropped() -> None:
    box = (slice(50, 55), slice(95, 103))

    def paint(t: int, img: np.ndarray) -> None:
        if t == 2:
            _put(img, box, SOIL + 0.15)
        if t >= 2:
            _put(img, AIRCRAFT, APRON + 0.1)  # arrives on date 2 and stays

    data = _stack(5, paint)
    multi = _run(_cube(data))
    found = sorted((f["properties"]["pair"], f["properties"]["transient"]) for f in multi.features)
    assert found == [(1, False), (1, True), (2, True)]  # the one-date patch: in and out
    res = _run(_cube(data), PAIRWISE)
    found = sorted(
        (f["properties"]["pair"], f["properties"]["kind"], f["properties"]["transient"])
        for f in res.features
    )
    assert found == [(1, "appeared", False), (1, "appeared", True), (2, "removed", True)]
    dropped = _run(_cube(data), DetectConfig(method="pairwise", drop_transients=True))
    assert len(dropped.features) == 1
    assert dropped.features[0]["properties"]["transient"] is False
    _assert_at(dropped.features[0], AIRCRAFT)
    assert int(dropped.labels.max()) == 1


def test_long_hidden_pixels_with_drifting_radiometry_are_not_change() -> None:
    data = _stack(7, seed=9)
    rng = np.random.default_rng(3)
    for t in range(7):
        gain = rng.uniform(0.9, 1.1, 6).astype(np.float32)
        data[t] = data[t] * gain[:, None, None]
    valid = np.ones((7, NY, NX), dtype=bool)
    valid[1:6, :, 0:2] = False  # a border strip hidden for five dates
    valid[1:5, 30:60, 60:100] = False  # and a cloud for four
    res = _run(_cube(data, valid))
    assert res.features == []


# --- numpy / dask ----------------------------------------------------------------------------


def _planted_cube() -> xr.Dataset:
    valid = np.ones((6, NY, NX), dtype=bool)
    valid[3, 60:90, 0:30] = False

    def paint(t: int, img: np.ndarray) -> None:
        if t <= 2:
            _put(img, AIRCRAFT, APRON + 0.10)
        if t <= 3:
            _put(img, HULL_BOX, HULL)
        if t >= 4:
            _put(img, (slice(52, 56), slice(95, 104)), SOIL * 0.4)

    return _cube(_stack(6, paint), valid)


def test_numpy_and_dask_cubes_give_the_same_objects() -> None:
    cube = _planted_cube()
    chunked = cube.chunk({"time": 1, "y": 37, "x": 50})
    multi = _run(cube)
    assert len(multi.features) == 3
    assert [f["properties"] for f in _run(chunked).features] == [
        f["properties"] for f in multi.features
    ]
    eager = _run(cube, PAIRWISE)
    lazy = _run(chunked, PAIRWISE)
    assert isinstance(lazy.score.data, da.Array)
    assert isinstance(eager.score.data, np.ndarray)
    assert len(eager.features) == 3
    assert [f["properties"] for f in lazy.features] == [f["properties"] for f in eager.features]
    assert [f["geometry"] for f in lazy.features] == [f["geometry"] for f in eager.features]
    np.testing.assert_array_equal(lazy.labels.values, eager.labels.values)
    np.testing.assert_allclose(lazy.score.values, eager.score.values, rtol=1e-5, equal_nan=True)
    assert lazy.pairs == eager.pairs


def _forbid_compute(*args: object, **kwargs: object) -> None:
    raise AssertionError("a kernel computed a dask graph")


def test_pair_kernel_dask_in_gives_dask_out_without_computing() -> None:
    cube = _planted_cube()
    stack = np.stack([cube[b].values for b in DEFAULT_BANDS], axis=1)
    valid = cube["valid"].values
    stack = np.nan_to_num(stack)
    args = (stack[2], stack[3], valid[2], valid[3], ~valid[3])
    lazy_args = tuple(da.from_array(a, chunks=(-1, 40, 40)[-a.ndim :]) for a in args)
    cfg = DetectConfig(smooth_sigma_px=0.8)
    with dask.config.set(scheduler=_forbid_compute):
        lazy = pair_change(*lazy_args, cfg, blue_index=0)
        rad = fit_radiometry(lazy_args[0], lazy_args[1], lazy_args[2], max_sample_px=10_000)
    eager = pair_change(*args, cfg, blue_index=0)
    for name in ("score", "removed", "used", "haze"):
        assert isinstance(getattr(lazy, name), da.Array), name
        assert isinstance(getattr(eager, name), np.ndarray), name
        np.testing.assert_allclose(
            getattr(lazy, name).compute(), getattr(eager, name), rtol=1e-5, equal_nan=True
        )
    assert isinstance(rad.gain, da.Array)
    rad_np = fit_radiometry(args[0], args[1], args[2], max_sample_px=10_000)
    np.testing.assert_allclose(rad.sigma.compute(), rad_np.sigma, rtol=1e-6)
    np.testing.assert_allclose(rad.whitening.compute(), rad_np.whitening, rtol=1e-5)


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),  # no slow shrinking
)
@given(
    cy=st.integers(5, 60),
    cx=st.integers(5, 60),
    window=st.integers(3, 30),
    radius=st.integers(0, 6),
)
def test_neighbourhood_kernels_agree_on_any_chunking(cy: int, cx: int, window: int, radius: int):
    rng = np.random.default_rng(cy * 100 + cx)
    img = rng.normal(size=(2, 61, 47)).astype(np.float32)
    img[:, 5:20, 10:30] = np.nan
    lazy = da.from_array(img, chunks=(1, cy, cx))
    np.testing.assert_allclose(
        local_background(lazy, window).compute(), local_background(img, window), equal_nan=True
    )
    filled = np.nan_to_num(img)
    lazy_filled = da.from_array(filled, chunks=(1, cy, cx))
    np.testing.assert_allclose(gradient_sq(lazy_filled).compute(), gradient_sq(filled), rtol=1e-6)
    np.testing.assert_allclose(laplacian_sq(lazy_filled).compute(), laplacian_sq(filled), rtol=1e-5)
    quiet = img[1] < 0.5
    lazy_quiet = da.from_array(quiet, chunks=(cy, cx))
    np.testing.assert_allclose(
        surroundings(lazy_filled, lazy_quiet, window).compute(),
        surroundings(filled, quiet, window),
        equal_nan=True,
    )
    np.testing.assert_allclose(
        smooth(lazy_filled, 0.9).compute(), smooth(filled, 0.9), rtol=1e-5, atol=1e-6
    )
    mask = img[0] > 2.0
    assert (
        dilate(da.from_array(mask, chunks=(cy, cx)), radius).compute() == dilate(mask, radius)
    ).all()


# --- kernels ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 5), (1, 6, 1), (3, 2, 2), (2, 37, 53)])
def test_median3x3_is_scipy_median_filter(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    # ties and repeated values as well as distinct ones
    img = rng.integers(0, 5, size=shape).astype(np.float32) * np.float32(0.25)
    img += rng.random(shape, dtype=np.float32) * (rng.random(shape) < 0.5)
    want = ndimage.median_filter(img, size=(1, 3, 3))
    got = median3x3(img)
    assert got.dtype == img.dtype
    np.testing.assert_array_equal(got, want)
    lazy = da.from_array(img, chunks=(1, 7, 11))
    np.testing.assert_array_equal(median3x3(lazy).compute(), want)


def test_local_background_ignores_a_small_object_and_invalid_pixels() -> None:
    img = np.full((1, 60, 60), 0.2, dtype=np.float32)
    img[0, 28:32, 28:32] = 0.9  # an object
    img[0, 0:20, 0:20] = np.nan  # cloud
    bg = local_background(img, 24)
    assert np.allclose(bg[0, 28:32, 28:32], 0.2)
    assert np.allclose(bg[0, 14, 14], 0.2)  # filled from the valid surroundings
    assert np.isnan(bg[0, 3, 3])  # nothing valid within reach


def test_radiometry_recovers_gain_offset_and_noise() -> None:
    rng = np.random.default_rng(2)
    truth = rng.uniform(0.02, 0.4, (3, 80, 80)).astype(np.float32)
    before = truth + rng.normal(0, 0.005, truth.shape).astype(np.float32)
    gain, offset = np.array([1.1, 0.9, 1.0]), np.array([0.01, -0.02, 0.0])
    after = (truth * gain[:, None, None] + offset[:, None, None]).astype(np.float32)
    after += rng.normal(0, 0.005, truth.shape).astype(np.float32)
    after[:, 10:14, 10:14] += 0.3  # a change must not pull the fit
    rad = fit_radiometry(before, after, np.ones((80, 80), bool), max_sample_px=100_000)
    np.testing.assert_allclose(rad.gain, gain, atol=0.01)
    np.testing.assert_allclose(rad.offset, offset, atol=0.003)
    expected = 0.005 * np.sqrt(1 + gain**2)
    np.testing.assert_allclose(rad.sigma, expected, rtol=0.08)
    assert bool(rad.fit_ok)


def test_too_few_joint_pixels_leave_the_pair_unscored() -> None:
    data = _stack(3)
    valid = np.zeros((3, NY, NX), dtype=bool)
    valid[0] = True
    valid[2] = True
    valid[1, :5, :5] = True  # 25 px only
    res = _run(_cube(data, valid), PAIRWISE)
    assert res.pairs[0]["n_scored_px"] == 0
    assert res.pairs[1]["n_scored_px"] == NY * NX


def test_sample_lattice_sees_a_one_pixel_column_and_groups_are_looked_up() -> None:
    idx = np.zeros((90, 90), dtype=np.int16)
    idx[:, 1] = 3  # a border column last seen on date 3
    counts = on_sample(lambda i: np.bincount(i.astype(int), minlength=4).astype(float), 4, 900, idx)
    assert counts[3] >= 5  # a plain [::3, ::3] grid would never sample column 1
    lazy = on_sample(
        lambda i: np.bincount(i.astype(int), minlength=4).astype(float),
        4,
        900,
        da.from_array(idx, chunks=(31, 17)),
    )
    np.testing.assert_array_equal(lazy.compute(), counts)
    table = np.arange(8, dtype=np.float32).reshape(4, 2)
    looked = per_group(table, idx)
    assert looked.shape == (2, 90, 90) and looked[1, 5, 1] == 7.0 and looked[0, 5, 0] == 0.0
    lazy_looked = per_group(da.from_array(table), da.from_array(idx, chunks=(31, 17)))
    np.testing.assert_array_equal(lazy_looked.compute(), looked)


def test_robust_correlation_and_whitening() -> None:
    rng = np.random.default_rng(4)
    common = rng.normal(size=20_000)
    z = np.column_stack([common + rng.normal(size=20_000), common + rng.normal(size=20_000)])
    z /= np.sqrt(2)
    z[:200] = 50.0  # outliers (changes)
    corr = robust_correlation(z)
    assert abs(corr[0, 1] - 0.5) < 0.05
    w = whitening_matrix(corr)
    np.testing.assert_allclose(w.T @ w, np.linalg.inv(corr), rtol=1e-6)


def test_segment_pair_hysteresis_area_and_seed_rules() -> None:
    score = np.zeros((30, 30), dtype=np.float32)
    score[5:8, 5:9] = 20.0  # grows ...
    score[6, 6] = 50.0  # ... from one seed: kept (12 px)
    score[20:23, 20:24] = 20.0  # no seed: dropped
    score[12, 12] = 60.0  # a seed alone: too small
    score[0, 29] = np.nan
    removed = np.ones_like(score)
    labels, kinds, seed = segment_pair(score, removed, 40.0, 15.0, 3, 0.25)
    assert labels.max() == 1 and (labels == 1).sum() == 12
    assert kinds.tolist() == [True]
    assert seed.sum() == 2
    # a minority of the other sign below the split fraction takes the majority sign
    removed[5, 5] = -1.0
    labels, kinds, _ = segment_pair(score, removed, 40.0, 15.0, 3, 0.25)
    assert kinds.tolist() == [True] and (labels == 1).sum() == 12


def test_inputs_are_checked() -> None:
    cube = _cube(_stack(3))
    with pytest.raises(DataError, match="nir"):
        detect_cube(
            cube.drop_vars("nir"),
            _zones(),
            ZONE_NAMES,
            ZONE_KINDS,
            DetectConfig(),
            calibration_model=active_model(),
        )
    with pytest.raises(DataError, match="zone raster"):
        detect_cube(
            cube,
            np.zeros((5, 5), np.int16),
            ZONE_NAMES,
            ZONE_KINDS,
            DetectConfig(),
            calibration_model=active_model(),
        )
    no_crs = cube.copy()
    no_crs.attrs = {}
    with pytest.raises(DataError, match="crs"):
        detect_cube(
            no_crs,
            _zones(),
            ZONE_NAMES,
            ZONE_KINDS,
            DetectConfig(),
            calibration_model=active_model(),
        )


def test_single_date_gives_no_pairs() -> None:
    res = _run(_cube(_stack(1)))
    assert res.features == [] and res.pairs == []
    assert res.score.shape == (0, NY, NX) and res.labels.shape == (0, NY, NX)


def test_detect_config_new_fields_validate() -> None:
    cfg = DetectConfig()
    assert cfg.registration_noise_px >= 0 and cfg.local_window_px >= 3
    with pytest.raises(ValidationError):
        DetectConfig(sign_split_fraction=0.7)
    with pytest.raises(ValidationError):
        DetectConfig(haze_z=0)
