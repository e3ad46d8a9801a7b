"""Bad input, table-driven through the CLI: one line naming what is wrong, its exit code, no
traceback (unless ``--debug``), and nothing lost.

Each case starts from a good setup (a small simulated catalog, a config, the Tartus site file,
an earlier output) and breaks one thing. The exit codes are those of README.md and
docs/operations.md.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from faults import ROOT, demo_catalog, run_cli
from stac_server import free_port

from pipeline.errors import EXIT_CODES

ITEMS = "demo/sentinel-2-l2a"
"""Folder of the Items in a work folder."""
FIRST = "S2A_36SYD_20241202_0_L2A"
"""An Item of the period the cases search."""


@dataclass(frozen=True)
class Case:
    name: str
    breaks: Callable[[Path, dict[str, Any]], None]
    """Breaks one thing: gets the work folder and the config dict (mutable)."""
    command: tuple[str, ...]
    exit_code: int
    message: str
    """Regular expression the single error line (or, for exit 0, stdout) must match."""


def _site(work: Path) -> dict:
    return json.loads((work / "seeds/sites/tartus.geojson").read_text())


def _save_site(work: Path, doc: dict) -> None:
    (work / "seeds/sites/tartus.geojson").write_text(json.dumps(doc))


def _map_coords(coords: Any, fn: Callable[[list[float]], list[float]]) -> Any:
    if coords and isinstance(coords[0], int | float):
        return fn(coords)
    return [_map_coords(c, fn) for c in coords]


def _transform_site(work: Path, fn: Callable[[list[float]], list[float]], aoi_only: bool) -> None:
    doc = _site(work)
    for f in doc["features"]:
        if f["properties"]["role"] == "aoi" or not aoi_only:
            f["geometry"]["coordinates"] = _map_coords(f["geometry"]["coordinates"], fn)
    _save_site(work, doc)


def _set_aoi(work: Path, geometry: dict) -> None:
    doc = _site(work)
    for f in doc["features"]:
        if f["properties"]["role"] == "aoi":
            f["geometry"] = geometry
    _save_site(work, doc)


def _raw_config(text: str) -> Callable[[Path, dict], None]:
    def breaks(work: Path, cfg: dict) -> None:
        cfg["__raw__"] = text

    return breaks


def _rewrite_cog(name: str, change: Callable[[bytes], bytes]) -> Callable[[Path, dict], None]:
    def breaks(work: Path, cfg: dict) -> None:
        path = work / ITEMS / FIRST / name
        path.write_bytes(change(path.read_bytes()))

    return breaks


def _drop_band(work: Path, cfg: dict) -> None:
    path = work / ITEMS / FIRST / f"{FIRST}.json"
    item = json.loads(path.read_text())
    del item["assets"]["swir16"]
    path.write_text(json.dumps(item))


def _all_cloud(work: Path, cfg: dict) -> None:
    import rasterio

    for scl in (work / ITEMS).glob("*/SCL.tif"):
        with rasterio.open(scl) as src:
            profile, shape = src.profile, src.shape
        with rasterio.open(scl, "w", **profile) as dst:
            dst.write(np.full(shape, 9, dtype=np.uint8), 1)  # SCL 9: cloud, high probability


def _unreachable(work: Path, cfg: dict) -> None:
    cfg["catalog"]["url"] = f"http://127.0.0.1:{free_port()}/v1"


def _swap(c: list[float]) -> list[float]:
    return [c[1], c[0]]


WATCH, RUN = ("watch",), ("run", "--site", "tartus")
BOWTIE = {
    "type": "Polygon",
    "coordinates": [
        [[35.86, 34.90], [35.88, 34.92], [35.88, 34.90], [35.86, 34.92], [35.86, 34.90]]
    ],
}
CASES = [
    Case(
        "malformed YAML",
        _raw_config("sites: [tartus\n"),
        WATCH,
        2,
        r"cfg\.yaml line 2: not valid YAML: fix the syntax",
    ),
    Case(
        "unknown key",
        lambda w, c: c["watch"].update(histroy_dates=3),
        WATCH,
        2,
        r"unknown key 'watch\.histroy_dates': remove it or check its spelling",
    ),
    Case(
        "wrong type",
        lambda w, c: c.update(alerts={"min_confidence": "high"}),
        WATCH,
        2,
        r"key 'alerts\.min_confidence': .*number",
    ),
    Case(
        "dates reversed",
        lambda w, c: c.update(dates={"start": "2024-12-31", "end": "2024-12-01"}),
        WATCH,
        2,
        r"dates\.end 2024-12-01 is before dates\.start 2024-12-31: swap them",
    ),
    Case(
        "AOI lat/lon swapped",
        lambda w, c: _transform_site(w, _swap, aoi_only=True),
        WATCH,
        3,
        r"tartus\.geojson: zone 'pier-west' lies outside the AOI",
    ),
    Case(
        "site lat/lon swapped",
        lambda w, c: _transform_site(w, _swap, aoi_only=False),
        WATCH,
        5,
        r"no Items in .* intersect the AOI of site tartus .*is \[lon, lat\]",
    ),
    Case(
        "AOI outside its UTM zone",
        lambda w, c: _transform_site(w, lambda p: [p[0] + 5.0, p[1]], aoi_only=False),
        WATCH,
        3,
        r"AOI centre \(lon 40\.87\d+, lat 34\.91\d+\) is outside UTM zone 36N .*swapped",
    ),
    Case(
        "self-intersecting AOI",
        lambda w, c: _set_aoi(w, BOWTIE),
        WATCH,
        3,
        r"feature 0 \(aoi\): invalid polygon \(Self-intersection",
    ),
    Case(
        "empty AOI",
        lambda w, c: _set_aoi(w, {"type": "Polygon", "coordinates": []}),
        WATCH,
        3,
        r"feature 0 \(aoi\): geometry is empty",
    ),
    Case(
        "AOI outside any tile",
        lambda w, c: _transform_site(w, lambda p: [p[0] - 4.0, p[1] - 4.0], aoi_only=False),
        WATCH,
        5,
        r"no Items in .* intersect the AOI of site tartus",
    ),
    Case(
        "unreachable catalog",
        _unreachable,
        WATCH,
        4,
        r"STAC API http://127\.0\.0\.1:\d+/v1 cannot be searched after 1 retries "
        r"\(.*[Cc]onnection refused",
    ),
    Case(
        "corrupt COG",
        _rewrite_cog("B08.tif", lambda b: b[:500] + os.urandom(len(b) - 500)),
        RUN,
        5,
        rf"a COG cannot be read: Item {FIRST} asset 'nir' \S+B08\.tif: .*re-download",
    ),
    Case(
        "truncated COG",
        _rewrite_cog("B04.tif", lambda b: b[:20000]),
        RUN,
        5,
        rf"a COG cannot be read: Item {FIRST} asset 'red' \S+B04\.tif: .*got \d+ bytes",
    ),
    Case(
        "Item missing a band", _drop_band, RUN, 4, rf"Item {FIRST} has no asset for band 'swir16'"
    ),
    Case(
        "all-cloud period",
        _all_cloud,
        RUN,
        5,
        r"site tartus: every date is mostly cloud or no data",
    ),
    Case(
        "all-cloud period, watch",
        _all_cloud,
        WATCH,
        0,
        r"^tartus: 2 new scenes, no detections, 2 cloudy\n$",
    ),
]


@pytest.fixture(scope="module")
def catalog_src() -> Path:
    return demo_catalog("2024-12-01", "2025-01-02")


def _setup(catalog_src: Path, work: Path) -> dict[str, Any]:
    shutil.copytree(catalog_src, work / "demo")
    shutil.copytree(ROOT / "seeds" / "sites", work / "seeds" / "sites")
    earlier = work / "data" / "tartus" / "cube.zarr"
    earlier.mkdir(parents=True)
    (earlier / "an-earlier-output").write_text("must survive")
    return {
        "kind": "basewatch-config",
        "sites": ["tartus"],
        "catalog": {"url": str(work / "demo" / "catalog.json")},
        "dates": {"start": "2024-12-01", "end": "2024-12-06"},
        "network": {"retries": 1, "backoff_s": 0, "timeout_s": 5},
        "watch": {"adopt": False},
        "data_dir": str(work / "data"),
        "metrics_dir": str(work / "metrics"),
        "reports_dir": str(work / "reports"),
        "seeds_dir": str(work / "seeds"),
    }


def _files(work: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(work)): p.read_bytes()
        for p in sorted((work / "data").rglob("*"))
        if p.is_file() and p.name not in ("items.json", ".watch.lock")
    }


PARAMS = [
    pytest.param(
        c, id=c.name, marks=[pytest.mark.slow] if c.command == RUN or c.exit_code == 0 else []
    )
    for c in CASES
]
"""The cases that load rasters are marked slow."""


@pytest.mark.parametrize("case", PARAMS)
def test_bad_input(case: Case, catalog_src: Path, tmp_path: Path) -> None:
    cfg = _setup(catalog_src, tmp_path)
    case.breaks(tmp_path, cfg)
    raw = cfg.pop("__raw__", None)
    (tmp_path / "cfg.yaml").write_text(raw if raw is not None else json.dumps(cfg))
    before = _files(tmp_path)
    r = run_cli(tmp_path, *case.command, timeout=300)
    assert r.returncode == case.exit_code, r.stdout + r.stderr
    assert "Traceback" not in r.stderr
    if case.exit_code == 0:
        assert re.search(case.message, r.stdout), r.stdout
        return
    lines = [line for line in r.stderr.splitlines() if line.startswith("basewatch:")]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("basewatch: error: "), lines
    assert re.search(case.message, lines[0]), lines[0]
    assert _files(tmp_path) == before  # nothing lost, nothing half-written
    assert [p.name for p in (tmp_path / "data").rglob(".*")] in ([], [".watch.lock"])


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    (tmp_path / "cfg.yaml").write_text("load: {chunk_px: -3}\n")
    r = run_cli(tmp_path, "--debug", "watch", timeout=300)
    assert r.returncode != 0 and "Traceback" in r.stderr and "ConfigError" in r.stderr


def test_exit_codes_are_documented() -> None:
    doc = (ROOT / "docs" / "operations.md").read_text()
    for name, code in EXIT_CODES.items():
        assert f"| {code} | `{name}`" in doc, name
    assert "| 0 |" in doc and "| 70 |" in doc
