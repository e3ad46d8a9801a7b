"""Tests of pipeline.io.report.site, report_html and quicklook: a tiny synthetic cube, then the demo
run.

The synthetic cube has 3 dates of 60 x 60 px in EPSG:32636 with one object removed and one
appeared at known pixels; the demo run (tests/demo_run.py) checks the real report stage, its
index page and `dvc plots show` on the files it writes.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
import xarray as xr
from demo_run import ROOT, demo_run
from PIL import Image
from pyproj import Transformer
from shapely.geometry import box, mapping

from pipeline.errors import DataError
from pipeline.io.report import quicklook
from pipeline.io.report.site import ALL_ZONES, OUTSIDE, occupancy, update_index, write_report

X0, Y0, RES, N = 767_005.0, 3_921_595.0, 10.0, 60  # pixel centres; edges on the 60 m grid
DATES = ["2024-11-02", "2024-11-07", "2024-11-12"]
TO_LONLAT = Transformer.from_crs(32636, 4326, always_xy=True)


def _pixel_box(r0: int, r1: int, c0: int, c1: int):
    """Lon/lat polygon of the pixel block rows r0..r1-1, cols c0..c1-1."""
    utm = box(
        X0 + (c0 - 0.5) * RES, Y0 - (r1 - 0.5) * RES, X0 + (c1 - 0.5) * RES, Y0 - (r0 - 0.5) * RES
    )
    return shapely.transform(utm, lambda c: np.column_stack(TO_LONLAT.transform(c[:, 0], c[:, 1])))


def _cube(simulated: bool = True) -> xr.Dataset:
    rng = np.random.default_rng(0)
    base = 0.2 + 0.01 * rng.standard_normal((3, N, N)).astype(np.float32)
    base[:2, 20:26, 20:31] += 0.3  # object present on dates 0-1, removed on date 2
    base[1:, 40:44, 40:50] += 0.25  # object appearing on date 1
    valid = np.ones((3, N, N), dtype=bool)
    valid[1, :10, :] = False  # a cloud on date 1
    coords = {
        "time": np.array(DATES, dtype="datetime64[ns]"),
        "y": Y0 - RES * np.arange(N),
        "x": X0 + RES * np.arange(N),
    }
    dims = ("time", "y", "x")
    data = {b: (dims, base * f) for b, f in (("red", 1.0), ("green", 0.95), ("blue", 0.9))}
    data["valid"] = (dims, valid)
    attrs = {"crs": "EPSG:32636", "site": "testsite", "simulated": int(simulated)}
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _feature(did: str, kind: str, geom, before: str, after: str, zone: str | None) -> dict:
    c = geom.centroid
    props = {
        "id": did, "kind": kind, "date_before": before, "date_after": after,
        "date_before_latest": before, "area_m2": 6600.0, "score": 12.5, "confidence": 0.97,
        "zone": zone, "zone_kind": "apron" if zone else None, "n_pixels": 66,
        "centroid_lon": c.x, "centroid_lat": c.y, "transient": False,
    }  # fmt: skip
    return {"type": "Feature", "geometry": mapping(geom), "properties": props}


def _detections() -> dict:
    return {
        "type": "FeatureCollection",
        "features": [
            _feature("det-1", "removed", _pixel_box(20, 26, 20, 31), DATES[1], DATES[2], "apron"),
            _feature("det-2", "appeared", _pixel_box(40, 44, 40, 50), DATES[0], DATES[1], None),
        ],
    }


COREG = {
    "reference_date": DATES[0],
    "dates": [
        {"date": DATES[0], "shift_x_px": 0.0, "shift_y_px": 0.0, "quality": 1.0, "n_valid": 3600,
         "status": "ok", "reason": None},
        {"date": DATES[1], "shift_x_px": 1.62, "shift_y_px": -0.4, "quality": 0.81, "n_valid": 3000,
         "status": "shifted", "reason": None},
        {"date": DATES[2], "shift_x_px": 0.0, "shift_y_px": 0.0, "quality": 0.05, "n_valid": 90,
         "status": "failed", "reason": "peak quality 0.05 < 0.3"},
    ],
}  # fmt: skip
LOAD = {
    "dates_kept": DATES,
    "dates_dropped": [{"date": "2024-11-17", "valid_fraction": 0.02, "reason": "too cloudy"}],
    "valid_fraction": {DATES[0]: 1.0, DATES[1]: 0.83, DATES[2]: 1.0, "2024-11-17": 0.02},
}
ZONES = [("apron", box(X0 + 150, Y0 - 300, X0 + 350, Y0 - 150))]


def _write(out: Path, cube: xr.Dataset | None = None, **kw) -> Path:
    return write_report(
        out,
        site_title="Test site",
        site_name="testsite",
        cube=_cube() if cube is None else cube,
        detections=_detections(),
        coreg=COREG,
        load_report=LOAD,
        zones_utm=ZONES,
        **kw,
    )


def test_occupancy_is_net_area_by_date_after() -> None:
    props = [
        {"kind": "removed", "date_after": "2024-11-07", "area_m2": 500.0, "zone": "a"},
        {"kind": "appeared", "date_after": "2024-11-12", "area_m2": 200.0, "zone": "a"},
        {"kind": "removed", "date_after": "2024-11-12", "area_m2": 300.0, "zone": "b"},
        {"kind": "removed", "date_after": "2024-11-12", "area_m2": 900.0, "zone": None},
        {"kind": "appeared", "date_after": "2024-11-07", "area_m2": 50.0, "zone": "a",
         "transient": True},
    ]  # fmt: skip
    occ = occupancy(props, ["2024-11-02", "2024-11-07", "2024-11-12"], ["a", "b", "c"])
    assert occ.dates == ["2024-11-02", "2024-11-07", "2024-11-12"]
    assert occ.net_area_m2["a"] == [0.0, -500.0, -300.0]
    assert occ.net_area_m2["b"] == [0.0, 0.0, -300.0]
    assert occ.net_area_m2["c"] == [0.0, 0.0, 0.0]
    assert occ.net_area_m2[ALL_ZONES] == [0.0, -500.0, -600.0]
    assert occ.net_area_m2[OUTSIDE] == [0.0, 0.0, -900.0]
    assert occ.counts == {"removed": [0, 1, 2], "appeared": [0, 1, 1]}  # transient counted
    assert occ.rows()[2] == {
        "date": "2024-11-12", "day": 10, "a": -300.0, "b": -300.0, "c": 0.0,
        "all_zones": -600.0, "outside_zones": -900.0,
    }  # fmt: skip


def test_report_folder_contents(tmp_path: Path) -> None:
    index = _write(tmp_path / "testsite", metrics={"object_f1": 0.6667, "fn_ids": ["X:removed"]})
    folder = index.parent
    text = index.read_text()
    for needle in ("det-1", "det-2", "shifted", "failed", "peak quality 0.05", "too cloudy"):
        assert needle in text
    assert "SIMULATED DEMO DATA" in text
    assert "0.6667" in text and "X:removed" in text
    lonlat = shapely.centroid(_pixel_box(20, 26, 20, 31))
    assert f"{lonlat.x:.6f}" in text and f"{lonlat.y:.6f}" in text
    srcs = re.findall(r"src='([^']+)'", text)
    assert srcs[:2] == ["img/site_map.png", "img/occupancy.png"]
    assert {"img/det-1.png", "img/det-2.png"} <= set(srcs)
    for ref in srcs + re.findall(r"href='([^']+)'", text):
        assert not ref.startswith(("/", "http:", "https:", "//")), ref
    assert "<script src" not in text and '<link rel="stylesheet"' not in text
    for src in srcs:
        with Image.open(folder / src) as img:
            assert img.format == "PNG" and 100 < img.size[0] <= 800
    with (folder / "occupancy.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["date"] for r in rows] == DATES
    assert [float(r["apron"]) for r in rows] == [0.0, 0.0, -6600.0]
    assert [float(r["outside_zones"]) for r in rows] == [0.0, 6600.0, 6600.0]
    with (folder / "detections_per_date.csv").open() as f:
        assert [(r["removed"], r["appeared"]) for r in csv.DictReader(f)] == [
            ("0", "0"), ("0", "1"), ("1", "0"),
        ]  # fmt: skip
    written = json.loads((folder / "detections.geojson").read_text())
    assert written == json.loads(json.dumps(_detections()))
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["n_detections"] == 2 and summary["n_dates"] == 2  # DATES[2] failed
    assert [p.name for p in tmp_path.iterdir()] == ["testsite"], "temporary folders left"


def test_detections_table_is_sortable_markup(tmp_path: Path) -> None:
    text = _write(tmp_path / "r").read_text()
    table = text[text.index("<table class='sortable' id='detections-table'>") :]
    table = table[: table.index("</table>")]
    assert "<thead>" in table and "<tbody>" in table
    assert table.count("<tr>") == 3  # header + 2 detections
    assert "<td class='num' data-sort='6600.0'>" in table
    assert "href='#det-1'" in table and "id='det-1'" in text
    assert "addEventListener('click'" in text  # the inline sorter


def test_banner_only_when_simulated(tmp_path: Path) -> None:
    plain = _write(tmp_path / "a", cube=_cube(simulated=False)).read_text()
    assert "SIMULATED DEMO DATA" not in plain
    flagged = _write(tmp_path / "b", cube=_cube(simulated=False), simulated=True).read_text()
    assert "SIMULATED DEMO DATA" in flagged


def test_rewrite_replaces_folder_and_failure_keeps_old(tmp_path: Path) -> None:
    out = tmp_path / "testsite"
    _write(out)
    (out / "stale.png").write_bytes(b"x")
    _write(out)
    assert not (out / "stale.png").exists()
    before = (out / "index.html").read_text()
    with pytest.raises(DataError, match="red"):
        _write(out, cube=_cube().drop_vars("red"))
    assert (out / "index.html").read_text() == before
    assert [p.name for p in tmp_path.iterdir()] == ["testsite"]


def test_dask_cube_and_missing_date(tmp_path: Path) -> None:
    cube = _cube().chunk({"time": 1, "y": 30, "x": 30}).isel(time=[0, 1])
    text = _write(tmp_path / "r", cube=cube).read_text()
    assert "a date of this detection is not in the cube" in text  # det-1 ends on DATES[2]
    assert (tmp_path / "r" / "img" / "det-2.png").exists()
    assert not (tmp_path / "r" / "img" / "det-1.png").exists()


def test_detections_land_on_their_pixels() -> None:
    dets = quicklook.detections_on_grid(_detections(), _cube())
    bounds = {d.props["id"]: d.geom.bounds for d in dets}  # (col, row), pixel centres at ints
    assert bounds["det-1"] == pytest.approx((19.5, 19.5, 30.5, 25.5), abs=1e-3)
    assert bounds["det-2"] == pytest.approx((39.5, 39.5, 49.5, 43.5), abs=1e-3)
    rows, cols = quicklook.crop_window(dets[1].geom, (N, N))  # sorted by date_after: det-1
    assert rows.start <= 19 and rows.stop >= 26 and cols.start <= 19 and cols.stop >= 31
    assert rows.stop - rows.start >= quicklook.CROP_MIN_PX


def test_triptych_uses_one_stretch_for_both_dates() -> None:
    cube = _cube()
    tc = quicklook.TrueColour(cube)
    rs, cs = slice(15, 35), slice(15, 35)
    lo, hi = tc.limits([1, 2], rs, cs)
    assert np.all(lo == lo[0]) and np.all(hi == hi[0])  # one range for the three bands
    before, after = tc.image(1, rs, cs, (lo, hi)), tc.image(2, rs, cs, (lo, hi))
    # Background pixels have the same reflectance up to noise on both dates: same display.
    assert abs(before[0, 0].mean() - after[0, 0].mean()) < 0.2
    # The removed object is bright before and background after.
    assert before[8, 8].mean() > after[8, 8].mean() + 0.3
    det = quicklook.detections_on_grid(_detections(), cube)[1]
    assert det.props["id"] == "det-1"
    fig = quicklook.triptych_figure(tc, det)
    assert fig is not None and len(fig.axes) == 4  # 3 panels + colour bar
    assert fig.axes[0].get_title() == f"before {DATES[1]}"
    assert fig.axes[1].get_title() == f"after {DATES[2]}"


def test_update_index_lists_sites_with_a_report(tmp_path: Path) -> None:
    _write(tmp_path / "testsite")
    (tmp_path / "empty").mkdir()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "index.html").write_text("<html></html>")
    text = update_index(tmp_path).read_text()
    assert "href='testsite/index.html'" in text and "href='plain/index.html'" in text
    assert "empty/index.html" not in text
    assert "Test site" in text and "SIMULATED DEMO DATA" in text


# ------------------------------------------------------------------------- the demo run


def test_demo_report(tmp_path: Path) -> None:
    run = demo_run()
    folder = run.paths.reports
    text = (folder / "index.html").read_text()
    fc = json.loads(run.paths.detections.read_text())
    assert fc["features"], "the demo run should detect something"
    for feat in fc["features"]:
        did = feat["properties"]["id"]
        assert f"id='{did}'" in text
        assert (folder / "img" / f"{did}.png").is_file()
    items = json.loads(run.paths.items.read_text())["features"]
    assert all(it["id"] in text for it in items)  # every scene listed
    header = (folder / "occupancy.csv").read_text().splitlines()[0].split(",")
    assert header[:2] == ["date", "day"] and {"pier-west", "all_zones"} <= set(header)
    index = (run.paths.reports.parent / "index.html").read_text()
    assert "href='tartus/index.html'" in index


def test_dvc_plots_show_renders_the_report_tables(tmp_path: Path) -> None:
    run = demo_run()
    dvc = Path(sys.executable).with_name("dvc")
    if not dvc.exists():
        pytest.skip(f"dvc not installed at {dvc}")
    (tmp_path / "configs").mkdir()
    shutil.copy(ROOT / "dvc.yaml", tmp_path)
    shutil.copy(ROOT / "configs" / "params.yaml", tmp_path / "configs")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=tmp_path, check=True, timeout=60)
    shutil.copytree(ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    shutil.copytree(run.paths.reports, tmp_path / "reports" / "tartus")
    (tmp_path / "metrics").mkdir()
    shutil.copy(run.paths.occupancy, tmp_path / "metrics" / run.paths.occupancy.name)
    r = subprocess.run(
        [dvc, "plots", "show", "--json"], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    # Only the site the demo run did not make (khmeimim) is missing.
    assert all("khmeimim" in e["source"] for e in out.get("errors", [])), out.get("errors")
    occ = out["data"]["occupancy"][0]["content"]
    assert occ["encoding"]["x"]["type"] == "temporal"
    values = occ["data"]["values"]
    dates = [v["date"] for v in values if "tartus" in v["filename"]]
    assert dates == sorted(dates) and len(dates) >= 2
    counts = out["data"]["detections_per_date"][0]["content"]["data"]["values"]
    # One row per (file, column): the y value is in dvc_inferred_y_value.
    total = sum(int(v["dvc_inferred_y_value"]) for v in counts if "tartus" in v["filename::field"])
    n_features = len(json.loads(run.paths.detections.read_text())["features"])
    assert total == n_features
    zone = out["data"]["zone_occupancy"][0]["content"]["data"]["values"]
    assert len([v for v in zone if "tartus" in v["filename"]]) >= 2
    html = subprocess.run(
        [dvc, "plots", "show", "-o", str(tmp_path / "html")], cwd=tmp_path, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip
    assert (tmp_path / "html" / "index.html").is_file(), html.stderr


def test_scenes_table_shows_the_date_checks_and_flags() -> None:
    from pipeline.io.report.html import scenes_section

    load_report = {
        "dates_kept": ["2024-12-02", "2024-12-05"],
        "dates_dropped": [],
        "valid_fraction": {"2024-12-02": 0.9, "2024-12-05": 0.8},
        "radiometry": {
            "2024-12-02": {"rule": "raster:bands", "offset": -0.1, "agrees": True},
            "2024-12-05": {
                "rule": "raster:bands scale; BOA offset already in the pixels",
                "offset": 0.0,
                "agrees": False,
                "pixels": "no pixel darker than 0.1: the BOA offset is still in the pixels",
            },
        },
        "geometry": {
            "2024-12-02": {"refined": None},
            "2024-12-05": {"refined": False, "quality": "PASSED", "quality_source": "q"},
        },
    }
    coreg = {
        "reference_date": "2024-12-02",
        "dates": [
            {"date": "2024-12-02", "status": "ok", "residual_px": 0.0, "residual_flag": False},
            {"date": "2024-12-05", "status": "shifted", "residual_px": 1.4, "residual_flag": True},
        ],
    }
    html, used = scenes_section([], coreg, load_report)
    assert used == ["2024-12-02", "2024-12-05"]
    rows = re.findall(r"<tr>(.*?)</tr>", html, re.S)
    flagged = next(r for r in rows if "2024-12-05" in r)
    assert "PIXELS DISAGREE" in flagged and "rule used: raster:bands scale" in flagged
    assert "LARGE RESIDUAL: 1.4" in flagged and "yes, flagged" in flagged
    assert "NOT refined; q PASSED" in flagged
    fine = next(r for r in rows if "2024-12-02" in r)
    assert "pixels agree" in fine and "unknown" in fine and "flagged" not in fine


def test_a_residual_left_after_coregistration_is_measured() -> None:
    from pipeline.config import CoregisterConfig
    from pipeline.stages.site import _residuals

    rng = np.random.default_rng(3)
    from scipy import ndimage

    base = ndimage.gaussian_filter(rng.normal(size=(96, 96)), 1.5)
    off = ndimage.shift(base, (0.0, 1.5), order=3, mode="nearest")  # 1.5 px left over
    nir = np.stack([base, base, off]).astype("float32")
    aligned = xr.Dataset(
        {"nir": (("time", "y", "x"), nir), "valid": (("time", "y", "x"), np.ones_like(nir, bool))}
    )
    got = _residuals(aligned, CoregisterConfig(), 0)
    assert got[0] == 0.0 and got[1] is not None and got[1] < 0.05
    assert (
        got[2] is not None
        and abs(got[2] - 1.5) < 0.1
        and got[2] > CoregisterConfig().max_residual_px
    )
