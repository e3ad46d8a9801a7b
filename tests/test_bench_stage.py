"""The whole-stage benchmark from COG files (``benchmarks/bench_stage.py``) on a small grid.

Real parts: COGs written by :mod:`pipeline.simulate.tile_catalog`, STAC Items read back with
pystac, the odc-stac loader, dask threads, one subprocess per method.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio

from pipeline.simulate.tile import SyntheticStack
from pipeline.simulate.tile_catalog import date_rasters, read_tile_items

BENCH_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_stage.py"


def _load_bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("bench_stage", BENCH_PATH)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules["bench_stage"] = module
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


bench = _load_bench()

SIZE, DATES = 512, 4

RUN_FIELDS = {
    "method",
    "seconds",
    "peak_rss_mb",
    "steps_s",
    "task_s",
    "read_mb",
    "decoded_mb",
    "read_mbps",
    "decode_mbps",
    "statistics_mbps",
    "read_to_statistics",
    "recall",
    "objects",
    "planted_changes",
}


def test_catalog_holds_the_stack_as_dn_and_scl(tmp_path: Path) -> None:
    info = bench.ensure_catalog(512, 3, 3, tmp_path)
    items = read_tile_items(Path(info["folder"]) / "catalog.json")
    assert [it.datetime.date().isoformat() for it in items] == SyntheticStack((512, 512), 3).dates
    stack = SyntheticStack((512, 512), 3, seed=3)  # 2 clouds on date 2
    dn, _scl = date_rasters(stack, 2)
    with rasterio.open(items[2].assets["red"].get_absolute_href()) as src:
        assert src.profile["compress"].lower() == "deflate" and src.block_shapes[0] == (256, 256)
        assert src.dtypes[0] == "uint16" and src.crs.to_epsg() == 32636
        np.testing.assert_array_equal(src.read(1), dn[2])
    bands, valid = stack.read(2, slice(0, 512), slice(0, 512))
    np.testing.assert_allclose(dn[2] / 1e4 - 0.1, bands[2], atol=6e-5)
    with rasterio.open(items[2].assets["scl"].get_absolute_href()) as src:
        assert src.shape == (256, 256)
        cloudy = np.repeat(np.repeat(src.read(1) == 9, 2, axis=0), 2, axis=1)
    assert (~valid).any() and not (~valid & ~cloudy).any()  # every cloudy pixel masked
    # the same parameters: reused, not rewritten
    again = bench.ensure_catalog(512, 3, 3, tmp_path)
    assert again["reused"] and again["generated_seconds"] == info["generated_seconds"]


@pytest.mark.slow
def test_stage_from_cogs_recalls_the_planted_changes(tmp_path: Path) -> None:
    out = tmp_path / "results_stage.json"
    report = bench.bench(SIZE, DATES, ["pairwise", "multidate"], build=tmp_path, out=out)
    assert json.loads(out.read_text()) == report
    assert report["catalog"]["size_px"] == SIZE and report["catalog"]["cog_mb"] > 1
    runs = report["runs"]
    assert [(r["method"], r["reader"]) for r in runs] == [
        ("pairwise", "items"),
        ("pairwise", "cube"),
        ("multidate", "items"),
        ("multidate", "cube"),
    ]
    for run in runs:
        assert RUN_FIELDS <= set(run)
        assert run["planted_changes"] == 4
        assert run["recall"] >= 0.75, run
        assert {"open", "sample", "stream", "objects", "write"} <= set(run["steps_s"])
        assert {"read", "statistics"} <= set(run["task_s"])
        if run["reader"] == "cube":  # decoding is timed on the cube's dask read tasks
            assert 0 < run["task_s"]["read_decode"] < run["task_s"]["read"]
        # the stream reads every date of the grid at least once (4 bands float32 + mask)
        assert run["read_mb"] >= 0.99 * DATES * SIZE * SIZE * 17 / 1e6
        assert run["peak_rss_mb"] > 100
    for method in ("pairwise", "multidate"):  # either reader: the same detections
        items_run, cube_run = (r for r in runs if r["method"] == method)
        assert items_run["objects"] == cube_run["objects"]
        assert items_run["recall"] == cube_run["recall"]
    assert Path(report["catalog"]["folder"], "detections_multidate.geojson").is_file()
