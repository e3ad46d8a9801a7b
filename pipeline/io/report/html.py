"""HTML of the site report and of the index over sites: plain strings, no template engine.

The pages load nothing from the network: the style sheet and the table-sorting script are inline,
images are files of the report folder named by relative paths, the favicon is an empty data URL.
Every value is escaped. Tables with class ``sortable`` sort on a click on a header (numbers
numerically, using each cell's ``data-sort``; a second click reverses); the header sorted on gets
``aria-sort="ascending"`` or ``"descending"``.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pystac

from pipeline.io.report.products import scene_day

_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:1.5em auto;max-width:1040px;
color:#222;padding:0 1em;line-height:1.4}
h1{font-size:1.5em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ccc}
h3{font-size:1em;margin:1.2em 0 .3em}
table{border-collapse:collapse;font-size:.82em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left;vertical-align:top}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
table.sortable th{cursor:pointer;user-select:none}
table.sortable th[aria-sort=ascending]::after{content:" \\25B2"}
table.sortable th[aria-sort=descending]::after{content:" \\25BC"}
.banner{background:#b00020;color:#fff;font-weight:bold;padding:.6em 1em;font-size:1.05em}
.ok,.kept,.yes{color:#1a7f37}.shifted{color:#9a6700}
.failed,.dropped,.no{color:#b00020;font-weight:bold}
.removed{color:#b00020;font-weight:bold}.appeared{color:#007c8c;font-weight:bold}
img{max-width:100%;height:auto;border:1px solid #ddd}.note{color:#555;font-size:.9em}
.card{border:1px solid #ddd;border-radius:4px;padding:.4em .8em;margin:.8em 0}
.card h3{margin-top:.2em}.facts{font-size:.9em;margin:.2em 0 .5em}
.facts span{margin-right:1.2em}code{font-size:.9em}
"""

_SORT_JS = """
(function(){
  function key(cell){
    var v = cell.getAttribute('data-sort');
    if (v === null) { v = cell.textContent.trim(); }
    var n = Number(v);
    return (v !== '' && isFinite(n)) ? [0, n] : [1, v.toLowerCase()];
  }
  function cmp(a, b){
    if (a[0] !== b[0]) { return a[0] - b[0]; }
    return a[1] < b[1] ? -1 : (a[1] > b[1] ? 1 : 0);
  }
  document.querySelectorAll('table.sortable').forEach(function(table){
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function(th, col){
      th.title = 'click to sort';
      th.addEventListener('click', function(){
        var asc = th.getAttribute('aria-sort') !== 'ascending';
        Array.prototype.forEach.call(heads, function(h){ h.removeAttribute('aria-sort'); });
        th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        rows.sort(function(r1, r2){
          return cmp(key(r1.cells[col]), key(r2.cells[col])) * (asc ? 1 : -1);
        });
        rows.forEach(function(r){ body.appendChild(r); });
      });
    });
  });
})();
"""

BANNER = (
    '<div class="banner">SIMULATED DEMO DATA: the scenes, detections and scores below come from '
    "a generated catalog, not from real Sentinel-2 acquisitions.</div>"
)
"""Shown at the top and bottom of every page made from the simulated demo catalog."""

_WORD_CLASSES = frozenset(
    {"ok", "shifted", "failed", "removed", "appeared", "kept", "dropped", "yes", "no"}
)


@dataclass(frozen=True)
class Raw:
    """A table cell given as ready HTML, with the value it sorts by."""

    html: str
    """Escaped HTML of the cell."""
    sort: Any = None
    """Sort key (a number sorts numerically); the cell text when None."""


def esc(value: Any) -> str:
    """HTML-escaped text of ``value`` ('' for None)."""
    return html.escape("" if value is None else str(value))


def is_num(v: Any) -> bool:
    """True for an int or float that is not a bool."""
    return isinstance(v, int | float) and not isinstance(v, bool)


def fmt(value: Any) -> str:
    """Escaped display text: '-' for None, floats rounded to 4 significant decimals."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return esc(f"{value:.6f}" if abs(value) < 1e-3 and value else round(value, 4))
    return esc(value)


def _cell(v: Any) -> str:
    if isinstance(v, Raw):
        sort = "" if v.sort is None else f" data-sort='{esc(v.sort)}'"
        return f"<td{sort}>{v.html}</td>"
    if is_num(v):
        return f"<td class='num' data-sort='{esc(v)}'>{fmt(v)}</td>"
    cls = f" class='{v}'" if isinstance(v, str) and v in _WORD_CLASSES else ""
    return f"<td{cls}>{fmt(v)}</td>"


def table(
    headers: Sequence[str],
    rows: Iterable[Sequence[Any]],
    *,
    sortable: bool = False,
    table_id: str | None = None,
) -> str:
    """An HTML table; numbers right-aligned, statuses and kinds coloured.

    Parameters
    ----------
    headers
        Column titles.
    rows
        Cell values: text, numbers, None ('-') or :class:`Raw` HTML.
    sortable
        Sort on a click on a header (see the module docstring).
    table_id
        ``id`` attribute of the table.
    """
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(v) for v in row) + "</tr>" for row in rows)
    attrs = (" class='sortable'" if sortable else "") + (
        f" id='{esc(table_id)}'" if table_id else ""
    )
    return f"<table{attrs}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, body: str, *, simulated: bool) -> str:
    """A whole HTML document: inline style and script, the banner when ``simulated``."""
    banner = BANNER if simulated else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{esc(title)}</title><style>{_CSS}</style></head>"
        f"<body>{banner}{body}{banner}<script>{_SORT_JS}</script></body></html>\n"
    )


def links(pairs: Sequence[tuple[str, str]]) -> str:
    """`` &middot; ``-separated links ``(href, label)``."""
    return " &middot; ".join(f"<a href='{esc(h)}'>{esc(t)}</a>" for h, t in pairs)


def bullet_list(items: Sequence[str]) -> str:
    """``<ul>`` of ready HTML items."""
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def figure(src: str, alt: str, caption: str) -> str:
    """An image of the report folder with a caption (both escaped)."""
    return f"<img src='{esc(src)}' alt='{esc(alt)}'><p class='note'>{esc(caption)}</p>"


def metrics_section(metrics: Mapping[str, Any]) -> str:
    """Scores against ground truth: scalars, and lists of ids (shortened)."""
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            more = f" ... (+{len(value) - 30})" if len(value) > 30 else ""
            rows.append((key, ", ".join(value[:30]) + more or "-"))
        elif value is None or isinstance(value, str | int | float | bool):
            rows.append((key, value))
    return (
        "<h2 id='scores'>Scores against ground truth</h2><p class='note'>Detections are matched "
        "to true events by kind, footprint overlap and date interval "
        "(pipeline/evaluation/site.py). Ground truth exists only for the simulated demo "
        "catalog.</p>" + table(["metric", "value"], rows)
    )


def scenes_section(
    items: Sequence[pystac.Item], coreg: Mapping[str, Any], load_report: Mapping[str, Any]
) -> tuple[str, list[str]]:
    """The per-date table of scenes, loader verdict and co-registration, and the used dates.

    Parameters
    ----------
    items
        The source scene Items, grouped by solar day.
    coreg
        Co-registration results (``reference_date``, ``dates``: shift, quality, status, reason).
    load_report
        The loader's report (``dates_kept``, ``dates_dropped`` with reasons, ``valid_fraction``).

    Returns
    -------
    tuple of str and list of str
        The section's HTML, and the dates used for detection (kept and not failed).
    """
    by_day: dict[str, list[pystac.Item]] = {}
    for it in items:
        by_day.setdefault(scene_day(it), []).append(it)
    kept = [str(d) for d in load_report.get("dates_kept", [])]
    dropped = {str(d.get("date")): d for d in load_report.get("dates_dropped", [])}
    fractions = load_report.get("valid_fraction", {})
    reg = {str(d.get("date"))[:10]: d for d in coreg.get("dates", [])}
    ref = str(coreg.get("reference_date") or "")[:10]
    radiometry = load_report.get("radiometry", {})
    geometry = load_report.get("geometry", {})
    rows, used = [], []
    for day in sorted(set(by_day) | set(kept) | set(dropped) | set(reg)):
        scenes = "<br>".join(
            f"{esc(it.id)} ({fmt(it.properties.get('eo:cloud_cover'))} % cloud)"
            for it in by_day.get(day, [])
        )
        c = reg.get(day, {})
        status = c.get("status") if c else None
        ok = day in kept and status not in (None, "failed")
        why = (dropped.get(day) or {}).get("reason") or c.get("reason")
        if day not in kept and day not in dropped:
            why = why or "not loaded"
        notes = [why] if why else []
        rad = radiometry.get(day) or {}
        if rad.get("agrees") is False:
            notes.append(
                f"RADIOMETRY: metadata and pixels disagree ({rad.get('pixels')}); rule used: "
                f"{rad.get('rule')}, offset {rad.get('offset')}"
            )
        if c.get("residual_flag"):
            notes.append(
                f"LARGE RESIDUAL: {fmt(c.get('residual_px'))} px left after "
                "co-registration: check this date before trusting its detections"
            )
        if (geometry.get(day) or {}).get("refined") is False:
            notes.append("geometric refinement NOT applied (ESA metadata)")
        if ok:
            used.append(day)
        rows.append(
            [day + (" (reference)" if day == ref else ""), Raw(scenes or "-"),
             fractions.get(day), "dropped" if day in dropped else "kept" if day in kept else "-",
             _radiometry_cell(rad), c.get("shift_x_px"), c.get("shift_y_px"), c.get("quality"),
             status, c.get("residual_px"), _refinement_cell(geometry.get(day)),
             ("yes, flagged" if c.get("residual_flag") else "yes") if ok else "no",
             "; ".join(str(n) for n in notes) or None]
        )  # fmt: skip
    headers = [
        "date", "scenes (STAC Items)", "valid fraction", "loader", "radiometry (rule: pixels)",
        "shift x (px, E+)", "shift y (px, N+)", "quality", "co-registration", "residual (px)",
        "geometric refinement (metadata)", "used", "why not / note",
    ]  # fmt: skip
    html = (
        "<h2 id='scenes'>Scenes and co-registration</h2><p class='note'>One row per acquisition "
        "date (Items of the same day are fused). A shift is where that date's content lay "
        "relative to the reference date, in site-grid pixels, east and north positive; it was "
        "removed before detection. A date is used when the loader kept it and co-registration "
        "did not fail. Radiometry: the offset rule the Items' metadata chose, checked against "
        "the date's dark objects (data/&lt;site&gt;/load.json). Residual: the shift left after "
        "co-registration; a large one is flagged. Geometric refinement: what the Items say of "
        "ESA's refinement, where they say it.</p>"
        + table(headers, rows, sortable=True, table_id="scenes-table")
    )
    return html, used


def _radiometry_cell(check: Mapping[str, Any]) -> str | None:
    """``offset -0.1 (raster:bands): agree`` for the scenes table; None when not checked."""
    if not check:
        return None
    verdict = {True: "pixels agree", False: "PIXELS DISAGREE", None: "pixels cannot tell"}
    return f"offset {check.get('offset')} ({check.get('rule')}): {verdict[check.get('agrees')]}"


def _refinement_cell(geometry: Mapping[str, Any] | None) -> str | None:
    """Refined / NOT refined / unknown, with the quality figure where the Items give one."""
    if not geometry:
        return None
    refined = geometry.get("refined")
    text = {True: "refined", False: "NOT refined", None: "unknown"}[refined]
    if geometry.get("quality") is not None:
        text += f"; {geometry.get('quality_source')} {geometry.get('quality')}"
    return text


def detections_table(props: Sequence[Mapping[str, Any]]) -> str:
    """The sortable table of every detection, each id linking to its card."""
    cols = ["kind", "date_before", "date_after", "area_m2", "confidence", "score", "zone"]
    rows = []
    for p in props:
        did = str(p.get("id"))
        lon, lat = p.get("centroid_lon"), p.get("centroid_lat")
        rows.append(
            [Raw(f"<a href='#{esc(did)}'>{esc(did)}</a>", did)]
            + [p.get(c) for c in cols]
            + [_round6(lon), _round6(lat)]
            + ["yes" if p.get("transient") else "no"]
        )
    headers = ["id", *cols, "lon", "lat", "transient"]
    return (
        "<h2 id='all-detections'>All detections</h2><p class='note'>Click a column header to "
        "sort; click an id to see its views.</p>"
        + table(headers, rows, sortable=True, table_id="detections-table")
    )


def _round6(v: Any) -> Any:
    return round(float(v), 6) if is_num(v) else v


def detection_card(props: Mapping[str, Any], img: str | None, lonlat: tuple[Any, Any]) -> str:
    """One detection: its facts and its triptych (or why there is none)."""
    did = str(props.get("id"))
    kind = str(props.get("kind"))
    lon, lat = lonlat
    where = f"{lon:.6f}, {lat:.6f}" if is_num(lon) and is_num(lat) else "-"
    before = props.get("date_before")
    latest = props.get("date_before_latest")
    interval = f"after {esc(before)}" + (
        f" (last clear view up to {esc(latest)})" if latest and latest != before else ""
    )
    facts = [
        f"<span class='{esc(kind)}'>{esc(kind)}</span>",
        f"<span>{interval}, by {esc(props.get('date_after'))}</span>",
        f"<span>area {fmt(props.get('area_m2'))} m²</span>",
        f"<span>confidence {fmt(props.get('confidence'))}</span>",
        f"<span>score {fmt(props.get('score'))}</span>",
        f"<span>zone {esc(props.get('zone') or '(outside zones)')}</span>",
        f"<span>lon, lat {where}</span>",
    ]
    if props.get("transient"):
        facts.append("<span class='note'>transient: undone at the next clear view</span>")
    pic = (
        f"<img src='{esc(img)}' alt='before, after and difference views of {esc(did)}' "
        "loading='eager'>"
        if img
        else "<p class='note'>No triptych: a date of this detection is not in the cube.</p>"
    )
    return (
        f"<div class='card' id='{esc(did)}'><h3>{esc(did)}</h3>"
        f"<p class='facts'>{''.join(facts)}</p>{pic}</div>"
    )


def index_page(sites: Sequence[Mapping[str, Any]]) -> str:
    """The page linking every site's report.

    Parameters
    ----------
    sites
        One mapping per site: ``name`` (required), and optionally ``title``, ``href`` (default
        ``<name>/index.html``), ``period``, ``n_dates``, ``n_detections``, ``n_removed``,
        ``n_appeared``, ``object_f1`` and ``simulated`` (any simulated site puts the banner on
        the index).
    """
    rows = []
    for s in sites:
        name = str(s["name"])
        href = s.get("href") or f"{name}/index.html"
        link = Raw(f"<a href='{esc(href)}'>{esc(s.get('title') or name)}</a>", s.get("title"))
        rows.append(
            [link, name, s.get("period"), s.get("n_dates"), s.get("n_detections"),
             s.get("n_removed"), s.get("n_appeared"), s.get("object_f1")]
        )  # fmt: skip
    headers = ["site", "name", "period", "dates", "detections", "removed", "appeared", "object F1"]
    body = (
        "<h1>basewatch reports</h1><p class='note'>One report per site; each folder opens "
        "offline.</p>" + table(headers, rows, sortable=True, table_id="sites")
    )
    simulated = any(_truthy(s.get("simulated")) for s in sites)
    return page("basewatch reports", body, simulated=simulated)


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() not in ("", "0", "false", "no")
    return bool(v)
