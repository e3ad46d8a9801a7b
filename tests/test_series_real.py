"""``basewatch series`` on a short series built from a real port scene (sen2ships, Algiers).

Six dates: the real Sentinel-2 L2A scene on the first three; from the fourth on, its annotated
ships are removed (each footprint, grown by a pixel, filled with the median of the ring of
surroundings plus noise of their spread). Each date gets its own sub-pixel shift (<= 0.3 px),
gain (+-3 %) and noise. The bands are written as the browser export they come from (EPSG:3857,
uint16), one folder per date. Nothing is tuned to this scene: the assertions are what any
working run must show.

Skips when ``../shared/data/sen2ships`` is absent (a fresh clone has no ``../shared``).
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from scipy import ndimage
from shapely.geometry import box, shape
from typer.testing import CliRunner

from pipeline.cli import app

PORT = Path(__file__).resolve().parents[2] / "shared" / "data" / "sen2ships" / "algiers"
pytestmark = [pytest.mark.slow, pytest.mark.shared]

DATES = ("20230801", "20230806", "20230811", "20230816", "20230821", "20230826")
REMOVED_FROM = 3
"""The ships are gone from this date on: the change lies between dates 2 and 3."""
BANDS = ("B02", "B03", "B04", "B08", "B11")
SIDE = 320
"""Side (px) of the window cut around the ships."""


def _ship_masks(shape_: tuple[int, int]) -> list[np.ndarray]:
    """One (y, x) bool mask per annotated ship (COCO uncompressed RLE, column-major)."""
    coco = json.loads((PORT / "algiers_coco.json").read_text())
    masks = []
    for ann in coco["annotations"]:
        seg = ann["segmentation"]
        rle = ast.literal_eval(seg) if isinstance(seg, str) else seg
        h, w = rle["size"]
        assert (h, w) == shape_
        flat = np.zeros(h * w, dtype=bool)
        pos = 0
        for i, run in enumerate(rle["counts"]):
            if i % 2:
                flat[pos : pos + run] = True
            pos += run
        masks.append(flat.reshape((w, h)).T)
    return masks


def _window(masks: list[np.ndarray], shape_: tuple[int, int]) -> tuple[int, int]:
    """Top-left (row, col) of the SIDE window centred on the median ship."""
    centres = np.array([np.argwhere(m).mean(axis=0) for m in masks])
    r, c = np.median(centres, axis=0)
    r0 = int(np.clip(r - SIDE / 2, 0, shape_[0] - SIDE))
    c0 = int(np.clip(c - SIDE / 2, 0, shape_[1] - SIDE))
    return r0, c0


def _remove(bands: np.ndarray, ships: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    out = bands.copy()
    for ship in ships:
        inner = ndimage.binary_dilation(ship, iterations=1)
        ring = ndimage.binary_dilation(inner, iterations=3) & ~inner
        for b in range(len(out)):
            vals = bands[b][ring]
            spread = 1.4826 * np.median(np.abs(vals - np.median(vals)))
            out[b][inner] = np.median(vals) + spread * rng.standard_normal(int(inner.sum()))
    return out


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[np.ndarray], dict]:
    """Six band folders ``algiers_<YYYYMMDD>/``, the ships in the window, and its profile."""
    if not PORT.is_dir():
        pytest.skip(f"shared sen2ships data not found at {PORT}")
    with rasterio.open(PORT / "B02.tif") as src:
        full_shape = src.shape
    masks = _ship_masks(full_shape)
    r0, c0 = _window(masks, full_shape)
    win = Window(c0, r0, SIDE, SIDE)
    ships = [m[r0 : r0 + SIDE, c0 : c0 + SIDE] for m in masks]
    ships = [s for s, m in zip(ships, masks, strict=True) if s.sum() == m.sum()]  # whole ones
    stack = []
    for b in BANDS:
        with rasterio.open(PORT / f"{b}.tif") as src:
            stack.append(src.read(1, window=win).astype(np.float32))
            profile = {**src.profile, "width": SIDE, "height": SIDE}
            profile["transform"] = src.window_transform(win)
    real = np.stack(stack)
    rng = np.random.default_rng(7)
    gone = _remove(real, ships, rng)
    root = tmp_path_factory.mktemp("algiers")
    for t, day in enumerate(DATES):
        scene = real if t < REMOVED_FROM else gone
        dy, dx = rng.uniform(-0.3, 0.3, 2)
        gain = 1 + rng.uniform(-0.03, 0.03)
        folder = root / f"algiers_{day}"
        folder.mkdir()
        for b, band in zip(BANDS, scene, strict=True):
            moved = ndimage.shift(band, (dy, dx), order=3, mode="nearest") * gain
            moved += 0.005 * float(np.median(band)) * rng.standard_normal(moved.shape)
            dn = np.clip(np.round(moved), 1, 65535).astype(np.uint16)
            with rasterio.open(folder / f"{b}.tif", "w", **profile) as dst:
                dst.write(dn, 1)
    return root, ships, profile


def test_series_on_a_real_port(series: tuple[Path, list[np.ndarray], dict], tmp_path: Path) -> None:
    root, ships, profile = series
    out = tmp_path / "out"
    inputs = sorted(root.iterdir())
    r = CliRunner().invoke(app, ["series", *map(str, inputs), "--out", str(out)])
    assert r.exit_code == 0, r.stderr
    summary = json.loads((out / "series.json").read_text())
    # a Web Mercator export at 36.7 N is not in ground metres: put on UTM zone 31 (Algiers)
    assert summary["grid"]["source"] == "UTM of the first input"
    assert summary["grid"]["crs"] == "EPSG:32631"
    assert 7.5 <= summary["grid"]["pixel_size_m"][0] <= 8.5  # 10 Mercator units at 36.7 N
    assert summary["dates"] == [f"{d[:4]}-{d[4:6]}-{d[6:]}" for d in DATES]
    assert not summary["coregistration"]["failed_dates"]
    feats = json.loads((out / "detections.geojson").read_text())["features"]
    change = (summary["dates"][REMOVED_FROM - 1], summary["dates"][REMOVED_FROM])
    # ship footprints in lon/lat, to match the detections
    from pyproj import Transformer
    from rasterio.features import shapes

    to_lonlat = Transformer.from_crs(profile["crs"], 4326, always_xy=True)
    footprints = []
    for ship in ships:
        geoms = [
            shape(g)
            for g, v in shapes(ship.astype(np.uint8), transform=profile["transform"])
            if v == 1
        ]
        minx, miny, maxx, maxy = box(*geoms[0].bounds).buffer(10).bounds
        (x0, x1), (y0, y1) = to_lonlat.transform([minx, maxx], [miny, maxy])
        footprints.append(box(x0, y0, x1, y1))
    on_ship = [f for f in feats if any(shape(f["geometry"]).intersects(s) for s in footprints)]
    found = [
        s
        for s in footprints
        if any(
            shape(f["geometry"]).intersects(s)
            and f["properties"]["kind"] == "removed"
            and (f["properties"]["date_before_latest"], f["properties"]["date_after"]) == change
            for f in feats
        )
    ]
    # every ship left at one known date: what is found on them is mostly that departure
    assert len(found) >= 1
    right = [
        f
        for f in on_ship
        if f["properties"]["kind"] == "removed" and f["properties"]["date_after"] == change[1]
    ]
    print(
        f"algiers: {len(ships)} ships removed, {len(found)} found removed in the right interval;"
        f" {len(feats)} detections, {len(on_ship)} on a ship, {len(right)} of them removed at"
        " the right date"
    )
    assert len(right) >= len(on_ship) / 2
