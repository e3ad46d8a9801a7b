"""Figures of a site: true-colour views, the site map, detection triptychs, occupancy (I/O-free).

Every function returns a matplotlib :class:`~matplotlib.figure.Figure` drawn on the Agg canvas
(no pyplot, no display); the report saves them as PNG, a notebook shows them inline.

True colour is (red, green, blue) reflectance stretched linearly between the 2 and 98
percentiles of the valid values of the three bands (one range, so colours stay natural; at least
:data:`MIN_STRETCH_RANGE` wide, so open water is not stretched into noise). The site map uses
those of the reference date. A triptych uses those of its window on **both** of its dates
together, applied unchanged to both panels: a brightness difference between before and after is
a difference on the ground (up to the radiometric drift between dates), never an artefact of the
display, and a dark ship on a dark sea still gets the contrast of its own surroundings. Invalid
pixels (cloud, shadow, no data) are grey. Detections are drawn on the cube's pixel grid (their
lon/lat polygons projected to the cube CRS): removed in red, appeared in cyan.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
from shapely.geometry.base import BaseGeometry

from pipeline.errors import DataError

KIND_COLOURS: dict[str, str] = {"removed": "red", "appeared": "cyan"}
"""Outline colour of a detection, by kind."""
RGB_BANDS: tuple[str, str, str] = ("red", "green", "blue")
"""Cube variables of a true-colour view."""
DPI = 100
"""Resolution of the figures (pixels per inch)."""
MAP_WIDTH_IN = 8.0
"""Width of the site map and the occupancy plot, inches (800 px at :data:`DPI`)."""
TRIPTYCH_WIDTH_IN = 7.5
"""Width of a triptych, inches."""
CROP_PAD_PX = 12
"""Margin, in cube pixels, around a detection in its triptych."""
CROP_MIN_PX = 40
"""Smallest side, in cube pixels, of a triptych panel."""
INVALID_GREY = 0.5
"""Grey level of invalid pixels."""
MIN_STRETCH_RANGE = 0.08
"""Smallest reflectance range of a stretch: open water is not stretched into noise."""
MIN_DIFF_LIMIT = 0.02
"""Smallest colour-scale limit (reflectance) of a triptych's difference panel."""


@dataclass(frozen=True)
class Detection:
    """A detection placed on the cube's pixel grid."""

    props: dict[str, Any]
    """Its GeoJSON properties (``id``, ``kind``, ``date_before``, ``date_after``, ...)."""
    geom: BaseGeometry | None
    """Its polygon in (col, row) pixel coordinates (pixel centres at integers), or None."""


def grid_affine(cube: xr.Dataset) -> tuple[str, list[float]]:
    """The cube's CRS, and the affine (shapely order) from its metres to pixel (col, row).

    Raises
    ------
    DataError
        When the cube has no CRS or is smaller than 2 x 2 pixels.
    """
    crs = cube.attrs.get("crs")
    if not crs and "spatial_ref" in cube.coords:
        crs = cube.coords["spatial_ref"].attrs.get("crs_wkt")
    if not crs:
        raise DataError("cube has no 'crs' attribute: rerun the load stage")
    x, y = cube["x"].values.astype(float), cube["y"].values.astype(float)
    if x.size < 2 or y.size < 2:
        raise DataError("cube is smaller than 2 x 2 pixels: nothing to draw")
    dx, dy = x[1] - x[0], y[1] - y[0]
    return str(crs), [1.0 / dx, 0.0, 0.0, 1.0 / dy, -x[0] / dx, -y[0] / dy]


def detections_on_grid(detections: Mapping[str, Any], cube: xr.Dataset) -> list[Detection]:
    """The detections of a lon/lat FeatureCollection on the cube's pixel grid.

    Parameters
    ----------
    detections
        GeoJSON FeatureCollection (``data/<site>/detections.geojson``).
    cube
        The cube the detections were found in (for its CRS and grid).

    Returns
    -------
    list of Detection
        Sorted by (``date_after``, ``id``).
    """
    crs, affine = grid_affine(cube)
    tr = Transformer.from_crs("EPSG:4326", crs, always_xy=True)

    def project(c: np.ndarray) -> np.ndarray:
        return np.column_stack(tr.transform(c[:, 0], c[:, 1]))

    out = []
    for feat in detections.get("features", []):
        geom = feat.get("geometry")
        px = affine_transform(shapely.transform(shape(geom), project), affine) if geom else None
        out.append(Detection(dict(feat.get("properties") or {}), px))
    return sorted(out, key=lambda d: (str(d.props.get("date_after")), str(d.props.get("id"))))


def zones_on_grid(
    zones_utm: Sequence[tuple[str, BaseGeometry]], cube: xr.Dataset
) -> list[tuple[str, BaseGeometry]]:
    """``(name, polygon)`` of zones given in the cube CRS, moved to (col, row) pixel coordinates."""
    _, affine = grid_affine(cube)
    return [(name, affine_transform(geom, affine)) for name, geom in zones_utm]


class TrueColour:
    """True-colour arrays of a cube's dates, each read once, and the report's stretch.

    Parameters
    ----------
    cube
        ``red``, ``green``, ``blue`` (and ``valid``) on (time, y, x); numpy or dask backed.
    reference
        Date (``YYYY-MM-DD``) whose valid pixels set the stretch; the clearest date when None or
        absent from the cube.

    Raises
    ------
    DataError
        When a true-colour band is missing.
    """

    def __init__(self, cube: xr.Dataset, reference: str | None = None) -> None:
        missing = [b for b in RGB_BANDS if b not in cube]
        if missing:
            raise DataError(f"cube lacks band(s) {', '.join(missing)}: rerun the load stage")
        self.cube = cube
        self.dates: list[str] = [
            str(d) for d in np.datetime_as_string(cube["time"].values, unit="D")
        ]
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        ref = self.index(reference) if reference else None
        if ref is None and self.dates:
            ref = int(np.argmax([self.rgb(i)[1].mean() for i in range(len(self.dates))]))
        self.reference: int | None = ref
        self.lo, self.hi = self._limits(ref)

    def index(self, day: str | None) -> int | None:
        """Position of date ``day`` (``YYYY-MM-DD``) in the cube, or None."""
        day = str(day)[:10] if day else None
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

    def _limits(self, i: int | None) -> tuple[np.ndarray, np.ndarray]:
        return self.limits([] if i is None else [i])

    def limits(
        self, indices: Sequence[int], rows: slice = slice(None), cols: slice = slice(None)
    ) -> tuple[np.ndarray, np.ndarray]:
        """Stretch limits: the 2 and 98 percentiles of all three bands' valid values of dates
        ``indices`` in a window, at least :data:`MIN_STRETCH_RANGE` apart (0..0.3 when none is
        valid). One range for the three bands keeps the colours natural."""
        parts = [self.rgb(i)[0][rows, cols][self.rgb(i)[1][rows, cols]] for i in indices]
        pixels = np.concatenate(parts) if parts else np.zeros((0, 3), np.float32)
        if pixels.shape[0] == 0:
            return np.zeros(3), np.full(3, 0.3)
        lo, hi = (float(v) for v in np.percentile(pixels, [2.0, 98.0]))
        hi = max(hi, lo + MIN_STRETCH_RANGE)
        return np.full(3, lo), np.full(3, hi)

    def image(
        self,
        i: int,
        rows: slice = slice(None),
        cols: slice = slice(None),
        limits: tuple[np.ndarray, np.ndarray] | None = None,
        *,
        mask: bool = True,
    ) -> np.ndarray:
        """Displayable (rows, cols, 3) image of date ``i`` in 0..1, invalid pixels grey.

        ``limits`` = (low, high) per band; the reference date's by default. ``mask=False``
        shows the invalid pixels too (clouds as they are); missing values stay black.
        """
        lo, hi = limits if limits is not None else (self.lo, self.hi)
        rgb, valid = self.rgb(i)
        img = np.clip((np.nan_to_num(rgb[rows, cols]) - lo) / (hi - lo), 0.0, 1.0)
        if mask:
            img[~valid[rows, cols]] = INVALID_GREY
        return img


# ------------------------------------------------------------------------------------ drawing


def _outline(ax: Any, geom: BaseGeometry, colour: str, *, lw: float = 1.2, ls: str = "-") -> None:
    for poly in getattr(geom, "geoms", [geom]):
        if poly.geom_type == "Polygon" and not poly.is_empty:
            ax.plot(*poly.exterior.xy, color=colour, lw=lw, ls=ls)


def _legend(ax: Any, kinds: set[str]) -> None:
    handles = [
        Line2D([], [], color=KIND_COLOURS.get(k, "white"), lw=2, label=k) for k in sorted(kinds)
    ]
    if handles:
        ax.legend(handles=handles, loc="lower right", fontsize=7)


def _scale_bar(ax: Any, cols: int, rows: int, pixel_m: float) -> None:
    length_m = next((m for m in (2000, 1000, 500, 200, 100) if m / pixel_m <= cols / 4), 100)
    x0, y0 = cols * 0.04, rows * 0.95
    stroke = [patheffects.withStroke(linewidth=3, foreground="black")]
    ax.plot([x0, x0 + length_m / pixel_m], [y0, y0], color="white", lw=3, path_effects=stroke)
    ax.text(x0, y0 - rows * 0.015, f"{length_m} m", color="white", fontsize=8, path_effects=stroke)
    ax.annotate(
        "N", xy=(cols * 0.96, rows * 0.05), xytext=(cols * 0.96, rows * 0.14), color="white",
        ha="center", fontsize=9, path_effects=stroke,
        arrowprops={"arrowstyle": "-|>", "color": "white"},
    )  # fmt: skip


def site_map_figure(
    tc: TrueColour,
    detections: Sequence[Detection],
    zones: Sequence[tuple[str, BaseGeometry]] = (),
    *,
    date_index: int | None = None,
    pixel_m: float = 10.0,
) -> Figure:
    """A static map of the site: true colour, zones (dashed yellow), every detection.

    Parameters
    ----------
    tc
        True-colour views of the cube.
    detections
        Detections on the cube grid (:func:`detections_on_grid`); each is outlined and circled
        so that small objects stay visible at site scale.
    zones
        ``(name, polygon)`` on the cube grid (:func:`zones_on_grid`).
    date_index
        Date shown; the stretch's reference date by default.
    pixel_m
        Pixel size (metres), for the scale bar.

    Returns
    -------
    matplotlib.figure.Figure
        At most :data:`MAP_WIDTH_IN` x :data:`DPI` pixels wide.
    """
    i = tc.reference if date_index is None else date_index
    rows, cols = tc.cube.sizes["y"], tc.cube.sizes["x"]
    height = MAP_WIDTH_IN * rows / cols + 0.4
    fig = Figure(figsize=(MAP_WIDTH_IN, height), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    if i is not None:
        ax.imshow(tc.image(i), interpolation="antialiased")
        title = f"{tc.dates[i]}: zones (dashed) and all {len(detections)} detections"
    else:
        title = "no date in the cube"
    stroke = [patheffects.withStroke(linewidth=2, foreground="black")]
    for name, geom in zones:
        _outline(ax, geom, "yellow", lw=0.8, ls="--")
        p = geom.representative_point()
        ax.text(p.x, p.y, name, color="yellow", fontsize=7, ha="center", path_effects=stroke)
    kinds: set[str] = set()
    for det in detections:
        if det.geom is None or det.geom.is_empty:
            continue
        kind = str(det.props.get("kind"))
        kinds.add(kind)
        colour = KIND_COLOURS.get(kind, "white")
        _outline(ax, det.geom, colour)
        c = det.geom.centroid
        ax.scatter([c.x], [c.y], s=70, facecolors="none", edgecolors=colour, linewidths=1.0)
    _legend(ax, kinds)
    _scale_bar(ax, cols, rows, pixel_m)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return fig


def crop_window(geom: BaseGeometry | None, shape_rc: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns around ``geom`` (pixel coords), padded, at least :data:`CROP_MIN_PX`."""
    if geom is None or geom.is_empty:
        return slice(0, shape_rc[0]), slice(0, shape_rc[1])
    minx, miny, maxx, maxy = geom.bounds

    def window(lo: float, hi: float, n: int) -> slice:
        a, b = int(np.floor(lo)) - CROP_PAD_PX, int(np.ceil(hi)) + 1 + CROP_PAD_PX
        if b - a < CROP_MIN_PX:
            a = (a + b) // 2 - CROP_MIN_PX // 2
            b = a + CROP_MIN_PX
        if a < 0:
            a, b = 0, b - a
        if b > n:
            a, b = max(0, a - (b - n)), n
        return slice(a, max(b, a + 1))

    return window(miny, maxy, shape_rc[0]), window(minx, maxx, shape_rc[1])


def before_view(tc: TrueColour, det: Detection, rows: slice, cols: slice) -> int | None:
    """The date shown as "before": of the dates from ``date_before`` to ``date_before_latest``
    (the object's last clear views), the one with most valid pixels in the window; the latest
    on ties."""
    first = str(det.props.get("date_before"))[:10]
    last = str(det.props.get("date_before_latest") or first)[:10]
    candidates = [i for i, d in enumerate(tc.dates) if first <= d <= last]
    if not candidates:
        return tc.index(first)
    return max(candidates, key=lambda i: (tc.rgb(i)[1][rows, cols].mean(), i))


def triptych_figure(
    tc: TrueColour,
    det: Detection,
    others: Sequence[Detection] = (),
) -> Figure | None:
    """Before, after and difference views of one detection, the object outlined on each.

    Parameters
    ----------
    tc
        True-colour views of the cube; both dates get the same stretch (their window's).
    det
        The detection; before is its last clear view (:func:`before_view`), after its
        ``date_after``.
    others
        Other detections, drawn thin and dashed where they fall in the window.

    Returns
    -------
    matplotlib.figure.Figure or None
        None when a date of the detection is not in the cube.
    """
    shape_rc = (tc.cube.sizes["y"], tc.cube.sizes["x"])
    rs, cs = crop_window(det.geom, shape_rc)
    i_b, i_a = before_view(tc, det, rs, cs), tc.index(det.props.get("date_after"))
    if i_b is None or i_a is None:
        return None
    rgb_b, valid_b = tc.rgb(i_b)
    rgb_a, valid_a = tc.rgb(i_a)
    both = valid_b[rs, cs] & valid_a[rs, cs]
    diff = rgb_a[rs, cs].mean(axis=-1) - rgb_b[rs, cs].mean(axis=-1)
    diff = np.where(both, diff, np.nan)
    vmax = max(float(np.nanpercentile(np.abs(diff), 99)) if both.any() else 0.0, MIN_DIFF_LIMIT)
    extent = (cs.start - 0.5, cs.stop - 0.5, rs.stop - 0.5, rs.start - 0.5)

    n_rows, n_cols = rs.stop - rs.start, cs.stop - cs.start
    height = TRIPTYCH_WIDTH_IN / 3.3 * n_rows / n_cols + 0.5
    fig = Figure(figsize=(TRIPTYCH_WIDTH_IN, height), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3, sharex=True, sharey=True)
    limits = tc.limits([i_b, i_a], rs, cs)
    axes[0].imshow(tc.image(i_b, rs, cs, limits), extent=extent)
    axes[0].set_title(f"before {tc.dates[i_b]}", fontsize=9)
    axes[1].imshow(tc.image(i_a, rs, cs, limits), extent=extent)
    axes[1].set_title(f"after {tc.dates[i_a]}", fontsize=9)
    cmap = colormaps["RdBu_r"].with_extremes(bad=str(INVALID_GREY))
    im = axes[2].imshow(diff, extent=extent, cmap=cmap, vmin=-vmax, vmax=vmax)
    axes[2].set_title("after - before (mean RGB)", fontsize=9)
    fig.colorbar(im, ax=axes[2], shrink=0.8)
    colour = KIND_COLOURS.get(str(det.props.get("kind")), "white")
    for ax in axes:
        for other in others:
            if (
                other.geom is not None
                and other is not det
                and other.geom.intersects(shapely.box(cs.start, rs.start, cs.stop, rs.stop))
            ):
                _outline(ax, other.geom, KIND_COLOURS.get(str(other.props.get("kind")), "white"),
                         lw=0.7, ls=":")  # fmt: skip
        if det.geom is not None:
            _outline(ax, det.geom, colour, lw=1.4)
        ax.set_xlim(extent[0], extent[1])
        ax.set_ylim(extent[2], extent[3])
        ax.set_xticks([])
        ax.set_yticks([])
    return fig


def occupancy_figure(
    dates: Sequence[str],
    net_area_m2: Mapping[str, Sequence[float]],
    counts: Mapping[str, Sequence[int]],
) -> Figure:
    """Occupancy change per zone over time, and detections per date.

    Parameters
    ----------
    dates
        The dates (``YYYY-MM-DD``), x axis.
    net_area_m2
        Per zone (or ``"all zones"``), the net change of occupied area since the first date at
        each date: appeared minus removed object area (see
        :func:`pipeline.io.report.site.occupancy`).
    counts
        ``"removed"`` and ``"appeared"``: detections whose ``date_after`` is each date.

    Returns
    -------
    matplotlib.figure.Figure
        Two panels: net area (step lines) and counts (bars, removed drawn downwards).
    """
    import datetime as dt

    days = [dt.date.fromisoformat(d) for d in dates]
    fig = Figure(figsize=(MAP_WIDTH_IN, 5.2), dpi=DPI, layout="constrained")
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(2, 1))
    for name, values in net_area_m2.items():
        style = {"lw": 2.4, "color": "black"} if name == "all zones" else {"lw": 1.3}
        top.step(days, values, where="post", label=name, **style)
    top.axhline(0, color="grey", lw=0.6)
    top.set_ylabel("occupied area vs first date (m²)", fontsize=8)
    top.set_title("Net change of occupied area per zone (appeared − removed)", fontsize=9)
    if net_area_m2:
        top.legend(fontsize=7, loc="best", ncols=2)
    width = 1.6
    removed = -np.asarray(counts.get("removed", [0] * len(days)), dtype=float)
    appeared = np.asarray(counts.get("appeared", [0] * len(days)), dtype=float)
    bottom.bar(days, appeared, width=width, color="tab:cyan", label="appeared")
    bottom.bar(days, removed, width=width, color="tab:red", label="removed")
    bottom.axhline(0, color="grey", lw=0.6)
    bottom.set_ylabel("detections", fontsize=8)
    bottom.legend(fontsize=7, loc="lower left")
    for ax in (top, bottom):
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    return fig


def save_png(fig: Figure, path: Any) -> None:
    """Save ``fig`` as a PNG at :data:`DPI` (the caller writes to a temporary folder)."""
    fig.savefig(path, dpi=DPI)
