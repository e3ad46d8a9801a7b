"""The multi-date statistic, the cloud checks beyond the SCL and the signing of changes."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from scipy.stats import chi2

from pipeline.kernels.detect import clouds, multidate
from pipeline.kernels.detect.segment import background_margin, half_sample_mode

BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")
SIGMA = np.full(len(BANDS), 0.004)
HARDSTAND = np.array([0.14, 0.17, 0.21, 0.27, 0.30, 0.26])
VEHICLE = np.array([0.05, 0.07, 0.06, 0.12, 0.10, 0.07])


def _series(n_t: int, step_at: int | None, spike_at: int | None, rng: np.random.Generator):
    """(T, B, y, x) standardised series: noise, an optional step and an optional one-date spike."""
    ny, nx = 24, 24
    z = rng.normal(size=(n_t, len(BANDS), ny, nx)).astype(np.float32)
    if step_at is not None:
        z[step_at:, :, 4:8, 4:8] += 6.0
    if spike_at is not None:
        z[spike_at, :, 14:18, 14:18] += 3.0
    var = np.ones_like(z)
    valid = np.ones((n_t, ny, nx), dtype=bool)
    days = np.arange(n_t, dtype=np.float32) * 5
    zeros = np.zeros((len(BANDS), ny, nx), np.float32)
    return z, var, valid, days, zeros


def _change(z, var, valid, days, zeros, threshold):
    return multidate.series_change(
        z, var, valid, days, slope=zeros, slope_var=zeros, window=3, threshold=threshold
    )


def test_step_is_found_and_dated_while_a_one_date_spike_is_not() -> None:
    rng = np.random.default_rng(1)
    z, var, valid, days, zeros = _series(10, step_at=5, spike_at=3, rng=rng)
    thr = float(chi2.isf(1e-6, len(BANDS)))
    sc = _change(z, var, valid, days, zeros, thr)
    score = np.asarray(sc.score)
    step = score[:, 4:8, 4:8]
    assert (np.nanargmax(step.reshape(10, -1), axis=0) == 5).all()
    assert np.nanmin(step[5]) > thr
    assert (np.asarray(sc.before_index)[5, 4:8, 4:8] == 4).all()
    # a noisy date (3 sigma in every band) does not pass; stronger one-date departures are
    # excursions, sorted into clouds and one-date objects before this test
    assert np.nanmax(score[:, 14:18, 14:18]) < thr
    quiet = np.nan_to_num(score[:, 10:, :4], nan=0.0)
    assert quiet.max() < thr


def test_dask_and_numpy_paths_agree() -> None:
    rng = np.random.default_rng(2)
    z, var, valid, days, zeros = _series(8, step_at=4, spike_at=None, rng=rng)
    thr = float(chi2.isf(1e-6, len(BANDS)))
    ref = _change(z, var, valid, days, zeros, thr)
    lazy = _change(
        da.from_array(z, chunks=(-1, -1, 12, 12)),
        da.from_array(var, chunks=(-1, -1, 12, 12)),
        da.from_array(valid, chunks=(-1, 12, 12)),
        days,
        da.from_array(zeros, chunks=(-1, 12, 12)),
        thr,
    )
    np.testing.assert_array_equal(np.asarray(ref.score), lazy.score.compute())
    np.testing.assert_array_equal(np.asarray(ref.mean_after), lazy.mean_after.compute())


def _regions(delta: np.ndarray, base: np.ndarray, rng: np.random.Generator):
    noisy = delta + rng.normal(scale=SIGMA[:, None, None], size=delta.shape)
    labels = np.zeros(delta.shape[1:], dtype=np.int32)
    labels[2:8, 2:8] = 1
    return clouds.classify_regions(
        labels, 1, noisy, base, clouds.atmosphere_model(BANDS), SIGMA, max_unexplained=0.05
    )


@pytest.mark.parametrize("depth", [0.06, 0.3])
def test_a_shadow_faint_or_deep_is_atmospheric(depth: float) -> None:
    rng = np.random.default_rng(3)
    base = np.broadcast_to(HARDSTAND[:, None, None], (6, 10, 10)).astype(np.float64)
    atm, unexplained = _regions(-depth * base, base, rng)
    assert atm[1], unexplained[1]


def test_a_thin_cloud_is_atmospheric_and_a_green_net_is_not() -> None:
    rng = np.random.default_rng(4)
    base = np.broadcast_to(HARDSTAND[:, None, None], (6, 10, 10)).astype(np.float64)
    cloud = np.array([clouds.CLOUD_TOP[b] for b in BANDS])[:, None, None]
    atm, _ = _regions(0.3 * (cloud - base), base, rng)
    assert atm[1]
    net = np.array([0.04, 0.08, 0.05, 0.35, 0.2, 0.1])[:, None, None]  # vegetation-like
    atm, unexplained = _regions(0.8 * (net - base), base, rng)
    assert not atm[1] and unexplained[1] > 0.05


def test_half_sample_mode_finds_the_common_value_not_the_median() -> None:
    rng = np.random.default_rng(5)
    clean = 0.27 + rng.normal(scale=0.002, size=300)
    mixed = rng.uniform(0.12, 0.27, size=400)  # a continuum of part-covered pixels
    sample = np.concatenate([clean, mixed])
    assert abs(half_sample_mode(sample) - 0.27) < 0.01
    assert abs(np.median(sample) - 0.27) > 0.02
    assert np.isnan(half_sample_mode(np.array([])))


def _park(rows_present: list[int]) -> np.ndarray:
    """(B, y, x) a vehicle park of 20 x 24 px: rows every 3 px, each covering 60 % of its
    pixels and 20 % of the pixels beside it (the PSF), on hardstand; fields around it."""
    img = np.broadcast_to(np.array([0.04, 0.07, 0.05, 0.3, 0.2, 0.1])[:, None, None], (6, 30, 34))
    img = img.copy()
    img[:, 5:25, 5:29] = HARDSTAND[:, None, None]
    for r in rows_present:
        y = 6 + 3 * r
        for dy, cover in ((0, 0.6), (-1, 0.2), (1, 0.2)):
            img[:, y + dy, 7:27] = (1 - cover) * HARDSTAND[:, None] + cover * VEHICLE[:, None]
    return img


def test_rows_leaving_a_dense_park_are_removed_and_arrivals_appeared() -> None:
    rows = list(range(6))
    before, after = _park(rows), _park(rows[1:])  # row 0 leaves
    zones = np.zeros(before.shape[1:], dtype=np.int32)
    zones[5:25, 5:29] = 1
    changed = np.zeros(zones.shape, dtype=bool)
    changed[5:8, 7:27] = True
    quiet = ~changed
    m = background_margin(before, after, changed, quiet, SIGMA, 24, zones)
    assert (m[6, 7:27] > 0).all()
    m = background_margin(after, before, changed, quiet, SIGMA, 24, zones)
    assert (m[6, 7:27] < 0).all()
    assert (m[~changed] == 0).all()


def test_surround_signs_an_object_on_a_small_apron_among_fields() -> None:
    # a 5 x 9 px aircraft-bright object on a 9 x 13 px apron, fields all around: the local
    # median of a 24 px window is the fields, the ring around the object is the apron
    fields = np.array([0.04, 0.07, 0.05, 0.3, 0.2, 0.1])
    apron = np.array([0.20, 0.22, 0.24, 0.27, 0.30, 0.28])
    aircraft = np.array([0.12, 0.13, 0.13, 0.16, 0.14, 0.12])
    empty = np.broadcast_to(fields[:, None, None], (6, 40, 40)).copy()
    empty[:, 14:23, 12:25] = apron[:, None, None]
    full = empty.copy()
    full[:, 16:21, 14:23] = aircraft[:, None, None]
    changed = np.zeros((40, 40), dtype=bool)
    changed[16:21, 14:23] = True
    quiet = ~changed
    ring = background_margin(full, empty, changed, quiet, SIGMA, 24, None, ring_px=2)
    assert (ring[changed] > 0).all()  # removed
    ring = background_margin(empty, full, changed, quiet, SIGMA, 24, None, ring_px=2)
    assert (ring[changed] < 0).all()  # appeared
    window = background_margin(full, empty, changed, quiet, SIGMA, 24, None)
    assert (window[changed] < 0).any()  # what the ring fixes: the window sees the fields


def test_surround_signs_a_ship_leaving_a_quay_with_its_quay_fringe() -> None:
    # a dark ship moored on water along a bright quay: the quay pixels beside it hold part of
    # it (the PSF) and brighten when it leaves. The ring around the change is half quay, half
    # water; each view is compared with the nearer of the two surfaces, so the fringe signs
    # as the ship does, not as a bright arrival against the water
    rng = np.random.default_rng(3)
    quay = np.array([0.20, 0.23, 0.25, 0.27, 0.30, 0.27])
    water = np.array([0.03, 0.04, 0.03, 0.02, 0.01, 0.01])
    ship = np.array([0.07, 0.08, 0.08, 0.08, 0.07, 0.06])
    empty = np.broadcast_to(water[:, None, None], (6, 30, 30)).copy()
    empty[:, :12] = quay[:, None, None]
    full = empty.copy()
    full[:, 12:15, 8:23] = ship[:, None, None]
    full[:, 11, 8:23] = (0.7 * quay + 0.3 * ship)[:, None]
    full += rng.normal(0, 0.004, full.shape)
    empty += rng.normal(0, 0.004, empty.shape)
    changed = np.zeros((30, 30), dtype=bool)
    changed[11:15, 8:23] = True
    quiet = ~changed
    m = background_margin(full, empty, changed, quiet, SIGMA, 24, None, ring_px=3)
    assert (m[changed] > 0).all()  # removed, fringe included
    m = background_margin(empty, full, changed, quiet, SIGMA, 24, None, ring_px=3)
    assert (m[changed] < 0).all()  # appeared
    # one surface only (the ring's median, water): the quay fringe reads as a bright arrival
    m = background_margin(full, empty, changed, quiet, SIGMA, 24, None, 3, separation=1e6)
    assert (m[11, 8:23] < 0).all() and (m[12:15, 8:23] > 0).all()


def test_one_surface_ring_with_texture_keeps_one_background() -> None:
    # a textured apron (5 % texture) is one surface: no second background to hide behind
    from pipeline.kernels.detect.segment import TWO_SURFACE_SEPARATION, _two_surfaces

    rng = np.random.default_rng(4)
    apron = np.array([0.20, 0.22, 0.24, 0.27, 0.30, 0.28])
    pix = apron[:, None] * (1 + 0.05 * rng.standard_normal(200))[None] + rng.normal(
        0, 0.004, (6, 200)
    )
    one, two = _two_surfaces(pix, 1 / SIGMA)
    assert two is None and np.allclose(one, np.median(pix, axis=1))
    quay = np.concatenate(
        [
            pix[:, :100],
            np.array([0.03, 0.04, 0.03, 0.02, 0.01, 0.01])[:, None]
            + rng.normal(0, 0.004, (6, 100)),
        ],
        axis=1,
    )
    a, b = _two_surfaces(quay, 1 / SIGMA)
    assert b is not None and TWO_SURFACE_SEPARATION > 1
    assert {round(float(a[3]), 1), round(float(b[3]), 1)} == {0.0, 0.3}


def test_hysteresis_regions_needs_min_seeds() -> None:
    from pipeline.kernels.detect.segment import hysteresis_regions

    score = np.zeros((12, 12))
    score[2:5, 2:5] = 5.0  # a grown region with one seed
    score[3, 3] = 20.0
    score[7:10, 7:10] = 20.0  # nine seeds
    _, n = hysteresis_regions(score, 10.0, 4.0, 3)
    assert n == 2
    labels, n = hysteresis_regions(score, 10.0, 4.0, 3, min_seeds=3)
    assert n == 1 and labels[8, 8] > 0 and labels[3, 3] == 0


def test_a_departure_is_atmospheric_only_near_what_was_masked_that_date() -> None:
    rng = np.random.default_rng(5)
    base = np.broadcast_to(HARDSTAND[:, None, None], (6, 10, 10)).astype(np.float64)
    noisy = -0.3 * base + rng.normal(scale=SIGMA[:, None, None], size=base.shape)
    labels = np.zeros((10, 10), dtype=np.int32)
    labels[2:8, 2:8] = 1
    model = clouds.atmosphere_model(BANDS)

    def atmospheric(possible: np.ndarray | None) -> bool:
        atm, _ = clouds.classify_regions(labels, 1, noisy, base, model, SIGMA, 0.05, possible)
        return bool(atm[1])

    assert atmospheric(None)  # a shadow-like darkening, no context test
    masked = np.zeros((40, 40), dtype=bool)
    assert not clouds.atmosphere_possible(masked, 10).any()  # a clear date: no shadow
    masked[20, 20] = True  # a cloud flagged that date
    near = clouds.atmosphere_possible(masked, 10)
    assert near[20, 29] and not near[20, 31]
    assert atmospheric(near[15:25, 15:25])
    assert not atmospheric(near[:10, :10])
    edge = np.zeros((40, 40), dtype=bool)
    edge[0, :] = True  # the no-data edge a co-registration shift leaves is no cloud
    assert not clouds.atmosphere_possible(edge, 10).any()
    assert clouds.atmosphere_possible(edge, None).all()
