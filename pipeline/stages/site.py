"""The stages of a site's run, one function each: the CLI, DVC and notebooks all call these.

Each stage reads the outputs of the stage before it from ``data/<site>/`` (see
:class:`pipeline.paths.SitePaths`), calls the pure kernels, and writes its own outputs atomically.
Only this module decides when lazy arrays are computed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, cast

import numpy as np
import xarray as xr

from pipeline.config import Config
from pipeline.detect_config import DETECT_METHODS, DetectMethod
from pipeline.errors import ConfigError, DataError, StageInputError
from pipeline.io import catalog, load, signing
from pipeline.io.atomic import read_json, write_json, write_text
from pipeline.paths import SitePaths, site_paths
from pipeline.sites import Site, get_site

log = logging.getLogger(__name__)

STAGES = ("search", "load", "coregister", "detect", "evaluate", "report")
"""Stages of one site, in the order they run (``tile`` is a stage of its own, after search)."""


def _require(path: Path, stage: str) -> Path:
    if not path.exists():
        raise StageInputError(f"{path} is missing: run `basewatch {stage}` for this site first")
    return path


def _site(cfg: Config, name: str) -> tuple[Site, SitePaths]:
    return get_site(name, cfg.seeds_dir), site_paths(cfg, name)


def run_search(cfg: Config, site_name: str) -> int:
    """Search the catalog for the site's Items and write ``items.json``; returns the Item count."""
    site, paths = _site(cfg, site_name)
    items = catalog.search_items(
        cfg.catalog, site.aoi, cfg.dates.start, cfg.dates.end, network=cfg.network
    )
    if len(items) == 0:
        raise DataError(
            f"no Items in {cfg.catalog.url} for site {site_name} between {cfg.dates.start} and "
            f"{cfg.dates.end} with eo:cloud_cover <= {cfg.catalog.max_cloud_cover}: "
            "widen the dates or the cloud limit"
        )
    catalog.write_items(items, paths.items)
    log.info("%s: %d Items -> %s", site_name, len(items), paths.items)
    return len(items)


def run_load(cfg: Config, site_name: str) -> dict:
    """Load the site's Items onto the site grid and write ``cube.zarr`` and ``load.json``."""
    site, paths = _site(cfg, site_name)
    items = catalog.read_items(_require(paths.items, "search"))

    def load_and_write(signed: list) -> dict:
        cube, report = load.load_site(signed, site, cfg.load, network=cfg.network)
        if cube.sizes.get("time", 0) == 0:
            raise DataError(
                f"site {site_name}: every date is mostly cloud or no data "
                f"(load.min_valid_fraction={cfg.load.min_valid_fraction}): widen the period"
            )
        cube.attrs["simulated"] = int(_simulated(items))
        load.write_cube(cube, paths.cube)
        return report

    # Signed just before reading (a token from the search may be stale); renewed once on a 403.
    report = signing.read_signed(load_and_write, items, signing.signer_for(cfg.catalog))
    write_json(paths.load_report, report)
    return report


def run_coregister(cfg: Config, site_name: str) -> dict:
    """Co-register each date to a reference date; write ``aligned.zarr`` and ``coreg.json``."""
    from pipeline.kernels.coregister import shift as coregister

    _, paths = _site(cfg, site_name)
    cube = load.read_cube(_require(paths.cube, "load"))
    c = cfg.coregister
    if c.band not in cube:
        raise DataError(f"coregister.band '{c.band}' is not in {paths.cube}: pick a loaded band")
    aligned, estimates, ref = coregister.coregister_cube(cube, c)
    dates = [str(np.datetime_as_string(t, unit="D")) for t in cube.time.values]
    keep = [i for i, e in enumerate(estimates) if e.status != "failed"]
    load.write_cube(aligned, paths.aligned)
    residual = _residuals(aligned, c, keep.index(ref) if ref in keep else None)
    records = [{"date": d, **e.to_dict()} for d, e in zip(dates, estimates, strict=True)]
    for j, i in enumerate(keep):
        records[i]["residual_px"] = residual[j]
        records[i]["residual_flag"] = residual[j] is not None and residual[j] > c.max_residual_px
    result = {
        "reference_date": dates[ref],
        "band": c.band,
        "dates": records,
        "failed_dates": [dates[i] for i, e in enumerate(estimates) if e.status == "failed"],
        "residual_flagged_dates": [r["date"] for r in records if r.get("residual_flag")],
    }
    for d in result["residual_flagged_dates"]:
        log.warning(
            "%s %s: %.2f px left after co-registration (> coregister.max_residual_px %s)",
            *(site_name, d, records[dates.index(d)]["residual_px"], c.max_residual_px),
        )
    write_json(paths.coreg, result)
    return result


def _residuals(aligned: xr.Dataset, c: Any, ref: int | None) -> list[float | None]:
    """Shift left between each aligned date and the aligned reference (px), None if unknown."""
    from pipeline.kernels.coregister import shift as coregister

    if ref is None or aligned.sizes.get("time", 0) == 0:
        return [None] * aligned.sizes.get("time", 0)
    _, again = coregister.coregister_stack(
        aligned[c.band].astype("float32").values,
        aligned["valid"].values,
        reference_index=ref,
        upsample=c.upsample,
        max_shift_px=c.max_shift_px,
        min_valid_fraction=c.min_valid_fraction,
        min_quality=c.min_quality,
    )
    return [
        round(float(np.hypot(e.shift_x_px, e.shift_y_px)), 4) if e.usable else None for e in again
    ]


def run_detect(cfg: Config, site_name: str) -> int:
    """Run the change core on the aligned cube; write ``detections.geojson``; returns the count."""
    from pipeline.io.cluster import client_from_config
    from pipeline.kernels.detect import occupancy
    from pipeline.stages import detect

    site, paths = _site(cfg, site_name)
    cube = load.read_cube(_require(paths.aligned, "coregister"))
    with client_from_config(cfg.cluster):
        result = detect.detect_site(cube, site, cfg)
    simulated = bool(cube.attrs.get("simulated", 0))
    _write_detections(paths.detections, f"{site_name} detections", simulated, result)
    _write_score(result.score, paths.change)
    write_text(paths.occupancy, occupancy.to_csv(result.occupancy))
    return len(result.features)


def _write_detections(path: Path, name: str, simulated: bool, result: Any) -> None:
    """Write ``result.features`` (and its per-pair summaries) as a GeoJSON FeatureCollection."""
    fc = {
        "type": "FeatureCollection",
        "name": name,
        "simulated": simulated,
        "features": result.features,
        "pairs": result.pairs,
    }
    write_json(path, fc)


def _simulated(items: Any) -> bool:
    """Whether any Item comes from the simulated demo catalog."""
    return any(bool(it.properties.get("basewatch:simulated")) for it in items)


def run_tile(cfg: Config, site_name: str, method: str | None = None) -> dict:
    """Detect over the site's whole stack out of core; write ``tile_detections.geojson``.

    The searched Items are opened as a lazy, dask-backed cube on the site grid (the dates the
    load stage would drop as too cloudy are dropped; no pixel is kept in memory) and read window
    by window by :func:`pipeline.stages.tile.detect_tile`, each stream window loaded from the
    COGs on its own (:class:`pipeline.io.tile_read.ItemsReader`), on the configured dask cluster
    (:func:`pipeline.io.cluster.client_from_config`). Unlike ``detect``, nothing is
    co-registered and no zone occupancy is computed.

    Parameters
    ----------
    cfg
        The run's config (``load``, ``detect``, ``cluster``, ``network``, ``catalog``).
    site_name
        The site; its ``items.json`` must exist (``basewatch search``).
    method
        ``pairwise`` or ``multidate``; None: ``cfg.detect.method``.

    Returns
    -------
    dict
        The summary also written to ``tile.json``: site, method, dates used and dropped,
        object counts, grid shape, bands and seconds per step (``load``: opening the cube and
        the valid-fraction pass over it; then those of :class:`pipeline.stages.tile.TileResult`).

    Raises
    ------
    ConfigError
        When ``method`` is unknown.
    StageInputError
        When the site's ``items.json`` is missing.
    DataError
        When fewer than 2 dates are usable or a COG cannot be read.
    """
    from pipeline.io.cluster import client_from_config
    from pipeline.io.tile_read import ItemsReader
    from pipeline.stages.tile import detect_tile

    chosen = cfg.detect.method if method is None else method
    if chosen not in DETECT_METHODS:
        raise ConfigError(f"tile method '{chosen}' is unknown: use {' or '.join(DETECT_METHODS)}")
    site, paths = _site(cfg, site_name)
    items = catalog.read_items(_require(paths.items, "search"))

    def load_and_detect(signed: list) -> tuple[Any, dict, dict[str, Any]]:
        start = time.perf_counter()
        with client_from_config(cfg.cluster) as client:
            cube, report = load.load_site(signed, site, cfg.load, network=cfg.network)
            if cube.sizes.get("time", 0) < 2:
                raise DataError(
                    f"site {site_name}: {cube.sizes.get('time', 0)} date(s) with at least "
                    f"load.min_valid_fraction={cfg.load.min_valid_fraction} valid: need 2 to find "
                    "change; widen the period"
                )
            reader = ItemsReader(
                cube,
                signed,
                tuple(b for b in cfg.load.bands if b in cube),
                network=cfg.network,
            )
            run: dict[str, Any] = {"grid_px": list(reader.shape), "bands": list(reader.bands)}
            run["seconds"] = {"load": round(time.perf_counter() - start, 3)}
            with load.reading(f"tile {site_name}", signed):
                result = detect_tile(
                    reader,
                    cfg.detect,
                    method=cast(DetectMethod, chosen),
                    site=site_name,
                    client=client,
                )
        return result, report, run

    # Signed just before reading (a token from the search may be stale); renewed once on a 403.
    result, report, run = signing.read_signed(
        load_and_detect, list(items), signing.signer_for(cfg.catalog)
    )
    kinds = [f["properties"]["kind"] for f in result.features]
    summary = {
        "site": site_name,
        "method": result.method,
        "simulated": _simulated(items),
        "dates": report["dates_kept"],
        "dates_dropped": [d["date"] for d in report["dates_dropped"]],
        "n_objects": len(kinds),
        "n_removed": kinds.count("removed"),
        "n_appeared": kinds.count("appeared"),
        "grid_px": run["grid_px"],
        "chunk_px": result.chunk_px,
        "bands": run["bands"],
        "seconds": run["seconds"] | {k: round(v, 3) for k, v in result.seconds.items()},
    }
    name = f"{site_name} tile detections ({result.method})"
    _write_detections(paths.tile_detections, name, summary["simulated"], result)
    write_json(paths.tile_summary, summary)
    return summary


def _write_score(score: xr.DataArray, path: Path) -> None:
    """Write the change score of every date pair to ``change.zarr`` (read by the report)."""
    from pipeline.io.atomic import atomic_dir

    ds = xr.Dataset({"score": score.astype("float32")})
    for name, coord in ds.coords.items():
        if coord.dtype == object:
            ds = ds.assign_coords({name: coord.astype(str)})
    with atomic_dir(path) as tmp, load.consolidated_warning_hidden():
        ds.to_zarr(tmp, mode="w", consolidated=True)


def run_report(cfg: Config, site_name: str) -> Path:
    """Write the site's report folder and the index over sites; returns the report's path.

    Besides the HTML, the folder holds the detections as GeoParquet, the change score of each
    date pair as a COG and the results as a STAC Catalog (see :mod:`pipeline.io.report.site`). The
    score is read from ``change.zarr`` when the detect stage wrote one, else recomputed here
    from the aligned cube with the same detect parameters.
    """
    from pipeline.io.progress import dask_progress
    from pipeline.io.report import site as report

    site, paths = _site(cfg, site_name)
    cube = load.read_cube(_require(paths.aligned, "coregister"))
    detections = read_json(_require(paths.detections, "detect"))
    metrics = read_json(paths.metrics) if paths.metrics.exists() else None
    items = catalog.read_items(paths.items) if paths.items.exists() else []
    with dask_progress(f"{site_name}: reading the cube"):
        cube = cube.load()
    if paths.change.exists():
        score = xr.open_zarr(paths.change)["score"]
    else:
        from pipeline.stages import detect

        log.info("%s: no %s, recomputing the change score", site_name, paths.change)
        score = detect.detect_site(cube, site, cfg).score
    out = report.write_report(
        paths.reports,
        site_title=site.title,
        site_name=site.name,
        cube=cube,
        detections=detections,
        coreg=read_json(_require(paths.coreg, "coregister")),
        load_report=read_json(_require(paths.load_report, "load")),
        metrics=metrics,
        zones_utm=[(z.name, site.to_utm(z.geometry)) for z in site.zones],
        simulated=bool(cube.attrs.get("simulated", 0)),
        items=list(items),
        score=score,
    )
    report.update_index(paths.reports.parent)
    log.info("%s: report -> %s", site_name, out)
    return Path(out)
