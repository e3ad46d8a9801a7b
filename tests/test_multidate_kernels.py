"""The numba engine of the multi-date statistics gives the numpy reference's bits, numpy and
dask (pipeline/kernels/detect/multidate_numba.py behind pipeline/kernels/detect/multidate.py)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

from pipeline.errors import DataError
from pipeline.kernels.detect import multidate as md
from pipeline.kernels.detect import multidate_numba as kern
from pipeline.kernels.detect.multidate_numba import sorting_network


def _series(seed: int, t_len: int, n_bands: int, p_valid: float, size: tuple = (24, 70)) -> tuple:
    """Random standardised series with a step, a one-date excursion, NaN inside valid dates,
    two dates 0.01 day apart, and pixels never seen, seen once and seen only at the end."""
    rng = np.random.default_rng(seed)
    ny, nx = size
    z = rng.normal(size=(t_len, n_bands, ny, nx)).astype(np.float32)
    z[t_len // 2 :, :, 5:12, 10:20] += 6  # a step change
    z[min(3, t_len - 1), :, 14:18, 25:30] += 8  # a one-date excursion
    valid = rng.random((t_len, ny, nx)) < p_valid
    valid[:, 0, 0] = False  # never seen
    valid[1:, 0, 1] = False  # seen once, first date
    valid[:-1, 0, 2] = False  # seen once, last date
    valid[:, 0, 3] = True  # always seen
    z = np.where(valid[:, None], z, np.nan).astype(np.float32)
    z[rng.random(z.shape) < 0.01] = np.nan  # a NaN band on a valid date
    var = (1 + rng.random(z.shape)).astype(np.float32)
    days = np.sort(rng.choice(300, t_len, replace=False)).astype(np.float32)
    if t_len > 3:
        days[2] = days[1] + 0.01  # below the smallest time step
    slope = (0.1 * rng.normal(size=(n_bands, ny, nx))).astype(np.float32)
    slope_var = np.full((n_bands, ny, nx), 0.01, np.float32)
    return z, var, valid, days, slope, slope_var


def _same_bits(ref: np.ndarray, got: np.ndarray, name: str) -> None:
    ref, got = np.asarray(ref), np.asarray(got)
    assert ref.dtype == got.dtype and ref.shape == got.shape, name
    np.testing.assert_array_equal(ref.view(np.uint8), got.view(np.uint8), err_msg=name)


CASES = [(t, b, s) for t in (2, 3, 5, 14, 24, 30) for b, s in ((1, 0), (4, 1), (6, 2))]


@pytest.mark.parametrize(("t_len", "n_bands", "seed"), CASES)
def test_numba_engine_gives_the_reference_bits(t_len: int, n_bands: int, seed: int) -> None:
    z, var, valid, days, slope, slope_var = _series(seed, t_len, n_bands, 0.5 + 0.15 * seed)
    ref = md.series_noise(z, valid, days, min_obs=3, engine="numpy")
    got = md.series_noise(z, valid, days, min_obs=3, threads=2)
    for k, (r, g) in enumerate(zip(ref, got, strict=True)):
        _same_bits(r, g, f"series_noise[{k}]")
    assert np.isnan(ref[0][:, 0, 0]).all()  # never seen
    assert np.isfinite(ref[0]).any() == (t_len >= 3)  # min_obs
    ref = md.excursion_stat(z, var, valid, engine="numpy")
    got = md.excursion_stat(z, var, valid, threads=3)
    for k, (r, g) in enumerate(zip(ref, got, strict=True)):
        _same_bits(r, g, f"excursion_stat[{k}]")
    *lean, no_base = md.excursion_stat(z, var, valid, threads=2, baseline=False)
    assert no_base is None
    for k, (r, g) in enumerate(zip(ref[:2], lean, strict=True)):
        _same_bits(r, g, f"excursion_stat[{k}] without the baseline")
    for window in (1, 3, 5, 12):  # 3: the default; 12: the largest DetectConfig allows
        kw = {"slope": slope, "slope_var": slope_var, "window": window, "threshold": 25.0}
        ref_sc = md.series_change(z, var, valid, days, engine="numpy", **kw)
        got_sc = md.series_change(z, var, valid, days, threads=2, **kw)
        for name in ref_sc.__dataclass_fields__:
            _same_bits(getattr(ref_sc, name), getattr(got_sc, name), f"{name} window {window}")
    if t_len >= 14:  # the planted step is found, so strong breaks bound the windows
        assert np.nanmax(ref_sc.score) > 25.0


def test_rows_wider_than_a_lane_tile() -> None:
    """Rows cut into several lane tiles (the last one partial) give the reference's bits: the
    per-lane state (window counts, last observation) starts afresh in every tile, and strong
    breaks near a tile's edge bound the windows of their own lanes only."""
    width = 2 * kern.TILE + 37
    z, var, valid, days, slope, slope_var = _series(7, 14, 4, 0.8, size=(3, width))
    edge = kern.TILE
    z[7:, :, :, edge - 6 : edge + 6] += 9  # strong steps either side of a tile edge
    z[4:, :, :, -20:] -= 9  # and in the partial last tile
    z = np.where(valid[:, None], z, np.nan).astype(np.float32)
    ref_noise = md.series_noise(z, valid, days, engine="numpy")
    for k, (r, g) in enumerate(zip(ref_noise, md.series_noise(z, valid, days), strict=True)):
        _same_bits(r, g, f"series_noise[{k}]")
    ref = md.excursion_stat(z, var, valid, engine="numpy")
    for k, (r, g) in enumerate(zip(ref, md.excursion_stat(z, var, valid), strict=True)):
        _same_bits(r, g, f"excursion_stat[{k}]")
    kw = {"slope": slope, "slope_var": slope_var, "window": 3, "threshold": 25.0}
    ref_sc = md.series_change(z, var, valid, days, engine="numpy", **kw)
    got_sc = md.series_change(z, var, valid, days, **kw)
    for name in ref_sc.__dataclass_fields__:
        _same_bits(getattr(ref_sc, name), getattr(got_sc, name), name)
    strong = np.nan_to_num(ref_sc.score, nan=0.0) >= 25.0
    assert strong[:, :, edge - 6 : edge + 6].any() and strong[:, :, -20:].any()


def test_threshold_compared_in_float32() -> None:
    """A score equal to the float32 rounding of the threshold passes, as in numpy."""
    z, var, valid, days, slope, slope_var = _series(5, 14, 4, 0.8)
    kw = {"slope": slope, "slope_var": slope_var, "window": 3}
    first = md.series_change(z, var, valid, days, threshold=1e9, engine="numpy", **kw)
    top = float(np.nanmax(first.score))
    thr = float(np.nextafter(np.float64(top), -np.inf)) + 0.5 * (
        float(np.nextafter(np.float32(top), np.float32(np.inf))) - top
    )  # above top in float64, rounds to top in float32
    assert thr > top and np.float32(thr) == np.float32(top)
    ref = md.series_change(z, var, valid, days, threshold=thr, engine="numpy", **kw)
    got = md.series_change(z, var, valid, days, threshold=thr, **kw)
    for name in ref.__dataclass_fields__:
        _same_bits(getattr(ref, name), getattr(got, name), name)


def test_all_invalid_and_unknown_engine() -> None:
    z, var, valid, days, slope, slope_var = _series(0, 6, 2, 0.0)
    valid[:] = False
    noise, slope_out = md.series_noise(z, valid, days)
    assert np.isnan(noise).all() and (slope_out == 0).all()
    stat, two, base = md.excursion_stat(z, var, valid)
    assert np.isnan(stat).all() and not two.any() and np.isnan(base).all()
    sc = md.series_change(
        z, var, valid, days, slope=slope, slope_var=slope_var, window=2, threshold=9.0
    )
    assert np.isnan(sc.score).all() and (sc.before_index == -1).all() and (sc.n_after == 0).all()
    with pytest.raises(DataError, match="engine 'cuda'"):
        md.series_noise(z, valid, days, engine="cuda")  # type: ignore[arg-type]


@pytest.mark.parametrize("engine", ["numba", "numpy"])
def test_dask_equals_numpy(engine: str) -> None:
    z, var, valid, days, slope, slope_var = _series(3, 12, 4, 0.7, size=(40, 50))
    chunks = (-1, -1, 16, 24)
    zd, vd = da.from_array(z, chunks=chunks), da.from_array(var, chunks=chunks)
    okd = da.from_array(valid, chunks=(-1, 16, 24))
    sld, svd = (
        da.from_array(slope, chunks=(-1, 16, 24)),
        da.from_array(slope_var, chunks=(-1, 20, 25)),
    )
    kw = {"window": 3, "threshold": 25.0, "engine": engine}
    lazy = md.series_change(zd, vd, okd, days, slope=sld, slope_var=svd, **kw)
    assert isinstance(lazy.score, da.Array)  # nothing computed early
    eager = md.series_change(z, var, valid, days, slope=slope, slope_var=slope_var, **kw)
    assert np.nanmax(eager.score) > 25.0
    for name in eager.__dataclass_fields__:
        _same_bits(getattr(eager, name), getattr(lazy, name).compute(), name)
    for r, g in zip(
        md.series_noise(z, valid, days, engine=engine),
        md.series_noise(zd, okd, days, engine=engine),
        strict=True,
    ):
        assert isinstance(g, da.Array)
        _same_bits(r, g.compute(), "series_noise")
    for r, g in zip(
        md.excursion_stat(z, var, valid, engine=engine),
        md.excursion_stat(zd, vd, okd, engine=engine),
        strict=True,
    ):
        assert isinstance(g, da.Array)
        _same_bits(r, g.compute(), "excursion_stat")


@pytest.mark.parametrize("n", [1, 2, 7, 16, 23, 29])
def test_sorting_network_sorts(n: int) -> None:
    net_i, net_j = sorting_network(n)
    assert (net_i < net_j).all() and (net_j < n).all()
    rng = np.random.default_rng(n)
    for _ in range(50):
        a = rng.integers(0, 4, n).astype(float)
        b = a.copy()
        for i, j in zip(net_i, net_j, strict=True):
            b[i], b[j] = min(b[i], b[j]), max(b[i], b[j])
        np.testing.assert_array_equal(b, np.sort(a))
