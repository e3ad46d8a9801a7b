"""Real STAC Item JSONs (../shared/data/stac_items) and hand-edited variants, through catalog,
harmonise, date_checks and load: each variant gets the result docs/real-scenes.md documents.

The pixels are small COGs written here on a window of the real Item's own grid (tile 39QTA,
EPSG:32639): a sea third (dark water) and land, with or without the baseline-04.00 DN offset.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Polygon

from pipeline.config import LoadConfig
from pipeline.io.catalog import band_asset_key, item_epsg
from pipeline.io.date_checks import geometric_refinement
from pipeline.io.harmonise import ScaleOffset, band_radiometry, check_offset
from pipeline.io.load import load_site
from pipeline.sites import Site

ES_ITEM = "earth-search-v1/S2A_39QTA_20230628_0_L2A.json"
BANDS = ("blue", "green", "red", "nir", "swir16", "swir22", "scl")
X0, Y1, SIDE = 201180.0, 2098800.0, 600.0  # a window of tile 39QTA, on its 60 m grid
SEA = {"blue": 0.04, "green": 0.03, "red": 0.02, "nir": 0.01, "swir16": 0.005, "swir22": 0.003}
LAND = {"blue": 0.08, "green": 0.10, "red": 0.12, "nir": 0.25, "swir16": 0.30, "swir22": 0.22}
CFG = LoadConfig(min_valid_fraction=0.25, cloud_dilation_px=0, chunk_px=64)

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


def _es_dict(shared: Path) -> dict[str, Any]:
    return json.loads((shared / ES_ITEM).read_text())


def _site() -> Site:
    tr = Transformer.from_crs(32639, 4326, always_xy=True)
    m = 60.0
    ring = [(X0 + m, Y1 - SIDE + m), (X0 + SIDE - m, Y1 - SIDE + m)]
    ring += [(X0 + SIDE - m, Y1 - m), (X0 + m, Y1 - m)]
    return Site(
        name="gulf", title="39QTA window", epsg=32639, aoi=Polygon([tr.transform(*p) for p in ring])
    )


def _with_cogs(d: dict[str, Any], folder: Path, dn_offset: float) -> pystac.Item:
    """The Item ``d`` with its band assets replaced by COGs of a window of its grid."""
    d = copy.deepcopy(d)
    folder.mkdir(parents=True, exist_ok=True)
    for band in BANDS:
        res = 20 if band in ("swir16", "swir22", "scl") else 10
        n = int(SIDE // res)
        cols = np.arange(n)[None, :].repeat(n, 0)
        sea = cols < n // 3
        if band == "scl":
            arr, dtype = np.where(sea, 6, 4).astype(np.uint8), "uint8"
        else:
            refl = np.where(sea, SEA[band], LAND[band])
            arr, dtype = np.round(refl * 10000 + dn_offset).astype(np.uint16), "uint16"
        path = folder / f"{band}.tif"
        transform = Affine(res, 0, X0, 0, -res, Y1)
        with rasterio.open(
            path, "w", driver="COG", width=n, height=n, count=1, dtype=dtype,
            crs="EPSG:32639", transform=transform, nodata=0,
        ) as dst:  # fmt: skip
            dst.write(arr, 1)
        asset = d["assets"][band]
        asset["href"] = str(path)
        asset["proj:shape"] = [n, n]
        asset["proj:transform"] = list(transform)[:6]
    for key in [k for k in d["assets"] if k not in BANDS]:
        del d["assets"][key]
    d["links"] = []
    return pystac.Item.from_dict(d)


def _proj_code_only(d: dict[str, Any]) -> dict[str, Any]:
    """Projection extension v2 form: ``proj:code`` instead of ``proj:epsg``."""
    d = copy.deepcopy(d)
    epsg = d["properties"].pop("proj:epsg")
    d["properties"]["proj:code"] = f"EPSG:{epsg}"
    d["stac_extensions"] = [
        "https://stac-extensions.github.io/projection/v2.0.0/schema.json"
        if "projection" in e
        else e
        for e in d["stac_extensions"]
    ]
    return d


def _stac_1_1(d: dict[str, Any]) -> dict[str, Any]:
    """STAC 1.1 form: ``bands`` (eo:common_name, raster:scale/offset) replace eo:bands and
    raster:bands; ``proj:code`` only."""
    d = _proj_code_only(d)
    d["stac_version"] = "1.1.0"
    for asset in d["assets"].values():
        eo = asset.pop("eo:bands", None) or [{}]
        raster = asset.pop("raster:bands", None) or [{}] * len(eo)
        bands = []
        for e, r in zip(eo, raster, strict=False):
            band: dict[str, Any] = {}
            if "name" in e:
                band["name"] = e["name"]
            if "common_name" in e:
                band["eo:common_name"] = e["common_name"]
            band |= {k: r[k] for k in ("nodata", "data_type") if k in r}
            band |= {f"raster:{k}": r[k] for k in ("scale", "offset") if k in r}
            bands.append(band)
        asset["bands"] = bands
    return d


# ------------------------------------------------------------------------------------------
# Metadata only


def test_real_item_as_served(shared_stac_items: Path) -> None:
    item = pystac.Item.from_dict(_es_dict(shared_stac_items))
    assert item_epsg(item) == 32639
    rule = band_radiometry(item, "red")
    assert rule.key == (0.0001, 0.0) and "already in the pixels" in rule.source
    # Real Earth Search and Planetary Computer Items carry no refinement metadata.
    assert geometric_refinement(item) == {
        "refined": None,
        "source": None,
        "quality": None,
        "quality_source": None,
    }
    pc = json.loads(
        (shared_stac_items / "planetary-computer/site2-2020_jun_jul-35MNM.geojson").read_text()
    )
    for f in pc["features"]:
        assert geometric_refinement(pystac.Item.from_dict(f))["refined"] is None


def test_proj_code_only_and_wkt2(shared_stac_items: Path) -> None:
    d = _proj_code_only(_es_dict(shared_stac_items))
    item = pystac.Item.from_dict(d)
    assert "proj:epsg" not in item.properties and item_epsg(item) == 32639
    wkt = copy.deepcopy(d)
    from pyproj import CRS

    wkt["properties"].pop("proj:code")
    wkt["properties"]["proj:wkt2"] = CRS.from_epsg(32639).to_wkt()
    assert item_epsg(pystac.Item.from_dict(wkt)) == 32639
    wkt["properties"]["proj:wkt2"] = "not a CRS"
    assert item_epsg(pystac.Item.from_dict(wkt)) is None


def test_stac_1_1_bands_form(shared_stac_items: Path) -> None:
    item = pystac.Item.from_dict(_stac_1_1(_es_dict(shared_stac_items)))
    assert item_epsg(item) == 32639
    assert band_asset_key(item, "red") == "red"
    assert band_radiometry(item, "red").key == (0.0001, 0.0)  # the flag still holds
    # Asset keys a provider renamed are found through bands[].eo:common_name.
    item.assets["band_4"] = item.assets.pop("red")
    for key in ("red-jp2", "visual", "visual-jp2"):  # other assets holding the red band
        del item.assets[key]
    assert band_asset_key(item, "red") == "band_4"
    d = _stac_1_1(_es_dict(shared_stac_items))
    d["properties"].pop("earthsearch:boa_offset_applied")
    rule = band_radiometry(pystac.Item.from_dict(d), "nir")
    assert rule.key == (0.0001, -0.1) and rule.source == "bands"


@pytest.mark.parametrize(
    ("props", "refined", "source"),
    [
        ({"s2:image_refining": "NOT_REFINED"}, False, "s2:image_refining"),
        ({"image_refining": True}, True, "image_refining"),
        ({"s2:geometric_refinement": "refined"}, True, "s2:geometric_refinement"),
        ({"image_refining": "maybe"}, None, None),
    ],
)
def test_refinement_metadata_variants(
    props: dict, refined: bool | None, source: str | None, shared_stac_items: Path
) -> None:
    d = _es_dict(shared_stac_items)
    d["properties"] |= props | {"s2:geometric_quality_flag": "PASSED"}
    got = geometric_refinement(pystac.Item.from_dict(d))
    assert (got["refined"], got["source"]) == (refined, source)
    assert got["quality"] == "PASSED"


@pytest.mark.parametrize(
    ("offset", "counts", "agrees", "says"),
    [
        (-0.1, (1000, 300, 300, 0), True, "dark objects near 0"),
        (0.0, (1000, 0, 0, 0), False, "still in the pixels"),
        (-0.1, (1000, 300, 300, 300), False, "removed from DNs that held none"),
        (-0.1, (1000, 0, 0, 0), None, "cannot tell"),
        (0.0, (1000, 0, 500, 0), None, "cannot tell"),
        (-0.1, (50, 50, 50, 50), None, "too few"),
    ],
)
def test_check_offset_verdicts(
    offset: float, counts: tuple, agrees: bool | None, says: str
) -> None:
    got = check_offset(ScaleOffset(1e-4, offset, "rule"), *counts)
    assert got.agrees is agrees and says in got.pixels


# ------------------------------------------------------------------------------------------
# Loaded: pixels against the metadata


@pytest.mark.parametrize(
    ("variant", "flag", "dn_offset", "offset_used", "agrees"),
    [
        ("as served", True, 0, 0.0, True),
        ("flag true, pixels not shifted", True, 1000, 0.0, False),
        ("flag false, pixels shifted", False, 0, -0.1, False),
        ("flag false, pixels not shifted", False, 1000, -0.1, True),
    ],
)
def test_wrong_boa_offset_applied_is_reported(
    variant: str,
    flag: bool,
    dn_offset: float,
    offset_used: float,
    agrees: bool,
    shared_stac_items: Path,
    tmp_path: Path,
) -> None:
    d = _es_dict(shared_stac_items)
    d["properties"]["earthsearch:boa_offset_applied"] = flag
    item = _with_cogs(d, tmp_path / "cogs", dn_offset)
    ds, report = load_site([item], _site(), CFG)
    [date] = report["dates_kept"]
    check = report["radiometry"][date]
    assert check["offset"] == offset_used, variant
    assert check["rule"].startswith("raster:bands")
    assert check["agrees"] is agrees, check
    assert report["radiometry_disagreements"] == ([] if agrees else [date])
    # The rule is reported, never changed: the cube holds what the rule gives.
    sea_nir = float(ds["nir"].isel(time=0, x=3, y=10).values)
    want = SEA["nir"] + dn_offset / 10000 + offset_used
    assert sea_nir == pytest.approx(want, abs=2e-4)
    assert report["geometry"][date]["refined"] is None  # missing refinement metadata
    assert report["geometry_unrefined"] == []


def test_proj_code_only_stac_1_1_item_loads(shared_stac_items: Path, tmp_path: Path) -> None:
    d = _stac_1_1(_es_dict(shared_stac_items))
    d["properties"]["s2:image_refining"] = "NOT_REFINED"
    item = _with_cogs(d, tmp_path / "cogs", 0)
    ds, report = load_site([item], _site(), CFG)
    assert ds.odc.geobox.crs.epsg == 32639
    [date] = report["dates_kept"]
    assert report["radiometry"][date]["agrees"] is True
    assert report["geometry"][date]["refined"] is False
    assert report["geometry_unrefined"] == [date]
    land = float(ds["red"].isel(time=0, x=-5, y=10).values)
    assert land == pytest.approx(LAND["red"], abs=2e-4)
