"""Figures for exploring a site in a notebook: SCL, co-registration shifts, the change score.

Like :mod:`pipeline.io.report.quicklook` (whose true-colour views they reuse), every function
returns a matplotlib :class:`~matplotlib.figure.Figure` on the Agg canvas;
``notebooks/01_explore_site`` shows them. Nothing here reads files: pass the cube, ``coreg.json``
and the change score read with :func:`pipeline.io.load.read_cube`,
:func:`pipeline.io.atomic.read_json` and
:func:`pipeline.io.report.products.read_change_cogs`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import xarray as xr
from matplotlib import colormaps
from matplotlib.colors import BoundaryNorm, ListedColormap, PowerNorm
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from pipeline.io.report.quicklook import DPI, INVALID_GREY, MAP_WIDTH_IN, TrueColour

SCL_CLASSES: dict[int, tuple[str, str]] = {
    0: ("no data", "#000000"),
    1: ("saturated / defective", "#ff0000"),
    2: ("dark area / topographic shadow", "#2f2f2f"),
    3: ("cloud shadow", "#643200"),
    4: ("vegetation", "#00a000"),
    5: ("not vegetated", "#ffe65a"),
    6: ("water", "#0000ff"),
    7: ("unclassified", "#808080"),
    8: ("cloud, medium probability", "#c0c0c0"),
    9: ("cloud, high probability", "#ffffff"),
    10: ("thin cirrus", "#64c8ff"),
    11: ("snow / ice", "#ff96ff"),
}
"""Sentinel-2 L2A Scene Classification classes: value to (name, display colour)."""

STATUS_MARKERS: dict[str, str] = {"ok": "o", "shifted": "s", "failed": "x"}
"""Marker of a date in the shift plot, by co-registration status."""


def scl_figure(cube: xr.Dataset, date: str) -> Figure:
    """The SCL map of one date beside its true-colour view and the ``valid`` mask.

    Parameters
    ----------
    cube
        A cube with ``scl`` (and ``red``, ``green``, ``blue``, ``valid``).
    date
        The date (``YYYY-MM-DD``).

    Returns
    -------
    matplotlib.figure.Figure
        Three panels and a legend of the SCL classes present.

    Raises
    ------
    KeyError
        When the date is not in the cube or the cube has no ``scl``.
    """
    tc = TrueColour(cube)
    i = tc.index(date)
    if i is None:
        raise KeyError(f"date {date} is not in the cube: pick one of {', '.join(tc.dates)}")
    scl = np.asarray(cube["scl"].isel(time=i).values, dtype=np.int16)
    valid = np.asarray(tc.rgb(i)[1])
    colours = ListedColormap([SCL_CLASSES[k][1] for k in range(12)])
    norm = BoundaryNorm(np.arange(-0.5, 12.5), 12)
    rows, cols = scl.shape
    width = MAP_WIDTH_IN * 1.4
    fig = Figure(figsize=(width, width / 3 * rows / cols + 1.0), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    axes[0].imshow(tc.image(i, mask=False))
    axes[0].set_title(f"{date} true colour (unmasked)", fontsize=9)
    axes[1].imshow(scl, cmap=colours, norm=norm, interpolation="nearest")
    axes[1].set_title("SCL", fontsize=9)
    axes[2].imshow(valid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[2].set_title(f"valid (white): {valid.mean():.0%}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    present = sorted(int(v) for v in np.unique(scl) if int(v) in SCL_CLASSES)
    handles = [
        Patch(facecolor=SCL_CLASSES[k][1], edgecolor="black", label=f"{k} {SCL_CLASSES[k][0]}")
        for k in present
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=7, frameon=False)
    return fig


def scl_fractions(cube: xr.Dataset) -> dict[str, dict[str, float]]:
    """Share of each SCL class per date: ``{date: {class name: fraction}}`` (classes present)."""
    scl = np.asarray(cube["scl"].values, dtype=np.int16)
    dates = [str(d) for d in np.datetime_as_string(cube["time"].values, unit="D")]
    out = {}
    for d, layer in zip(dates, scl, strict=True):
        counts = np.bincount(layer.ravel().clip(0, 11), minlength=12) / layer.size
        out[d] = {SCL_CLASSES[k][0]: round(float(c), 4) for k, c in enumerate(counts) if c > 0}
    return out


def coreg_figure(coreg: Mapping[str, Any]) -> Figure:
    """Estimated shift of every date (east and north, pixels), marked by status.

    Parameters
    ----------
    coreg
        The content of ``coreg.json`` (``reference_date``, ``dates`` with ``date``,
        ``shift_x_px``, ``shift_y_px``, ``status``).
    """
    entries = list(coreg.get("dates", []))
    days = np.array([str(e["date"])[:10] for e in entries], dtype="datetime64[D]")
    fig = Figure(figsize=(MAP_WIDTH_IN, 3.4), dpi=DPI, layout="constrained")
    ax = fig.add_subplot()
    status = np.array([str(e.get("status")) for e in entries])
    for key, colour, label in (
        ("shift_x_px", "tab:blue", "east"),
        ("shift_y_px", "tab:orange", "north"),
    ):
        values = np.array([e.get(key) for e in entries], dtype=float)
        ax.plot(days, values, color=colour, lw=0.8, label=label)
        for name, marker in STATUS_MARKERS.items():
            sel = status == name
            if sel.any():
                ax.scatter(days[sel], values[sel], marker=marker, color=colour, s=25)
    for name, marker in STATUS_MARKERS.items():
        ax.scatter([], [], marker=marker, color="black", label=name)
    ax.axhline(0, color="grey", lw=0.6)
    ax.set_ylabel("shift (site-grid px)", fontsize=8)
    ax.set_title(f"Shift of each date vs the reference {coreg.get('reference_date')}", fontsize=9)
    ax.legend(fontsize=7, ncols=5)
    ax.tick_params(labelsize=7)
    fig.autofmt_xdate()
    return fig


def change_figure(tc: TrueColour, score: xr.DataArray, threshold: float | None = None) -> Figure:
    """Before and after views of one date pair beside its change score.

    Parameters
    ----------
    tc
        True-colour views of the cube.
    score
        (y, x) score of one pair with ``date_before`` and ``date_after`` coordinates (one
        element of :func:`pipeline.io.report.products.read_change_cogs`).
    threshold
        Outline the pixels whose score exceeds it (e.g. the detector's seed threshold).
    """
    before = str(np.asarray(score["date_before"].values))[:10]
    after = str(np.asarray(score["date_after"].values))[:10]
    values = np.asarray(score.values, dtype=np.float32)
    rows, cols = values.shape
    width = MAP_WIDTH_IN * 1.4
    fig = Figure(figsize=(width, width / 3 * rows / cols + 0.6), dpi=DPI, layout="constrained")
    axes = fig.subplots(1, 3)
    for ax, day, label in ((axes[0], before, "before"), (axes[1], after, "after")):
        i = tc.index(day)
        if i is not None:
            ax.imshow(tc.image(i))
        ax.set_title(f"{label} {day}", fontsize=9)
    finite = values[np.isfinite(values)]
    vmax = float(np.percentile(finite, 99.9)) if finite.size else 1.0
    cmap = colormaps["magma"].with_extremes(bad=str(INVALID_GREY))
    norm = PowerNorm(0.5, vmin=0, vmax=max(vmax, 1.0))
    im = axes[2].imshow(values, cmap=cmap, norm=norm, interpolation="nearest")
    units = score.attrs.get("units", "chi-square")
    axes[2].set_title(f"change score ({units}; grey: not scored)", fontsize=9)
    fig.colorbar(im, ax=axes[2], shrink=0.7)
    if threshold is not None:
        above = np.nan_to_num(values) > threshold
        for ax in axes:
            if above.any():
                ax.contour(above, levels=[0.5], colors="cyan", linewidths=0.8)
    for ax in axes:
        ax.set_axis_off()
    return fig
