"""Tests of the multi-date method of the whole-tile detect stage (stages/tile_series.py,
kernels/scale/series_block.py): planted changes found and signed, results free of the chunking,
of the strips inside a chunk and of where the tasks run."""

from __future__ import annotations

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
from pipeline.io.tile_read import read_window
from pipeline.kernels.scale import series_block
from pipeline.simulate.tile import SyntheticStack
from pipeline.stages.tile import CubeReader, TileResult, detect_tile

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
