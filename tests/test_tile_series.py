"""Tests of the multi-date method of the whole-tile detect stage (stages/tile_series.py,
kernels/scale/series_block.py): planted changes found and signed, results free of the chunking,
of the strips inside a chunk and of where the tasks run."""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from typing import Any

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from pyproj import Transformer

from pipeline.config import DetectConfig
from pipeline.errors import ConfigError
from pipeline.io.cluster import dask_client
from pipeline.io.tile_read import read_sample, read_window, sample_windows
from pipeline.kernels.scale import series_block
from pipeline.kernels.scale.tile_label import window_grid
from pipeline.simulate.tile import SyntheticStack
from pipeline.stages.tile import (
    SERIES_CHUNKS_PX,
    CubeReader,
    TileResult,
    detect_tile,
    series_chunk_px,
    series_margin_px,
)
from pipeline.stages.tile_series import fit_sample, read_range, stream_series_chunk

CFG = DetectConfig()


@pytest.fixture(scope="module")
def stack() -> SyntheticStack:
    return SyntheticStack(
        (150, 140), 8, seed=7, object_spacing_px=40, cloud_fraction=0.08, period_px=251
    )


@pytest.fixture(scope="module")
def whole(stack: SyntheticStack) -> TileResult:
    """Detections with one chunk (the whole grid)."""
    return detect_tile(stack, CFG, method="multidate", chunk_px=512, n_threads=1)


def _cube(stack: SyntheticStack, chunks: int | None = None) -> xr.Dataset:
    """The whole stack as an xarray cube (numpy, or dask with ``chunks``)."""
    ny, nx = stack.shape
    reads = [stack.read(t, slice(0, ny), slice(0, nx)) for t in range(stack.n_dates)]
    t = stack.transform
    coords = {
        "time": pd.to_datetime(stack.dates).values,
        "y": t.f + t.e * (np.arange(ny) + 0.5),
        "x": t.c + t.a * (np.arange(nx) + 0.5),
    }
    names = ("blue", "green", "red", "nir")[: stack.n_bands]
    data = {
        n: (("time", "y", "x"), np.stack([r[0][b] for r in reads])) for b, n in enumerate(names)
    }
    data["valid"] = (("time", "y", "x"), np.stack([r[1] for r in reads]))
    cube = xr.Dataset(data, coords=coords, attrs={"crs": stack.crs})
    return cube.chunk({"time": 1, "y": chunks, "x": chunks}) if chunks else cube


def _matches(stack: SyntheticStack, features: list[dict]) -> tuple[set[int], int]:
    """Planted events hit by a detection of the right sign and date, and detections on none."""
    to_utm = Transformer.from_crs(4326, stack.crs, always_xy=True)
    events = stack.events()
    hit, stray = set(), 0
    for f in features:
        p = f["properties"]
        col, row = ~stack.transform @ to_utm.transform(p["centroid_lon"], p["centroid_lat"])
        on = [
            i
            for i, ev in enumerate(events)
            if ev["rows"][0] - 1 <= row <= ev["rows"][1] + 1
            and ev["cols"][0] - 1 <= col <= ev["cols"][1] + 1
            and ev["kind"] == p["kind"]
            and stack.dates[ev["first_after"]] == p["date_after"]
        ]
        hit.update(on)
        stray += not on
    return hit, stray


def test_planted_changes_are_found_signed_and_dated(stack: SyntheticStack, whole: TileResult):
    hit, stray = _matches(stack, whole.features)
    assert whole.method == "multidate" and whole.series is not None
    assert len(stack.events()) >= 8
    assert len(hit) >= 0.8 * len(stack.events())
    assert stray <= 0.2 * len(whole.features)
    assert len(whole.pairs) == stack.n_dates - 1
    assert sum(p["n_objects"] for p in whole.pairs) == len(whole.features)


def test_results_do_not_depend_on_the_chunking(stack: SyntheticStack, whole: TileResult):
    fine = detect_tile(stack, CFG, method="multidate", chunk_px=48, n_threads=2)
    assert len(whole.features) >= 8
    assert fine.features == whole.features
    odd = detect_tile(stack, CFG, method="multidate", chunk_px=34, n_threads=2)
    assert odd.features == whole.features


def test_default_chunk_is_the_budget_choice(stack: SyntheticStack, whole: TileResult) -> None:
    auto = detect_tile(stack, CFG, method="multidate", n_threads=2)
    assert auto.chunk_px == series_chunk_px(stack.shape, stack.n_dates, stack.n_bands, CFG, 2)
    assert whole.chunk_px == 512
    assert auto.features == whole.features


def _window_mb(side: int, dates: int, cfg: DetectConfig) -> float:
    window = side + 2 * series_margin_px(cfg)
    return series_block.block_mb((window, window), dates, 4)


def test_chunk_is_the_largest_that_fits_the_memory_budget() -> None:
    tile = (10980, 10980)
    dates = (2, 6, 24, 96)
    sides = [series_chunk_px(tile, t, 4, CFG, 2) for t in dates]
    assert sides == sorted(sides, reverse=True) and sides[0] > sides[-1]
    for t, side in zip(dates, sides, strict=True):
        assert 2 * _window_mb(side, t, CFG) <= CFG.memory_budget_mb
        larger = [s for s in SERIES_CHUNKS_PX if s > side]
        assert not larger or 2 * _window_mb(larger[0], t, CFG) > CFG.memory_budget_mb
    # a budget of exactly two 1024 px windows of 24 dates gets 1024 px chunks; one byte less, 512
    exact = 2 * _window_mb(1024, 24, CFG)
    fits = CFG.model_copy(update={"memory_budget_mb": exact})
    assert series_chunk_px(tile, 24, 4, fits, 2) == 1024
    less = CFG.model_copy(update={"memory_budget_mb": exact - 1e-6})
    assert series_chunk_px(tile, 24, 4, less, 2) == 512
    # more tasks at once on a worker: no larger chunks
    assert series_chunk_px(tile, 6, 4, CFG, 8) < sides[1]
    # nothing fits: the smallest side
    assert series_chunk_px(tile, 24, 4, CFG.model_copy(update={"memory_budget_mb": 1}), 2) == 256
    # a small grid: its windows are clipped to it
    assert series_chunk_px((300, 200), 200, 4, CFG, 2) == 1024
    # sides on the drift smoothing's block grid
    coarse = DetectConfig(drift_window_px=15)
    side = series_chunk_px(tile, 24, 4, coarse, 2)
    assert side % series_block.stats_align_px(coarse) == 0


def test_memory_model_bounds_a_task() -> None:
    """block_mb against the peak a task allocates (tracemalloc), on a window size and a number
    of dates the model was not fitted on."""
    dates, chunk = 10, 160
    stack = SyntheticStack((3 * chunk, 3 * chunk), dates, seed=3, object_spacing_px=64)
    windows = sample_windows(stack.shape, CFG.max_sample_px)
    samples = [read_sample(stack, t, windows) for t in range(dates)]
    params = fit_sample(
        np.stack([s[0] for s in samples]), np.stack([s[1] for s in samples]), stack.dates, CFG
    )
    reach, align = series_block.stats_reach_px(CFG), series_block.stats_align_px(CFG)
    halo = series_margin_px(CFG) - reach  # the stage's window margin (the sign's)
    window = window_grid(stack.shape, chunk, halo)[4]  # the middle chunk
    r0, r1 = read_range(*window.rows, reach, align, stack.shape[0])
    c0, c1 = read_range(*window.cols, reach, align, stack.shape[1])
    tracemalloc.start()
    try:
        cands, _, _ = stream_series_chunk(stack, window, params, CFG, 3)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    estimate = series_block.block_mb((r1 - r0, c1 - c0), dates, stack.n_bands) * 2**20
    assert sum(len(c) for c in cands) > 0
    assert 0.8 * estimate <= peak <= estimate
    assert chunk + 2 * series_margin_px(CFG) <= r1 - r0 < chunk + 2 * series_margin_px(CFG) + align


def test_strips_do_not_change_the_statistics(
    stack: SyntheticStack, whole: TileResult, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows, cols = slice(10, 90), slice(20, 120)
    reads = [read_window(stack, t, rows, cols) for t in range(stack.n_dates)]
    bands = np.stack([r[0] for r in reads])
    valid = np.stack([r[1] for r in reads])
    params = whole.series
    assert params is not None
    one = series_block.block_series(bands.copy(), valid, params, CFG)
    monkeypatch.setattr(series_block, "STRIP_PX", 7 * 100)  # 7 rows a strip
    assert series_block.strip_rows(100) == 7
    many = series_block.block_series(bands.copy(), valid, params, CFG)
    assert np.isfinite(one.score).sum() > 0.5 * one.score[1:].size
    np.testing.assert_array_equal(one.score, many.score)
    np.testing.assert_array_equal(one.mean_before, many.mean_before)
    np.testing.assert_array_equal(one.before_index, many.before_index)
    np.testing.assert_array_equal(one.used, many.used)


def test_object_split_by_chunk_corner_is_one_object() -> None:
    base = SyntheticStack(
        (96, 96), 6, seed=1, object_spacing_px=10_000, cloud_fraction=0.0, period_px=101
    )
    cube = _cube(base)
    block = (slice(3, None), slice(27, 37), slice(26, 38))  # from date 3 on, across (32, 32)
    cube["nir"][block] = cube["nir"][block] + 0.3
    cube["red"][block] = cube["red"][block] + 0.2
    split = detect_tile(CubeReader(cube), CFG, method="multidate", chunk_px=32).features
    one = detect_tile(CubeReader(cube), CFG, method="multidate", chunk_px=512).features
    big = [f for f in split if f["properties"]["n_pixels"] >= 100]
    assert len(big) == 1
    assert 120 <= big[0]["properties"]["n_pixels"] <= 130
    assert big[0]["properties"]["kind"] == "appeared"
    assert big[0]["properties"]["date_after"] == base.dates[3]
    assert split == one


def test_cube_reader_numpy_and_dask_agree(stack: SyntheticStack, whole: TileResult) -> None:
    eager = detect_tile(CubeReader(_cube(stack)), CFG, method="multidate", chunk_px=64)
    lazy_cube = _cube(stack, chunks=50)
    assert isinstance(lazy_cube["nir"].data, da.Array)
    lazy = detect_tile(CubeReader(lazy_cube), CFG, method="multidate", chunk_px=64)
    assert eager.features == lazy.features
    assert [f["properties"]["kind"] for f in eager.features] == [
        f["properties"]["kind"] for f in whole.features
    ]


def test_bad_method_and_chunk_raise_config_error(stack: SyntheticStack) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        detect_tile(stack, CFG, method="median")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="drift block"):
        detect_tile(stack, DetectConfig(drift_window_px=15), method="multidate", chunk_px=48)


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A LocalCluster of 2 worker processes (one thread each)."""
    with dask_client("processes", n_workers=2, threads_per_worker=1, memory_limit="1GiB") as c:
        yield c


@pytest.mark.slow
def test_on_worker_processes_equals_local(
    stack: SyntheticStack, whole: TileResult, client: Any
) -> None:
    remote = detect_tile(stack, CFG, method="multidate", chunk_px=48, client=client)
    assert len(client.scheduler_info()["workers"]) == 2
    assert len(whole.features) >= 8
    assert remote.features == whole.features
    # the default chunk is sized for one task at a time per worker (one thread each)
    auto = detect_tile(stack, CFG, method="multidate", client=client)
    assert auto.chunk_px == series_chunk_px(stack.shape, stack.n_dates, stack.n_bands, CFG, 1)
    assert auto.features == whole.features
