"""`basewatch tile`: the out-of-core detect stage from the command line, on the demo catalog.

The real generator (a Khmeimim demo catalog, cached by :func:`faults.demo_catalog`), the real
CLI in a subprocess, real COGs read lazily window by window. The tile method differs from the
site detector (no co-registration, no calibrated confidence), so its objects are compared with
those of `basewatch detect` by location, not byte for byte.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from faults import ROOT, demo_catalog, run_cli
from shapely.geometry import Point, shape

from pipeline.config import DetectConfig
from pipeline.errors import EXIT_CODES
from pipeline.stages.tile import series_chunk_px

SITE = "khmeimim"
START, END = "2024-12-01", "2025-01-02"
NEAR_M = 30.0
"""A tile object "finds" a detect object when their centroids are this close (3 pixels)."""


def _config(work: Path) -> Path:
    cfg = {
        "kind": "basewatch-config",
        "sites": [SITE],
        "catalog": {"url": str(work / "demo" / "catalog.json")},
        "dates": {"start": START, "end": END},
        "data_dir": str(work / "data"),
        "metrics_dir": str(work / "metrics"),
        "reports_dir": str(work / "reports"),
        "seeds_dir": str(ROOT / "seeds"),
    }
    path = work / "cfg.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _ok(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    return r.stdout


def _one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("basewatch: error: "), lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Search, then `tile --method multidate`, then load, coregister and detect, once."""
    work = tmp_path_factory.mktemp("tile_cli")
    shutil.copytree(demo_catalog(START, END, site=SITE), work / "demo")
    _config(work)
    out = {"work": work}
    _ok(run_cli(work, "search", "--site", SITE))
    out["tile_stdout"] = _ok(run_cli(work, "tile", "--site", SITE, "--method", "multidate"))
    for stage in ("load", "coregister", "detect"):
        _ok(run_cli(work, stage, "--site", SITE))
    data = work / "data" / SITE
    out["tile"] = json.loads((data / "tile_detections.geojson").read_text())
    out["summary"] = json.loads((data / "tile.json").read_text())
    out["detect"] = json.loads((data / "detections.geojson").read_text())
    return out


def _centroids_m(features: list[dict]) -> np.ndarray:
    """(n, 2) centroids in metres east and north of 35.4 N (local, enough for 30 m)."""
    lonlat = np.array(
        [[f["properties"]["centroid_lon"], f["properties"]["centroid_lat"]] for f in features]
    ).reshape(-1, 2)
    return lonlat * np.array([111_320.0 * np.cos(np.radians(35.4)), 110_574.0])


@pytest.mark.slow
def test_tile_writes_signed_objects_as_geojson(run: dict) -> None:
    fc, summary = run["tile"], run["summary"]
    assert fc["type"] == "FeatureCollection"
    assert fc["simulated"] is True
    assert summary["method"] == "multidate" and "multidate" in fc["name"]
    features = fc["features"]
    assert len(features) > 0
    dates = summary["dates"]
    assert len(dates) >= 4 and dates == sorted(dates)
    for feat in features:
        assert feat["type"] == "Feature"
        assert feat["geometry"]["type"] in ("Polygon", "MultiPolygon")
        props = feat["properties"]
        assert props["kind"] in ("removed", "appeared")
        assert props["date_before"] < props["date_after"]
        assert props["date_before"] in dates and props["date_after"] in dates
        assert props["area_m2"] >= 300  # detect.min_area_m2
        assert 35.90 < props["centroid_lon"] < 36.00 and 35.37 < props["centroid_lat"] < 35.43
        geom = shape(feat["geometry"])
        assert geom.is_valid and geom.area > 0
        assert geom.distance(Point(props["centroid_lon"], props["centroid_lat"])) < 1e-3
    kinds = [f["properties"]["kind"] for f in features]
    assert summary["n_objects"] == len(features)
    assert summary["n_removed"] == kinds.count("removed") > 0
    assert summary["n_appeared"] == kinds.count("appeared")
    assert len(fc["pairs"]) == len(dates) - 1
    assert set(summary["seconds"]) >= {"load", "sample", "stream", "objects"}
    # the chunk side the memory budget gives this grid and these dates on this machine's threads
    ny, nx = summary["grid_px"]
    tasks = os.cpu_count() or 1
    want = series_chunk_px((ny, nx), len(dates), len(summary["bands"]), DetectConfig(), tasks)
    assert summary["chunk_px"] == want
    assert f"{SITE}: tile: {len(features)} objects" in run["tile_stdout"]


@pytest.mark.slow
def test_tile_finds_what_detect_finds(run: dict) -> None:
    detect, tile = run["detect"]["features"], run["tile"]["features"]
    assert len(detect) >= 10, "the site detector should find the demo's departures"
    d, t = _centroids_m(detect), _centroids_m(tile)
    dist = np.linalg.norm(d[:, None, :] - t[None, :, :], axis=2)
    found = dist.min(axis=1) <= NEAR_M
    # The tile method reads the dates without co-registration (more false alarms at edges), but
    # most objects the site detector reports must be among its own, mostly of the same sign.
    assert found.sum() >= 0.4 * len(detect), f"{found.sum()} of {len(detect)} found"
    nearest = dist.argmin(axis=1)
    same = [
        detect[i]["properties"]["kind"] == tile[nearest[i]]["properties"]["kind"]
        for i in np.flatnonzero(found)
    ]
    assert sum(same) >= 0.7 * len(same)


def test_missing_items_is_one_line_and_writes_nothing(tmp_path: Path) -> None:
    _config(tmp_path)
    data = tmp_path / "data" / SITE
    data.mkdir(parents=True)
    r = run_cli(tmp_path, "tile", "--site", SITE)
    assert r.returncode == EXIT_CODES["StageInputError"], r.stdout + r.stderr
    line = _one_error_line(r)
    assert f"{data / 'items.json'} is missing" in line and "basewatch search" in line
    assert list(data.iterdir()) == []  # no output, no temporary file


def test_bad_method_is_one_line(tmp_path: Path) -> None:
    _config(tmp_path)
    r = run_cli(tmp_path, "tile", "--site", SITE, "--method", "bogus")
    assert r.returncode == EXIT_CODES["ConfigError"], r.stdout + r.stderr
    line = _one_error_line(r)
    assert "'bogus'" in line and "pairwise" in line and "multidate" in line
    assert not (tmp_path / "data").exists()


@pytest.mark.slow
def test_unreadable_cog_is_one_line_and_keeps_earlier_outputs(tmp_path: Path) -> None:
    shutil.copytree(demo_catalog(START, END, site=SITE), tmp_path / "demo")
    _config(tmp_path)
    _ok(run_cli(tmp_path, "search", "--site", SITE))
    first = "S2A_36SYE_20241202_0_L2A"
    cog = tmp_path / "demo" / "sentinel-2-l2a" / first / "B04.tif"
    cog.write_bytes(cog.read_bytes()[:20000])
    data = tmp_path / "data" / SITE
    earlier = data / "tile_detections.geojson"
    earlier.write_text("an earlier output")
    r = run_cli(tmp_path, "tile", "--site", SITE)
    assert r.returncode == EXIT_CODES["DataError"], r.stdout + r.stderr
    line = _one_error_line(r)
    assert f"a COG cannot be read: Item {first} asset 'red'" in line
    assert earlier.read_text() == "an earlier output"
    assert sorted(p.name for p in data.iterdir()) == ["items.json", "tile_detections.geojson"]
