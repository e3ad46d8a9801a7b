"""The simulated demo catalog: layout, STAC structure, COGs, radiometry, truth, determinism.

One small catalog (Tartus, six dates around the reported withdrawal) is built once per module;
it holds a swath-edge date (2025-01-04), a date with SCL false clouds on concrete (2024-12-12),
a cirrus date and removals and appearances of ships and vehicle rows.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import shapely
import shapely.affinity
import yaml
from pystac.extensions.projection import ProjectionExtension
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from shapely.geometry import mapping, shape

from pipeline.errors import ConfigError
from pipeline.simulate import build_demo_catalog
from pipeline.simulate.geometry import Grid, imaging_operator, site_frames
from pipeline.simulate.objects import place_objects
from pipeline.simulate.scenario import load_scenario
from pipeline.simulate.truth import events
from pipeline.sites import get_site

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "seeds"
SITE = "tartus"
START, END = "2024-12-10", "2025-01-05"
BANDS = ("blue", "green", "red", "nir", "swir16", "swir22")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sim") / "demo"
    path = build_demo_catalog(out, seeds_dir=SEEDS, seed=7, sites=(SITE,), start=START, end=END)
    assert path == out / "catalog.json"
    return out


@pytest.fixture(scope="module")
def items(demo: Path) -> list[pystac.Item]:
    cat = pystac.Catalog.from_file(str(demo / "catalog.json"))
    return sorted(cat.get_items(recursive=True), key=lambda it: it.id)


@pytest.fixture(scope="module")
def truth(demo: Path) -> dict:
    return json.loads((demo / "truth" / f"{SITE}.json").read_text())


def _read(item: pystac.Item, key: str) -> tuple[np.ndarray, rasterio.Affine]:
    with rasterio.open(item.assets[key].get_absolute_href()) as ds:
        return ds.read(1), ds.transform


def _epsg(item: pystac.Item) -> int | None:
    # pystac migrates projection v1 on read: proj:epsg becomes proj:code
    return ProjectionExtension.ext(item).epsg


def _by_date(items: list[pystac.Item], day: str, epsg: int) -> pystac.Item:
    (hit,) = [it for it in items if it.datetime.date().isoformat() == day and _epsg(it) == epsg]
    return hit


def test_layout_and_labels(demo: Path, items: list[pystac.Item]) -> None:
    col = json.loads((demo / "sentinel-2-l2a" / "collection.json").read_text())
    assert col["id"] == "sentinel-2-l2a"
    assert "SIMULATED" in col["description"] and "SIMULATED" in col["title"]
    assert not list(demo.parent.glob(".demo.*")), "temporary folder left behind"
    assert len(items) == 12
    for it in items:
        folder = demo / "sentinel-2-l2a" / it.id
        assert (folder / f"{it.id}.json").exists()
        for f in ("B02", "B03", "B04", "B08", "B11", "B12", "SCL"):
            assert (folder / f"{f}.tif").exists()
        raw = json.loads((folder / f"{it.id}.json").read_text())
        assert all(not a["href"].startswith("/") for a in raw["assets"].values())
        epsg = raw["properties"]["proj:epsg"]
        assert raw["properties"]["proj:code"] == f"EPSG:{epsg}" and epsg in (32636, 32637)
        assert it.properties["basewatch:simulated"] is True


def test_two_items_per_date_one_datatake(items: list[pystac.Item]) -> None:
    by_day: dict[str, list[pystac.Item]] = {}
    for it in items:
        by_day.setdefault(it.datetime.date().isoformat(), []).append(it)
    assert len(by_day) == 6
    for pair in by_day.values():
        assert sorted(_epsg(it) for it in pair) == [32636, 32637]
        assert len({it.datetime for it in pair}) == 1
        assert len({it.properties["s2:datatake_id"] for it in pair}) == 1
        codes = {it.properties["grid:code"] for it in pair}
        assert codes == {"MGRS-36SYD", "MGRS-37SBU"}


def test_item_structure_matches_cogs(items: list[pystac.Item]) -> None:
    required = (
        "platform", "constellation", "instruments", "eo:cloud_cover", "proj:code",
        "mgrs:utm_zone", "mgrs:latitude_band", "mgrs:grid_square", "grid:code",
        "s2:processing_baseline", "s2:datatake_id", "earthsearch:boa_offset_applied",
    )  # fmt: skip
    for it in items:
        assert it.id.startswith(("S2A_", "S2B_")) and it.id.endswith("_0_L2A")
        for key in required:
            assert key in it.properties, (it.id, key)
        assert it.properties["s2:processing_baseline"] == "05.10"
        assert it.properties["earthsearch:boa_offset_applied"] is False
        assert any("/eo/" in e for e in it.stac_extensions)
        assert any("/projection/" in e for e in it.stac_extensions)
        assert any("/raster/" in e for e in it.stac_extensions)
        assert set(it.assets) == {*BANDS, "scl"}
        for key, asset in it.assets.items():
            assert "data" in asset.roles and asset.media_type.startswith("image/tiff")
            rb = asset.extra_fields["raster:bands"][0]
            assert rb["nodata"] == 0
            with rasterio.open(asset.get_absolute_href()) as ds:
                assert list(ds.shape) == asset.extra_fields["proj:shape"]
                assert list(ds.transform)[:6] == asset.extra_fields["proj:transform"]
                assert ds.crs.to_epsg() == _epsg(it)
                assert ds.profile["tiled"] and ds.block_shapes[0] == (256, 256)
                assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
                assert ds.nodata == 0
                assert ds.dtypes[0] == ("uint8" if key == "scl" else "uint16")
                res = ds.transform.a
            if key == "scl":
                assert rb["data_type"] == "uint8" and res == 20
            else:
                assert (rb["scale"], rb["offset"]) == (0.0001, -0.1)
                assert asset.extra_fields["eo:bands"][0]["name"] == key
                assert res == (10 if key in ("blue", "green", "red", "nir") else 20)
            # the window sits on the tile's 60 m grid
            t = asset.extra_fields["proj:transform"]
            assert t[2] % 60 == 0 and t[5] % 60 == 0


def test_item_geometry_covers_site(items: list[pystac.Item]) -> None:
    aoi = get_site(SITE, SEEDS).aoi
    for it in items:
        assert shape(it.geometry).contains(aoi)


def test_cloud_cover_is_scl_fraction(items: list[pystac.Item]) -> None:
    for it in items:
        scl, _ = _read(it, "scl")
        data = scl > 0
        pct = 100.0 * np.isin(scl[data], (8, 9, 10)).mean()
        assert it.properties["eo:cloud_cover"] == pytest.approx(pct, abs=1e-3)


def test_dn_offset_on_concrete_and_water(items: list[pystac.Item], truth: dict) -> None:
    # the clearest ordinary date; a point in the middle of the commercial jetty, and open sea
    day = min(("2024-12-15", "2024-12-25", "2025-01-01"), key=lambda d: truth["cloud_fraction"][d])
    it = _by_date(items, day, 32636)
    site = get_site(SITE, SEEDS)
    cx, cy = site_frames(site)["site"].origin
    red, tr = _read(it, "red")
    nir, _ = _read(it, "nir")
    scl, tr20 = _read(it, "scl")

    def at(a: np.ndarray, t: rasterio.Affine, x: float, y: float) -> np.ndarray:
        col, row = ~t @ (cx + x, cy + y)
        r, c = int(row), int(col)
        return a[r - 1 : r + 2, c - 1 : c + 2]

    assert np.all(np.isin(at(scl, tr20, 100, -400), (4, 5)))  # clear at the jetty
    dn = float(np.median(at(red, tr, 100, -400)))
    assert abs(dn - (0.26 * 10000 + 1000)) < 0.12 * 2600, dn  # concrete red ~0.26
    sea = float(np.median(at(nir, tr, -400, 800)))
    assert 1000 < sea < 1000 + 0.05 * 10000, sea  # dark water: the 1000 offset shows


def test_truth_records(truth: dict, items: list[pystac.Item]) -> None:
    assert set(truth) == {
        "site", "simulated", "crs", "dates", "shifts", "cloud_fraction", "objects", "events",
    }  # fmt: skip
    assert truth["site"] == SITE and truth["simulated"] is True and truth["crs"] == "EPSG:32636"
    days = sorted({it.datetime.date().isoformat() for it in items})
    assert truth["dates"] == days
    assert set(truth["shifts"]) == set(days) == set(truth["cloud_fraction"])
    shifts = np.array([[s["shift_x_px"], s["shift_y_px"]] for s in truth["shifts"].values()])
    assert np.all(np.abs(shifts) <= 1.0) and np.ptp(shifts) > 0.1
    for obj in truth["objects"]:
        assert set(obj) == {"id", "class", "length_m", "width_m", "geometry", "present"}
        assert obj["geometry"]["type"] == "Polygon"
        assert set(obj["present"]) <= set(days)
    assert any(f > 0.05 for f in truth["cloud_fraction"].values())


def test_events_follow_presence(truth: dict) -> None:
    dates = truth["dates"]
    objects = {o["id"]: o for o in truth["objects"]}
    expected = 0
    for obj in objects.values():
        here = [d in obj["present"] for d in dates]
        expected += sum(a != b for a, b in itertools.pairwise(here))
    assert len(truth["events"]) == expected > 0
    for ev in truth["events"]:
        present = objects[ev["object_id"]]["present"]
        i = dates.index(ev["last_before"])
        assert dates[i + 1] == ev["first_after"]
        assert (ev["last_before"] in present) == (ev["kind"] == "removed")
        assert (ev["first_after"] in present) == (ev["kind"] == "appeared")
        assert ev["length_m"] == objects[ev["object_id"]]["length_m"]
    kinds = {e["kind"] for e in truth["events"] if e["length_m"] >= 30}
    assert kinds == {"removed", "appeared"}


def test_object_footprint_visible_in_both_items(items: list[pystac.Item], truth: dict) -> None:
    # tanker-off waits offshore from 2024-12-20: absent on 12-15, present on 12-25
    (obj,) = [o for o in truth["objects"] if o["id"] == "tanker-off"]
    assert "2024-12-15" not in obj["present"] and "2024-12-25" in obj["present"]
    fp = shape(transform_geom("EPSG:4326", "EPSG:32636", obj["geometry"]))
    for epsg in (32636, 32637):
        means = []
        for day in ("2024-12-15", "2024-12-25"):
            # the image content of a date is displaced by its misregistration
            s = truth["shifts"][day]
            moved = shapely.affinity.translate(fp, 10 * s["shift_x_px"], 10 * s["shift_y_px"])
            geom = transform_geom("EPSG:32636", f"EPSG:{epsg}", mapping(moved))
            nir, tr = _read(_by_date(items, day, epsg), "nir")
            mask = rasterize([(geom, 1)], out_shape=nir.shape, transform=tr, all_touched=True)
            assert mask.sum() >= 8
            means.append(float(nir[mask == 1].mean()))
        assert means[1] - means[0] > 250, (epsg, means)  # ship (~0.12) on sea (~0.01) in NIR


def test_swath_edge_filled_by_other_zone(items: list[pystac.Item]) -> None:
    own = _by_date(items, "2025-01-04", 32636)
    other = _by_date(items, "2025-01-04", 32637)
    blue, _ = _read(own, "blue")
    scl, _ = _read(own, "scl")
    assert 0.1 < (blue == 0).mean() < 0.9 and own.properties["s2:nodata_pixel_percentage"] > 10
    assert np.array_equal(blue == 0, np.repeat(np.repeat(scl == 0, 2, 0), 2, 1))
    assert (_read(other, "blue")[0] == 0).sum() == 0
    # the own-zone Item covers only part of the site grid
    site = get_site(SITE, SEEDS)
    gb = site.geobox(10.0)
    xs = gb.affine.c + (np.arange(gb.width) + 0.5) * 10
    ys = gb.affine.f - (np.arange(gb.height) + 0.5) * 10
    xx, yy = np.meshgrid(xs, ys)
    with rasterio.open(own.assets["blue"].get_absolute_href()) as ds:
        own_ok = np.array(list(ds.sample(zip(xx.ravel(), yy.ravel(), strict=True)))).ravel() > 0
    assert 0 < own_ok.mean() < 1


def test_false_clouds_on_concrete(items: list[pystac.Item], truth: dict) -> None:
    assert truth["cloud_fraction"]["2024-12-12"] == 0.0
    it = _by_date(items, "2024-12-12", 32636)
    scl, _ = _read(it, "scl")
    red, _ = _read(it, "red")
    flagged = np.isin(scl, (8, 9))
    assert flagged.sum() > 5
    # flagged pixels are bright (concrete), not real clouds
    red20 = red.reshape(scl.shape[0], 2, scl.shape[1], 2).mean(axis=(1, 3))
    assert np.median(red20[flagged]) < 1000 + 0.35 * 10000


def test_determinism_and_period_independence(tmp_path: Path, demo: Path) -> None:
    kw = {
        "seeds_dir": SEEDS,
        "seed": 7,
        "sites": (SITE,),
        "start": "2024-12-12",
        "end": "2024-12-15",
    }
    a = build_demo_catalog(tmp_path / "a", **kw).parent
    b = build_demo_catalog(tmp_path / "b", **kw).parent
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    # the Items of a date do not depend on the period generated around it
    for item_json in a.glob("sentinel-2-l2a/*/*.json"):
        rel = item_json.relative_to(a)
        assert item_json.read_bytes() == (demo / rel).read_bytes(), rel
    # another seed: another catalog
    c = build_demo_catalog(tmp_path / "c", **{**kw, "seed": 8}).parent
    assert (c / "truth/tartus.json").read_bytes() != (a / "truth/tartus.json").read_bytes()


def test_imaging_operator_area_average_and_shift() -> None:
    world = Grid(32636, 0.0, 400.0, 2.0, 200, 200)
    item = Grid(32636, 100.0, 300.0, 10.0, 20, 20)
    img = np.zeros((1, 200, 200), dtype=np.float32)
    img[0, 90:100, 90:105] = 1.0  # 20 x 30 m block; x 180..210, y 200..220
    ref = imaging_operator(item, world, (0.0, 0.0), 0.45).apply(img)[0]
    moved = imaging_operator(item, world, (5.0, 3.0), 0.45).apply(img)[0]
    assert ref.sum() * 100 == pytest.approx(600.0, rel=1e-3)  # area preserved, m2
    rows, cols = np.indices(ref.shape)
    c0 = (rows * ref).sum() / ref.sum(), (cols * ref).sum() / ref.sum()
    c1 = (rows * moved).sum() / moved.sum(), (cols * moved).sum() / moved.sum()
    assert c1[1] - c0[1] == pytest.approx(0.5, abs=1e-3)  # 5 m east = +0.5 col
    assert c1[0] - c0[0] == pytest.approx(-0.3, abs=1e-3)  # 3 m north = -0.3 row


def test_events_function() -> None:
    scn = load_scenario(SITE, SEEDS)
    site = get_site(SITE, SEEDS)
    objs = place_objects(scn.objects, site, site_frames(site), 1, "t")
    dates = [dt.date(2024, 12, d) for d in (2, 5, 12, 15)]
    evs = {(e["object_id"], e["kind"]): e for e in events(objs, dates)}
    assert evs[("frigate-a", "removed")]["last_before"] == "2024-12-05"
    assert evs[("frigate-a", "removed")]["first_after"] == "2024-12-12"
    assert evs[("frigate-c-off", "appeared")]["first_after"] == "2024-12-12"
    assert evs[("frigate-c-off", "removed")]["first_after"] == "2024-12-15"
    assert not any(oid == "support-d" for oid, _ in evs)  # present throughout


def _seeds_copy(tmp_path: Path) -> tuple[Path, dict]:
    seeds = tmp_path / "seeds"
    shutil.copytree(SEEDS / "sites", seeds / "sites")
    (seeds / "scenario").mkdir()
    return seeds, yaml.safe_load((SEEDS / "scenario" / f"{SITE}.yaml").read_text())


def test_scenario_rejects_unknown_keys(tmp_path: Path) -> None:
    seeds, doc = _seeds_copy(tmp_path)
    doc["weather"]["cloudz"] = 1
    (seeds / "scenario" / f"{SITE}.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match=r"unknown key 'weather.cloudz'"):
        load_scenario(SITE, seeds)


def test_overlapping_objects_rejected(tmp_path: Path) -> None:
    seeds, doc = _seeds_copy(tmp_path)
    doc["objects"].append({"id": "twin", "model": "frigate", "frame": "pier-west", "at": [-16, 0]})
    (seeds / "scenario" / f"{SITE}.yaml").write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="overlap"):
        build_demo_catalog(tmp_path / "out", seeds_dir=seeds, sites=(SITE,))
    assert not (tmp_path / "out").exists()
