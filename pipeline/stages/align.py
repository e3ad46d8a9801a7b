"""Register any two rasters (``basewatch align REFERENCE TARGET``): the I/O around the kernels.

:func:`align_files` reads one band of each file (GeoTIFF, JPEG2000 or anything GDAL reads;
single or multi-band; any grid and CRS), brings the target onto the reference grid (a cubic
:func:`rasterio.warp.reproject` when the grids or CRS differ), estimates the global shift with
:func:`pipeline.kernels.coregister.shift.estimate_shift` (and, when asked, the local affine of
:func:`pipeline.kernels.coregister.local.estimate_local`), and returns one JSON-ready dict. With
``out`` it writes the target, every band, on the reference grid and corrected:

- same grid: the correction is one prefiltered cubic-spline resampling
  (:func:`pipeline.kernels.coregister.affine.apply_affine`, dask chunk by chunk);
- different grid: regridding and correction are folded into ONE GDAL cubic warp whose destination
  transform is the reference transform composed with the correction, so the pixels are
  resampled once, not twice.

No-data of either file (its nodata value or mask) and pixels outside the target's footprint are
invalid and never matched. Shifts follow ``notes/CONTEXT.md``: where the target's content lies
relative to the reference, in pixels of the reference grid, EAST and NORTH positive (for
north-up grids; otherwise along the grid's column and row axes), and in metres from the
reference grid's pixel size (geodesic at the image centre for a geographic CRS).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import rasterio
from affine import Affine
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.warp import Resampling, reproject
from rasterio.windows import Window

from pipeline.errors import CoregistrationError, DataError
from pipeline.grid import Grid, pixel_size_m
from pipeline.io.atomic import atomic_file
from pipeline.kernels.coregister.affine import AffineModel, apply_affine
from pipeline.kernels.coregister.local import LocalEstimate, estimate_local
from pipeline.kernels.coregister.shift import ShiftEstimate, estimate_shift
from pipeline.kernels.coregister.window import best_window

__all__ = ["GLOBAL_WINDOW_PX", "align_files"]

GLOBAL_WINDOW_PX = 512
"""The global shift is matched in one window of at most this size (AROSICS: 256 by default),
placed where both rasters have the most valid pixels."""

_WRITE_CHUNK_PX = 2048
"""Chunk of the corrected output computed and written at a time (same-grid case)."""


def _open(path: Path, band: int) -> tuple[Grid, int]:
    """Grid and band count of ``path``; DataError when unreadable or ``band`` is out of range."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                grid = Grid(src.crs, src.transform, (src.height, src.width))
                count = src.count
    except (RasterioError, OSError) as exc:
        raise DataError(
            f"cannot read raster {path}: {str(exc).splitlines()[0]} (pass a GeoTIFF or JPEG2000)"
        ) from None
    if not 1 <= band <= count:
        raise DataError(
            f"band {band} is out of range: {path} has {count} band(s) (--band 1..{count})"
        )
    return grid, count


def _read(path: Path, band: int) -> np.ndarray:
    """One band as float32, NaN where the file says no data (nodata value or mask)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            data = src.read(band, masked=True)
    return np.ma.filled(data.astype(np.float32), np.nan)


def _warp(path: Path, band: int, grid: Grid, dst_transform: Affine | None = None) -> np.ndarray:
    """One band of ``path`` resampled (cubic) onto ``grid``; NaN outside its footprint."""
    source = _read(path, band)
    with rasterio.open(path) as src:
        src_transform, src_crs = src.transform, src.crs
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    reproject(
        source,
        out,
        src_transform=src_transform,
        src_crs=src_crs,
        src_nodata=np.nan,
        dst_transform=dst_transform if dst_transform is not None else grid.transform,
        dst_crs=grid.crs,
        dst_nodata=np.nan,
        resampling=Resampling.cubic,
        tolerance=0.0,  # exact coordinate transform (GDAL approximates to 1/8 px by default)
    )
    return out


def _pixel_size_m(grid: Grid) -> tuple[float, float] | None:
    """Ground size (x, y) of a reference pixel in metres; None without a CRS."""
    return None if grid.crs is None else pixel_size_m(grid)


def _crs_name(crs: Any) -> str | None:
    if crs is None:
        return None
    epsg = crs.to_epsg()
    return f"EPSG:{epsg}" if epsg else crs.to_string()


def _number(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def _local(ref: np.ndarray, tgt: np.ndarray, est: ShiftEstimate) -> LocalEstimate:
    """The local model; a raster too small for a tie-point grid gets a failed verdict."""
    try:
        return estimate_local(ref, tgt, initial=est)
    except CoregistrationError as exc:
        return LocalEstimate(None, "failed", str(exc), 0, 0, math.nan, (ref.shape[0], ref.shape[1]))


def _correction(est: ShiftEstimate, loc: LocalEstimate | None) -> tuple[str | None, Any]:
    """What ``--out`` applies: the local affine when usable, else the global shift, else none."""
    if loc is not None and loc.usable and loc.model is not None:
        return "affine", loc.model
    if est.usable:
        return "shift", AffineModel.from_shift(est.shift_x_px, est.shift_y_px)
    return None, None


def align_files(
    reference: Path,
    target: Path,
    *,
    band: int = 1,
    local: bool = False,
    out: Path | None = None,
) -> dict[str, Any]:
    """Estimate how ``target`` is shifted relative to ``reference``; optionally write it aligned.

    Parameters
    ----------
    reference, target : Path
        Rasters GDAL reads (GeoTIFF, JPEG2000, ...), single or multi-band, any grid and CRS
        (both georeferenced, or both not and of one shape).
    band : int, optional
        1-based band of both files used for matching (a NIR or red band suits Sentinel-2).
    local : bool, optional
        Also fit the local affine model on a grid of tie points.
    out : Path, optional
        Write every band of the target, resampled onto the reference grid and corrected, as a
        float32 GeoTIFF (NaN = no data), atomically. Nothing is written when the verdict is
        ``failed`` (``"out"`` is then null).

    Returns
    -------
    dict
        JSON-ready: ``shift_x_px``, ``shift_y_px``, ``shift_x_m``, ``shift_y_m``, ``quality``,
        ``n_valid``, ``status`` (``ok``/``shifted``/``failed``), ``reason``, ``n_tie_points`` and
        ``n_tie_points_good`` (null without ``local``), ``local`` (the model and its verdict, or
        null), ``correction`` (what ``out`` applies: ``affine``, ``shift`` or null), ``out``,
        ``regridded``, ``pixel_size_m``, ``band``, ``global_window``, and the paths and CRS.

    Raises
    ------
    DataError
        If a file cannot be read, ``band`` is out of range, a raster has no valid pixel, or
        the rasters do not overlap.
    """
    reference, target = Path(reference), Path(target)
    ref_grid, _ = _open(reference, band)
    tgt_grid, tgt_count = _open(target, band)
    if (ref_grid.crs is None) != (tgt_grid.crs is None):
        raise DataError(
            f"only one of {reference} and {target} is georeferenced: give both a CRS, or neither"
        )
    same_grid = ref_grid.same_as(tgt_grid) or (
        ref_grid.crs is None and ref_grid.shape == tgt_grid.shape
    )
    if ref_grid.crs is None and not same_grid:
        raise DataError(
            f"{reference} and {target} have no CRS and differ in size: georeference them"
        )
    ref_band = _read(reference, band)
    tgt_band = _read(target, band) if same_grid else _warp(target, band, ref_grid)
    if not np.isfinite(ref_band).any():
        raise DataError(f"band {band} of {reference} holds no valid pixel")
    if not np.isfinite(tgt_band).any():
        raise DataError(
            f"{target} does not overlap {reference} (no valid pixel of band {band} on the "
            "reference grid): pass rasters of the same area"
        )
    rows, cols = best_window(np.isfinite(ref_band) & np.isfinite(tgt_band), GLOBAL_WINDOW_PX)
    est = estimate_shift(ref_band[rows, cols], tgt_band[rows, cols])
    loc = _local(ref_band, tgt_band, est) if local else None
    kind, model = _correction(est, loc)

    size_m = _pixel_size_m(ref_grid)
    result: dict[str, Any] = {
        "reference": str(reference),
        "target": str(target),
        "reference_crs": _crs_name(ref_grid.crs),
        "target_crs": _crs_name(tgt_grid.crs),
        "band": band,
        "regridded": not same_grid,
        **est.to_dict(),
        "shift_x_m": _number(est.shift_x_px * size_m[0]) if size_m else None,
        "shift_y_m": _number(est.shift_y_px * size_m[1]) if size_m else None,
        "pixel_size_m": [round(v, 4) for v in size_m] if size_m else None,
        "global_window": [rows.start, cols.start, rows.stop - rows.start, cols.stop - cols.start],
        "n_tie_points": loc.n_tie_points if loc else None,
        "n_tie_points_good": loc.n_tie_points_good if loc else None,
        "local": loc.to_dict() if loc else None,
        "correction": kind,
        "out": None,
    }
    if out is not None and model is not None:
        _write_aligned(target, tgt_count, ref_grid, same_grid, model, Path(out))
        result["out"] = str(out)
    return result


def _pixel_affine(model: AffineModel) -> Affine:
    """The correction as a pixel-space ``Affine`` (x = col, y = row; corner convention).

    Array index ``p`` (centres at integers) is corner coordinate ``p + 0.5``, so
    ``q = M p + t`` becomes ``u_q = M u_p + (t + 0.5 - M @ 0.5)``.
    """
    m, t = model.arrays
    t_corner = t + 0.5 - m @ np.array([0.5, 0.5])
    return Affine(m[1, 1], m[1, 0], t_corner[1], m[0, 1], m[0, 0], t_corner[0])


def _write_aligned(
    target: Path, count: int, grid: Grid, same_grid: bool, model: AffineModel, out: Path
) -> None:
    """Write every band of ``target`` on ``grid``, corrected by ``model``; temp file, rename."""
    out.parent.mkdir(parents=True, exist_ok=True)
    profile = {
        "driver": "GTiff",
        "dtype": "float32",
        "nodata": np.nan,
        "count": count,
        "height": grid.shape[0],
        "width": grid.shape[1],
        "crs": grid.crs,
        "transform": grid.transform,
        "tiled": True,
        "blockxsize": 256,
        "blockysize": 256,
        "compress": "deflate",
        "predictor": 3,
        "BIGTIFF": "IF_SAFER",
    }
    with atomic_file(out, suffix=".tmp.tif") as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(target) as src:
                descriptions = src.descriptions
            with rasterio.open(tmp, "w", **profile) as dst:
                for b in range(1, count + 1):
                    if same_grid:
                        _write_chunks(dst, b, apply_affine(_lazy(_read(target, b)), model))
                    else:
                        dst_transform = grid.transform @ _pixel_affine(model)
                        dst.write(_warp(target, b, grid, dst_transform), b)
                    if descriptions[b - 1]:
                        dst.set_band_description(b, descriptions[b - 1])


def _lazy(band: np.ndarray) -> da.Array:
    return da.from_array(band, chunks=_WRITE_CHUNK_PX)


def _write_chunks(dst: Any, band: int, aligned: da.Array) -> None:
    """Compute and write ``aligned`` chunk by chunk (memory of one chunk and its margin)."""
    row0 = 0
    for i, h in enumerate(aligned.chunks[0]):
        col0 = 0
        for j, w in enumerate(aligned.chunks[1]):
            block = aligned.blocks[i, j].compute(scheduler="sync")
            dst.write(block.astype(np.float32), band, window=Window(col0, row0, w, h))
            col0 += w
        row0 += h
