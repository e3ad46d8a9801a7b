"""End to end: generate the demo catalog of one site, run every stage, check the evaluation.

This is the integration test of issue 2: the real generator, real COGs, the real stages and the
real evaluation, on Tartus over the demo's whole season (the multi-date test needs the dates
around each change; a few weeks around the withdrawal leave most changes at a series end).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from pipeline.config import Config
from pipeline.evaluation.stage import run_site
from pipeline.paths import site_paths
from pipeline.simulate.build import run_demo_catalog

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, dict]:
    tmp = tmp_path_factory.mktemp("e2e")
    cfg = Config.model_validate(
        {
            "sites": ["tartus"],
            "catalog": {"url": str(tmp / "demo" / "catalog.json")},
            "dates": {"start": dt.date(2024, 11, 1), "end": dt.date(2025, 1, 31)},
            "demo": {"out": str(tmp / "demo")},
            "data_dir": str(tmp / "data"),
            "reports_dir": str(tmp / "reports"),
            "metrics_dir": str(tmp / "metrics"),
            "seeds_dir": str(ROOT / "seeds"),
        }
    )
    run_demo_catalog(cfg)
    metrics = run_site(cfg, "tartus")
    return cfg, metrics


def test_outputs_written(demo_run: tuple[Config, dict]) -> None:
    cfg, _ = demo_run
    p = site_paths(cfg, "tartus")
    for f in (p.items, p.cube, p.aligned, p.coreg, p.detections, p.metrics, p.report_html):
        assert f.exists(), f
    fc = json.loads(p.detections.read_text())
    assert fc["type"] == "FeatureCollection"
    for feat in fc["features"]:
        props = feat["properties"]
        assert props["kind"] in ("removed", "appeared")
        assert props["date_before"] < props["date_after"]
        assert props["area_m2"] > 0
        lon, lat = props["centroid_lon"], props["centroid_lat"]
        assert 35.8 < lon < 35.95 and 34.85 < lat < 34.95


def test_evaluation_figures(demo_run: tuple[Config, dict]) -> None:
    _, m = demo_run
    assert m["n_detections"] > 0
    assert m["object_recall"] >= 0.8, m
    assert m["coreg_rmse_px"] <= 0.2, m


def test_evaluation_precision(demo_run: tuple[Config, dict]) -> None:
    _, m = demo_run
    assert m["object_precision"] >= 0.8, m


def test_removals_dominate_in_december(demo_run: tuple[Config, dict]) -> None:
    cfg, _ = demo_run
    fc = json.loads(site_paths(cfg, "tartus").detections.read_text())
    kinds = [f["properties"]["kind"] for f in fc["features"]]
    assert kinds.count("removed") > kinds.count("appeared")


def test_zone_occupancy_series_falls_with_the_withdrawal(demo_run: tuple[Config, dict]) -> None:
    import csv

    cfg, _ = demo_run
    path = site_paths(cfg, "tartus").occupancy
    rows = list(csv.DictReader(path.read_text().splitlines()))
    assert len(rows) >= 10 and rows[0]["date"] < rows[-1]["date"]
    share = [float(r["all_zones"]) for r in rows]
    assert all(0.0 <= s <= 1.0 for s in share)
    december = [float(r["all_zones"]) for r in rows if r["date"].startswith("2024-12")]
    assert max(share[:3]) > min(december)  # ships left the piers during December
