"""Tests of pipeline.io.catalog: API and local search, band vocabulary, href safety, items.json."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pystac
import pytest
from shapely.geometry import box
from stac_server import SEARCH_AOI_LONLAT, free_port, search_test_items

from pipeline.config import CatalogConfig
from pipeline.errors import CatalogError, StageInputError
from pipeline.io.catalog import (
    ALL_BANDS,
    S2_BAND_IDS,
    band_asset_key,
    check_asset_hrefs,
    item_epsg,
    normalise_item,
    read_items,
    search_items,
    write_items,
)
from pipeline.io.harmonise import processing_baseline

AOI = box(*SEARCH_AOI_LONLAT)
NOV = (dt.date(2024, 11, 1), dt.date(2024, 11, 30))
EXPECTED = sorted(
    [it.id for it in search_test_items() if it.id.endswith(("_in", "_fill"))],
)


def _expected_order() -> list[str]:
    byid = {it.id: it for it in search_test_items()}
    return sorted(EXPECTED, key=lambda i: (byid[i].datetime, i))


# ------------------------------------------------------------------------------------------
# STAC API (loopback rustac server, searched with pystac-client)


def test_api_search_applies_aoi_datetime_cloud_and_collection(stac_api: str) -> None:
    cfg = CatalogConfig(url=stac_api, collection="sentinel-2-l2a", max_cloud_cover=80)
    found = search_items(cfg, AOI, *NOV)
    ids = [it.id for it in found]
    assert ids == _expected_order()  # 28 Items, more than one page, sorted (datetime, id)
    assert len(ids) == 28
    assert all(it.properties["eo:cloud_cover"] <= 80 for it in found)


def test_api_cloud_filter_is_applied_by_the_server(stac_api: str) -> None:
    cfg = CatalogConfig(url=stac_api, max_cloud_cover=20)
    ids = {it.id for it in search_items(cfg, AOI, *NOV)}
    assert ids == {"S2B_36SYD_20241102_in", "S2B_37SBU_20241102_in"}


def test_api_datetime_is_inclusive_by_day(stac_api: str) -> None:
    cfg = CatalogConfig(url=stac_api)
    ids = [it.id for it in search_items(cfg, AOI, dt.date(2024, 11, 30), dt.date(2024, 11, 30))]
    assert ids == ["S2B_36SYD_20241130_in"]
    ids = [it.id for it in search_items(cfg, AOI, dt.date(2024, 10, 31), dt.date(2024, 10, 31))]
    assert ids == ["S2B_36SYD_20241031_before"]


def test_api_max_items_and_empty_result(stac_api: str) -> None:
    cfg = CatalogConfig(url=stac_api, max_items=3)
    assert len(search_items(cfg, AOI, *NOV)) == 3
    empty = search_items(CatalogConfig(url=stac_api), box(0.1, 0.1, 0.2, 0.2), *NOV)
    assert len(empty) == 0


def test_api_hostile_href_is_refused(stac_api: str) -> None:
    cfg = CatalogConfig(url=stac_api, collection="hostile")
    with pytest.raises(CatalogError, match=r"EVIL_20241110.*'red'.*http\(s\)"):
        search_items(cfg, AOI, *NOV)


def test_unreachable_api_names_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(CatalogError, match=r"127\.0\.0\.1.*cannot be searched"):
        search_items(CatalogConfig(url=url), AOI, *NOV)


# ------------------------------------------------------------------------------------------
# Local static catalog


def _local_catalog(root: Path, items: list[pystac.Item]) -> Path:
    """A self-contained catalog of ``items`` with one asset file per band beside each Item."""
    cat = pystac.Catalog(id="test", description="test catalog")
    cols: dict[str, pystac.Collection] = {}
    for it in items:
        cid = it.collection_id or "none"
        if cid not in cols:
            cols[cid] = pystac.Collection(
                id=cid,
                description=cid,
                extent=pystac.Extent(
                    pystac.SpatialExtent([[-180, -90, 180, 90]]),
                    pystac.TemporalExtent([[None, None]]),
                ),
            )
            cat.add_child(cols[cid])
        clone = it.clone()
        clone.set_collection(None)
        cols[cid].add_item(clone)
    cat.normalize_hrefs(str(root))
    for it in cat.get_items(recursive=True):
        folder = Path(it.get_self_href()).parent
        for asset in it.assets.values():
            asset.href = str(folder / Path(asset.href).name)
    cat.make_all_asset_hrefs_relative()
    cat.save(catalog_type=pystac.CatalogType.SELF_CONTAINED)
    for it in cat.get_items(recursive=True):
        for asset in it.assets.values():
            p = Path(asset.get_absolute_href())
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(b"")
    return root / "catalog.json"


@pytest.fixture
def local_catalog(tmp_path: Path) -> Path:
    items = [it for it in search_test_items() if it.collection_id != "hostile"]
    return _local_catalog(tmp_path / "cat", items)


def test_local_search_has_the_same_semantics_as_the_api(local_catalog: Path) -> None:
    found = search_items(CatalogConfig(url=str(local_catalog)), AOI, *NOV)
    assert [it.id for it in found] == _expected_order()
    ids = [
        it.id
        for it in search_items(CatalogConfig(url=str(local_catalog), max_cloud_cover=20), AOI, *NOV)
    ]
    assert ids == ["S2B_36SYD_20241102_in", "S2B_37SBU_20241102_in"]
    one_day = search_items(
        CatalogConfig(url=str(local_catalog)), AOI, dt.date(2024, 11, 30), dt.date(2024, 11, 30)
    )
    assert [it.id for it in one_day] == ["S2B_36SYD_20241130_in"]


def test_local_search_accepts_folder_and_collection_json(local_catalog: Path) -> None:
    by_folder = search_items(CatalogConfig(url=str(local_catalog.parent)), AOI, *NOV)
    assert len(by_folder) == 28
    col = local_catalog.parent / "sentinel-2-l2a" / "collection.json"
    by_col = search_items(CatalogConfig(url=str(col), max_items=5), AOI, *NOV)
    assert [it.id for it in by_col] == _expected_order()[:5]


def test_local_missing_catalog_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CatalogError, match=r"nope/catalog\.json does not exist"):
        search_items(CatalogConfig(url=str(tmp_path / "nope" / "catalog.json")), AOI, *NOV)
    with pytest.raises(CatalogError, match="only http"):
        search_items(CatalogConfig(url="s3://bucket/catalog.json"), AOI, *NOV)


def _set_red_href(catalog_json: Path, item_id: str, href: str) -> None:
    for p in catalog_json.parent.rglob(f"{item_id}.json"):
        d = json.loads(p.read_text())
        d["assets"]["red"]["href"] = href
        p.write_text(json.dumps(d))
        return
    raise AssertionError(item_id)


@pytest.mark.parametrize(
    ("href", "why"),
    [
        ("file:///etc/passwd", "must be paths inside"),
        ("/vsicurl/https://example.com/x.tif", "/vsi paths are refused"),
        ("../../../../../../etc/passwd", "outside the catalog folder"),
        ("/etc/passwd", "outside the catalog folder"),
        ("https://example.com/B04.tif", "must be paths inside"),
    ],
)
def test_local_hostile_hrefs_are_refused(local_catalog: Path, href: str, why: str) -> None:
    _set_red_href(local_catalog, "S2B_36SYD_20241102_in", href)
    with pytest.raises(CatalogError, match=r"S2B_36SYD_20241102_in asset 'red'") as err:
        search_items(CatalogConfig(url=str(local_catalog)), AOI, *NOV)
    assert why in str(err.value)


def test_local_links_outside_the_folder_are_not_followed(local_catalog: Path) -> None:
    d = json.loads(local_catalog.read_text())
    d["links"].append({"rel": "child", "href": "../../../../../../etc/hostile.json"})
    local_catalog.write_text(json.dumps(d))
    with pytest.raises(CatalogError, match="outside its folder"):
        search_items(CatalogConfig(url=str(local_catalog)), AOI, *NOV)


# ------------------------------------------------------------------------------------------
# items.json


def test_write_read_items_round_trip_with_absolute_hrefs(
    local_catalog: Path, tmp_path: Path
) -> None:
    found = search_items(CatalogConfig(url=str(local_catalog)), AOI, *NOV)
    out = write_items(found, tmp_path / "elsewhere" / "items.json")
    assert not list(out.parent.glob(".*tmp*"))
    back = read_items(out)
    assert [it.id for it in back] == [it.id for it in found]
    for it in back:
        assert it.collection_id == "sentinel-2-l2a"
        for asset in it.assets.values():
            assert Path(asset.href).is_absolute() and Path(asset.href).exists()
            assert local_catalog.parent.resolve() in Path(asset.href).parents


def test_read_items_missing_or_broken(tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match="run the search stage"):
        read_items(tmp_path / "items.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(StageInputError, match=r"bad\.json"):
        read_items(tmp_path / "bad.json")


# ------------------------------------------------------------------------------------------
# Band vocabulary on real Items (../shared/data/stac_items)


def _real_items(root: Path) -> dict[str, list[pystac.Item]]:
    es = [pystac.Item.from_file(str(p)) for p in sorted((root / "earth-search-v1").glob("*.json"))]
    pc_dir = root / "planetary-computer"
    fc = json.loads((pc_dir / "site2-2020_jun_jul-35MNM.geojson").read_text())
    pc = [pystac.Item.from_dict(f) for f in fc["features"]]
    pc.append(
        pystac.Item.from_file(
            str(pc_dir / "S2B_MSIL2A_20190629T212529_R043_T06VVN_20201006T080531.json")
        )
    )
    es0 = [pystac.Item.from_file(str(pc_dir / "S2A_28QCH_20200714_0_L2A.json"))]
    return {"es1": es, "pc": pc, "es0": es0}


def test_real_items_map_to_the_band_vocabulary(shared_stac_items: Path) -> None:
    real = _real_items(shared_stac_items)
    assert len(real["es1"]) == 3 and len(real["pc"]) == 14
    for provider, items in real.items():
        for item in items:
            for band in ALL_BANDS:
                key = band_asset_key(item, band)
                assert key == (band if provider == "es1" else S2_BAND_IDS[band])
            norm = normalise_item(item)
            for band in ALL_BANDS:
                assert norm.assets[band].href == item.assets[band_asset_key(item, band)].href
            assert set(item.assets) <= set(norm.assets)
            assert "red" not in item.assets or provider == "es1"  # the original is untouched
            check_asset_hrefs(item, None)  # all https


def test_real_items_metadata(shared_stac_items: Path) -> None:
    real = _real_items(shared_stac_items)
    assert [item_epsg(i) for i in real["es1"]] == [32639, 32639, 32639]
    assert item_epsg(real["pc"][0]) == 32735
    assert processing_baseline(real["es1"][0]) == "05.09"
    assert processing_baseline(real["pc"][0]) == "02.12"
    assert processing_baseline(real["es0"][0]) == "02.14"  # from sentinel:product_id N0214


def test_band_lookup_by_eo_bands_and_unknown_band() -> None:
    item = pystac.Item("x", None, None, dt.datetime(2024, 1, 1), {})
    item.add_asset(
        "band_4", pystac.Asset("https://e/x.tif", extra_fields={"eo:bands": [{"name": "B04"}]})
    )
    assert band_asset_key(item, "red") == "band_4"
    with pytest.raises(CatalogError, match="Item x has no asset for band 'nir'"):
        band_asset_key(item, "nir")
    with pytest.raises(CatalogError, match="unknown band 'B04'"):
        band_asset_key(item, "B04")
