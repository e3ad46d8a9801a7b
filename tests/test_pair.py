"""``basewatch pair`` on small synthetic pairs of known truth: the three input kinds, L1C, errors.

The scene is a patchwork of materials drawn at 2 m and area-averaged to 10 m. The after date is
displaced by a known sub-pixel shift, has a gain drift, and lacks one planted object (a removal);
the detector must find that object and nothing much else.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
from affine import Affine
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.errors import EXIT_CODES, DataError
from pipeline.evaluation.pair import cva_otsu, pixel_scores
from pipeline.io.rasters import describe_input
from pipeline.stages.pair import prepare_pair

N = 96
"""Grid side, 10 m pixels."""
SUPER = 5
"""Sub-pixels per pixel of the drawing."""
ORIGIN = (700000.0, 3920000.0)
CRS = "EPSG:32636"
TRANSFORM_10 = Affine(10.0, 0.0, ORIGIN[0], 0.0, -10.0, ORIGIN[1])
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
OBJECT = np.array((0.50, 0.52, 0.53, 0.55, 0.45, 0.36), dtype=np.float32)  # a white aircraft
OBJ_ROWS, OBJ_COLS = slice(40 * SUPER, 46 * SUPER), slice(50 * SUPER, 54 * SUPER)
"""The planted object: 60 m x 40 m, pixels rows 40-45, cols 50-53."""
SHIFT_SUB = 2
"""The after date's content lies this many sub-pixels east of the before date's..."""
SHIFT_X_PX = SHIFT_SUB / SUPER
"""... i.e. this many pixels."""
CLOUD = (slice(5, 25), slice(5, 30))
"""Where the after date of the STAC case is cloudy (SCL 9)."""


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


def _render(world: np.ndarray, roll: tuple[int, int], gain: float, seed: int) -> np.ndarray:
    """10 m reflectance of ``world`` rolled by ``roll`` sub-pixels (rows, cols), gain, noise."""
    moved = np.roll(world, roll, axis=(1, 2))
    b, n = moved.shape[0], N
    refl = moved.reshape(b, n, SUPER, n, SUPER).mean(axis=(2, 4)) * gain
    rng = np.random.default_rng(seed)
    return (refl + 0.003 * rng.standard_normal(refl.shape)).astype(np.float32)


@pytest.fixture(scope="module")
def dates() -> tuple[np.ndarray, np.ndarray]:
    """Before (object present) and after (object gone, shifted east, brighter) reflectance."""
    world = _world()
    before = world.copy()
    before[:, OBJ_ROWS, OBJ_COLS] = OBJECT[:, None, None]
    after = _render(world, (0, SHIFT_SUB), 1.04, seed=2)
    return _render(before, (0, 0), 1.0, seed=1), after


def _object_mask() -> np.ndarray:
    m = np.zeros((N, N), dtype=bool)
    m[
        OBJ_ROWS.start // SUPER : OBJ_ROWS.stop // SUPER,
        OBJ_COLS.start // SUPER : OBJ_COLS.stop // SUPER,
    ] = True
    return m


def _write(path: Path, data: np.ndarray, transform: Affine, descriptions=None, **kw) -> None:
    data = data if data.ndim == 3 else data[None]
    profile = dict(
        driver="GTiff",
        count=data.shape[0],
        height=data.shape[1],
        width=data.shape[2],
        dtype=data.dtype.name,
        crs=CRS,
        transform=transform,
        **kw,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
        for i, d in enumerate(descriptions or []):
            dst.set_band_description(i + 1, d)


def _dn(refl: np.ndarray, offset: int = 0) -> np.ndarray:
    return np.clip(np.round(refl * 10000 + offset), 1, 65535).astype(np.uint16)


def _band_folder(folder: Path, refl: np.ndarray, stem: str, offset: int = 0) -> Path:
    """One file per band, named like OSCD / SAFE; B11, B12 at 20 m."""
    folder.mkdir(parents=True)
    for i, sid in enumerate(IDS):
        band = refl[i]
        transform = TRANSFORM_10
        if sid in ("B11", "B12"):
            band = band.reshape(N // 2, 2, N // 2, 2).mean(axis=(1, 3))
            transform = Affine(20.0, 0.0, ORIGIN[0], 0.0, -20.0, ORIGIN[1])
        _write(folder / f"{stem}_{sid}.tif", _dn(band, offset), transform)
    (folder / f"{stem}_B8A.tif").write_bytes(b"")  # other bands are ignored, even broken ones
    return folder


def _stac_item(folder: Path, refl: np.ndarray, day: str, scl: np.ndarray | None) -> Path:
    """An Earth Search v1-like L2A Item (+1000 DN offset, raster:bands) with local assets."""
    folder.mkdir(parents=True)
    from datetime import UTC, datetime

    when = datetime.fromisoformat(day).replace(tzinfo=UTC)
    item = pystac.Item(f"S2B_36SYE_{day.replace('-', '')}_0_L2A", None, None, when, {})
    item.properties["s2:processing_baseline"] = "05.10"
    item.properties["earthsearch:boa_offset_applied"] = False
    names = ("blue", "green", "red", "nir", "swir16", "swir22")
    for i, (key, sid) in enumerate(zip(names, IDS, strict=True)):
        _write(folder / f"{sid}.tif", _dn(refl[i], 1000), TRANSFORM_10)
        asset = pystac.Asset(f"./{sid}.tif", roles=["data"])
        asset.extra_fields["raster:bands"] = [{"scale": 0.0001, "offset": -0.1, "nodata": 0}]
        item.add_asset(key, asset)
    if scl is not None:
        transform = Affine(20.0, 0.0, ORIGIN[0], 0.0, -20.0, ORIGIN[1])
        _write(folder / "SCL.tif", scl.astype(np.uint8), transform)
        item.add_asset("scl", pystac.Asset("./SCL.tif", roles=["data"]))
    path = folder / f"{item.id}.json"
    path.write_text(json.dumps(item.to_dict(include_self_link=False)))
    return path


def _run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(app, ["pair", *map(str, args)])
    return r.exit_code, r.stdout, r.stderr if r.stderr_bytes is not None else ""


def _outputs(out: Path) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    with rasterio.open(out / "change_mask.tif") as src:
        mask = src.read(1)
        assert src.crs == rasterio.crs.CRS.from_string(CRS) and src.transform == TRANSFORM_10
        assert src.nodata == 255 and src.dtypes[0] == "uint8"
    with rasterio.open(out / "change_score.tif") as src:
        score = src.read(1)
        assert src.dtypes[0] == "float32" and src.shape == (N, N)
    summary = json.loads((out / "pair.json").read_text())
    dets = json.loads((out / "detections.geojson").read_text())
    return mask, score, summary, dets


def _check_found(mask: np.ndarray, dets: dict, *, scored: np.ndarray | None = None) -> None:
    """The removed object is in the mask and the detections; little else is."""
    obj = _object_mask()
    scored = np.ones_like(obj) if scored is None else scored
    assert set(np.unique(mask)) <= {0, 1, 255}
    assert (mask[obj] == 1).mean() >= 0.8
    far = ~np.pad(obj, 0) & scored
    far[35:52, 45:60] = False  # the object's blurred fringe
    assert (mask[far] == 1).mean() < 0.01
    removed = [f for f in dets["features"] if f["properties"]["kind"] == "removed"]
    assert removed, "the removal is not among the detections"
    big = max(removed, key=lambda f: f["properties"]["n_pixels"])
    # the object's centre, in lon/lat, lies in the detected polygon
    from pyproj import Transformer
    from shapely.geometry import Point, shape

    x, y = TRANSFORM_10 @ (52.0, 43.0)
    lon, lat = Transformer.from_crs(CRS, 4326, always_xy=True).transform(x, y)
    assert shape(big["geometry"]).buffer(1e-5).contains(Point(lon, lat))
    assert 1500 <= big["properties"]["area_m2"] <= 6000


def test_band_folders_level_1c(tmp_path: Path, dates: tuple[np.ndarray, np.ndarray]) -> None:
    before, after = dates
    b = _band_folder(tmp_path / "b", before, "S2A_MSIL1C_20241101T083000_N0511_T36SYE")
    a = _band_folder(tmp_path / "a", after, "S2A_MSIL1C_20241111T083000_N0511_T36SYE")
    code, stdout, _ = _run("--before", b, "--after", a, "--out", tmp_path / "out")
    assert code == 0, stdout
    assert "pair (objects)" in stdout and "removed" in stdout
    mask, score, summary, dets = _outputs(tmp_path / "out")
    assert summary["before"]["level"] == "L1C" and summary["before"]["scl"] is False
    assert summary["before"]["date"] == "2024-11-01" and summary["after"]["date"] == "2024-11-11"
    assert summary["before"]["harmonisation"] == "DN / 10000, no offset"
    assert summary["bands"] == ["blue", "green", "red", "nir", "swir16", "swir22"]
    assert summary["after_regridded"] is False
    reg = summary["coregistration"]
    assert abs(reg["shift_x_px"] - SHIFT_X_PX) < 0.1 and abs(reg["shift_y_px"]) < 0.1
    assert summary["detect"]["gain"][0] == pytest.approx(1.04, abs=0.02)
    # no SCL: every pixel with data is scored (the co-registration trims the edges only)
    assert (mask != 255).mean() > 0.9
    assert np.isfinite(score[mask != 255]).all() and np.isnan(score[mask == 255]).all()
    _check_found(mask, dets)
    # the output folder is reused in place: a second run replaces the files
    code, _, _ = _run("--before", b, "--after", a, "--out", tmp_path / "out", "--mode", "area")
    assert code == 0
    assert json.loads((tmp_path / "out" / "pair.json").read_text())["mode"] == "area"
    assert not list((tmp_path / "out").glob(".*"))  # no temporary files left


def test_multiband_after_on_another_grid(
    tmp_path: Path, dates: tuple[np.ndarray, np.ndarray]
) -> None:
    before, _ = dates
    _write(tmp_path / "before.tif", _dn(before), TRANSFORM_10, descriptions=IDS)
    # the after file: float reflectance on a grid offset by 0.4 px in x and y, and cropped
    world = _world()
    offset = TRANSFORM_10 @ Affine.translation(SHIFT_X_PX, SHIFT_X_PX)
    # pixel (r, c) of that grid starts SHIFT_SUB sub-pixels right of and below the before
    # grid's; the content moved SHIFT_SUB east: net, the world moves up by SHIFT_SUB
    after = _render(world, (-SHIFT_SUB, 0), 1.04, seed=2)
    names = ["blue", "green", "red", "nir", "swir16", "swir22"]
    _write(tmp_path / "after.tif", after[:, :-4, :-4], offset, descriptions=names)
    code, stdout, _ = _run(
        "--before",
        tmp_path / "before.tif",
        "--after",
        tmp_path / "after.tif",
        "--out",
        tmp_path / "out",
    )
    assert code == 0, stdout
    mask, _, summary, dets = _outputs(tmp_path / "out")
    assert summary["after_regridded"] is True
    assert summary["before"]["kind"] == summary["after"]["kind"] == "multiband"
    assert summary["after"]["harmonisation"] == "float values taken as reflectance"
    assert (mask[-3:, :] == 255).all()  # beyond the after file's footprint: not scored
    _check_found(mask, dets, scored=mask != 255)


def test_multiband_band_order(tmp_path: Path, dates: tuple[np.ndarray, np.ndarray]) -> None:
    before, after = dates
    _write(tmp_path / "b.tif", _dn(before[:4]), TRANSFORM_10)
    _write(tmp_path / "a.tif", _dn(after[:4]), TRANSFORM_10)
    code, _, stderr = _run(
        "--before", tmp_path / "b.tif", "--after", tmp_path / "a.tif", "--out", tmp_path / "o1"
    )
    assert code == EXIT_CODES["DataError"]
    assert "--band-order" in stderr and "b.tif" in stderr
    code, stdout, _ = _run(
        "--before",
        tmp_path / "b.tif",
        "--after",
        tmp_path / "a.tif",
        "--out",
        tmp_path / "o2",
        "--band-order",
        "B02,B03,B04,B08",
    )
    assert code == 0, stdout
    mask, _, summary, dets = _outputs(tmp_path / "o2")
    assert summary["bands"] == ["blue", "green", "red", "nir"]
    _check_found(mask, dets)


def test_stac_items_level_2a_with_scl(tmp_path: Path, dates: tuple[np.ndarray, np.ndarray]) -> None:
    before, after = dates
    after = after.copy()
    after[:, CLOUD[0], CLOUD[1]] = 0.55  # a cloud the SCL flags
    scl = np.full((N // 2, N // 2), 5, dtype=np.uint8)  # 5 = not vegetated
    scl[CLOUD[0].start // 2 : CLOUD[0].stop // 2, CLOUD[1].start // 2 : CLOUD[1].stop // 2] = 9
    b = _stac_item(tmp_path / "b", before, "2024-11-01", np.full_like(scl, 5))
    a = _stac_item(tmp_path / "a", after, "2024-11-11", scl)
    spec = describe_input(a)
    assert spec.kind == "stac" and spec.level == "L2A" and spec.scl is not None
    assert spec.bands["red"].scale == pytest.approx(1e-4)
    assert spec.bands["red"].offset == pytest.approx(-0.1)
    code, stdout, _ = _run("--before", b, "--after", a, "--out", tmp_path / "out")
    assert code == 0, stdout
    mask, _, summary, dets = _outputs(tmp_path / "out")
    assert summary["after"]["scl"] is True and "raster:bands" in summary["after"]["harmonisation"]
    assert summary["detect"]["offset"][0] == pytest.approx(0.0, abs=0.02)  # offsets harmonised
    cloud = np.zeros((N, N), dtype=bool)
    cloud[CLOUD] = True
    assert (mask[cloud] == 255).all()  # the cloud (dilated) is not scored, not called change
    _check_found(mask, dets, scored=mask != 255)


def test_errors_are_one_line_data_errors(
    tmp_path: Path, dates: tuple[np.ndarray, np.ndarray]
) -> None:
    before, _ = dates
    b = _band_folder(tmp_path / "b", before, "T36SYE_20241101")
    (tmp_path / "empty").mkdir()
    cases = {
        "missing": (tmp_path / "nowhere", "does not exist"),
        "empty": (tmp_path / "empty", "holds no band"),
    }
    for path, words in cases.values():
        code, _, stderr = _run("--before", b, "--after", path, "--out", tmp_path / "o")
        assert code == EXIT_CODES["DataError"], stderr
        lines = [ln for ln in stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(path) in lines[0] and words in lines[0]
    code, _, stderr = _run("--before", b, "--after", b, "--out", tmp_path / "o", "--mode", "x")
    assert code == EXIT_CODES["DataError"] and "objects, area" in stderr
    # a STAC Item with a remote href: refused, the Item named
    item = _stac_item(tmp_path / "remote", before, "2024-11-01", None)
    doc = json.loads(item.read_text())
    doc["assets"]["red"]["href"] = "https://example.com/B04.tif"
    item.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="not a local file"):
        describe_input(item)
    # two files for one band
    (b / "other_B03.tif").write_bytes((b / "T36SYE_20241101_B03.tif").read_bytes())
    with pytest.raises(DataError, match="2 files for band green"):
        describe_input(b)


def test_cva_baseline_and_pixel_scores(
    tmp_path: Path, dates: tuple[np.ndarray, np.ndarray]
) -> None:
    before, after = dates
    b = _band_folder(tmp_path / "b", before, "T36SYE_20241101")
    a = _band_folder(tmp_path / "a", after, "T36SYE_20241111")
    prep = prepare_pair(b, a, shift=(SHIFT_X_PX, 0.0))
    assert prep.shift.shift_x_px == SHIFT_X_PX and not prep.regridded
    magnitude, change = cva_otsu(prep)
    assert magnitude.shape == (N, N) and change.dtype == bool
    obj = _object_mask()
    assert change[obj].mean() > 0.8  # a bright object is the largest change vector
    s = pixel_scores(change, obj)
    assert s["tp"] == int((change & obj).sum()) and 0 < s["f1"] <= 1
    assert pixel_scores(obj, obj) == {
        "precision": 1.0,
        "recall": 1.0,
        "f1": 1.0,
        "tp": 24,
        "fp": 0,
        "fn": 0,
    }
    empty = pixel_scores(np.zeros_like(obj), obj)
    assert empty["f1"] == 0.0 and empty["fn"] == 24


def test_real_stac_item_with_remote_hrefs_is_refused(shared_stac_items: Path) -> None:
    item = shared_stac_items / "earth-search-v1" / "S2B_39QTA_20230623_0_L2A.json"
    with pytest.raises(DataError, match="not a local file") as err:
        describe_input(item)
    assert str(item) in str(err.value)


WATER = np.array((0.06, 0.05, 0.03, 0.015, 0.008, 0.005), dtype=np.float32)
SHIP = np.array((0.13, 0.14, 0.15, 0.17, 0.16, 0.12), dtype=np.float32)  # a grey hull


def _harbour(ships: bool, seed: int) -> np.ndarray:
    """(6, N, N) a quay (concrete, west) on a basin (east) with hulls moored along the quay
    edge and one out on the water; no object is brighter than the quay."""
    rng = np.random.default_rng(seed)
    world = np.empty((6, N, N), dtype=np.float32)
    world[:] = WATER[:, None, None]
    world[:, :, :40] = MATERIALS[0][:, None, None]
    if ships:
        for r0 in (10, 40, 70):
            world[:, r0 : r0 + 14, 40:44] = SHIP[:, None, None]
        world[:, 30:34, 70:82] = SHIP[:, None, None]
    world *= 1 + 0.01 * rng.standard_normal((1, N, N)).astype(np.float32)
    return (world + 0.002 * rng.standard_normal(world.shape)).astype(np.float32)


def test_ships_leaving_a_quay_are_removed_whole_not_split(tmp_path: Path) -> None:
    """Each hull that left is one ``removed`` object: the region is signed as a whole against
    the two surfaces around it (quay and water), not pixel by pixel (a hull pixel beside the
    quay is closer to concrete than the water that replaced it)."""
    _band_folder(tmp_path / "S2_20240101", _harbour(True, 1), "T36SYD_20240101")
    _band_folder(tmp_path / "S2_20240111", _harbour(False, 2), "T36SYD_20240111")
    code, _, err = _run(
        "--before",
        str(tmp_path / "S2_20240101"),
        "--after",
        str(tmp_path / "S2_20240111"),
        "--out",
        str(tmp_path / "out"),
    )
    assert code == 0, err
    _, _, _, dets = _outputs(tmp_path / "out")
    kinds = [f["properties"]["kind"] for f in dets["features"]]
    assert kinds.count("removed") == 4 and "appeared" not in kinds, kinds


DOCK = np.array((0.12, 0.135, 0.145, 0.16, 0.17, 0.13), dtype=np.float32)
"""Dock concrete, as bright as the grey hull in every band but one."""


def _docks(hull_west: bool, hull_east: bool, seed: int) -> np.ndarray:
    """(6, N, N) two dock basins cut into concrete of the hull's brightness: each basin holds
    a hull filling it wall to wall, or water."""
    rng = np.random.default_rng(seed)
    world = np.empty((6, N, N), dtype=np.float32)
    world[:] = DOCK[:, None, None]
    for (rows, cols), hull in (
        ((slice(20, 34), slice(15, 45)), hull_west),
        ((slice(60, 74), slice(50, 80)), hull_east),
    ):
        world[:, rows, cols] = (SHIP if hull else WATER)[:, None, None]
    world *= 1 + 0.01 * rng.standard_normal((1, N, N)).astype(np.float32)
    return (world + 0.002 * rng.standard_normal(world.shape)).astype(np.float32)


@pytest.mark.parametrize("water_rule", [True, False])
def test_a_hull_leaving_a_dock_is_removed_where_water_shows(
    tmp_path: Path, water_rule: bool
) -> None:
    """A hull filling its dock is as bright as the concrete around it, so the surroundings
    explain the before view (the hull) and not the water after: only the water rule (the
    view that is open water is the empty one) signs the west dock ``removed`` and the east
    dock, where a hull came in, ``appeared``; without it both come out reversed."""
    _band_folder(tmp_path / "S2_20240101", _docks(True, False, 1), "T36SYD_20240101")
    _band_folder(tmp_path / "S2_20240111", _docks(False, True, 2), "T36SYD_20240111")
    cfg = tmp_path / "params.yaml"
    cfg.write_text("detect:\n  sign_water_ndwi: " + ("0.0" if water_rule else "null") + "\n")
    r = CliRunner().invoke(
        app,
        [
            "--config",
            str(cfg),
            "pair",
            "--before",
            str(tmp_path / "S2_20240101"),
            "--after",
            str(tmp_path / "S2_20240111"),
            "--out",
            str(tmp_path / "out"),
        ],
    )
    assert r.exit_code == 0, r.stderr
    _, _, _, dets = _outputs(tmp_path / "out")
    west = [f["properties"]["kind"] for f in dets["features"] if _centre_col(f) < 48]
    east = [f["properties"]["kind"] for f in dets["features"] if _centre_col(f) >= 48]
    if water_rule:
        assert west == ["removed"] and east == ["appeared"], (west, east)
    else:  # the failure the rule fixes, shown so this test would catch losing the rule
        assert "appeared" in west and "removed" in east, (west, east)


def _centre_col(feature: dict) -> float:
    """Column (px) of a detection's centroid on the test grid."""
    from pyproj import Transformer
    from shapely.geometry import shape

    lon, lat = shape(feature["geometry"]).centroid.coords[0]
    x, _ = Transformer.from_crs(4326, CRS, always_xy=True).transform(lon, lat)
    return (x - ORIGIN[0]) / 10.0
