"""The HTML report of a site: summary, co-registration, quicklooks, detections, metrics (I/O).

:func:`write_report` writes ``out_dir/index.html`` with its PNG quicklooks and a copy of the
detections beside it: one self-contained folder with relative links that opens offline. The folder
is built under a temporary name next to ``out_dir`` and swapped in at the end, so a crash never
leaves half a report. :func:`write_index` writes the page that links the reports of every site.

Quicklooks are true colour (red, green, blue) with a 2-98 percentile stretch per band taken from
the valid pixels of one date and applied unchanged to the other date of a pair, so brightness
differences between the panels are real. Invalid pixels are grey. Detections are drawn on the
cube's pixel grid (lon/lat polygons projected to the cube CRS with pyproj): removed in red,
appeared in cyan. Figures are drawn on matplotlib's Agg canvas (no pyplot, no display).
"""

from __future__ import annotations

import html
import json
import os
import shutil
import tempfile
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
import xarray as xr
from matplotlib import colormaps, patheffects
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from pyproj import Transformer
from shapely.affinity import affine_transform
from shapely.geometry import shape

from pipeline.errors import DataError

KIND_COLOURS: dict[str, str] = {"removed": "red", "appeared": "cyan"}
"""Outline colour of a detection, by kind."""
RGB_BANDS: tuple[str, str, str] = ("red", "green", "blue")
"""Cube variables of a true-colour quicklook."""
MAX_WIDTH_IN = 8.0
"""Figure width in inches; at :data:`DPI` this keeps every PNG at most 800 px wide."""
DPI = 100
"""Resolution of the PNGs."""
PAIR_PAD_PX = 16
"""Margin, in cube pixels, around a date pair's detections in its quicklooks."""
PAIR_MIN_PX = 48
"""Smallest side, in cube pixels, of a date pair's quicklooks."""
INVALID_GREY = 0.5
"""Grey level of invalid pixels in the quicklooks."""

_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1000px;color:#222;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:2px 6px;text-align:left}th{background:#f2f2f2}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.banner{background:#b00020;color:#fff;font-weight:bold;padding:.6em 1em;font-size:1.1em}
.ok{color:#1a7f37}.shifted{color:#9a6700}.failed,.removed{color:#b00020;font-weight:bold}
.appeared{color:#007c8c;font-weight:bold}
img{max-width:100%;height:auto;border:1px solid #ddd}.note{color:#666;font-size:.9em}
"""

_BANNER = (
    '<div class="banner">SIMULATED DEMO DATA: the scenes, detections and scores below come from '
    "a generated catalog, not from real Sentinel-2 acquisitions.</div>"
)

_WORD_CLASSES = frozenset({"ok", "shifted", "failed", "removed", "appeared"})

Detections = list[tuple[dict, Any]]
"""(properties, geometry in (col, row) pixel coordinates or None) of each detection."""


# ----------------------------------------------------------------------------------- geometry


def _grid(cube: xr.Dataset) -> tuple[str, list[float]]:
    """The cube CRS, and the affine (shapely order) from its metres to pixel (col, row)."""
    crs = cube.attrs.get("crs")
    if not crs and "spatial_ref" in cube.coords:
        crs = cube.coords["spatial_ref"].attrs.get("crs_wkt")
    if not crs:
        raise DataError("cube has no 'crs' attribute: rerun the load stage")
    x, y = cube["x"].values.astype(float), cube["y"].values.astype(float)
    if x.size < 2 or y.size < 2:
        raise DataError("cube is smaller than 2 x 2 pixels: nothing to draw a report from")
    dx, dy = x[1] - x[0], y[1] - y[0]
    return str(crs), [1.0 / dx, 0.0, 0.0, 1.0 / dy, -x[0] / dx, -y[0] / dy]


def _detections_px(detections: dict, crs: str, affine: list[float]) -> Detections:
    """Detections of a lon/lat FeatureCollection on the cube's pixel grid."""
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)

    def project(c: np.ndarray) -> np.ndarray:
        return np.column_stack(tr.transform(c[:, 0], c[:, 1]))

    out = []
    for feat in detections.get("features", []):
        geom = feat.get("geometry")
        px = affine_transform(shapely.transform(shape(geom), project), affine) if geom else None
        out.append((dict(feat.get("properties") or {}), px))
    return sorted(out, key=lambda d: tuple(str(d[0].get(k)) for k in ("date_before", "id")))


def _draw_outline(ax: Any, geom: Any, colour: str, *, lw: float = 1.2, ls: str = "-") -> None:
    for poly in getattr(geom, "geoms", [geom]):
        if poly.geom_type == "Polygon" and not poly.is_empty:
            ax.plot(*poly.exterior.xy, color=colour, lw=lw, ls=ls)


def _draw_detections(ax: Any, dets: Detections, *, circles: bool = False) -> None:
    kinds = set()
    for props, geom in dets:
        if geom is None or geom.is_empty:
            continue
        kind = str(props.get("kind"))
        kinds.add(kind)
        _draw_outline(ax, geom, KIND_COLOURS.get(kind, "white"))
        if circles:  # small objects stay visible on a site-wide view
            c = geom.centroid
            ax.scatter([c.x], [c.y], s=60, facecolors="none", edgecolors=KIND_COLOURS.get(kind))
    handles = [
        Line2D([], [], color=KIND_COLOURS.get(k, "white"), lw=2, label=k) for k in sorted(kinds)
    ]
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=7)


# ------------------------------------------------------------------------------------ rasters


class _Dates:
    """True-colour arrays of the cube's dates, each read once."""

    def __init__(self, cube: xr.Dataset) -> None:
        missing = [b for b in RGB_BANDS if b not in cube]
        if missing:
            raise DataError(f"cube lacks band(s) {', '.join(missing)}: rerun the load stage")
        self.cube = cube
        self.dates = [str(d) for d in np.datetime_as_string(cube["time"].values, unit="D")]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def index(self, day: str) -> int | None:
        return self.dates.index(day) if day in self.dates else None

    def rgb(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(reflectance (rows, cols, 3) float32, valid (rows, cols) bool) of date ``i``."""
        if i not in self._cache:
            one = self.cube.isel(time=i)
            rgb = np.stack([np.asarray(one[b].values, dtype=np.float32) for b in RGB_BANDS], -1)
            valid: np.ndarray = np.asarray(np.isfinite(rgb).all(axis=-1))
            if "valid" in one:
                valid &= np.asarray(one["valid"].values, dtype=bool)
            self._cache[i] = (rgb, valid)
        return self._cache[i]


def _stretch(rgb: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-band 2-98 percentile limits of the valid pixels (0..0.3 when none is valid)."""
    pixels = rgb[valid]
    if pixels.shape[0] == 0:
        return np.zeros(3), np.full(3, 0.3)
    lo, hi = np.percentile(pixels, [2.0, 98.0], axis=0)
    return lo, np.maximum(hi, lo + 1e-6)


def _display(rgb: np.ndarray, valid: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    img = np.clip((np.nan_to_num(rgb) - lo) / (hi - lo), 0.0, 1.0)
    img[~valid] = INVALID_GREY
    return img


def _figure(rows: int, cols: int, n_panels: int) -> Figure:
    height = min(MAX_WIDTH_IN, MAX_WIDTH_IN / n_panels * rows / cols) + 0.7
    return Figure(figsize=(MAX_WIDTH_IN, height), dpi=DPI, layout="constrained")


def _overview_png(
    path: Path, dates: _Dates, i: int, dets: Detections, zones_px: list[tuple[str, Any]]
) -> None:
    rgb, valid = dates.rgb(i)
    rows, cols = valid.shape
    fig = _figure(rows, cols, 1)
    ax = fig.add_subplot()
    ax.imshow(_display(rgb, valid, *_stretch(rgb, valid)), interpolation="antialiased")
    stroke = [patheffects.withStroke(linewidth=2, foreground="black")]
    for name, geom in zones_px:
        _draw_outline(ax, geom, "yellow", lw=0.8, ls="--")
        p = geom.representative_point()
        ax.text(p.x, p.y, name, color="yellow", fontsize=7, ha="center", path_effects=stroke)
    _draw_detections(ax, dets, circles=True)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(f"{dates.dates[i]}: all detections (zones dashed)", fontsize=9)
    fig.savefig(path, dpi=DPI)


def _crop_window(geoms: Sequence[Any], shape_rc: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns around ``geoms`` (pixel coords), padded, at least PAIR_MIN_PX wide."""
    if not geoms:
        return slice(0, shape_rc[0]), slice(0, shape_rc[1])
    minx, miny, maxx, maxy = shapely.total_bounds(np.asarray(geoms, dtype=object))

    def window(lo: float, hi: float, n: int) -> slice:
        a, b = int(np.floor(lo)) - PAIR_PAD_PX, int(np.ceil(hi)) + 1 + PAIR_PAD_PX
        if b - a < PAIR_MIN_PX:
            a = (a + b) // 2 - PAIR_MIN_PX // 2
            b = a + PAIR_MIN_PX
        a, b = max(a, 0), min(b, n)
        return slice(a, max(b, a + 1))

    return window(miny, maxy, shape_rc[0]), window(minx, maxx, shape_rc[1])


def _pair_png(path: Path, dates: _Dates, i_b: int, i_a: int, dets: Detections) -> None:
    rgb_b, valid_b = dates.rgb(i_b)
    rgb_a, valid_a = dates.rgb(i_a)
    lo, hi = _stretch(rgb_b, valid_b)
    rs, cs = _crop_window([g for _, g in dets if g is not None and not g.is_empty], valid_b.shape)
    extent = (cs.start - 0.5, cs.stop - 0.5, rs.stop - 0.5, rs.start - 0.5)
    both = valid_b[rs, cs] & valid_a[rs, cs]
    diff = rgb_a[rs, cs].mean(axis=-1) - rgb_b[rs, cs].mean(axis=-1)
    diff = np.where(both, diff, np.nan)
    vmax = max(float(np.nanpercentile(np.abs(diff), 99)) if both.any() else 0.0, 1e-3)

    fig = _figure(rs.stop - rs.start, cs.stop - cs.start, 3)
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    for ax, i, rgb, valid in ((axes[0], i_b, rgb_b, valid_b), (axes[1], i_a, rgb_a, valid_a)):
        ax.imshow(_display(rgb[rs, cs], valid[rs, cs], lo, hi), extent=extent)
        ax.set_title(f"{'before' if i == i_b else 'after'} {dates.dates[i]}", fontsize=9)
    cmap = colormaps["RdBu_r"].with_extremes(bad=str(INVALID_GREY))
    im = axes[2].imshow(diff, extent=extent, cmap=cmap, vmin=-vmax, vmax=vmax)
    axes[2].set_title("after - before (mean RGB refl.)", fontsize=9)
    fig.colorbar(im, ax=axes[2], shrink=0.7)
    for ax in axes:
        _draw_detections(ax, dets)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xticks([])
        ax.set_yticks([])
        if ax is not axes[1] and ax.get_legend():
            ax.get_legend().remove()
    fig.savefig(path, dpi=DPI)


# --------------------------------------------------------------------------------------- HTML


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return _e(round(value, 4) if isinstance(value, float) else value)


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """HTML table; numbers right-aligned, statuses and kinds coloured."""
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for v in row:
            cls = "num" if _is_num(v) else (v if v in _WORD_CLASSES else "")
            cells.append(f"<td class='{cls}'>{_fmt(v)}</td>" if cls else f"<td>{_fmt(v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _truthy(v: Any) -> bool:
    if isinstance(v, str):
        return v.strip().lower() not in ("", "0", "false", "no")
    return bool(v)


def _page(title: str, body: str, simulated: bool) -> str:
    banner = _BANNER if simulated else ""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{_e(title)}</title><style>{_CSS}</style></head>"
        f"<body>{banner}{body}{banner}</body></html>\n"
    )


def _summary_section(dates: list[str], coreg: dict, load_report: dict, props: list[dict]) -> str:
    kept = list(load_report.get("dates_kept", dates))
    dropped = list(load_report.get("dates_dropped", []))
    failed = [d for d in coreg.get("dates", []) if d.get("status") == "failed"]
    period = f"{dates[0]} to {dates[-1]}" if dates else "no dates"
    kinds = Counter(str(p.get("kind")) for p in props)
    parts = [
        f"<h2>Summary</h2><ul><li>Period: <b>{_e(period)}</b> ({len(dates)} dates in the cube, "
        f"{_e(load_report.get('n_items', '?'))} STAC Items)</li>"
        f"<li>Dates kept by the loader: <b>{len(kept)}</b>; dropped: <b>{len(dropped)}</b>; "
        f"rejected by co-registration: <b>{len(failed)}</b>; used for detection: "
        f"<b>{len(kept) - len(failed)}</b></li><li>Detections: <b>{len(props)}</b> "
        f"({kinds['removed']} removed, {kinds['appeared']} appeared)</li></ul>"
    ]
    if dropped:
        rows = [(d.get("date"), d.get("valid_fraction"), d.get("reason")) for d in dropped]
        parts.append("<h3>Dates dropped by the loader</h3>")
        parts.append(_table(["date", "valid fraction", "reason"], rows))
    if failed:
        parts.append("<h3>Dates rejected by co-registration</h3>")
        parts.append(_table(["date", "reason"], [(d.get("date"), d.get("reason")) for d in failed]))
    zones = Counter((p.get("zone") or "(outside zones)", str(p.get("kind"))) for p in props)
    if zones:
        names = sorted({z for z, _ in zones})
        rows = [(z, zones[(z, "removed")], zones[(z, "appeared")]) for z in names]
        parts.append("<h3>Detections per zone</h3>")
        parts.append(_table(["zone", "removed", "appeared"], rows))
    return "".join(parts)


def _coreg_section(coreg: dict) -> str:
    ref = str(coreg.get("reference_date") or "")[:10]
    keys = ("shift_x_px", "shift_y_px", "quality", "n_valid", "status", "reason")
    rows = [
        [f"{d.get('date')}{' (reference)' if str(d.get('date'))[:10] == ref else ''}"]
        + [d.get(k) for k in keys]
        for d in coreg.get("dates", [])
    ]
    headers = ["date", "shift x (px, E+)", "shift y (px, N+)", "quality", "valid px", "status"]
    return (
        f"<h2>Co-registration</h2><p>Reference date: <b>{_e(ref or '-')}</b>. A shift is where "
        "that date's content lies relative to the reference, in site-grid pixels, east and north "
        "positive.</p>" + _table([*headers, "reason"], rows)
    )


def _metrics_section(metrics: dict) -> str:
    rows: list[tuple[str, Any]] = []
    for key, value in metrics.items():
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            more = f" ... (+{len(value) - 30})" if len(value) > 30 else ""
            rows.append((key, ", ".join(value[:30]) + more or "-"))
        elif value is None or isinstance(value, str | int | float | bool):
            rows.append((key, value))
    return (
        "<h2>Scores against ground truth</h2><p class='note'>Detections are matched to true "
        "events by kind, footprint overlap and date interval (see pipeline/evaluate.py).</p>"
        + _table(["metric", "value"], rows)
    )


def _pairs_section(folder: Path, dates: _Dates, dets: Detections) -> str:
    pairs: dict[tuple[str, str], Detections] = {}
    for props, geom in dets:
        key = (str(props.get("date_before"))[:10], str(props.get("date_after"))[:10])
        pairs.setdefault(key, []).append((props, geom))
    parts = ["<h2>Date pairs with detections</h2>"] + ([] if pairs else ["<p>No detections.</p>"])
    for (before, after), pair_dets in sorted(pairs.items()):
        kinds = Counter(str(p.get("kind")) for p, _ in pair_dets)
        parts.append(
            f"<h3>{_e(before)} &rarr; {_e(after)}: {len(pair_dets)} detection(s) "
            f"({kinds['removed']} removed, {kinds['appeared']} appeared)</h3><p class='note'>"
            + _e(", ".join(str(p.get("id")) for p, _ in pair_dets))
            + "</p>"
        )
        i_b, i_a = dates.index(before), dates.index(after)
        if i_b is None or i_a is None:
            parts.append("<p class='note'>One of these dates is not in the cube.</p>")
            continue
        name = f"pair_{before}_{after}.png"
        _pair_png(folder / name, dates, i_b, i_a, pair_dets)
        parts.append(
            f"<img src='{_e(name)}' alt='quicklooks {_e(before)} and {_e(after)}'>"
            "<p class='note'>Same stretch on both dates (2-98 % of the before date's valid "
            "pixels); the difference is of the mean red/green/blue reflectance, grey where "
            "either date is invalid.</p>"
        )
    return "".join(parts)


def _detections_table(props: list[dict]) -> str:
    cols = ["id", "kind", "date_before", "date_after", "area_m2", "score", "confidence", "zone"]
    rows = []
    for p in props:
        lonlat = [p.get("centroid_lon"), p.get("centroid_lat")]
        rows.append([p.get(c) for c in cols] + [f"{v:.6f}" if _is_num(v) else v for v in lonlat])
    return "<h2>All detections</h2>" + _table([*cols, "lon", "lat"], rows)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _swap_in(tmp: Path, out_dir: Path) -> None:
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


# ------------------------------------------------------------------------------------- public


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
    zones_utm: list[tuple[str, Any]] | None = None,
    simulated: bool = False,
) -> Path:
    """Write the HTML report of one site, with its quicklooks, into ``out_dir``.

    Parameters
    ----------
    out_dir
        The report folder; replaced as a whole (built beside it, then swapped in).
    site_title, site_name
        Human-readable title and short name of the site.
    cube
        The (co-registered) cube: ``red``, ``green``, ``blue`` (and ``valid``) over
        ``(time, y, x)``, x/y pixel centres in metres, attr ``crs``. Numpy or dask backed; only
        the dates shown are read.
    detections
        GeoJSON FeatureCollection of the detections, lon/lat.
    coreg
        Co-registration results (``reference_date``, ``dates``).
    load_report
        The loader's report (``dates_kept``, ``dates_dropped``, ``n_items``).
    metrics
        Scores against ground truth, shown when given.
    zones_utm
        ``(name, geometry)`` of the site's zones in the cube CRS, outlined on the overview.
    simulated
        Show the SIMULATED DEMO DATA banner. It is shown too when the cube attrs, the
        detections' top-level properties or the metrics say ``simulated``.

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
    simulated = (
        simulated
        or _truthy(cube.attrs.get("simulated"))
        or _truthy((detections.get("properties") or {}).get("simulated"))
        or _truthy(metrics.get("simulated"))
    )
    crs, affine = _grid(cube)
    dates = _Dates(cube)
    dets = _detections_px(detections, crs, affine)
    zones_px = [(name, affine_transform(geom, affine)) for name, geom in zones_utm or []]
    props = [p for p, _ in dets]

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        tmp.chmod(0o755)
        body = [
            f"<h1>{_e(site_title)}</h1><p class='note'>site <code>{_e(site_name)}</code> "
            "&middot; <a href='detections.geojson'>detections.geojson</a></p>",
            _summary_section(dates.dates, coreg, load_report, props),
            _metrics_section(metrics) if metrics else "",
            "<h2>Overview</h2>",
        ]
        if dates.dates:
            ref = dates.index(str(coreg.get("reference_date") or "")[:10])
            if ref is None:  # the clearest date
                ref = int(np.argmax([dates.rgb(i)[1].mean() for i in range(len(dates.dates))]))
            _overview_png(tmp / "overview.png", dates, ref, dets, zones_px)
            body.append(
                f"<p>True colour on {_e(dates.dates[ref])}; removed in red, appeared in cyan, "
                "zones dashed yellow; invalid pixels grey.</p>"
                "<img src='overview.png' alt='site overview'>"
            )
        else:
            body.append("<p>The cube holds no date.</p>")
        body.append(_coreg_section(coreg))
        body.append(_pairs_section(tmp, dates, dets))
        body.append(_detections_table(props))
        _write_text(tmp / "detections.geojson", json.dumps(detections))
        _write_text(tmp / "index.html", _page(f"basewatch: {site_title}", "".join(body), simulated))
        _swap_in(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir / "index.html"


def write_index(reports_root: str | Path, sites: list[dict]) -> Path:
    """Write ``reports_root/index.html`` linking the report of each site.

    Parameters
    ----------
    reports_root
        Folder holding one report folder per site.
    sites
        One dict per site: ``name`` (required), and optionally ``title``, ``href`` (default
        ``<name>/index.html``), ``period``, ``n_detections``, ``object_f1`` and ``simulated``
        (any simulated site puts the banner on the index).

    Returns
    -------
    Path
        The index file.
    """
    root = Path(reports_root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in sites:
        name = str(s["name"])
        href = s.get("href") or f"{name}/index.html"
        link = f"<a href='{_e(href)}'>{_e(s.get('title') or name)}</a>"
        cells = [name, s.get("period"), s.get("n_detections"), s.get("object_f1")]
        rows.append(
            f"<tr><td>{link}</td>" + "".join(f"<td>{_fmt(c)}</td>" for c in cells) + "</tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("site", "name", "period", "detections", "object F1"))
    body = f"<h1>basewatch reports</h1><table><tr>{head}</tr>{''.join(rows)}</table>"
    path = root / "index.html"
    simulated = any(_truthy(s.get("simulated")) for s in sites)
    _write_text(path, _page("basewatch reports", body, simulated))
    return path
