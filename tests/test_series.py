"""``basewatch series`` on small synthetic series of known truth written as real GeoTIFFs.

The scene is a patchwork of materials drawn at 2 m and area-averaged to 10 m. Over seven dates
five days apart, one planted object leaves (present on the first three dates), one arrives
(present on the last three) and one stays; each date has its own sub-pixel shift (up to 0.4
px), gain and noise; two dates are Level-1C (no SCL). The command must find the departure and
the arrival, signed and dated to the right interval, nothing of the wrong kind at either, and
nothing at the object that stays or elsewhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from shapely.geometry import Point, shape
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import Config
from pipeline.errors import EXIT_CODES
from pipeline.stages.series import build_cube, describe_series, detect_series, series_grid

N = 96
"""Grid side, 10 m pixels."""
SUPER = 5
"""Sub-pixels per pixel of the drawing."""
ORIGIN = (700000.0, 3920000.0)
CRS = "EPSG:32636"
TRANSFORM_10 = Affine(10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
TRANSFORM_20 = Affine(20.0, 0.0, ORIGIN[0], 0.0, -20.0, ORIGIN[1])
IDS = ("B02", "B03", "B04", "B08", "B11", "B12")
MATERIALS = np.array(
    [
        (0.20, 0.23, 0.26, 0.29, 0.33, 0.28),  # concrete
        (0.07, 0.10, 0.15, 0.21, 0.31, 0.26),  # soil
        (0.03, 0.07, 0.04, 0.42, 0.21, 0.10),  # vegetation
        (0.07, 0.08, 0.09, 0.11, 0.14, 0.13),  # asphalt
    ],
    dtype=np.float32,
)
WHITE = np.array((0.50, 0.52, 0.53, 0.55, 0.45, 0.36), dtype=np.float32)  # a white aircraft
DARK = np.array((0.02, 0.03, 0.03, 0.04, 0.03, 0.02), dtype=np.float32)  # a dark vehicle
DATES = (
    "2024-11-03",
    "2024-11-08",
    "2024-11-13",
    "2024-11-18",
    "2024-11-23",
    "2024-11-28",
    "2024-12-03",
)
SHIFTS_SUB = ((0, 0), (1, -2), (-2, 1), (2, 2), (-1, -1), (0, 2), (1, 1))
"""(rows, cols) sub-pixel roll of each date: up to 0.4 px."""
GAINS = (1.0, 1.03, 0.97, 1.05, 0.98, 1.02, 0.99)
LEVEL_1C = (1, 4)
"""Dates written as Level-1C folders (no SCL)."""


def _px(r0: int, r1: int, c0: int, c1: int) -> tuple[slice, slice]:
    return slice(r0 * SUPER, r1 * SUPER), slice(c0 * SUPER, c1 * SUPER)


OBJECTS = {
    # name: (sub-pixel slices, reflectance, first date present, last date present)
    "leaves": (_px(20, 26, 20, 25), WHITE, 0, 2),
    "arrives": (_px(60, 65, 60, 67), DARK, 4, 6),
    "stays": (_px(30, 35, 66, 72), WHITE, 0, 6),
}
"""``leaves`` is removed between dates 2 and 3, ``arrives`` appears between dates 3 and 4: each
change has at least three dates on each side (``detect.window_dates``)."""


def _world(seed: int = 3) -> np.ndarray:
    """(6, N*SUPER, N*SUPER) reflectance: a patchwork of materials with texture."""
    rng = np.random.default_rng(seed)
    n = N * SUPER
    ids = np.zeros((n, n), dtype=np.int64)
    for _ in range(60):
        r, c = rng.integers(0, n, 2)
        h, w = rng.integers(10 * SUPER // 2, 24 * SUPER, 2)
        ids[r : r + h, c : c + w] = rng.integers(0, len(MATERIALS))
    world = MATERIALS[ids].transpose(2, 0, 1).copy()
    world *= 1 + 0.05 * rng.standard_normal((1, n, n)).astype(np.float32)
    return world


def _render(t: int, world: np.ndarray) -> np.ndarray:
    """10 m reflectance of date ``t``: its objects, shift, gain and noise."""
    scene = world.copy()
    for (rows, cols), refl, first, last in OBJECTS.values():
        if first <= t <= last:
            scene[:, rows, cols] = refl[:, None, None]
    moved = np.roll(scene, SHIFTS_SUB[t], axis=(1, 2))
    refl = moved.reshape(len(IDS), N, SUPER, N, SUPER).mean(axis=(2, 4)) * GAINS[t]
    rng = np.random.default_rng(100 + t)
    return (refl + 0.003 * rng.standard_normal(refl.shape)).astype(np.float32)


def _write(path: Path, data: np.ndarray, transform: Affine) -> None:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        count=1,
        height=data.shape[0],
        width=data.shape[1],
        dtype=data.dtype.name,
        crs=CRS,
        transform=transform,
    ) as dst:
        dst.write(data, 1)


def _band_folder(folder: Path, refl: np.ndarray, *, scl: bool) -> Path:
    """One uint16 file per band (B11, B12 at 20 m), plain ``DN / 10000``; an SCL if ``scl``."""
    folder.mkdir(parents=True)
    for i, sid in enumerate(IDS):
        band, transform = refl[i], TRANSFORM_10
        if sid in ("B11", "B12"):
            band, transform = band.reshape(N // 2, 2, N // 2, 2).mean(axis=(1, 3)), TRANSFORM_20
        dn = np.clip(np.round(band * 10000), 1, 65535).astype(np.uint16)
        _write(folder / f"T36SYE_{sid}.tif", dn, transform)
    if scl:
        _write(folder / "T36SYE_SCL.tif", np.full((N // 2, N // 2), 4, np.uint8), TRANSFORM_20)
    return folder


@pytest.fixture(scope="module")
def series_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seven band folders ``S2_<YYYYMMDD>_L2A/`` (``_L1C``, without SCL, for two dates)."""
    root = tmp_path_factory.mktemp("series")
    world = _world()
    for t, day in enumerate(DATES):
        level = "L1C" if t in LEVEL_1C else "L2A"
        name = f"S2_{day.replace('-', '')}_{level}"
        _band_folder(root / name, _render(t, world), scl=level == "L2A")
    return root


def _inputs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir())


def _run(*args: object) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["series", *map(str, args)])
    return r.exit_code, r.stdout, r.stderr if r.stderr_bytes is not None else ""


def _centre_lonlat(name: str) -> Point:
    (rows, cols), *_ = OBJECTS[name]
    row = (rows.start + rows.stop) / 2 / SUPER
    col = (cols.start + cols.stop) / 2 / SUPER
    x, y = TRANSFORM_10 @ (col, row)
    return Point(*Transformer.from_crs(CRS, 4326, always_xy=True).transform(x, y))


def _hits(features: list[dict], name: str) -> list[dict]:
    centre = _centre_lonlat(name)
    return [f for f in features if shape(f["geometry"]).buffer(2e-4).contains(centre)]


@pytest.fixture(scope="module")
def run_out(series_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The CLI run over the seven dates, given in reverse order."""
    out = tmp_path_factory.mktemp("out") / "series"
    code, stdout, stderr = _run(*reversed(_inputs(series_dir)), "--out", out)
    assert code == 0, stderr
    return out, stdout, stderr


def test_finds_departure_and_arrival(run_out: tuple[Path, str, str]) -> None:
    out, stdout, _ = run_out
    dets = json.loads((out / "detections.geojson").read_text())
    feats = dets["features"]
    for f in feats:
        for key in ("kind", "date_before", "date_after", "area_m2", "score", "confidence"):
            assert key in f["properties"], key
    left = _hits(feats, "leaves")
    assert {f["properties"]["kind"] for f in left} == {"removed"}
    (p,) = [f["properties"] for f in left if f["properties"]["date_after"] == DATES[3]]
    # the interval holds the change: its end exact, its start the last view before it at the
    # latest (earlier where the detector set a view of some pixel aside)
    assert p["date_before"] <= DATES[2] == p["date_before_latest"]
    assert 0.5 * 3000 <= p["area_m2"] <= 2 * 3000  # 60 m x 50 m planted
    assert 0.5 <= p["confidence"] <= 1.0 and p["score"] > 0
    came = _hits(feats, "arrives")
    assert {f["properties"]["kind"] for f in came} == {"appeared"}
    (p,) = [f["properties"] for f in came if f["properties"]["date_after"] == DATES[4]]
    assert p["date_before"] <= DATES[3] == p["date_before_latest"]
    assert 0.5 * 3500 <= p["area_m2"] <= 2 * 3500  # 50 m x 70 m planted
    assert not _hits(feats, "stays")
    planted = {id(f) for name in OBJECTS for f in _hits(feats, name)}
    assert [f for f in feats if id(f) not in planted] == []  # no false alarm elsewhere
    assert f"{len(feats)} objects" in stdout and "7 of 7 dates" in stdout


def test_summary(run_out: tuple[Path, str, str], series_dir: Path) -> None:
    out, _, stderr = run_out
    s = json.loads((out / "series.json").read_text())
    assert s["dates"] == list(DATES)  # sorted, though given in reverse
    assert [i["date"] for i in s["inputs"]] == list(DATES)
    assert {i["date_source"] for i in s["inputs"]} == {"path"}
    assert [i["level"] for i in s["inputs"]] == [
        "L1C" if t in LEVEL_1C else "L2A" for t in range(len(DATES))
    ]
    assert s["grid"]["crs"] == CRS and s["grid"]["shape"] == [N, N]
    assert s["grid"]["source"] == "first input"
    assert s["bands"] == ["blue", "green", "red", "nir", "swir16", "swir22"]
    coreg = {d["date"]: d for d in s["coregistration"]["dates"]}
    assert set(coreg) == set(DATES) and not s["coregistration"]["failed_dates"]
    ref = s["coregistration"]["reference_date"]
    ref_roll = np.array(SHIFTS_SUB[DATES.index(ref)])
    for t, day in enumerate(DATES):  # content rolled east / south by the sub-pixel roll
        dr, dc = (np.array(SHIFTS_SUB[t]) - ref_roll) / SUPER
        assert coreg[day]["shift_x_px"] == pytest.approx(dc, abs=0.1)
        assert coreg[day]["shift_y_px"] == pytest.approx(-dr, abs=0.1)
        assert coreg[day]["status"] in ("ok", "shifted") and coreg[day]["quality"] > 0.5
    assert s["thresholds"]["method"] == "multidate"
    assert s["thresholds"]["seed_threshold"] > s["thresholds"]["grow_threshold"] > 0
    assert s["counts"]["n_objects"] == s["counts"]["n_removed"] + s["counts"]["n_appeared"]
    assert len(s["pairs"]) == len(DATES) - 1
    assert "warning" not in stderr  # seven dates: no warning


def test_library_entry_without_files(series_dir: Path, run_out: tuple[Path, str, str]) -> None:
    """detect_series on a cube in memory finds what the CLI wrote."""
    cfg = Config.model_validate({})
    series = describe_series(_inputs(series_dir))
    grid, source = series_grid(series[0].spec)
    assert source == "first input"
    cube = build_cube(series, grid, ("blue", "green", "red", "nir", "swir16", "swir22"), 3)
    assert cube["valid"].dims == ("time", "y", "x") and cube.attrs["crs"] == CRS
    assert cube["valid"].values[[t for t in range(len(DATES)) if t not in LEVEL_1C]].all()
    result = detect_series(cube, cfg)
    assert result.dates == DATES and result.used_dates == DATES and not result.failed_dates
    assert result.score.sizes["pair"] == len(DATES) - 1

    def key(p: dict) -> tuple:
        return p["kind"], p["date_before"], p["date_after"], p["area_m2"], p["score"]

    written = json.loads((run_out[0] / "detections.geojson").read_text())["features"]
    assert [key(f["properties"]) for f in result.features] == [
        key(f["properties"]) for f in written
    ]
    assert result.counts()["n_removed"] >= 1 and result.counts()["n_appeared"] >= 1


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("S2B_MSIL2A_20240115T083229_N0510_R021_T36SYE_20240115T110000", "2024-01-15"),
        ("port/20231231/", "2023-12-31"),
        ("scene_2023-12-31_x/20240102", "2024-01-02"),
    ],
)
def test_date_from_path(tmp_path: Path, given: str, expected: str) -> None:
    refl = _render(0, _world())
    a = _band_folder(tmp_path / given, refl, scl=False)
    b = _band_folder(tmp_path / "other_20200101", refl, scl=False)
    series = describe_series([a, b])
    assert [s.date for s in series] == ["2020-01-01", expected]
    assert series[1].date_source == "path"


def test_date_from_band_file_names(tmp_path: Path) -> None:
    refl = _render(0, _world())
    a = _band_folder(tmp_path / "first", refl, scl=False)
    for f in a.iterdir():
        f.rename(a / f.name.replace("T36SYE", "T36SYE_20240301T083000"))
    b = _band_folder(tmp_path / "second_20240306", refl, scl=False)
    series = describe_series([b, a])
    assert [(s.date, s.date_source) for s in series] == [
        ("2024-03-01", "file names"),
        ("2024-03-06", "path"),
    ]


def test_missing_date_is_an_error(tmp_path: Path, series_dir: Path) -> None:
    nodate = _band_folder(tmp_path / "scene", _render(0, _world()), scl=False)
    code, _, stderr = _run(nodate, *_inputs(series_dir)[:3], "--out", tmp_path / "out")
    assert code == EXIT_CODES["DataError"]
    assert "no acquisition date" in stderr and str(nodate) in stderr and "YYYYMMDD" in stderr
    assert not (tmp_path / "out").exists()


def test_one_input_is_an_error(tmp_path: Path, series_dir: Path) -> None:
    code, _, stderr = _run(_inputs(series_dir)[0], "--out", tmp_path / "out")
    assert code == EXIT_CODES["DataError"]
    assert "at least 2 dates" in stderr and "4-6" in stderr


def test_bad_path_is_an_error(tmp_path: Path, series_dir: Path) -> None:
    missing = tmp_path / "S2_20241201"
    code, _, stderr = _run(*_inputs(series_dir)[:2], missing, "--out", tmp_path / "out")
    assert code == EXIT_CODES["DataError"]
    assert str(missing) in stderr and "does not exist" in stderr


def test_same_day_is_an_error(tmp_path: Path, series_dir: Path) -> None:
    first = _inputs(series_dir)[0]
    twin = _band_folder(tmp_path / first.name, _render(0, _world()), scl=False)
    code, _, stderr = _run(first, twin, *_inputs(series_dir)[1:3], "--out", tmp_path / "out")
    assert code == EXIT_CODES["DataError"]
    assert "both of 2024-11-03" in stderr and "one input per date" in stderr


def test_two_dates_warn(tmp_path: Path, series_dir: Path) -> None:
    code, _, stderr = _run(*_inputs(series_dir)[2:4], "--out", tmp_path / "out")
    assert code == 0, stderr
    assert "warning: 2 dates" in stderr
    s = json.loads((tmp_path / "out" / "series.json").read_text())
    assert s["dates"] == [DATES[2], DATES[3]]


def test_failed_run_leaves_previous_outputs(
    tmp_path: Path, series_dir: Path, run_out: tuple[Path, str, str]
) -> None:
    out = tmp_path / "out"
    code, _, stderr = _run(*_inputs(series_dir)[:4], "--out", out)
    assert code == 0, stderr
    before = {n: (out / n).read_bytes() for n in ("detections.geojson", "series.json")}
    broken = _band_folder(tmp_path / "S2_20241203", _render(0, _world()), scl=False)
    (broken / "T36SYE_B04.tif").write_bytes(b"not a tiff")
    code, _, stderr = _run(*_inputs(series_dir)[:4], broken, "--out", out)
    assert code == EXIT_CODES["DataError"]
    assert "T36SYE_B04.tif" in stderr
    assert {n: (out / n).read_bytes() for n in before} == before
    assert sorted(os.listdir(out)) == ["detections.geojson", "series.json"]  # no temp left


def test_lonlat_input_goes_on_utm(tmp_path: Path) -> None:
    """A lon/lat first input (OSCD, browser exports) is put on UTM at its ground pixel size."""
    folder = tmp_path / "S2_20240301"
    folder.mkdir()
    transform = Affine(1e-4, 0.0, 35.9, 0.0, -1e-4, 35.4)  # about 9 m x 11 m at 35.4 N
    with rasterio.open(
        folder / "B02.tif",
        "w",
        driver="GTiff",
        count=1,
        height=64,
        width=64,
        dtype="uint16",
        crs="EPSG:4326",
        transform=transform,
    ) as dst:
        dst.write(np.full((64, 64), 1000, np.uint16), 1)
    from pipeline.io.rasters import describe_input

    grid, source = series_grid(describe_input(folder))
    assert source == "UTM of the first input"
    assert grid.crs_name == "EPSG:32636"  # 35.9 E
    assert grid.transform.a == pytest.approx(9.0) and grid.transform.e == pytest.approx(-9.0)
    assert grid.shape[0] * 9 == pytest.approx(64 * 11.1, rel=0.1)


def test_true_colour_inputs(tmp_path: Path, series_dir: Path) -> None:
    """Inputs without the co-registration band (a true-colour export) use red instead."""
    import shutil

    inputs = []
    for src in _inputs(series_dir)[:4]:
        dst = tmp_path / src.name
        dst.mkdir()
        for sid in ("B02", "B03", "B04"):
            shutil.copy(src / f"T36SYE_{sid}.tif", dst)
        inputs.append(dst)
    code, _, stderr = _run(*inputs, "--out", tmp_path / "out")
    assert code == 0, stderr
    s = json.loads((tmp_path / "out" / "series.json").read_text())
    assert s["bands"] == ["blue", "green", "red"]
    assert s["coregistration"]["band"] == "red"
    assert not s["coregistration"]["failed_dates"]
