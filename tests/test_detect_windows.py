"""The multi-date detector window by window (pipeline.kernels.detect.windows,
pipeline.stages.detect.multidate_windows): the plan, and the same detections as in memory."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_detect import ZONE_KINDS, ZONE_NAMES, _planted_cube, _zones

from pipeline.config import DetectConfig
from pipeline.io.calibration import active_model
from pipeline.kernels.detect import windows
from pipeline.stages.detect import detect_cube


def test_plan_chooses_windows_over_the_budget_and_memory_under_it() -> None:
    shape = (24, 4, 384, 384)
    estimate = windows.in_memory_mb(shape)
    under = windows.plan(shape, DetectConfig(memory_budget_mb=estimate * 1.01))
    over = windows.plan(shape, DetectConfig(memory_budget_mb=estimate * 0.5))
    assert not under.windowed
    assert over.windowed
    cfg = DetectConfig()
    assert over.chunk_px % windows.block_grid_px(cfg) == 0
    assert over.halo_px % windows.block_grid_px(cfg) == 0
    assert over.halo_px >= windows.MAX_EXTENT_PX
    tile = windows.plan((24, 4, 10980, 10980), DetectConfig(memory_budget_mb=2048))
    assert tile.windowed
    assert tile.window_mb * tile.in_flight <= 2048


def test_lattice_in_core_covers_the_global_lattice_once() -> None:
    plan = windows.plan((6, 4, 200, 170), DetectConfig(memory_budget_mb=1))
    hits = np.zeros((-(-200 // 3), -(-170 // 3)), int)
    for w in plan.windows((200, 170)):
        (rw, _), (rs, cs) = windows.lattice_in_core(w, 3)
        rows = np.arange(w.rows[0], w.rows[1])[rw]
        assert np.all(rows % 3 == 0)
        assert len(rows) == rs.stop - rs.start
        hits[rs, cs] += 1
    assert np.all(hits == 1)


def _detect(cube, cfg: DetectConfig):
    return detect_cube(
        cube, _zones(), ZONE_NAMES, ZONE_KINDS, cfg, calibration_model=active_model()
    )


@pytest.mark.slow
def test_windowed_detect_gives_the_in_memory_detections() -> None:
    cube = _planted_cube()
    whole = _detect(cube, DetectConfig())
    small = DetectConfig(memory_budget_mb=1.0)
    assert windows.plan((6, 6, 100, 120), small).windowed
    split = _detect(cube, small)
    assert len(whole.features) == 3
    assert json.dumps(split.features, sort_keys=True) == json.dumps(whole.features, sort_keys=True)
    np.testing.assert_array_equal(split.labels.values, whole.labels.values)
    assert split.pairs == whole.pairs
    np.testing.assert_allclose(split.score.values, whole.score.values, rtol=1e-5, atol=1e-6)


def _synthetic_cube(size: int, n_dates: int):
    """A generated (simulated) land-cover cube with planted objects and clouds."""
    import pandas as pd
    import xarray as xr

    from pipeline.simulate.tile import SyntheticStack

    stack = SyntheticStack((size, size), n_dates, seed=3, object_spacing_px=96)
    reads = [stack.read(t, slice(0, size), slice(0, size)) for t in range(n_dates)]
    t = stack.transform
    x = t.c + (np.arange(size) + 0.5) * t.a
    y = t.f + (np.arange(size) + 0.5) * t.e
    names = ["blue", "green", "red", "nir"]
    cube = xr.Dataset(
        {b: (("time", "y", "x"), np.stack([r[0][i] for r in reads])) for i, b in enumerate(names)},
        coords={"time": pd.to_datetime(stack.dates), "y": y, "x": x},
    )
    cube["valid"] = (("time", "y", "x"), np.stack([r[1] for r in reads]))
    cube.attrs["crs"] = stack.crs
    return cube, names


@pytest.mark.slow
def test_windows_cut_inside_the_cube_give_the_in_memory_detections() -> None:
    from pipeline.stages.detect import multidate_windows

    cube, bands = _synthetic_cube(528, 6)
    cfg = DetectConfig()
    zones = np.zeros((528, 528), np.int32)
    grid = windows.block_grid_px(cfg)
    chunk = grid * max(1, 160 // grid)
    plan = windows.plan((6, 4, 528, 528), DetectConfig(memory_budget_mb=1))
    halo = plan.halo_px
    assert chunk + 2 * halo < 528  # some windows end inside the cube: real cut borders
    model = active_model()
    whole = detect_cube(cube, zones, [], [], cfg, bands, calibration_model=model)
    split = multidate_windows(
        cube, zones, [], [], cfg, bands, calibration_model=model, chunk_px=chunk
    )
    assert len(whole.features) >= 5
    assert json.dumps(split.features, sort_keys=True) == json.dumps(whole.features, sort_keys=True)
    np.testing.assert_array_equal(split.labels.values, whole.labels.values)
    assert split.pairs == whole.pairs


@pytest.mark.slow
def test_windowed_detect_on_a_local_cluster_gives_the_in_memory_detections() -> None:
    from distributed import get_task_stream

    from pipeline.io.cluster import dask_client

    cube = _planted_cube()
    whole = _detect(cube, DetectConfig())
    with dask_client("processes", n_workers=2, threads_per_worker=1, memory_limit="1GiB") as c:
        assert c is not None and len(c.scheduler_info()["workers"]) == 2
        with get_task_stream(client=c) as stream:
            split = _detect(cube, DetectConfig(memory_budget_mb=1.0))
    assert len({task["worker"] for task in stream.data}) == 2  # the windows ran on both workers
    assert json.dumps(split.features, sort_keys=True) == json.dumps(whole.features, sort_keys=True)
    np.testing.assert_array_equal(split.labels.values, whole.labels.values)
    assert split.pairs == whole.pairs
