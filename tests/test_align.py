"""Tests of pipeline.stages.align and ``basewatch align``: any two rasters, any grids, real
Sentinel-2.

Synthetic rasters sample one analytic world (plane waves in EPSG:32636 metres) at the pixel
centres of each file's own grid, so two files on different origins, sizes and CRS (EPSG:32636
and EPSG:32637, about 3.4 degrees apart in grid north here) have a known relative shift.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from scipy import ndimage

from pipeline.errors import EXIT_CODES, DataError
from pipeline.kernels.coregister.shift import estimate_shift
from pipeline.stages.align import align_files

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PIXEL_M = 10.0
E0, N0 = 766_000.0, 3_922_000.0  # near Khmeimim, EPSG:32636
SHIFT = (1.37, -1.62)  # content of the target relative to the reference, px east / north


def world(east: np.ndarray, north: np.ndarray, seed: int = 0) -> np.ndarray:
    """A textured world (reflectance ~0.1..0.3) at EPSG:32636 coordinates, metres."""
    rng = np.random.default_rng(seed)
    n = 100
    f = np.exp(rng.uniform(np.log(1 / 150), np.log(0.3), n)) / PIXEL_M  # cycles per metre
    theta = rng.uniform(0, np.pi, n)
    amp = f**-0.3 * np.exp(1j * rng.uniform(0, 2 * np.pi, n))
    amp /= np.sqrt(np.sum(np.abs(amp) ** 2) / 2)
    k = np.column_stack([f * np.cos(theta), f * np.sin(theta)])
    points = np.column_stack([east.ravel(), north.ravel()])
    out = np.empty(len(points))
    for i in range(0, len(points), 20_000):
        phase = 2j * np.pi * (points[i : i + 20_000] @ k.T)
        out[i : i + 20_000] = (np.exp(phase) @ amp).real
    return 0.2 + 0.04 * out.reshape(east.shape)


def render_grid(
    crs: str, transform: Affine, shape: tuple[int, int], shift_px: tuple[float, float] = (0, 0)
) -> np.ndarray:
    """The world seen on a grid, its content displaced by ``shift_px`` (east, north) px."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float64)
    x, y = transform @ (cols + 0.5, rows + 0.5)
    if crs != "EPSG:32636":
        x, y = Transformer.from_crs(crs, "EPSG:32636", always_xy=True).transform(x, y)
    image = world(x - shift_px[0] * PIXEL_M, y - shift_px[1] * PIXEL_M)
    return ndimage.gaussian_filter(image, 0.5, mode="nearest")  # the sensor PSF, own frame


def write(path: Path, data: np.ndarray, crs: str | None, transform: Affine, **kw: object) -> Path:
    data = data if data.ndim == 3 else data[None]
    profile = {
        "driver": kw.pop("driver", "GTiff"),
        "height": data.shape[1],
        "width": data.shape[2],
        "count": data.shape[0],
        "dtype": data.dtype,
        **({"crs": crs, "transform": transform} if crs else {}),
        **kw,
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data)
    return path


def _dn(reflectance: np.ndarray) -> np.ndarray:
    return np.round(reflectance * 10_000 + 1000).astype(np.uint16)


@pytest.fixture(scope="module")
def grid_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Reference: EPSG:32636, 288 x 288 px. Target: EPSG:32637, 330 x 320 px, another origin,
    content shifted by SHIFT, two bands (uint16 DN, nodata 0 over a corner block)."""
    folder = tmp_path_factory.mktemp("grids")
    ref_transform = Affine(PIXEL_M, 0, E0, 0, -PIXEL_M, N0)
    reference = write(
        folder / "reference.tif",
        render_grid("EPSG:32636", ref_transform, (288, 288)).astype(np.float32),
        "EPSG:32636",
        ref_transform,
    )
    to37 = Transformer.from_crs("EPSG:32636", "EPSG:32637", always_xy=True)
    cx, cy = to37.transform(E0 + 144 * PIXEL_M, N0 - 144 * PIXEL_M)
    tgt_transform = Affine(
        PIXEL_M, 0, cx - 160 * PIXEL_M + 3.7, 0, -PIXEL_M, cy + 165 * PIXEL_M - 6.2
    )
    band = render_grid("EPSG:32637", tgt_transform, (330, 320), SHIFT)
    dn = np.stack([_dn(band), _dn(0.5 * band)])
    dn[:, :40, :60] = 0  # no data
    target = write(
        folder / "target.tif", dn, "EPSG:32637", tgt_transform, nodata=0, compress="deflate"
    )
    with rasterio.open(target, "r+") as dst:
        dst.set_band_description(1, "nir")
    return reference, target


# --- synthetic rasters on different grids -----------------------------------------------------


def test_different_grids_and_crs(grid_pair: tuple[Path, Path], tmp_path: Path) -> None:
    reference, target = grid_pair
    out = tmp_path / "aligned.tif"
    result = align_files(reference, target, out=out)
    assert json.loads(json.dumps(result)) == result  # JSON-ready
    assert result["regridded"] is True
    assert result["reference_crs"] == "EPSG:32636" and result["target_crs"] == "EPSG:32637"
    assert result["status"] == "shifted" and result["reason"] is None
    assert abs(result["shift_x_px"] - SHIFT[0]) < 0.1 and abs(result["shift_y_px"] - SHIFT[1]) < 0.1
    assert result["shift_x_m"] == pytest.approx(10 * result["shift_x_px"])
    assert result["shift_y_m"] == pytest.approx(10 * result["shift_y_px"])
    assert result["n_tie_points"] is None and result["local"] is None
    assert result["correction"] == "shift" and result["out"] == str(out)
    # the target's no-data corner is never matched: fewer valid pixels than the window has
    assert result["n_valid"] < 288 * 288
    with rasterio.open(reference) as ref_src, rasterio.open(out) as src:
        assert src.crs == ref_src.crs and src.transform == ref_src.transform
        assert src.shape == ref_src.shape and src.count == 2 and src.dtypes[0] == "float32"
        assert src.descriptions[0] == "nir"
        ref = ref_src.read(1).astype(np.float64)
        aligned = src.read(1).astype(np.float64)
    assert np.isnan(aligned).any()  # the no-data corner and beyond the footprint stay no data
    residual = estimate_shift(ref, aligned)
    assert residual.status == "ok"
    assert np.hypot(residual.shift_x_px, residual.shift_y_px) <= 0.1
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_different_grids_local_model(grid_pair: tuple[Path, Path]) -> None:
    reference, target = grid_pair
    result = align_files(reference, target, local=True)
    local = result["local"]
    assert local["status"] == "shifted", local["reason"]
    assert result["n_tie_points"] == 9 and result["n_tie_points_good"] >= 7
    assert local["rmse_px"] < 0.1
    model = local["model"]
    assert abs(model["rotation_deg"]) < 0.02 and abs(model["scale"] - 1) < 2e-4
    assert abs(model["shift_x_px_centre"] - SHIFT[0]) < 0.1
    assert abs(model["shift_y_px_centre"] - SHIFT[1]) < 0.1
    assert result["correction"] == "affine"


def test_jpeg2000_reference_and_same_grid_out(grid_pair: tuple[Path, Path], tmp_path: Path) -> None:
    """A JPEG2000 input, and a same-grid pair corrected by the cubic-spline kernel."""
    reference, _ = grid_pair
    with rasterio.open(reference) as src:
        ref = src.read(1)
        transform = src.transform
    jp2 = write(
        tmp_path / "reference.jp2",
        _dn(ref.astype(np.float64)),
        "EPSG:32636",
        transform,
        driver="JP2OpenJPEG",
        QUALITY="100",
        REVERSIBLE="YES",
    )
    moved = render_grid("EPSG:32636", transform, (288, 288), (-0.64, 2.31))
    target = write(tmp_path / "moved.tif", moved.astype(np.float32), "EPSG:32636", transform)
    out = tmp_path / "out" / "aligned.tif"
    result = align_files(jp2, target, out=out)
    assert result["regridded"] is False
    assert abs(result["shift_x_px"] + 0.64) < 0.05 and abs(result["shift_y_px"] - 2.31) < 0.05
    with rasterio.open(out) as src:
        aligned = src.read(1).astype(np.float64)
    assert np.hypot(*_residual(ref.astype(np.float64), aligned)) <= 0.05


def _residual(ref: np.ndarray, aligned: np.ndarray) -> tuple[float, float]:
    est = estimate_shift(ref, aligned)
    assert est.usable, est
    return est.shift_x_px, est.shift_y_px


def test_unrelated_places_fail_and_write_nothing(
    grid_pair: tuple[Path, Path], tmp_path: Path
) -> None:
    reference, _ = grid_pair
    with rasterio.open(reference) as src:
        transform = src.transform
    elsewhere = Affine(PIXEL_M, 0, E0 + 50_000, 0, -PIXEL_M, N0 - 30_000)
    other = render_grid("EPSG:32636", elsewhere, (288, 288))
    target = write(tmp_path / "other.tif", other.astype(np.float32), "EPSG:32636", transform)
    out = tmp_path / "aligned.tif"
    result = align_files(reference, target, out=out)
    assert result["status"] == "failed" and result["reason"]
    assert result["correction"] is None and result["out"] is None and not out.exists()


def test_small_rasters_get_a_failed_local_verdict_not_an_error(tmp_path: Path) -> None:
    transform = Affine(PIXEL_M, 0, E0, 0, -PIXEL_M, N0)
    a = write(
        tmp_path / "a.tif", render_grid("EPSG:32636", transform, (80, 80)), "EPSG:32636", transform
    )
    moved = render_grid("EPSG:32636", transform, (80, 80), (0.5, 0.25))
    b = write(tmp_path / "b.tif", moved, "EPSG:32636", transform)
    result = align_files(a, b, local=True)
    assert result["status"] == "shifted"
    assert abs(result["shift_x_px"] - 0.5) < 0.1 and abs(result["shift_y_px"] - 0.25) < 0.1
    assert result["local"]["status"] == "failed"
    assert "smaller than one window" in result["local"]["reason"]
    assert result["n_tie_points"] == 0 and result["correction"] == "shift"


def test_errors_are_data_errors(grid_pair: tuple[Path, Path], tmp_path: Path) -> None:
    reference, target = grid_pair
    junk = tmp_path / "junk.tif"
    junk.write_text("not a raster")
    with pytest.raises(DataError, match="cannot read raster"):
        align_files(reference, junk)
    with pytest.raises(DataError, match="cannot read raster"):
        align_files(tmp_path / "missing.tif", target)
    with pytest.raises(DataError, match="band 3 is out of range"):
        align_files(reference, target, band=3)
    far = Affine(PIXEL_M, 0, E0 + 500_000, 0, -PIXEL_M, N0)
    away = write(tmp_path / "away.tif", np.ones((50, 50), np.float32), "EPSG:32636", far)
    with pytest.raises(DataError, match="does not overlap"):
        align_files(reference, away)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "align", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_cli_errors_are_one_line(grid_pair: tuple[Path, Path]) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    reference, target = grid_pair
    r = CliRunner().invoke(app, ["align", str(reference), str(target), "--band", "7"])
    assert r.exit_code == EXIT_CODES["DataError"]
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "band 7 is out of range" in lines[0]
    assert lines[0].startswith("basewatch: error:")


# --- a real Sentinel-2 pair (OSCD Abu Dhabi; skipped when ../shared is absent) ----------------


def _oscd(date_dir: str) -> Path:
    files = sorted((SHARED_DATA / "oscd" / "abudhabi" / date_dir).glob("*_B08.tif"))
    if not files:
        pytest.skip(f"no OSCD Abu Dhabi {date_dir} B08 under {SHARED_DATA}")
    return files[0]


@pytest.fixture(scope="module")
def oscd_native() -> dict:
    """``align --local`` of the real pair as it comes."""
    return align_files(_oscd("imgs_1"), _oscd("imgs_2"), local=True)


@pytest.mark.shared
def test_real_pair_on_different_grids(oscd_native: dict) -> None:
    """2016 vs 2018 (real change); the 2nd date has another pixel size: regridded, then local."""
    result = oscd_native
    assert result["regridded"] is True and result["reference_crs"] == "EPSG:4326"
    assert result["status"] == "shifted" and result["quality"] > 0.5
    assert 0 < np.hypot(result["shift_x_px"], result["shift_y_px"]) < 3
    assert 9 < result["pixel_size_m"][1] < 11  # ~1e-4 degree of latitude
    local = result["local"]
    assert local["status"] == "shifted", local["reason"]
    assert result["n_tie_points_good"] >= 0.6 * result["n_tie_points"]
    assert local["rmse_px"] < 0.3
    assert abs(local["model"]["scale"] - 1) < 5e-4  # the regridding removed the scale difference
    centre = (local["model"]["shift_x_px_centre"], local["model"]["shift_y_px_centre"])
    assert np.hypot(centre[0] - result["shift_x_px"], centre[1] - result["shift_y_px"]) < 0.2


@pytest.mark.shared
def test_cli_real_pair_with_known_offset(oscd_native: dict, tmp_path: Path) -> None:
    """`basewatch align` on imgs_1 B08 vs imgs_2 B08 moved by a known (1.37, -1.62) px through
    its geotransform: the estimate moves by exactly that, and the written output is aligned."""
    reference, target = _oscd("imgs_1"), _oscd("imgs_2")
    with rasterio.open(reference) as src:
        ref_transform = src.transform
        ref = src.read(1).astype(np.float64)
    with rasterio.open(target) as src:
        profile, data = src.profile, src.read()
    t = profile["transform"]
    moved_transform = Affine(
        t.a, t.b, t.c + SHIFT[0] * ref_transform.a, t.d, t.e, t.f + SHIFT[1] * abs(ref_transform.e)
    )
    moved = tmp_path / "moved_B08.tif"
    with rasterio.open(moved, "w", **{**profile, "transform": moved_transform}) as dst:
        dst.write(data)
    base = oscd_native
    out = tmp_path / "aligned.tif"
    r = _cli(str(reference), str(moved), "--out", str(out))
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["status"] == "shifted" and result["out"] == str(out)
    assert abs(result["shift_x_px"] - base["shift_x_px"] - SHIFT[0]) <= 0.1
    assert abs(result["shift_y_px"] - base["shift_y_px"] - SHIFT[1]) <= 0.1
    with rasterio.open(out) as src:
        assert src.transform == ref_transform
        aligned = src.read(1).astype(np.float64)
    r0, c0, h, w = result["global_window"]
    rows, cols = slice(r0, r0 + h), slice(c0, c0 + w)
    assert np.hypot(*_residual(ref[rows, cols], aligned[rows, cols])) <= 0.1
