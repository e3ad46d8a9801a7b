"""Tests of the out-of-core detect stage: chunk-border labelling, chunking-free results."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy import ndimage

from pipeline.config import DetectConfig
from pipeline.errors import DataError
from pipeline.io.tile_read import read_sample
from pipeline.kernels.detect.neighbourhood import surroundings
from pipeline.kernels.detect.pairwise import thresholds
from pipeline.kernels.detect.segment import segment_pair
from pipeline.kernels.scale.change import change_core
from pipeline.kernels.scale.tile_label import EIGHT, margin_reach_px, sparse_components, window_grid
from pipeline.simulate.tile import SyntheticStack
from pipeline.stages.tile import CubeReader, detect_tile, fit_pairs, sample_windows

CFG = DetectConfig()


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


def _summary(features: list[dict]) -> list[tuple]:
    return sorted(
        (
            f["properties"]["kind"],
            f["properties"]["n_pixels"],
            f["properties"]["score"],
            f["properties"]["date_after"],
        )
        for f in features
    )


@pytest.fixture(scope="module")
def stack() -> SyntheticStack:
    return SyntheticStack(
        (150, 140), 4, seed=7, object_spacing_px=40, cloud_fraction=0.08, period_px=251
    )


@pytest.fixture(scope="module")
def coarse(stack: SyntheticStack) -> list[dict]:
    """Detections with one chunk (the whole grid)."""
    return detect_tile(stack, CFG, chunk_px=1024, n_threads=1).features


def test_sparse_components_equal_full_labelling() -> None:
    rng = np.random.default_rng(3)
    mask = rng.random((60, 70)) < 0.3
    rows, cols = np.nonzero(mask)
    perm = rng.permutation(rows.size)  # any input order
    comp = sparse_components(rows[perm], cols[perm], 70)
    full, n = ndimage.label(mask, EIGHT)
    assert int(comp.max()) + 1 == n
    # Same partition: one-to-one between the two labellings.
    pairs = set(zip(comp, full[rows[perm], cols[perm]], strict=True))
    assert len(pairs) == n
    assert sparse_components(np.zeros(0, int), np.zeros(0, int), 5).size == 0


def test_window_grid_tiles_the_array() -> None:
    grid = window_grid((100, 70), 32, 8)
    cover = np.zeros((100, 70), int)
    for w in grid:
        cover[slice(*w.inner_rows), slice(*w.inner_cols)] += 1
        assert w.rows[0] <= w.inner_rows[0] and w.rows[1] >= w.inner_rows[1]
    assert (cover == 1).all()


def test_results_do_not_depend_on_the_chunking(stack: SyntheticStack, coarse: list) -> None:
    fine = detect_tile(stack, CFG, chunk_px=48, n_threads=2).features
    assert len(coarse) >= 8
    assert fine == coarse


def test_wide_background_window_is_chunking_free_too(stack: SyntheticStack) -> None:
    cfg = DetectConfig(local_window_px=60)  # blocks of 5 and 20 px: crops snap to 20 px
    whole = detect_tile(stack, cfg, chunk_px=1024, n_threads=1).features
    assert detect_tile(stack, cfg, chunk_px=44, n_threads=2).features == whole


def test_planted_changes_are_found(stack: SyntheticStack, coarse: list) -> None:
    transform = stack.transform
    found = 0
    for ev in stack.events():
        (r0, r1), (c0, c1) = ev["rows"], ev["cols"]
        for f in coarse:
            p = f["properties"]
            col, row = ~transform @ _utm(p["centroid_lon"], p["centroid_lat"])
            if r0 - 1 <= row <= r1 + 1 and c0 - 1 <= col <= c1 + 1 and p["kind"] == ev["kind"]:
                found += 1
                break
    assert found >= 0.8 * len(stack.events())


def _utm(lon: float, lat: float) -> tuple[float, float]:
    from pyproj import Transformer

    return Transformer.from_crs(4326, 32636, always_xy=True).transform(lon, lat)


def test_object_split_by_chunk_corner_is_one_object() -> None:
    base = SyntheticStack(
        (96, 96), 2, seed=1, object_spacing_px=10_000, cloud_fraction=0.0, period_px=101
    )
    cube = _cube(base)
    cube["nir"][1, 27:37, 26:38] = cube["nir"][1, 27:37, 26:38] + 0.3  # across (32, 32)
    cube["red"][1, 27:37, 26:38] = cube["red"][1, 27:37, 26:38] + 0.2
    split = detect_tile(CubeReader(cube), CFG, chunk_px=32).features
    whole = detect_tile(CubeReader(cube), CFG, chunk_px=1024).features
    big = [f for f in split if f["properties"]["n_pixels"] >= 100]
    assert len(big) == 1
    assert 120 <= big[0]["properties"]["n_pixels"] <= 130
    assert big[0]["properties"]["kind"] == "appeared"
    assert split == whole


def test_tile_equals_the_whole_array_method(stack: SyntheticStack) -> None:
    """One pair: the chunked stage gives the objects of the same steps run on whole arrays."""
    pair = SyntheticStack(
        stack.shape, 2, seed=11, object_spacing_px=40, cloud_fraction=0.08, period_px=251
    )
    ny, nx = pair.shape
    (b0, v0), (b1, v1) = (pair.read(t, slice(0, ny), slice(0, nx)) for t in (0, 1))
    wins = sample_windows(pair.shape, CFG.max_sample_px)
    samp = [[pair.read(t, r, c) for r, c in wins] for t in (0, 1)]
    bands = np.stack([np.stack([s[0] for s in d]) for d in samp])
    valid = np.stack([np.stack([s[1] for s in d]) for d in samp])
    p = fit_pairs(bands, valid, CFG)[0]
    res = change_core(b0, b1, v0, v1, p, before_index=np.zeros((ny, nx), np.int16))
    norm_before = b0 * p.gain[:, None, None] + p.offset[:, None, None]
    both = surroundings(np.concatenate([norm_before, b1]), res.cls == 0, CFG.local_window_px)
    s = p.sigma[:, None, None]
    removed = (((norm_before - both[:4]) / s) ** 2).sum(0) - (((b1 - both[4:]) / s) ** 2).sum(0)
    seed_thr, grow_thr = thresholds(CFG, 4)
    labels, kinds, _ = segment_pair(res.score, removed, seed_thr, grow_thr, 3, 0.25)
    sizes = np.bincount(labels.ravel())[1:]
    want = sorted(zip(np.where(kinds, "removed", "appeared"), sizes.tolist(), strict=True))
    got = detect_tile(pair, CFG, chunk_px=40).features
    assert len(want) >= 8
    assert sorted((f["properties"]["kind"], f["properties"]["n_pixels"]) for f in got) == want


def test_cube_reader_numpy_and_dask_agree(stack: SyntheticStack, coarse: list) -> None:
    eager = detect_tile(CubeReader(_cube(stack)), CFG, chunk_px=64).features
    lazy_cube = _cube(stack, chunks=50)
    assert isinstance(lazy_cube["nir"].data, da.Array)
    lazy = detect_tile(CubeReader(lazy_cube), CFG, chunk_px=64).features
    assert _summary(eager) == _summary(lazy) == _summary(coarse)


def test_margin_reach_covers_the_background_window() -> None:
    align, reach = margin_reach_px(24)
    assert align == 8 and reach >= 16


def test_bad_stacks_raise_data_error(stack: SyntheticStack) -> None:
    with pytest.raises(DataError, match="at least 2"):
        detect_tile(SyntheticStack((50, 50), 1, period_px=53), CFG)
    with pytest.raises(DataError, match="valid"):
        CubeReader(_cube(stack).drop_vars("valid"))


class _OneByOne:
    """A reader without ``read_many``: :func:`read_sample` reads window by window."""

    def __init__(self, reader: CubeReader) -> None:
        self.reader = reader

    def read(self, t: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        return self.reader.read(t, rows, cols)


def test_sample_of_a_dask_cube_reads_each_chunk_once(stack: SyntheticStack) -> None:
    cube = _cube(stack, chunks=75)  # 2 x 2 chunks per date
    reads: list[int] = []

    def counted(block: np.ndarray) -> np.ndarray:
        reads.append(block.size)
        return block

    cube["nir"] = cube["nir"].copy(data=cube["nir"].data.map_blocks(counted, dtype=np.float32))
    windows = sample_windows(stack.shape, CFG.max_sample_px)
    assert len(windows) > 4
    reader = CubeReader(cube)
    reads.clear()  # dask's own call on an empty block, inferring the meta
    bands, valid = read_sample(reader, 1, windows)
    assert (
        sorted(reads) == [65 * 75] * 2 + [75 * 75] * 2
    )  # each chunk of the date once, not once per window it touches
    reads.clear()
    one_bands, one_valid = read_sample(_OneByOne(reader), 1, windows)  # type: ignore[arg-type]
    assert len(reads) > 4
    np.testing.assert_array_equal(bands, one_bands)
    np.testing.assert_array_equal(valid, one_valid)
    assert bands.shape == (len(windows), 4, 32, 32) and valid.any()
