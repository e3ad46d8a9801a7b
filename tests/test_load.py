"""Tests of pipeline.io.load and pipeline.io.harmonise on small real COGs written here.

Each acquisition has two Items of one datatake, as over the real sites: one on a grid in
EPSG:32636 (aligned with the site grid) and one in EPSG:32637. Known reflectance is a linear
ramp in site-grid metres; the 32637 Item reads 0.02 brighter, so each fused pixel tells which
Item it came from.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from affine import Affine
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from scipy import ndimage
from shapely.geometry import Polygon, mapping

from pipeline.config import CatalogConfig, LoadConfig
from pipeline.errors import DataError, StageInputError
from pipeline.io.catalog import BANDS, read_items, search_items, write_items
from pipeline.io.harmonise import band_radiometry, harmonise, valid_mask
from pipeline.io.load import aoi_mask, load_cube, load_site, read_cube, write_cube
from pipeline.sites import Site

X0, Y0, SIDE = 761460.0, 3866160.0, 1200.0  # site grid: 120 x 120 px of 10 m, EPSG:32636
SEAM_X = 762060.0  # on date A the 32636 Item has no data west of this
BASE = {"blue": 0.04, "green": 0.06, "red": 0.08, "nir": 0.20, "swir16": 0.25, "swir22": 0.18}
OTHER_BIAS = 0.02  # the 32637 Item is this much brighter
S2_IDS = {"blue": "B02", "green": "B03", "red": "B04", "nir": "B08", "swir16": "B11"}
S2_IDS |= {"swir22": "B12", "scl": "SCL"}
RES = {b: 10 for b in ("blue", "green", "red", "nir")} | {"swir16": 20, "swir22": 20, "scl": 20}
CLOUD = (762300.0, 3866700.0, 762380.0, 3866780.0)  # SCL 9 on date A (32636 Item)
SHADOW = (762460.0, 3866400.0, 762500.0, 3866440.0)  # SCL 3 on date A (32636 Item)
OTHER_CLOUD_X = 762480.0  # the 32637 Item says cloud east of this on date A: must lose
DATE_A = dt.datetime(2024, 11, 2, 8, 30, 10, tzinfo=dt.UTC)
DATE_B = dt.datetime(2024, 11, 7, 8, 30, 10, tzinfo=dt.UTC)
DATE_C = dt.datetime(2024, 11, 12, 8, 30, 10, tzinfo=dt.UTC)
DATE_D = dt.datetime(2024, 11, 17, 8, 30, 10, tzinfo=dt.UTC)
DILATION = 2

# odc-geo / affine deprecation chatter, raised inside dask tasks.
pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def truth(band: str, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Reflectance of ``band`` at EPSG:32636 coordinates."""
    return BASE[band] + 0.25 * (x - X0) / SIDE + 0.1 * (y - Y0) / SIDE


def _lonlat_poly(bounds: tuple[float, float, float, float], epsg: int) -> Polygon:
    tr = Transformer.from_crs(epsg, 4326, always_xy=True)
    x0, y0, x1, y1 = bounds
    ring = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    return Polygon([tr.transform(x, y) for x, y in ring])


def make_site() -> Site:
    aoi = _lonlat_poly((X0 + 30, Y0 + 30, X0 + SIDE - 30, Y0 + SIDE - 30), 32636)
    return Site(name="testsite", title="Test site", epsg=32636, aoi=aoi)


def _in_box(x: np.ndarray, y: np.ndarray, b: tuple[float, float, float, float]) -> np.ndarray:
    return (x >= b[0]) & (x < b[2]) & (y >= b[1]) & (y < b[3])


def _grid(epsg: int) -> tuple[float, float, float, float]:
    """Bounds of an Item's grid: the site grid with a margin, in the Item's CRS, 60 m snapped."""
    if epsg == 32636:
        return (X0 - 240, Y0 - 240, X0 + SIDE + 240, Y0 + SIDE + 240)
    tr = Transformer.from_crs(32636, epsg, always_xy=True)
    xs, ys = tr.transform([X0, X0 + SIDE, X0, X0 + SIDE], [Y0, Y0, Y0 + SIDE, Y0 + SIDE])
    b = (min(xs) - 300, min(ys) - 300, max(xs) + 300, max(ys) + 300)
    return (
        np.floor(b[0] / 60) * 60,
        np.floor(b[1] / 60) * 60,
        np.ceil(b[2] / 60) * 60,
        np.ceil(b[3] / 60) * 60,
    )


def _pixels(epsg: int, res: int) -> tuple[Affine, tuple[int, int], np.ndarray, np.ndarray]:
    """Transform, shape and the EPSG:32636 coordinates of the pixel centres of an Item grid."""
    x0, y0, x1, y1 = _grid(epsg)
    shape = (round((y1 - y0) / res), round((x1 - x0) / res))
    transform = Affine(res, 0, x0, 0, -res, y1)
    cols, rows = np.meshgrid(np.arange(shape[1]) + 0.5, np.arange(shape[0]) + 0.5)
    xs, ys = x0 + cols * res, y1 - rows * res
    if epsg != 32636:
        xs, ys = Transformer.from_crs(epsg, 32636, always_xy=True).transform(xs, ys)
    return transform, shape, np.asarray(xs), np.asarray(ys)


def write_item(
    folder: Path,
    epsg: int,
    when: dt.datetime,
    *,
    raster_scale: bool = True,
    baseline: str = "05.10",
    dn_offset: float = 1000.0,
    nodata_west_of: float | None = None,
    cloudy_north_of: float | None = None,
    clouds: bool = False,
) -> pystac.Item:
    """Write the COGs of one Item and return the Item (absolute hrefs)."""
    tile = "36SYD" if epsg == 32636 else "37SBU"
    item_id = f"S2B_{tile}_{when:%Y%m%d}_0_L2A"
    # The 32637 Item is one second earlier: odc-stac's default (time, id) order would put it first.
    when = when if epsg == 32636 else when - dt.timedelta(seconds=1)
    d = folder / item_id
    d.mkdir(parents=True, exist_ok=True)
    bias = 0.0 if epsg == 32636 else OTHER_BIAS
    props: dict[str, Any] = {
        "eo:cloud_cover": 10.0,
        "proj:epsg": epsg,
        "proj:code": f"EPSG:{epsg}",
        "s2:processing_baseline": baseline,
        "earthsearch:boa_offset_applied": False,
    }
    gx0, gy0, gx1, gy1 = _grid(epsg)
    item = pystac.Item(
        id=item_id,
        geometry=mapping(_lonlat_poly((gx0, gy0, gx1, gy1), epsg)),
        bbox=list(_lonlat_poly((gx0, gy0, gx1, gy1), epsg).bounds),
        datetime=when,
        properties=props,
        collection="sentinel-2-l2a",
    )
    for band, sid in S2_IDS.items():
        transform, shape, xs, ys = _pixels(epsg, RES[band])
        if band == "scl":
            arr = np.full(shape, 4, dtype=np.uint8)
            if clouds and epsg == 32636:
                arr[_in_box(xs, ys, CLOUD)] = 9
                arr[_in_box(xs, ys, SHADOW)] = 3
            if clouds and epsg != 32636:
                arr[xs >= OTHER_CLOUD_X] = 9
            if cloudy_north_of is not None:
                arr[ys >= cloudy_north_of] = 9
            dtype = "uint8"
        else:
            refl = truth(band, xs, ys) + bias
            arr = np.round(refl * 10000 + dn_offset).astype(np.uint16)
            dtype = "uint16"
        if nodata_west_of is not None:
            arr[xs < nodata_west_of] = 0
        path = d / f"{sid}.tif"
        with rasterio.open(
            path,
            "w",
            driver="COG",
            width=shape[1],
            height=shape[0],
            count=1,
            dtype=dtype,
            crs=f"EPSG:{epsg}",
            transform=transform,
            nodata=0,
        ) as dst:
            dst.write(arr, 1)
        rb: dict[str, Any] = {"nodata": 0, "data_type": dtype, "spatial_resolution": RES[band]}
        if raster_scale and band != "scl":
            rb |= {"scale": 0.0001, "offset": -dn_offset / 10000}
        item.add_asset(
            band,
            pystac.Asset(
                href=str(path),
                media_type=pystac.MediaType.COG,
                roles=["data"],
                extra_fields={
                    "proj:shape": list(shape),
                    "proj:transform": list(transform)[:6],
                    "raster:bands": [rb],
                },
            ),
        )
    return item


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[pystac.Item]:
    """Dates A (fusion, clouds), B (too cloudy), C (no raster:bands, baseline 03.01)."""
    folder = tmp_path_factory.mktemp("cogs")
    return [
        write_item(folder, 32636, DATE_A, nodata_west_of=SEAM_X, clouds=True),
        write_item(folder, 32637, DATE_A, clouds=True),
        write_item(folder, 32636, DATE_B, cloudy_north_of=Y0 + 300),
        write_item(folder, 32636, DATE_C, raster_scale=False, baseline="03.01", dn_offset=0),
        write_item(folder, 32637, DATE_C, raster_scale=False, baseline="03.01", dn_offset=0),
    ]


LOAD_CFG = LoadConfig(min_valid_fraction=0.25, cloud_dilation_px=DILATION, chunk_px=64)


@pytest.fixture(scope="module")
def loaded(items: list[pystac.Item]) -> tuple[xr.Dataset, dict[str, Any]]:
    # Reversed input: the loader must order the Items itself.
    return load_site(list(reversed(items)), make_site(), LOAD_CFG)


@pytest.fixture(scope="module")
def computed(loaded: tuple[xr.Dataset, dict[str, Any]]) -> xr.Dataset:
    return loaded[0].compute()


def _centres() -> tuple[np.ndarray, np.ndarray]:
    gb = make_site().geobox(10.0)
    cols, rows = np.meshgrid(np.arange(gb.shape[1]) + 0.5, np.arange(gb.shape[0]) + 0.5)
    return gb.affine.c + cols * 10, gb.affine.f - rows * 10


def test_cube_is_on_the_site_grid_and_follows_the_contract(
    loaded: tuple[xr.Dataset, dict[str, Any]],
) -> None:
    ds, _ = loaded
    gb = make_site().geobox(10.0)
    assert gb.shape == (120, 120) and gb.affine == Affine(10, 0, X0, 0, -10, Y0 + SIDE)
    assert ds.odc.geobox == gb
    assert ds.attrs == {"crs": "EPSG:32636", "site": "testsite"}
    assert set(ds.data_vars) == {*BANDS, "scl", "valid"}
    for b in BANDS:
        assert ds[b].dims == ("time", "y", "x") and ds[b].dtype == np.float32
    assert ds["scl"].dtype == np.uint8 and ds["valid"].dtype == bool
    assert ds["time"].dtype == np.dtype("datetime64[ns]")
    # Lazy: every variable is a dask array, chunked as asked.
    for v in ds.data_vars.values():
        assert isinstance(v.data, da.Array)
    assert ds["red"].chunks[1][0] == 64 and ds["red"].chunks[2][0] == 64
    np.testing.assert_allclose(ds["x"].values[:2], [X0 + 5, X0 + 15])


def test_dates_below_min_valid_fraction_are_dropped(
    loaded: tuple[xr.Dataset, dict[str, Any]],
) -> None:
    ds, report = loaded
    assert report["n_items"] == 5 and report["n_dates"] == 3
    assert report["dates_kept"] == ["2024-11-02", "2024-11-12"]
    [drop] = report["dates_dropped"]
    assert drop["date"] == "2024-11-07"
    assert drop["valid_fraction"] < 0.25 and "min_valid_fraction" in drop["reason"]
    assert report["valid_fraction"]["2024-11-12"] == 1.0
    # One time step per solar day, stamped with the 32636 Item's datetime.
    expected = [np.datetime64(d.replace(tzinfo=None), "ns") for d in (DATE_A, DATE_C)]
    assert list(ds["time"].values) == expected


@pytest.mark.parametrize("lazy", [False, True])
def test_harmonise_is_the_float32_formula_with_nodata_as_nan(lazy: bool) -> None:
    rng = np.random.default_rng(5)
    dn = rng.integers(0, 12_000, size=(2, 37, 41)).astype(np.uint16)
    dn[:, :5, :7] = 0  # no data
    arr = xr.DataArray(dn, dims=("time", "y", "x"), coords={"y": np.arange(37.0)})
    if lazy:
        arr = arr.chunk({"y": 16, "x": 16})
    scale = np.array([1e-4, 2.5e-5], np.float32)
    offset = np.array([-0.1, 0.0], np.float32)
    got = harmonise(arr, xr.DataArray(scale, dims="time"), xr.DataArray(offset, dims="time"))
    assert isinstance(got.data, da.Array) == lazy and got.dims == ("time", "y", "x")
    value = dn.astype(np.float32) * scale[:, None, None] + offset[:, None, None]
    want = np.where(dn != 0, value, np.float32(np.nan)).astype(np.float32)
    np.testing.assert_array_equal(got.values.view(np.uint32), want.view(np.uint32))
    assert np.isnan(got.values[:, :5, :7]).all()
    np.testing.assert_array_equal(got["y"].values, arr["y"].values)
    one = harmonise(arr.isel(time=1), float(scale[1]), float(offset[1]))  # scalars
    np.testing.assert_array_equal(one.values.view(np.uint32), want[1].view(np.uint32))


def test_harmonised_values_and_fusion_from_the_other_zone(computed: xr.Dataset) -> None:
    xs, ys = _centres()
    a = computed.isel(time=0)
    east = xs > SEAM_X + 40  # 32636 data, away from the seam's resampling kernel
    west = (xs < SEAM_X - 40) & (xs > X0 + 40)
    for b in BANDS:
        want = truth(b, xs, ys)
        got = a[b].values
        assert np.isfinite(got).all(), b
        tol = 6e-5 if b in ("blue", "green", "red", "nir") else 1e-3
        np.testing.assert_allclose(got[east], want[east], atol=tol, err_msg=b)
        # West of the seam the 32636 Item has no data: filled from the 32637 Item (+0.02).
        np.testing.assert_allclose(got[west], want[west] + OTHER_BIAS, atol=3e-3, err_msg=b)
    # Date C: no raster:bands, baseline 03.01 -> DN / 10000, from the 32636 Item everywhere.
    c = computed.isel(time=1)
    inner = (xs > X0 + 40) & (xs < X0 + SIDE - 40)
    np.testing.assert_allclose(c["red"].values[inner], truth("red", xs, ys)[inner], atol=6e-5)


def test_valid_mask_from_fused_scl_with_dilation(computed: xr.Dataset) -> None:
    xs, ys = _centres()
    a = computed.isel(time=0)
    scl = a["scl"].values
    assert (scl[_in_box(xs, ys, CLOUD)] == 9).all() and (scl[_in_box(xs, ys, SHADOW)] == 3).all()
    # East of OTHER_CLOUD_X the 32637 Item says cloud, but the 32636 Item comes first.
    assert (scl[(xs > OTHER_CLOUD_X) & ~_in_box(xs, ys, SHADOW)] == 4).all()
    assert (scl[xs < SEAM_X] == 4).all()  # filled from the 32637 Item
    disk = np.add.outer(np.arange(-2, 3) ** 2, np.arange(-2, 3) ** 2) <= DILATION**2 + DILATION
    cloudy = _in_box(xs, ys, CLOUD) | _in_box(xs, ys, SHADOW)
    expected = ~ndimage.binary_dilation(cloudy, structure=disk)
    np.testing.assert_array_equal(a["valid"].values, expected)
    assert computed.isel(time=1)["valid"].values.all()


def test_items_of_a_day_with_different_radiometry_are_harmonised_each(tmp_path: Path) -> None:
    own = write_item(tmp_path, 32636, DATE_D, nodata_west_of=SEAM_X)  # raster:bands, +1000
    other = write_item(tmp_path, 32637, DATE_D, raster_scale=False, baseline="02.12", dn_offset=0)
    assert band_radiometry(own, "red").key != band_radiometry(other, "red").key
    gb = make_site().geobox(10.0)
    ds = load_cube([other, own], gb, ["red", "swir16"], 64, dilation_px=1, site_name="t")
    assert isinstance(ds["red"].data, da.Array) and ds.sizes["time"] == 1
    xs, ys = _centres()
    red = ds["red"].values[0]
    east, west = xs > SEAM_X + 40, (xs < SEAM_X - 40) & (xs > X0 + 40)
    np.testing.assert_allclose(red[east], truth("red", xs, ys)[east], atol=6e-5)
    np.testing.assert_allclose(red[west], truth("red", xs, ys)[west] + OTHER_BIAS, atol=3e-3)
    assert ds["valid"].values.all() and ds["scl"].dtype == np.uint8


def test_write_read_cube_round_trip(loaded: tuple[xr.Dataset, dict], tmp_path: Path) -> None:
    ds, _ = loaded
    path = write_cube(ds, tmp_path / "site" / "cube.zarr")
    back = read_cube(path)
    assert isinstance(back["red"].data, da.Array)
    assert back.attrs == ds.attrs
    assert back["time"].dtype == np.dtype("datetime64[ns]")
    np.testing.assert_array_equal(back["time"].values, ds["time"].values)
    for name in ds.data_vars:
        assert back[name].dtype == ds[name].dtype, name
        np.testing.assert_array_equal(back[name].values, ds[name].values, err_msg=str(name))
    # Rewriting replaces the cube whole and leaves no temporary folders.
    write_cube(ds.isel(time=[0]), path)
    assert read_cube(path).sizes["time"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["cube.zarr"]
    with pytest.raises(StageInputError, match="run the load stage"):
        read_cube(tmp_path / "missing.zarr")


def test_search_write_read_then_load_from_a_local_catalog(
    items: list[pystac.Item], tmp_path: Path
) -> None:
    folder = Path(items[0].assets["red"].href).parents[1]  # holds <item_id>/<band>.tif
    cat = pystac.Catalog(id="cogs", description="test COGs", href=str(folder / "catalog.json"))
    col = pystac.Collection(
        id="sentinel-2-l2a",
        description="test",
        extent=pystac.Extent(
            pystac.SpatialExtent([[-180, -90, 180, 90]]), pystac.TemporalExtent([[None, None]])
        ),
    )
    cat.add_child(col)
    for it in items:
        col.add_item(it.clone())
    cat.normalize_hrefs(str(folder))
    cat.make_all_asset_hrefs_relative()  # e.g. ../../S2B_36SYD_20241102_0_L2A/B04.tif
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    site = make_site()
    found = search_items(
        CatalogConfig(url=str(folder / "catalog.json")),
        site.aoi,
        dt.date(2024, 11, 1),
        dt.date(2024, 11, 30),
    )
    assert len(found) == 5
    back = read_items(write_items(found, tmp_path / "items.json"))
    _, report = load_site(list(back), site, LOAD_CFG)
    assert report["dates_kept"] == ["2024-11-02", "2024-11-12"]


def test_load_site_without_items_is_a_data_error() -> None:
    with pytest.raises(DataError, match="no Items for site testsite"):
        load_site([], make_site(), LOAD_CFG)


def test_unreadable_cog_is_a_data_error(tmp_path: Path) -> None:
    item = write_item(tmp_path, 32636, DATE_C)
    Path(item.assets["nir"].href).unlink()
    with pytest.raises(DataError, match=r"load testsite: a COG cannot be read.*B08\.tif"):
        load_site([item], make_site(), LOAD_CFG)


def test_aoi_mask_covers_the_aoi_only() -> None:
    site = make_site()
    mask = aoi_mask(site, site.geobox(10.0))
    assert mask.shape == (120, 120)
    assert mask[3:-3, 3:-3].all() and not mask[0].any() and not mask[:, 0].any()


# ------------------------------------------------------------------------------------------
# valid_mask: numpy and dask


def test_valid_mask_classes_and_dilation_numpy() -> None:
    scl = np.full((1, 15, 15), 4, dtype=np.uint8)
    scl[0, 7, 7] = 9
    scl[0, 0, 14] = 1  # saturated: invalid, not dilated
    scl[0, 14, 0] = 0  # no data: invalid, not dilated
    v = valid_mask(scl, 2)
    assert v.dtype == bool and v.shape == scl.shape
    grown = ~v[0, 4:11, 4:11]
    assert grown[3].sum() == 5 and grown[:, 3].sum() == 5  # radius 2 through the centre
    assert grown[2, 1] and not grown[1, 1]  # a disk, not a square
    assert grown.sum() == 21
    assert (~v[0]).sum() == grown.sum() + 2
    assert valid_mask(scl, 0).sum() == 15 * 15 - 3
    for cls, ok in (
        (2, True),
        (3, False),
        (5, True),
        (6, True),
        (7, True),
        (8, False),
        (10, False),
    ):
        assert bool(valid_mask(np.array([[cls]], dtype=np.uint8), 0)[0, 0]) is ok, cls
    assert not valid_mask(np.array([[np.nan, 4.0]]), 0)[0, 0]


@pytest.mark.parametrize("chunks", [(1, 8, 9), (2, 20, 7), (3, 37, 41)])
def test_valid_mask_dask_agrees_with_numpy(chunks: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(7)
    scl = rng.choice(np.array([4, 4, 4, 4, 5, 6, 9, 3, 8, 10, 0, 1], dtype=np.uint8), (3, 37, 41))
    want = valid_mask(scl, 3)
    lazy = valid_mask(da.from_array(scl, chunks=chunks), 3)
    assert isinstance(lazy, da.Array)
    np.testing.assert_array_equal(lazy.compute(), want)
    arr = xr.DataArray(da.from_array(scl, chunks=chunks), dims=("time", "y", "x"))
    wrapped = valid_mask(arr, 3)
    assert isinstance(wrapped, xr.DataArray) and isinstance(wrapped.data, da.Array)
    np.testing.assert_array_equal(wrapped.values, want)


# ------------------------------------------------------------------------------------------
# Radiometry rules and real Items


def _bare_item(props: dict[str, Any], raster: dict[str, Any] | None) -> pystac.Item:
    item = pystac.Item("x", None, None, dt.datetime(2024, 1, 1, tzinfo=dt.UTC), props)
    extra = {"raster:bands": [raster]} if raster is not None else {}
    item.add_asset("red", pystac.Asset("https://e/B04.tif", extra_fields=extra))
    return item


@pytest.mark.parametrize(
    ("props", "raster", "want"),
    [
        ({}, {"scale": 0.0001, "offset": -0.1}, (0.0001, -0.1)),
        ({"earthsearch:boa_offset_applied": True}, {"scale": 0.0001, "offset": -0.1}, (1e-4, 0)),
        (
            {"earthsearch:boa_offset_applied": False},
            {"scale": 0.0001, "offset": -0.1},
            (1e-4, -0.1),
        ),
        ({"s2:processing_baseline": "04.00"}, {"nodata": 0}, (0.0001, -0.1)),
        ({"s2:processing_baseline": "05.10"}, None, (0.0001, -0.1)),
        ({"s2:processing_baseline": "03.01"}, None, (0.0001, 0.0)),
        ({"sentinel:product_id": "S2A_MSIL2A_20200714T115221_N0214_R123_T28QCH"}, None, (1e-4, 0)),
        ({"s2:processing_baseline": "05.10", "sentinel:boa_offset_applied": True}, None, (1e-4, 0)),
    ],
)
def test_band_radiometry_rules(props: dict, raster: dict | None, want: tuple) -> None:
    got = band_radiometry(_bare_item(props, raster), "red")
    np.testing.assert_allclose(got.key, want)


def test_band_radiometry_unknown_baseline_is_a_data_error() -> None:
    with pytest.raises(DataError, match=r"Item x asset 'red'.*processing baseline"):
        band_radiometry(_bare_item({}, None), "red")


def test_real_items_radiometry_and_lazy_load(shared_stac_items: Path) -> None:
    es = [
        pystac.Item.from_file(str(p))
        for p in sorted(shared_stac_items.glob("earth-search-v1/*.json"))
    ]
    fc = json.loads(
        (shared_stac_items / "planetary-computer/site2-2020_jun_jul-35MNM.geojson").read_text()
    )
    pc = [pystac.Item.from_dict(f) for f in fc["features"]]
    # Earth Search v1: raster:bands say offset -0.1, but earthsearch:boa_offset_applied is true.
    assert band_radiometry(es[0], "red").key == (0.0001, 0.0)
    assert band_radiometry(pc[0], "nir").key == (0.0001, 0.0)  # baseline 02.12, B08
    for items, epsg in ((es[:1], 32639), (pc[:3], 32735)):
        t = items[0].assets["red" if epsg == 32639 else "B04"].extra_fields["proj:transform"]
        gb = GeoBox.from_bbox(
            (t[2] + 1000, t[5] - 2200, t[2] + 2200, t[5] - 1000), crs=f"EPSG:{epsg}", resolution=10
        )
        ds = load_cube(items, gb, ["red", "nir", "swir16"], 60)  # metadata only: no pixel read
        assert ds.odc.geobox == gb
        assert ds.sizes["time"] == len({i.datetime.date() for i in items})
        assert isinstance(ds["valid"].data, da.Array) and ds["red"].dtype == np.float32
