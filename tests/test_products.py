"""Tests of pipeline.io.report.products: GeoParquet, change-score COGs, the results STAC Catalog.

Synthetic inputs of known content first, then the products of the shared demo run. The STAC
validation runs with every socket connection refused, to show it needs no network.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path

import geopandas as gpd
import numpy as np
import pystac
import pytest
import rasterio
import xarray as xr
from demo_run import demo_run
from shapely.geometry import box, mapping, shape

from pipeline.errors import DataError
from pipeline.io.report import products

X0, Y0, RES = 761_505.0, 3_868_005.0, 10.0
DATES = np.array(["2024-12-02T08:26:47", "2024-12-05T08:36:41", "2024-12-12T08:26:49"],
                 dtype="datetime64[ns]")  # fmt: skip


def _score(ny: int = 150, nx: int = 170) -> xr.DataArray:
    rng = np.random.default_rng(1)
    values = rng.chisquare(6, size=(2, ny, nx)).astype(np.float32)
    values[0, :5] = np.nan  # not scored
    values[1, 40:50, 60:80] = 500.0  # a change
    return xr.DataArray(
        values,
        dims=("pair", "y", "x"),
        coords={
            "pair": [0, 1],
            "date_before": ("pair", DATES[:2]),
            "date_after": ("pair", DATES[1:]),
            "y": Y0 - RES * np.arange(ny),
            "x": X0 + RES * np.arange(nx),
        },
        attrs={"units": "chi-square, 6 dof"},
    )


def _detections() -> dict:
    feats = []
    for i, (kind, after) in enumerate((("removed", "2024-12-12"), ("appeared", "2024-12-05"))):
        geom = box(35.87 + i * 0.001, 34.91, 35.871 + i * 0.001, 34.911)
        props = {"id": f"d{i}", "kind": kind, "date_before": "2024-12-02", "date_after": after,
                 "area_m2": 1200.0 + i, "confidence": 0.9, "zone": None}  # fmt: skip
        feats.append({"type": "Feature", "geometry": mapping(geom), "properties": props})
    return {"type": "FeatureCollection", "features": feats}


def test_geoparquet_round_trip(tmp_path: Path) -> None:
    fc = _detections()
    path = products.write_detections_parquet(fc, tmp_path / "d.parquet")
    gdf = gpd.read_parquet(path)
    assert gdf.crs.to_epsg() == 4326
    assert list(gdf["id"]) == ["d0", "d1"] and list(gdf["kind"]) == ["removed", "appeared"]
    assert list(gdf["area_m2"]) == [1200.0, 1201.0]
    for geom, feat in zip(gdf.geometry, fc["features"], strict=True):
        assert geom.equals(shape(feat["geometry"]))
    empty = products.write_detections_parquet({"features": []}, tmp_path / "e.parquet")
    assert len(gpd.read_parquet(empty)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.parquet", "e.parquet"]


def test_change_cogs_are_cogs_with_the_right_pixels(tmp_path: Path) -> None:
    score = _score()
    prods = products.write_change_cogs(score, tmp_path, crs="EPSG:32636")
    assert [p.href for p in prods] == [
        "change/score_2024-12-02_2024-12-05.tif",
        "change/score_2024-12-05_2024-12-12.tif",
    ]
    assert prods[1].max_score == 500.0 and prods[0].n_scored_px == 145 * 170
    assert prods[0].start.isoformat() == "2024-12-02T08:26:47+00:00"
    for p in prods:
        assert products.check_cog(tmp_path / p.href) == []
        with rasterio.open(tmp_path / p.href) as ds:
            assert ds.overviews(1), "no overviews"
            assert ds.crs.to_epsg() == 32636 and ds.dtypes == ("float32",)
            assert ds.transform.c == X0 - RES / 2 and ds.transform.f == Y0 + RES / 2
    back = products.read_change_cogs(tmp_path)
    np.testing.assert_array_equal(back.values, score.values)  # NaN where not scored, too
    assert list(back["date_after"].values) == ["2024-12-05", "2024-12-12"]
    np.testing.assert_allclose(back["x"].values, score["x"].values)


def test_check_cog_rejects_a_plain_geotiff(tmp_path: Path) -> None:
    path = tmp_path / "plain.tif"
    profile = {
        "driver": "GTiff", "width": 300, "height": 300, "count": 1, "dtype": "float32",
        "crs": "EPSG:32636", "transform": rasterio.Affine(10, 0, X0, 0, -10, Y0),
    }  # fmt: skip
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(np.zeros((1, 300, 300), np.float32))
    problems = products.check_cog(path)
    assert "not tiled" in problems and "no overviews" in problems
    assert any("LAYOUT=COG" in p for p in problems)


def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_results_catalog_validates_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    score = _score()
    prods = products.write_change_cogs(score, tmp_path, crs="EPSG:32636")
    products.write_detections_parquet(_detections(), tmp_path / "detections.parquet")
    scenes = tmp_path / "scenes"
    scenes.mkdir()
    by_date: dict[str, list[str]] = {}
    for day in ("2024-12-02", "2024-12-05", "2024-12-12"):
        src = pystac.Item(f"S2_{day}", mapping(box(35, 34, 36, 35)), [35, 34, 36, 35],
                          np.datetime64(day).astype("datetime64[s]").item(), {})  # fmt: skip
        src.set_self_href(str(scenes / f"S2_{day}.json"))
        src.save_object(include_self_link=False)
        by_date[day] = [str(scenes / f"S2_{day}.json")]
    by_date["2024-12-05"].append("https://example.test/items/S2_remote")
    path = products.write_results_catalog(
        tmp_path, site_name="t", site_title="T", grid=score, crs="EPSG:32636", products=prods,
        scenes_by_date=by_date, detections=_detections(),
        detection_assets={"detections": ("detections.parquet", products.PARQUET_MEDIA_TYPE)},
        simulated=True,
    )  # fmt: skip
    _offline(monkeypatch)
    assert products.validate_results_catalog(path) == 4  # root + 2 change Items + detections
    cat = pystac.Catalog.from_file(str(path))
    items = {it.id: it for it in cat.get_items()}
    assert set(items) == {"t-change-2024-12-02-2024-12-05", "t-change-2024-12-05-2024-12-12",
                          "t-detections"}  # fmt: skip
    first = items["t-change-2024-12-02-2024-12-05"]
    links = first.get_links("derived_from")
    hrefs = sorted(ln.href for ln in links)
    assert "https://example.test/items/S2_remote" in hrefs
    local = [ln for ln in links if not ln.href.startswith("http")]
    assert all(not ln.href.startswith("/") for ln in local), "local links must be relative"
    assert sorted(ln.resolve_stac_object().target.id for ln in local) == [
        "S2_2024-12-02", "S2_2024-12-05",
    ]  # fmt: skip
    second = items["t-change-2024-12-05-2024-12-12"]
    assert second.properties["basewatch:n_removed"] == 1
    assert second.properties["basewatch:date_before"] == "2024-12-05"
    # 12-05 (local + remote), 12-12, and the removal's date_before 12-02: a source too
    assert len(second.get_links("derived_from")) == 4
    asset = Path(first.assets["score"].get_absolute_href())
    assert asset == tmp_path / prods[0].href
    raw = json.loads((path.parent / first.id / f"{first.id}.json").read_text())
    assert raw["assets"]["score"]["href"].startswith("../../change/")
    assert raw["stac_extensions"] == []


def test_validation_catches_a_missing_asset(tmp_path: Path) -> None:
    prods = products.write_change_cogs(_score(), tmp_path, crs="EPSG:32636")
    path = products.write_results_catalog(
        tmp_path, site_name="t", site_title="T", grid=_score(), crs="EPSG:32636", products=prods,
        scenes_by_date={"2024-12-02": ["https://example.test/a"]}, detections=_detections(),
        detection_assets={}, simulated=False,
    )  # fmt: skip
    (tmp_path / prods[0].href).unlink()
    with pytest.raises(DataError, match="missing"):
        products.validate_results_catalog(path)


# ------------------------------------------------------------------------- the demo run


def test_demo_products(monkeypatch: pytest.MonkeyPatch) -> None:
    run = demo_run()
    folder = run.paths.reports
    fc = json.loads(run.paths.detections.read_text())
    gdf = gpd.read_parquet(folder / "detections.parquet")
    assert sorted(gdf["id"]) == sorted(f["properties"]["id"] for f in fc["features"])
    cogs = sorted((folder / "change").glob("*.tif"))
    n_dates = len(json.loads(run.paths.load_report.read_text())["dates_kept"])
    assert len(cogs) == n_dates - 1  # one per consecutive pair (no date failed)
    for cog in cogs:
        assert products.check_cog(cog) == []
    _offline(monkeypatch)
    n = products.validate_results_catalog(folder / "stac" / "catalog.json")
    assert n == len(cogs) + 2
    cat = pystac.Catalog.from_file(str(folder / "stac" / "catalog.json"))
    item_ids = {f["id"] for f in json.loads(run.paths.items.read_text())["features"]}
    for item in cat.get_items():
        sources = [ln.resolve_stac_object().target.id for ln in item.get_links("derived_from")]
        assert sources and set(sources) <= item_ids
