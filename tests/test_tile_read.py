"""Window readers of the tile stage: :class:`ItemsReader` against :class:`CubeReader`.

Real parts: COGs and STAC Items written by :mod:`pipeline.simulate.tile_catalog` (uint16
DEFLATE bands at 10 m on the grid, SCL at 20 m, clouds), read back with pystac and the odc-stac
loader. On the COGs' own grid the two readers give the same bits. Near a UTM zone border (the
Khmeimim demo catalog: each day an Item of zone 36, the cube's, and one of zone 37 filling its
gaps) they do too: ItemsReader reads the cube's zone alone and a window with a gap it fills
from the cube, whose warp of the other zone does not depend on the window.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pystac
import pytest
from faults import ROOT, demo_catalog
from odc.geo.geobox import GeoBox

from pipeline.config import DetectConfig, LoadConfig
from pipeline.errors import DataError
from pipeline.io import tile_read
from pipeline.io.cluster import dask_client
from pipeline.io.load import load_cube, load_site
from pipeline.io.tile_read import CubeReader, ItemsReader, read_window
from pipeline.simulate.tile import SyntheticStack
from pipeline.simulate.tile_catalog import read_tile_items, write_tile_catalog
from pipeline.sites import get_site
from pipeline.stages.tile import detect_tile

BANDS = ("blue", "green", "red", "nir")
SIZE, DATES, DILATION = 300, 4, 2  # not the loader's default: the reader takes the cube's


@pytest.fixture(scope="module")
def catalog(tmp_path_factory: pytest.TempPathFactory) -> tuple[list, GeoBox]:
    stack = SyntheticStack((SIZE, SIZE), DATES, seed=3, object_spacing_px=128)
    out = tmp_path_factory.mktemp("tile_read") / "catalog"
    write_tile_catalog(stack, out)
    items = read_tile_items(Path(out) / "catalog.json")
    return items, GeoBox(stack.shape, stack.transform, stack.crs)


def _cube(items: list, geobox: GeoBox, chunk_px: int = 128):  # type: ignore[no-untyped-def]
    return load_cube(items, geobox, BANDS, chunk_px, dilation_px=DILATION)


WINDOWS = [
    (slice(0, SIZE), slice(0, SIZE)),  # the whole grid
    (slice(100, 240), slice(90, 230)),  # across chunk borders
    (slice(0, 7), slice(293, 300)),  # a corner: the mask's dilation clipped by the edge
    (slice(150, 151), slice(5, 6)),  # one pixel
]


@pytest.mark.parametrize(("rows", "cols"), WINDOWS)
def test_items_reader_reads_what_the_cube_holds(catalog, rows: slice, cols: slice) -> None:
    items, geobox = catalog
    cube = _cube(items, geobox).isel(time=[0, 2, 3])  # dates dropped as load_site drops them
    lazy = CubeReader(cube, BANDS)
    direct = ItemsReader(cube, items, BANDS)
    assert direct.dates == lazy.dates and direct.shape == lazy.shape
    masked = 0
    for t in range(3):
        want_bands, want_valid = read_window(lazy, t, rows, cols)
        got_bands, got_valid = read_window(direct, t, rows, cols)
        np.testing.assert_array_equal(got_bands, want_bands)
        np.testing.assert_array_equal(got_valid, want_valid)
        masked += int((~want_valid).sum())
    if rows.stop - rows.start == SIZE:
        assert masked > 0  # the clouds and their dilated margins are in the comparison


@pytest.fixture(scope="module")
def stage_runs(catalog) -> tuple[ItemsReader, list]:
    """The reader and the multi-date tile stage's features, with the cube's reader and with it."""
    items, geobox = catalog
    cube = _cube(items, geobox)
    direct = ItemsReader(cube, items, BANDS)
    cfg = DetectConfig()
    runs = [
        detect_tile(reader, cfg, method="multidate", chunk_px=128, n_threads=2).features
        for reader in (CubeReader(cube, BANDS), direct)
    ]
    return direct, runs


@pytest.mark.parametrize("box_max_px", [10**9, 1])  # one box load, or the cube's computation
def test_items_reader_reads_many_windows_as_the_cube(
    catalog, monkeypatch: pytest.MonkeyPatch, box_max_px: int
) -> None:
    items, geobox = catalog
    cube = _cube(items, geobox)
    monkeypatch.setattr(tile_read, "BOX_MAX_PX", box_max_px)
    lazy = CubeReader(cube, BANDS).read_many(1, WINDOWS)
    direct = ItemsReader(cube, items, BANDS).read_many(1, WINDOWS)
    assert len(direct) == len(WINDOWS)
    for (want_bands, want_valid), (got_bands, got_valid) in zip(lazy, direct, strict=True):
        np.testing.assert_array_equal(got_bands, want_bands)
        np.testing.assert_array_equal(got_valid, want_valid)


def test_tile_stage_finds_the_same_objects_with_either_reader(stage_runs) -> None:
    _, (lazy, direct) = stage_runs
    assert lazy, "the planted objects are found"
    assert direct == lazy


def test_items_reader_on_worker_processes(stage_runs) -> None:
    """Shipped to the processes of a LocalCluster, the reader reads the same windows there."""
    reader, (_, local) = stage_runs
    with dask_client("processes", n_workers=2, threads_per_worker=1, memory_limit="1GiB") as c:
        remote = detect_tile(reader, DetectConfig(), method="multidate", chunk_px=128, client=c)
    assert local and remote.features == local


def test_items_reader_needs_the_items_of_every_date(catalog) -> None:
    items, geobox = catalog
    cube = _cube(items, geobox)
    with pytest.raises(DataError, match="no Items of the cube's date"):
        ItemsReader(cube, items[:2], BANDS)


def test_items_reader_needs_the_cubes_mask_dilation(catalog) -> None:
    items, geobox = catalog
    cube = _cube(items, geobox)
    cube["valid"].attrs.pop("dilation_px")
    with pytest.raises(DataError, match="no dilation_px"):
        ItemsReader(cube, items, BANDS)


def test_items_reader_near_a_zone_border_reads_what_the_cube_holds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    catalog = demo_catalog("2024-12-01", "2025-01-02", site="khmeimim")
    items = [
        pystac.Item.from_file(str(p)) for p in sorted((catalog / "sentinel-2-l2a").glob("*/*.json"))
    ]
    cube, _ = load_site(items, get_site("khmeimim", ROOT / "seeds"), LoadConfig(chunk_px=128))
    lazy = CubeReader(cube, BANDS)
    direct = ItemsReader(cube, items, BANDS)
    mixed = [t for t, day in enumerate(direct.day_items) if len(direct.own_items[t]) < len(day)]
    assert mixed, "the catalog has days with Items of two zones"
    from_cube: list[int] = []
    cube_read_many = CubeReader.read_many

    def spy(self: CubeReader, t: int, windows: list) -> list:
        if isinstance(self, ItemsReader):
            from_cube.append(t)
        return cube_read_many(self, t, windows)

    monkeypatch.setattr(CubeReader, "read_many", spy)
    ny, nx = direct.shape
    windows = [(slice(0, ny), slice(0, nx)), (slice(9, 10), slice(3, 4))]
    for t in mixed:
        for rows, cols in windows:
            want_bands, want_valid = read_window(lazy, t, rows, cols)
            got_bands, got_valid = read_window(direct, t, rows, cols)
            np.testing.assert_array_equal(got_bands, want_bands)
            np.testing.assert_array_equal(got_valid, want_valid)
    # both ways are taken: some windows of these days lie whole in zone 36, some do not
    assert 0 < len(from_cube) < len(mixed) * len(windows)
