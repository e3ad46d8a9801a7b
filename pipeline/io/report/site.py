"""The report of a site: one self-contained folder that opens offline; the index over sites (I/O).

:func:`write_report` writes ``reports/<site>/``::

    index.html                 the page (inline style and script, relative links only)
    img/site_map.png           true colour, zones, every detection
    img/occupancy.png          occupancy change per zone, detections per date
    img/<detection id>.png     before / after / difference triptych of each detection
    occupancy.csv              net occupied-area change per zone and date (``dvc plots``)
    detections_per_date.csv    removed / appeared counts per date (``dvc plots``)
    detections.geojson         the detections, lon/lat
    detections.parquet         the same as GeoParquet
    change/score_<b>_<a>.tif   change score of each date pair, COG (when a score is given)
    stac/catalog.json          the results as a STAC Catalog (:mod:`pipeline.io.report.products`)
    summary.json               the figures the index page shows

The folder is built under a temporary name beside ``reports/<site>`` and swapped in whole, so a
crash never leaves half a report. :func:`update_index` rewrites ``reports/index.html`` from
every site folder holding an ``index.html``.

**Occupancy** (:func:`occupancy`) is inferred from the detections, as the pipeline has no
per-date count of the objects present: at each date, per zone, the net change of occupied area
since the first date, i.e. the area of objects that appeared minus that of objects removed, by
their ``date_after``. Objects present throughout are not seen, so it is a change, not a level;
transient detections (undone at the next clear view: mostly missed clouds) are left out.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import xarray as xr
from shapely.geometry.base import BaseGeometry

from pipeline.io.atomic import PUBLIC_MODE, atomic_dir, read_json, write_json, write_text
from pipeline.io.progress import progress
from pipeline.io.report import html as h
from pipeline.io.report import products, quicklook

log = logging.getLogger(__name__)

ALL_ZONES = "all zones"
"""Name of the sum over every zone in :class:`Occupancy`."""
OUTSIDE = "outside zones"
"""Name of the detections outside every zone in :class:`Occupancy`."""


@dataclass
class Occupancy:
    """Occupancy change per zone and date, inferred from the detections."""

    dates: list[str]
    """The dates (``YYYY-MM-DD``), sorted."""
    net_area_m2: dict[str, list[float]] = field(default_factory=dict)
    """Per zone name, :data:`ALL_ZONES` and :data:`OUTSIDE`: net occupied-area change (m²) since
    the first date, at each date."""
    counts: dict[str, list[int]] = field(default_factory=dict)
    """``removed`` and ``appeared``: detections whose ``date_after`` is each date."""

    def rows(self) -> list[dict[str, Any]]:
        """One dict per date: ``date``, ``day`` (days since the first date) and the zones."""
        if not self.dates:
            return []
        first = dt.date.fromisoformat(self.dates[0])
        return [
            {
                "date": d,
                "day": (dt.date.fromisoformat(d) - first).days,
                **{k.replace(" ", "_"): round(v[i], 1) for k, v in self.net_area_m2.items()},
            }
            for i, d in enumerate(self.dates)
        ]


def occupancy(
    props: Sequence[Mapping[str, Any]], dates: Sequence[str], zone_names: Sequence[str]
) -> Occupancy:
    """Net occupied-area change per zone at each date (see the module docstring).

    Parameters
    ----------
    props
        Properties of the detections (``kind``, ``date_after``, ``area_m2``, ``zone``,
        ``transient``).
    dates
        Dates of the series; dates of detections missing from it are added.
    zone_names
        Every zone of the site (zones with no detection get a flat line).

    Returns
    -------
    Occupancy
        Zones in the given order, then :data:`ALL_ZONES` and :data:`OUTSIDE`.
    """
    days = sorted({str(d)[:10] for d in dates} | {str(p.get("date_after"))[:10] for p in props})
    pos = {d: i for i, d in enumerate(days)}
    delta = {z: np.zeros(len(days)) for z in [*zone_names, OUTSIDE]}
    counts = {"removed": [0] * len(days), "appeared": [0] * len(days)}
    for p in props:
        kind, i = str(p.get("kind")), pos[str(p.get("date_after"))[:10]]
        if kind in counts:
            counts[kind][i] += 1
        if p.get("transient") or kind not in counts:
            continue
        zone = str(p.get("zone")) if p.get("zone") in delta else OUTSIDE
        area = float(p.get("area_m2") or 0.0)
        delta[zone][i] += area if kind == "appeared" else -area
    net = {z: np.cumsum(v) for z, v in delta.items()}
    total = sum((net[z] for z in zone_names), np.zeros(len(days)))
    series = {z: net[z].tolist() for z in zone_names}
    series[ALL_ZONES] = total.tolist()
    series[OUTSIDE] = net[OUTSIDE].tolist()
    return Occupancy(days, series, counts)


def _csv(rows: Sequence[Mapping[str, Any]], fieldnames: Sequence[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(fieldnames), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    write_text(path, text, mode=PUBLIC_MODE)


def _summary(
    tc: quicklook.TrueColour,
    n_items: int,
    used: Sequence[str],
    load_report: Mapping[str, Any],
    coreg: Mapping[str, Any],
    props: Sequence[Mapping[str, Any]],
    occ: Occupancy,
) -> str:
    dates = tc.dates
    period = f"{dates[0]} to {dates[-1]}" if dates else "no dates"
    dropped = load_report.get("dates_dropped", [])
    failed = [d for d in coreg.get("dates", []) if d.get("status") == "failed"]
    kinds = Counter(str(p.get("kind")) for p in props)
    lines = [
        f"Period: <b>{h.esc(period)}</b>; {n_items} STAC Items over "
        f"{len(set(dates) | {str(d.get('date')) for d in dropped})} acquisition dates",
        f"Dates used for detection: <b>{len(used)}</b>; dropped by the loader (cloud, no data): "
        f"<b>{len(dropped)}</b>; rejected by co-registration: <b>{len(failed)}</b> "
        "(<a href='#scenes'>why</a>)",
        f"Detections: <b>{len(props)}</b> (<span class='removed'>{kinds['removed']} removed"
        f"</span>, <span class='appeared'>{kinds['appeared']} appeared</span>)",
    ]
    flagged = [str(d) for d in coreg.get("residual_flagged_dates", [])]
    odd = [str(d) for d in load_report.get("radiometry_disagreements", [])]
    if flagged or odd:
        lines.append(
            f"Flagged dates (<a href='#scenes'>see the scenes table</a>): large residual after "
            f"co-registration: <b>{h.esc(', '.join(flagged) or 'none')}</b>; radiometry "
            f"metadata and pixels disagree: <b>{h.esc(', '.join(odd) or 'none')}</b>"
        )
    if occ.dates:
        last = {z: v[-1] for z, v in occ.net_area_m2.items() if z not in (ALL_ZONES, OUTSIDE)}
        moved = ", ".join(f"{h.esc(z)} {v:+,.0f} m²" for z, v in last.items() if abs(v) > 0)
        lines.append(
            f"Occupied area of the zones by {h.esc(occ.dates[-1])} vs {h.esc(occ.dates[0])}: "
            f"<b>{occ.net_area_m2[ALL_ZONES][-1]:+,.0f} m²</b>" + (f" ({moved})" if moved else "")
        )
    return "<h2 id='summary'>Summary</h2>" + h.bullet_list(lines)


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() not in ("", "0", "false", "no")
    return bool(v)


def _safe_name(did: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in did)


def write_report(
    out_dir: str | Path,
    *,
    site_title: str,
    site_name: str,
    cube: xr.Dataset,
    detections: dict,
    coreg: dict,
    load_report: dict,
    metrics: dict | None = None,
    zones_utm: Sequence[tuple[str, BaseGeometry]] | None = None,
    simulated: bool = False,
    items: Sequence[pystac.Item] | None = None,
    score: xr.DataArray | None = None,
) -> Path:
    """Write the report folder of one site (see the module docstring for its files).

    Parameters
    ----------
    out_dir
        The report folder; replaced as a whole (built beside it, then swapped in).
    site_title, site_name
        Human-readable title and short name of the site.
    cube
        The co-registered cube: ``red``, ``green``, ``blue`` (and ``valid``) over (time, y, x),
        x/y pixel centres in metres, attr ``crs``; numpy or dask backed.
    detections
        GeoJSON FeatureCollection of the detections, lon/lat.
    coreg
        Co-registration results (``reference_date``, ``dates``).
    load_report
        The loader's report (``dates_kept``, ``dates_dropped``, ``valid_fraction``).
    metrics
        Scores against ground truth, shown when given.
    zones_utm
        ``(name, polygon)`` of the site's zones in the cube CRS.
    simulated
        Show the SIMULATED DEMO DATA banner; also shown when the cube attrs, the detections or
        the metrics say ``simulated``.
    items
        The source scene Items (the search output): listed per date, and linked from the
        results catalog.
    score
        (pair, y, x) change score (:class:`pipeline.kernels.detect.core.DetectResult`), written as
        COGs and catalogued; computed here if lazy.

    Returns
    -------
    Path
        ``out_dir / "index.html"``.

    Raises
    ------
    DataError
        When the cube lacks a true-colour band or its CRS, or is smaller than 2 x 2 pixels.
    """
    out_dir = Path(out_dir)
    metrics = metrics or {}
    items = list(items or [])
    simulated = (
        simulated
        or _truthy(cube.attrs.get("simulated"))
        or _truthy(detections.get("simulated"))
        or _truthy((detections.get("properties") or {}).get("simulated"))
        or _truthy(metrics.get("simulated"))
    )
    crs, _ = quicklook.grid_affine(cube)
    tc = quicklook.TrueColour(cube, reference=coreg.get("reference_date"))
    dets = quicklook.detections_on_grid(detections, cube)
    zones = quicklook.zones_on_grid(list(zones_utm or []), cube)
    props = [d.props for d in dets]
    occ = occupancy(props, tc.dates, [name for name, _ in zones])
    scenes_html, used = h.scenes_section(items, coreg, load_report)
    n_items = len(items) or int(load_report.get("n_items") or 0)

    with atomic_dir(out_dir) as tmp:
        tmp.chmod(0o755)
        (tmp / "img").mkdir()
        quicklook.save_png(quicklook.site_map_figure(tc, dets, zones), tmp / "img/site_map.png")
        occ_fig = quicklook.occupancy_figure(occ.dates, _plotted(occ), occ.counts)
        quicklook.save_png(occ_fig, tmp / "img/occupancy.png")
        cards = []
        for det in progress(dets, desc=f"{site_name}: triptychs", unit="detection"):
            did = str(det.props.get("id"))
            fig = quicklook.triptych_figure(tc, det, dets)
            img = None
            if fig is not None:
                img = f"img/{_safe_name(did)}.png"
                quicklook.save_png(fig, tmp / img)
            lonlat = (det.props.get("centroid_lon"), det.props.get("centroid_lat"))
            cards.append(h.detection_card(det.props, img, lonlat))
        _write_tables(tmp, occ)
        _write_text(tmp / "detections.geojson", json.dumps(detections))
        products.write_detections_parquet(detections, tmp / "detections.parquet")
        downloads = [
            ("detections.geojson", "detections (GeoJSON)"),
            ("detections.parquet", "detections (GeoParquet)"),
            ("occupancy.csv", "occupancy (CSV)"),
            ("detections_per_date.csv", "detections per date (CSV)"),
        ]
        change = []
        if score is not None:
            change = products.write_change_cogs(score.compute(), tmp, crs=crs)
        if change or items:
            _catalog(tmp, site_name, site_title, cube, crs, change, items, detections, simulated)
            downloads.append(("stac/catalog.json", "results STAC catalog"))
        if change:
            downloads.append(("change/", f"change score COGs ({len(change)})"))
        summary = {
            "name": site_name,
            "title": site_title,
            "period": f"{tc.dates[0]} to {tc.dates[-1]}" if tc.dates else None,
            "n_dates": len(used),
            "n_detections": len(props),
            "n_removed": sum(p.get("kind") == "removed" for p in props),
            "n_appeared": sum(p.get("kind") == "appeared" for p in props),
            "object_f1": metrics.get("object_f1"),
            "simulated": simulated,
        }
        write_json(tmp / "summary.json", summary)
        body = [
            f"<h1>{h.esc(site_title)}</h1><p class='note'>site <code>{h.esc(site_name)}</code>"
            f" &middot; {h.links(downloads)} &middot; <a href='../index.html'>all sites</a></p>",
            _summary(tc, n_items, used, load_report, coreg, props, occ),
            "<h2 id='map'>Site map</h2>"
            + h.figure(
                "img/site_map.png",
                "site map with zones and detections",
                "True colour on the reference date (stretched to 2-98 % of its valid pixels); "
                "removed in red, appeared in cyan (outlined and circled), zones dashed yellow; "
                "invalid pixels grey.",
            ),
            "<h2 id='occupancy'>Occupancy</h2>"
            + h.figure(
                "img/occupancy.png",
                "occupancy change per zone and detections per date",
                "Net change of occupied area since the first date, per zone: area of objects "
                "that appeared minus area of objects removed (by the date they were first seen "
                "changed); objects present throughout are not counted, transient detections "
                "are left out. Below: detections per date (removed downwards).",
            ),
            h.detections_table([d.props for d in dets]),
            scenes_html,
            h.metrics_section(metrics) if metrics else "",
            "<h2 id='detections'>Detections</h2><p class='note'>Before: the object's last "
            "clear view; after: the first view that shows the change; both in true colour with "
            "the same stretch (2-98 % of the valid pixels of the window on both dates). "
            "Difference: mean red/green/blue reflectance, after minus before, grey where either "
            "is invalid. The object is outlined; other detections dotted.</p>"
            + ("".join(cards) if cards else "<p>No detections.</p>"),
        ]
        html = h.page(f"basewatch: {site_title}", "".join(body), simulated=simulated)
        _write_text(tmp / "index.html", html)
    return out_dir / "index.html"


def _plotted(occ: Occupancy) -> dict[str, list[float]]:
    return {k: v for k, v in occ.net_area_m2.items() if k != OUTSIDE}


def _write_tables(folder: Path, occ: Occupancy) -> None:
    rows = occ.rows()
    names = ["date", "day"] + [k.replace(" ", "_") for k in occ.net_area_m2]
    _write_text(folder / "occupancy.csv", _csv(rows, names))
    counts = [
        {"date": r["date"], "day": r["day"], **{k: v[i] for k, v in occ.counts.items()}}
        for i, r in enumerate(rows)
    ]
    _write_text(
        folder / "detections_per_date.csv", _csv(counts, ["date", "day", "removed", "appeared"])
    )


def _catalog(
    folder: Path,
    site_name: str,
    site_title: str,
    cube: xr.Dataset,
    crs: str,
    change: Sequence[products.ChangeProduct],
    items: Sequence[pystac.Item],
    detections: Mapping[str, Any],
    simulated: bool,
) -> None:
    hrefs = products.scene_hrefs(items)
    by_date: dict[str, list[str]] = {}
    for it in items:
        if it.id in hrefs:
            by_date.setdefault(products.scene_day(it), []).append(hrefs[it.id])
    assets = {
        "detections": ("detections.parquet", products.PARQUET_MEDIA_TYPE),
        "detections-geojson": ("detections.geojson", products.GEOJSON_MEDIA_TYPE),
        "occupancy": ("occupancy.csv", "text/csv"),
        "report": ("index.html", "text/html"),
    }
    products.write_results_catalog(
        folder,
        site_name=site_name,
        site_title=site_title,
        grid=cube,
        crs=crs,
        products=change,
        scenes_by_date=by_date,
        detections=detections,
        detection_assets=assets,
        simulated=simulated,
    )


def write_index(reports_root: str | Path, sites: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``reports_root/index.html`` linking the report of each site.

    Parameters
    ----------
    reports_root
        Folder holding one report folder per site.
    sites
        One mapping per site (see :func:`pipeline.io.report.html.index_page`).

    Returns
    -------
    Path
        The index file.
    """
    root = Path(reports_root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "index.html"
    _write_text(path, h.index_page(sites))
    return path


def update_index(reports_root: str | Path) -> Path:
    """Rewrite ``reports_root/index.html`` over every site folder that holds an ``index.html``.

    Each site's figures come from its ``summary.json`` (written by :func:`write_report`); a
    folder without one is listed by name.

    Returns
    -------
    Path
        The index file.
    """
    root = Path(reports_root)
    sites = []
    for folder in sorted(p for p in root.glob("*") if p.is_dir() and not p.name.startswith(".")):
        if not (folder / "index.html").is_file():
            continue
        summary = folder / "summary.json"
        info = read_json(summary) if summary.is_file() else {}
        sites.append(
            {**info, "name": info.get("name") or folder.name, "href": f"{folder.name}/index.html"}
        )
    return write_index(root, sites)
