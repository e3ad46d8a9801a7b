"""Tests of pipeline.report on a tiny synthetic cube (3 dates, 60 x 60 px, EPSG:32636)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import shapely
import xarray as xr
from PIL import Image
from pyproj import Transformer
from shapely.geometry import box, mapping

from pipeline.errors import DataError
from pipeline.report import _detections_px, _grid, write_index, write_report

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
    attrs = {"crs": "EPSG:32636", "site": "testsite"}
    if simulated:
        attrs["simulated"] = True
    return xr.Dataset(data, coords=coords, attrs=attrs)


def _feature(did: str, kind: str, geom, before: str, after: str, zone: str | None) -> dict:
    c = geom.centroid
    props = {
        "id": did,
        "kind": kind,
        "date_before": before,
        "date_after": after,
        "area_m2": 6600.0,
        "score": 12.5,
        "confidence": 0.97,
        "zone": zone,
        "zone_kind": "apron" if zone else None,
        "n_pixels": 66,
        "centroid_lon": c.x,
        "centroid_lat": c.y,
    }
    return {"type": "Feature", "geometry": mapping(geom), "properties": props}


def _detections() -> dict:
    return {
        "type": "FeatureCollection",
        "features": [
            _feature(
                "det-0001", "removed", _pixel_box(20, 26, 20, 31), DATES[1], DATES[2], "apron"
            ),
            _feature("det-0002", "appeared", _pixel_box(40, 44, 40, 50), DATES[0], DATES[1], None),
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
    "dates_dropped": [{"date": "2024-11-17", "valid_fraction": 0.02, "reason": "cloudy"}],
    "n_items": 8,
}


def _write(out: Path, cube: xr.Dataset | None = None, **kw) -> Path:
    zones = [("apron", box(X0 + 150, Y0 - 300, X0 + 350, Y0 - 150))]
    return write_report(
        out,
        site_title="Test site",
        site_name="testsite",
        cube=_cube() if cube is None else cube,
        detections=_detections(),
        coreg=COREG,
        load_report=LOAD,
        zones_utm=zones,
        **kw,
    )


def test_report_html_and_images(tmp_path: Path) -> None:
    metrics = {"object_f1": 0.6667, "coreg_rmse_px": 0.12, "fn_event_ids": ["X:removed"]}
    index = _write(tmp_path / "testsite", metrics=metrics)
    assert index == tmp_path / "testsite" / "index.html"
    text = index.read_text()
    for needle in ("det-0001", "det-0002", "shifted", "failed", "peak quality 0.05", "cloudy"):
        assert needle in text
    assert "SIMULATED DEMO DATA" in text
    assert "<td>apron</td><td class='num'>1</td><td class='num'>0</td>" in text  # per zone
    assert "35.942731" in text  # lon/lat of det-0001 with 6 decimals
    assert "coreg_rmse_px" in text and "X:removed" in text
    srcs = re.findall(r"src='([^']+)'", text)
    assert "overview.png" in srcs
    assert f"pair_{DATES[1]}_{DATES[2]}.png" in srcs
    assert f"pair_{DATES[0]}_{DATES[1]}.png" in srcs
    for src in srcs:
        assert not src.startswith(("/", "http")), "links must be relative"
        with Image.open(index.parent / src) as img:
            img.verify()
        with Image.open(index.parent / src) as img:
            assert img.format == "PNG"
            assert 100 < img.size[0] <= 800
    assert (index.parent / "detections.geojson").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["testsite"], "temporary folders left behind"


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


def test_dask_cube_and_missing_pair_date(tmp_path: Path) -> None:
    cube = _cube().chunk({"time": 1, "y": 30, "x": 30}).isel(time=[0, 1])
    text = _write(tmp_path / "r", cube=cube).read_text()
    assert "not in the cube" in text  # the pair ending on DATES[2]
    assert (tmp_path / "r" / f"pair_{DATES[0]}_{DATES[1]}.png").exists()


def test_detections_land_on_their_pixels() -> None:
    crs, affine = _grid(_cube())
    assert crs == "EPSG:32636"
    dets = _detections_px(_detections(), crs, affine)
    bounds = {p["id"]: g.bounds for p, g in dets}  # (col, row) pixel-centre coordinates
    assert bounds["det-0001"] == pytest.approx((19.5, 19.5, 30.5, 25.5), abs=1e-3)
    assert bounds["det-0002"] == pytest.approx((39.5, 39.5, 49.5, 43.5), abs=1e-3)


def test_write_index(tmp_path: Path) -> None:
    sites = [
        {"name": "khmeimim", "title": "Khmeimim air base", "n_detections": 7, "simulated": True},
        {"name": "tartus", "title": "Tartus <naval>", "object_f1": 0.5},
    ]
    text = write_index(tmp_path, sites).read_text()
    assert "href='khmeimim/index.html'" in text and "href='tartus/index.html'" in text
    assert "Tartus &lt;naval&gt;" in text
    assert "SIMULATED DEMO DATA" in text
