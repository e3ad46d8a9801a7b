"""The evaluate stage: a site's scores against ground truth, where the catalog has truth.

The only stage that reads truth (``<catalog>/truth/<site>.json``, written by
:mod:`pipeline.simulate`); the detection stages of :mod:`pipeline.stages` never do. Also the whole
run of one site (:func:`run_site`), which ends with this stage and the report.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.evaluation import site as evaluate
from pipeline.io.atomic import read_json, write_json
from pipeline.stages.site import (
    _require,
    _site,
    run_coregister,
    run_detect,
    run_load,
    run_report,
    run_search,
)


def truth_path(cfg: Config, site: str) -> Path | None:
    """Ground truth file beside a local catalog (the demo catalog), or None for a STAC API."""
    url = cfg.catalog.url
    if url.startswith(("http://", "https://")):
        return None
    p = Path(url).parent / "truth" / f"{site}.json"
    return p if p.exists() else None


def run_evaluate(cfg: Config, site_name: str) -> dict:
    """Score detections and co-registration against ground truth where it exists; write metrics."""
    _, paths = _site(cfg, site_name)
    dets = read_json(_require(paths.detections, "detect"))
    coreg = read_json(_require(paths.coreg, "coregister"))
    tp = truth_path(cfg, site_name)
    if tp is None:
        metrics: dict = {
            "n_detections": len(dets["features"]),
            "truth": None,
            "failed_dates": coreg.get("failed_dates", []),
        }
    else:
        metrics = evaluate.evaluate_site(
            dets["features"],
            read_json(tp),
            coreg,
            min_object_size_m=cfg.evaluate.min_object_size_m,
        )
        metrics["truth"] = "simulated demo catalog"
        metrics.setdefault("failed_dates", coreg.get("failed_dates", []))
    write_json(paths.metrics, metrics)
    return metrics


def watch_metrics(
    cfg: Config, site_name: str, features: list[dict], coreg: dict[str, Any]
) -> dict[str, Any]:
    """The metrics ``basewatch evaluate`` would write for the watch mode's detections.

    Parameters
    ----------
    cfg
        The run's configuration.
    site_name
        The site.
    features
        Its detections (GeoJSON features).
    coreg
        Its co-registration record (:func:`pipeline.stages.watch.coreg_record`).

    Returns
    -------
    dict
        The metrics; without truth, or without a usable date yet, only the counts.
    """
    tp = truth_path(cfg, site_name)
    if tp is None or coreg["reference_date"] is None:  # no truth, or no usable date yet
        return {
            "n_detections": len(features),
            "truth": None if tp is None else "simulated demo catalog (no usable date yet)",
            "failed_dates": coreg["failed_dates"],
        }
    metrics = evaluate.evaluate_site(
        features, read_json(tp), coreg, min_object_size_m=cfg.evaluate.min_object_size_m
    )
    metrics["truth"] = "simulated demo catalog"
    metrics.setdefault("failed_dates", coreg["failed_dates"])
    return metrics


def run_site(cfg: Config, site_name: str) -> dict:
    """Every stage for one site, in order; returns the metrics."""
    run_search(cfg, site_name)
    run_load(cfg, site_name)
    run_coregister(cfg, site_name)
    run_detect(cfg, site_name)
    metrics = run_evaluate(cfg, site_name)
    run_report(cfg, site_name)
    return metrics
