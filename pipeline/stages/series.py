"""``basewatch series``: the site pipeline's multi-date detector on N local dates, no STAC API.

:func:`run_series` takes one input per date, each of the kinds ``basewatch pair`` reads (a band
folder, a multi-band GeoTIFF or a STAC Item JSON with local hrefs, see :mod:`pipeline.io.rasters`;
Sentinel-2 Level-2A or Level-1C), and:

1. **Dates.** The date of each input is its STAC Item's datetime; otherwise the first
   ``YYYYMMDD`` in the path as given (``S2B_MSIL2A_20240115T083229_.../`` or
   ``port/20240115/``); otherwise the first one in its band file names (or a multi-band file's
   TIFF datetime tag). An input without a date is an error naming it. The inputs are sorted by
   date; two inputs of the same day are an error (merge same-day tiles into one mosaic first):
   the multi-date test needs one view per date.
2. **Grid.** The first input's (earliest date's) finest band, as ``pair`` does; every band of
   every date is reprojected onto it (cubic; SCL nearest). A grid whose units are not ground
   metres to 1 % (lon/lat, e.g. OSCD, or Web Mercator away from the equator, e.g. browser
   exports) is replaced by the UTM grid of its zone over the same area at its ground pixel
   size, because the detector's areas and windows are in grid units. Bands: those of blue,
   green, red, nir, swir16, swir22 in ``load.bands`` that every date has.
3. **Valid pixels.** Finite in every band and, with an SCL, not cloud, shadow, cirrus,
   saturated or no data (dilated by ``load.cloud_dilation_px``), as ``pair``.
4. **Co-registration** (:func:`pipeline.kernels.coregister.shift.coregister_cube`, the
   ``coregister`` stage's own): every date against the most valid one, on ``coregister.band`` (nir,
   else red, else the last band when the inputs lack it, as ``pair``); a failed date is dropped and
   reported.
5. **Detection** (:func:`pipeline.stages.detect.detect_cube`, the ``detect`` stage's own, with
   no zones): signed objects (``removed`` / ``appeared``) dated to the interval between two
   valid views (``date_before``, ``date_after``), with ``area_m2``, ``score`` and the
   calibrated ``confidence``.
6. **Outputs** in ``out``: ``detections.geojson`` (lon/lat) and ``series.json`` (inputs,
   dates, grid, per-date co-registration, harmonisation, thresholds, counts), both written to
   temporary names and renamed only when both are complete, so a failed run leaves the
   previous outputs as they were.

:func:`detect_series` is steps 4-5 on a cube in memory (no file), for notebooks and tests.
Everything is numpy in memory (about ``4 x bands + 1`` bytes per pixel and date): a city or a
port over a season, not a whole tile.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import os
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from pipeline.config import Config
from pipeline.errors import CoregistrationError, DataError
from pipeline.io.atomic import atomic_file
from pipeline.io.calibration import active_model
from pipeline.io.catalog import BANDS
from pipeline.io.harmonise import valid_mask
from pipeline.io.rasters import Grid, InputSpec, date_in_names, describe_input, read_bands
from pipeline.io.rasters import reference_grid as input_grid
from pipeline.kernels.coregister.shift import ShiftEstimate, coregister_cube

__all__ = [
    "MIN_DATES",
    "RECOMMENDED_DATES",
    "SeriesInput",
    "SeriesResult",
    "build_cube",
    "describe_series",
    "detect_series",
    "run_series",
    "series_grid",
    "write_series",
]

MIN_DATES = 2
"""Fewest dates a series may have."""

RECOMMENDED_DATES = 4
"""Fewer dates than this run, with a warning: the multi-date test averages up to
``detect.window_dates`` views on each side of a break, so 4-6 or more dates make it reliable."""

METRIC_TOLERANCE = 0.01
"""A grid whose pixels differ from ground metres by more than this share (lon/lat, Web
Mercator) is replaced by a UTM grid (module docstring, step 2)."""

OUTPUT_MODE = 0o644
"""Permissions of the written files."""

OUTPUT_NAMES = ("detections.geojson", "series.json")
"""Files written into the output folder."""


@dataclass(frozen=True)
class SeriesInput:
    """One date of a series: the input and where its date came from."""

    spec: InputSpec
    """The input (files, bands, harmonisation) as :func:`pipeline.io.rasters.describe_input`."""
    date: str
    """Acquisition date, ``YYYY-MM-DD``."""
    date_source: str
    """``STAC Item``, ``path`` or ``file names``."""


@dataclass(frozen=True)
class SeriesResult:
    """What :func:`detect_series` finds in a cube."""

    features: list[dict]
    """Signed objects as GeoJSON Features (lon/lat) with ``kind``, ``date_before``,
    ``date_after``, ``area_m2``, ``score``, ``confidence`` and the detector's other
    properties."""
    pairs: list[dict]
    """Per consecutive pair of the co-registered dates: dates, noise, thresholds, counts."""
    dates: tuple[str, ...]
    """Every date of the cube, ``YYYY-MM-DD``, in order."""
    coregistration: tuple[ShiftEstimate, ...]
    """One estimate per date of :attr:`dates` (failed dates included)."""
    reference_date: str
    """The date every other was co-registered to (the most valid one)."""
    coregister_band: str
    """The band the shifts were estimated on (``coregister.band``, else nir, else red)."""
    bands: tuple[str, ...]
    """Bands compared."""
    thresholds: dict[str, Any]
    """Method, false-alarm rates and the seed / grow levels (chi-square) of the detector."""
    score: xr.DataArray
    """(pair, y, x) float32 change score of each consecutive pair of co-registered dates."""

    @property
    def used_dates(self) -> tuple[str, ...]:
        """Dates whose co-registration did not fail (the ones the detector saw)."""
        return tuple(d for d, e in zip(self.dates, self.coregistration, strict=True) if e.usable)

    @property
    def failed_dates(self) -> tuple[str, ...]:
        """Dates dropped because their co-registration failed."""
        return tuple(
            d for d, e in zip(self.dates, self.coregistration, strict=True) if not e.usable
        )

    def counts(self) -> dict[str, int]:
        """Objects in total and by kind."""
        kinds = [f["properties"]["kind"] for f in self.features]
        return {
            "n_objects": len(kinds),
            "n_removed": kinds.count("removed"),
            "n_appeared": kinds.count("appeared"),
        }


def _date_of_input(spec: InputSpec, given: str) -> tuple[str, str] | None:
    """Date and its source: the STAC Item's, else the path's, else the band files' (step 1)."""
    if spec.kind == "stac":
        return (spec.date, "STAC Item") if spec.date else None
    from_path = date_in_names(given)
    if from_path:
        return from_path, "path"
    return (spec.date, "file names") if spec.date else None


def _checked_date(date: str, path: Path) -> str:
    try:
        dt.date.fromisoformat(date)
    except ValueError:
        raise DataError(
            f"{path}: {date} is not a calendar date: rename it to hold the acquisition date "
            "(YYYYMMDD) or pass a STAC Item"
        ) from None
    return date


def describe_series(
    inputs: Sequence[str | Path], band_order: tuple[str, ...] | None = None
) -> list[SeriesInput]:
    """Describe and date every input; sorted by date (no pixel read).

    Parameters
    ----------
    inputs
        One band folder, multi-band GeoTIFF or STAC Item JSON per date, in any order.
    band_order
        Band order of multi-band files without band descriptions.

    Returns
    -------
    list of SeriesInput
        Sorted by date.

    Raises
    ------
    DataError
        Fewer than :data:`MIN_DATES` inputs; an input that does not exist, cannot be read or
        has no date; two inputs of the same date.
    """
    if len(inputs) < MIN_DATES:
        raise DataError(
            f"{len(inputs)} input(s) given: a series needs at least {MIN_DATES} dates (4-6 or "
            "more for a reliable multi-date test); for two dates `basewatch pair` also works"
        )
    dated = []
    for given in inputs:
        spec = describe_input(given, band_order)
        found = _date_of_input(spec, str(given))
        if found is None:
            where = "its datetime" if spec.kind == "stac" else "the path or its band file names"
            raise DataError(
                f"{spec.path}: no acquisition date found in {where}: rename it to hold the "
                "date as YYYYMMDD (e.g. scenes/20240115/ or S2_20240115.tif), or pass a STAC "
                "Item with its datetime"
            )
        dated.append(SeriesInput(spec, _checked_date(found[0], spec.path), found[1]))
    dated.sort(key=lambda s: s.date)
    for a, b in itertools.pairwise(dated):
        if a.date == b.date:
            raise DataError(
                f"{a.spec.path} and {b.spec.path} are both of {a.date}: give one input per date "
                "(merge same-day tiles into one mosaic first, or drop one)"
            )
    return dated


def _utm_epsg(lon: float, lat: float) -> int:
    zone = min(60, max(1, int((lon + 180.0) // 6.0) + 1))
    return (32600 if lat >= 0 else 32700) + zone


def series_grid(spec: InputSpec) -> tuple[Grid, str]:
    """The grid every date is put on: the input's finest band, in ground metres (step 2).

    Parameters
    ----------
    spec
        The first (earliest) input.

    Returns
    -------
    tuple
        The grid and how it was chosen (``first input`` or ``UTM of the first input``).
    """
    from pyproj import CRS, Proj, Transformer
    from rasterio.crs import CRS as RioCRS
    from rasterio.warp import calculate_default_transform

    from pipeline.grid import pixel_size_m

    grid = input_grid(spec)
    crs = CRS.from_user_input(grid.crs.to_wkt())
    h, w = grid.shape
    cx, cy = grid.transform @ (w / 2, h / 2)
    if crs.is_geographic:
        lon, lat = float(cx), float(cy)
        ground = pixel_size_m(grid)
    else:
        lon, lat = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(cx, cy)
        factors = Proj(crs).get_factors(lon, lat)
        scales = (factors.parallel_scale, factors.meridional_scale)
        if all(abs(k - 1.0) <= METRIC_TOLERANCE for k in scales):
            return grid, "first input"
        px, py = pixel_size_m(grid)
        ground = (px / scales[0], py / scales[1])
    res = max(1.0, float(round(min(ground))))
    dst = RioCRS.from_epsg(_utm_epsg(lon, lat))
    left, top = grid.transform @ (0, 0)
    right, bottom = grid.transform @ (w, h)
    transform, width, height = calculate_default_transform(
        grid.crs, dst, w, h, left, bottom, right, top, resolution=res
    )
    return Grid(dst, transform, (int(height), int(width))), "UTM of the first input"


def _coords(grid: Grid) -> dict[str, np.ndarray]:
    t = grid.transform
    h, w = grid.shape
    return {
        "y": t.f + t.e * (np.arange(h) + 0.5),
        "x": t.c + t.a * (np.arange(w) + 0.5),
    }


def build_cube(
    series: Sequence[SeriesInput], grid: Grid, bands: Sequence[str], cloud_dilation_px: int
) -> xr.Dataset:
    """Read every date onto ``grid``: the cube the detector takes (steps 2-3).

    Parameters
    ----------
    series
        The dated inputs (:func:`describe_series`).
    grid
        The output grid (:func:`series_grid`).
    bands
        Vocabulary bands to read; every input has them.
    cloud_dilation_px
        Growth of the SCL cloud and shadow masks.

    Returns
    -------
    xarray.Dataset
        Bands float32 reflectance (NaN = no data) and ``valid`` bool on (time, y, x), attrs
        ``crs`` and ``site`` (``series``), x/y pixel-centre coordinates.

    Raises
    ------
    DataError
        Naming an input that cannot be read or does not cover ``grid``.
    """
    stacks, valids = [], []
    for s in series:
        stack, scl = read_bands(s.spec, grid, tuple(bands))
        ok = np.isfinite(stack).all(axis=0)
        if scl is not None:
            ok &= np.asarray(valid_mask(scl, cloud_dilation_px))
        if not ok.any():
            raise DataError(
                f"{s.spec.path}: no usable pixel on the grid of the first input (cloud, no "
                "data or no overlap): drop this date or pass a view of the same area"
            )
        stacks.append(stack)
        valids.append(ok)
    data = np.stack(stacks, axis=1)  # (B, T, y, x)
    dims = ("time", "y", "x")
    variables: dict[str, Any] = {b: (dims, data[i]) for i, b in enumerate(bands)}
    variables["valid"] = (dims, np.stack(valids))
    times = np.array([s.date for s in series], dtype="datetime64[ns]")
    return xr.Dataset(
        variables,
        coords={"time": times, **_coords(grid)},
        attrs={"crs": grid.crs_name, "site": "series"},
    )


def _thresholds(cfg: Config, n_bands: int) -> dict[str, Any]:
    from pipeline.kernels.detect.core import series_thresholds, thresholds

    d = cfg.detect
    if d.method == "multidate":
        seed, grow = series_thresholds(d, n_bands)
        rate = d.series_false_alarm_rate
    else:
        seed, grow = thresholds(d, n_bands)
        rate = d.false_alarm_rate
    return {
        "method": d.method,
        "seed_false_alarm_rate": rate,
        "grow_false_alarm_rate": d.grow_false_alarm_rate,
        "seed_threshold": round(seed, 4),
        "grow_threshold": round(grow, 4),
        "min_area_m2": d.min_area_m2,
        "min_confidence": d.min_confidence,
    }


def detect_series(cube: xr.Dataset, cfg: Config) -> SeriesResult:
    """Co-register the dates of a cube and run the site's detector on it (steps 4-5).

    Parameters
    ----------
    cube
        Bands float32 and ``valid`` bool on (time, y, x), ``crs`` attribute (a metric grid),
        x/y pixel-centre coordinates; numpy or dask backed (e.g. :func:`build_cube`).
    cfg
        ``coregister``, ``detect`` and ``load.bands`` (the bands compared) are used.

    Returns
    -------
    SeriesResult
        Objects, per-pair summaries, the co-registration of every date and the thresholds.

    Raises
    ------
    DataError
        Fewer than :data:`MIN_DATES` dates, or no band of ``load.bands`` in the cube.
    CoregistrationError
        When fewer than :data:`MIN_DATES` dates could be co-registered.
    """
    from pipeline.io.cluster import client_from_config
    from pipeline.stages.detect import detect_cube

    dates = tuple(str(np.datetime_as_string(t, unit="D")) for t in cube["time"].values)
    if len(dates) < MIN_DATES:
        raise DataError(f"the cube has {len(dates)} date(s): a series needs at least {MIN_DATES}")
    bands = tuple(b for b in cfg.load.bands if b in cube)
    if not bands:
        raise DataError(
            f"the cube has none of load.bands ({', '.join(cfg.load.bands)}): load those bands"
        )
    coreg = cfg.coregister
    if coreg.band not in bands:  # e.g. a true-colour export: the most textured band it has
        fallback = next((b for b in ("nir", "red") if b in bands), bands[-1])
        coreg = coreg.model_copy(update={"band": fallback})
    aligned, estimates, ref = coregister_cube(cube, coreg)
    usable = [d for d, e in zip(dates, estimates, strict=True) if e.usable]
    if len(usable) < MIN_DATES:
        reasons = "; ".join(
            f"{d}: {e.reason}" for d, e in zip(dates, estimates, strict=True) if not e.usable
        )
        raise CoregistrationError(
            f"only {len(usable)} of {len(dates)} dates could be co-registered to {dates[ref]} "
            f"({reasons}): check that the inputs show the same area"
        )
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    with client_from_config(cfg.cluster):
        result = detect_cube(
            aligned,
            np.zeros((ny, nx), np.int32),
            [],
            [],
            cfg.detect,
            bands=list(bands),
            calibration_model=active_model(),
        )
    return SeriesResult(
        features=result.features,
        pairs=result.pairs,
        dates=dates,
        coregistration=tuple(estimates),
        reference_date=dates[ref],
        coregister_band=coreg.band,
        bands=bands,
        thresholds=_thresholds(cfg, len(bands)),
        score=result.score,
    )


def _summary(
    series: Sequence[SeriesInput],
    grid: Grid,
    grid_source: str,
    result: SeriesResult,
    cfg: Config,
) -> dict[str, Any]:
    """The JSON-ready account of a run (``series.json``)."""
    from pipeline.grid import pixel_size_m

    first = input_grid(series[0].spec)
    px, py = pixel_size_m(grid)
    inputs = []
    for s in series:
        inputs.append(
            {
                "path": str(s.spec.path),
                "kind": s.spec.kind,
                "date": s.date,
                "date_source": s.date_source,
                "level": s.spec.level,
                "scl": s.spec.scl is not None,
                "harmonisation": s.spec.harmonisation,
                "regridded": not input_grid(s.spec).same_as(grid),
            }
        )
    return {
        "inputs": inputs,
        "dates": list(result.dates),
        "used_dates": list(result.used_dates),
        "bands": list(result.bands),
        "grid": {
            "crs": grid.crs_name,
            "shape": list(grid.shape),
            "transform": [float(v) for v in grid.transform[:6]],
            "pixel_size_m": [round(px, 3), round(py, 3)],
            "source": grid_source,
            "first_input_crs": first.crs_name,
        },
        "coregistration": {
            "band": result.coregister_band,
            "reference_date": result.reference_date,
            "dates": [
                {"date": d, **e.to_dict()}
                for d, e in zip(result.dates, result.coregistration, strict=True)
            ],
            "failed_dates": list(result.failed_dates),
        },
        "harmonisation": sorted({s.spec.harmonisation for s in series}),
        "levels": sorted({s.spec.level or "unknown" for s in series}),
        "thresholds": result.thresholds,
        "pairs": result.pairs,
        "counts": {
            **result.counts(),
            "per_interval": {
                f"{p['date_before']}/{p['date_after']}": p["n_objects"] for p in result.pairs
            },
        },
    }


def write_series(features: list[dict], summary: dict[str, Any], out: str | Path) -> dict[str, str]:
    """Write ``detections.geojson`` and ``series.json`` into ``out``, both or neither.

    Both files are written to temporary names in ``out`` first and renamed only when both are
    complete: an error leaves the previous outputs as they were.

    Returns
    -------
    dict
        Output name -> path.

    Raises
    ------
    DataError
        When ``out`` exists and is not a folder.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder: give a folder for --out")
    out.mkdir(parents=True, exist_ok=True)
    docs = {
        "detections.geojson": json.dumps(
            {"type": "FeatureCollection", "name": "basewatch series", "features": features},
            default=str,
        ),
        "series.json": json.dumps(summary, indent=1, default=str),
    }
    with ExitStack() as stack:  # both written before either is renamed
        for name, text in docs.items():
            tmp = stack.enter_context(atomic_file(out / name, mode=OUTPUT_MODE))
            with open(tmp, "w", encoding="utf-8") as f:
                f.write(text + "\n")
                f.flush()
                os.fsync(f.fileno())
    return {
        "detections": str(out / "detections.geojson"),
        "summary": str(out / "series.json"),
    }


def run_series(
    inputs: Sequence[str | Path],
    out: str | Path,
    config: Config | None = None,
    *,
    band_order: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    """Detect what was removed and what appeared over N local dates (the ``series`` command).

    Parameters
    ----------
    inputs
        One band folder, multi-band GeoTIFF or STAC Item JSON per date, in any order.
    out
        Output folder (created if needed).
    config
        Project configuration (``detect``, ``coregister``, ``load.bands``,
        ``load.cloud_dilation_px``); defaults if None.
    band_order
        Band order of multi-band files without band descriptions.

    Returns
    -------
    dict
        The summary written to ``series.json``, with ``outputs`` (name -> path).

    Raises
    ------
    DataError
        Naming the input or output at fault (module docstring).
    CoregistrationError
        When fewer than two dates could be co-registered.
    """
    cfg = config or Config.model_validate({})
    out = Path(out)
    if out.exists() and not out.is_dir():  # before reading anything
        raise DataError(f"{out}: exists and is not a folder: give a folder for --out")
    series = describe_series(inputs, band_order)
    bands = tuple(
        b for b in BANDS if b in cfg.load.bands and all(b in s.spec.bands for s in series)
    )
    if not bands:
        have = "; ".join(f"{s.spec.path}: {', '.join(s.spec.bands)}" for s in series)
        raise DataError(
            f"no band of load.bands ({', '.join(cfg.load.bands)}) is in every input ({have}): "
            "give every date the same bands"
        )
    grid, grid_source = series_grid(series[0].spec)
    cube = build_cube(series, grid, bands, cfg.load.cloud_dilation_px)
    result = detect_series(cube, cfg)
    summary = _summary(series, grid, grid_source, result, cfg)
    outputs = write_series(result.features, summary, out)
    return {**summary, "outputs": outputs}
