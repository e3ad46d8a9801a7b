"""A :class:`SyntheticStack` written as a STAC catalog of L2A-like COGs (simulated).

The whole-tile benchmark (``benchmarks/bench_stage.py``) and its test read the stack the way
users read Sentinel-2: Items through the loader (odc-stac), COG windows decoded per chunk. Each
date of the stack becomes one Item with the assets the loader needs, shaped like the demo
catalog's (:mod:`pipeline.simulate.stac`, Earth Search v1 keys):

- ``blue``, ``green``, ``red``, ``nir``: the stack's 4 bands at 10 m as uint16 DN with the
  baseline-04.00 offset (``DN = 10000 * reflectance + 1000``, ``raster:bands`` scale 0.0001,
  offset -0.1, ``earthsearch:boa_offset_applied`` false, as the demo Items), DN 0 = no data;
- ``scl`` at 20 m: 9 (cloud, high probability) where any of the four 10 m pixels is under the
  stack's cloud, 4 (vegetation) elsewhere, so nearest resampling onto the 10 m grid masks every
  cloudy pixel (the loader also grows cloud masks by ``cloud_dilation_px``).

COGs: :func:`pipeline.simulate.stac.write_cog` (DEFLATE, predictor 2, 256 px blocks). A date is
generated in row strips and held as uint16 (2 bytes per pixel and band: 1 GB for a full tile's
4 bands) while its COGs are written. The catalog is written whole or not at all
(:func:`pipeline.io.atomic.atomic_dir`), with ``params.json`` (the stack's parameters) beside
``catalog.json``. Every Item says it is simulated.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pystac
from pyproj import CRS

from pipeline.io.atomic import atomic_dir, write_json
from pipeline.simulate.geometry import Grid, footprint_lonlat
from pipeline.simulate.stac import (
    ASSETS,
    COLLECTION_ID,
    SIMULATED_NOTE,
    STAC_EXTENSIONS,
    _asset,
    write_catalog,
    write_cog,
)
from pipeline.simulate.tile import _FIELDS, SyntheticStack

BANDS = ("blue", "green", "red", "nir")
"""Asset keys of the stack's bands, in its band order."""

SCL_CLEAR, SCL_CLOUD = 4, 9
"""SCL classes written: vegetation (usable) and cloud, high probability (masked)."""

STRIP_PX = 512
"""Rows generated at a time (even, so strips align with the 20 m SCL grid)."""

WRITE_THREADS = 2
"""COGs of one date written at the same time."""

SENSING_TIME = dt.time(8, 36, 11)
"""Sensing time (UTC) of every Item."""

FORMAT_VERSION = 1
"""Version of the catalog's layout, in ``params.json`` (a changed layout is regenerated)."""


def stack_params(stack: SyntheticStack) -> dict[str, Any]:
    """The parameters that fix a stack's pixels, JSON-ready, with the catalog format version."""
    out: dict[str, Any] = {"format_version": FORMAT_VERSION}
    for name in _FIELDS:
        value = getattr(stack, name)
        out[name] = list(value) if isinstance(value, tuple) else value
    return out


def grids(stack: SyntheticStack) -> tuple[Grid, Grid]:
    """The 10 m grid of the stack and the 20 m grid of its SCL (same upper-left corner)."""
    epsg = CRS.from_user_input(stack.crs).to_epsg()
    if epsg is None:
        raise ValueError(f"stack CRS {stack.crs} has no EPSG code")
    t = stack.transform
    ny, nx = stack.shape
    g10 = Grid(epsg, t.c, t.f, stack.pixel_m, nx, ny)
    g20 = Grid(epsg, t.c, t.f, 2 * stack.pixel_m, -(-nx // 2), -(-ny // 2))
    return g10, g20


def date_rasters(stack: SyntheticStack, t: int) -> tuple[np.ndarray, np.ndarray]:
    """DN of the bands and the SCL of date ``t``, generated strip by strip.

    Parameters
    ----------
    stack
        The generated stack.
    t
        Date index.

    Returns
    -------
    dn : numpy.ndarray
        (B, rows, cols) uint16, ``10000 * reflectance + 1000`` clipped to 1..65535.
    scl : numpy.ndarray
        (ceil(rows / 2), ceil(cols / 2)) uint8: :data:`SCL_CLOUD` where any of the four
        pixels is invalid, else :data:`SCL_CLEAR`.
    """
    ny, nx = stack.shape
    dn = np.empty((stack.n_bands, ny, nx), dtype=np.uint16)
    scl = np.empty((-(-ny // 2), -(-nx // 2)), dtype=np.uint8)
    for r0 in range(0, ny, STRIP_PX):
        r1 = min(r0 + STRIP_PX, ny)
        bands, valid = stack.read(t, slice(r0, r1), slice(0, nx))
        bands *= np.float32(10000.0)
        bands += np.float32(1000.5)  # + 0.5: round to nearest when truncated
        np.clip(bands, 1.0, 65535.0, out=bands)
        dn[:, r0:r1] = bands
        bad = ~valid
        if bad.shape[0] % 2 or bad.shape[1] % 2:  # odd edge: pad with the last row/column
            bad = np.pad(bad, ((0, bad.shape[0] % 2), (0, bad.shape[1] % 2)), mode="edge")
        h, w = bad.shape
        cloudy = bad.reshape(h // 2, 2, w // 2, 2).any(axis=(1, 3))
        scl[r0 // 2 : r0 // 2 + h // 2] = np.where(cloudy, SCL_CLOUD, SCL_CLEAR)
    return dn, scl


def write_date(stack: SyntheticStack, t: int, folder: Path) -> pystac.Item:
    """Write the COGs of date ``t`` into ``folder``; return its Item (absolute hrefs).

    Parameters
    ----------
    stack
        The generated stack (4 bands: :data:`BANDS`).
    t
        Date index.
    folder
        The Item's folder (created).

    Returns
    -------
    pystac.Item
        The Item, with the eo, proj and raster fields the loader reads.
    """
    if stack.n_bands != len(BANDS):
        raise ValueError(f"stack has {stack.n_bands} bands: the catalog writes {len(BANDS)}")
    folder.mkdir(parents=True, exist_ok=True)
    g10, g20 = grids(stack)
    dn, scl = date_rasters(stack, t)
    layers = [*((k, dn[b], g10) for b, k in enumerate(BANDS)), ("scl", scl, g20)]
    with ThreadPoolExecutor(WRITE_THREADS) as pool:  # GDAL compresses without the GIL
        list(pool.map(lambda a: write_cog(folder / ASSETS[a[0]][0], a[1], a[2]), layers))
    assets = {
        key: _asset(key, str((folder / ASSETS[key][0]).resolve()), grid)
        for key, _array, grid in layers
    }
    cloud_cover = round(100.0 * float(np.mean(scl == SCL_CLOUD)), 3)
    del dn, scl
    day = dt.date.fromisoformat(stack.dates[t])
    when = dt.datetime.combine(day, SENSING_TIME, tzinfo=dt.UTC)
    foot = footprint_lonlat(g10)
    processed = (when + dt.timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    item = pystac.Item(
        id=f"SIM_T{g10.epsg % 100:02d}_{stack.shape[0]}px_{day:%Y%m%d}_L2A",
        geometry={
            "type": "Polygon",
            "coordinates": [[[round(x, 7), round(y, 7)] for x, y in foot.exterior.coords]],
        },
        bbox=[round(v, 7) for v in foot.bounds],
        datetime=when,
        properties={
            "created": processed,
            "updated": processed,
            "platform": "sentinel-2b",
            "constellation": "sentinel-2",
            "instruments": ["msi"],
            "eo:cloud_cover": cloud_cover,
            "proj:epsg": g10.epsg,
            "proj:code": f"EPSG:{g10.epsg}",
            "s2:processing_baseline": "05.10",
            "s2:product_type": "S2MSI2A",
            "earthsearch:boa_offset_applied": False,
            "processing:software": {"basewatch.simulate.tile_catalog": str(FORMAT_VERSION)},
            "description": f"{SIMULATED_NOTE} A generated whole-tile stack (SyntheticStack).",
            "basewatch:simulated": True,
        },
        stac_extensions=list(STAC_EXTENSIONS[:3]),
    )
    for key, asset in assets.items():
        item.add_asset(key, asset)
    return item


def write_tile_catalog(stack: SyntheticStack, out_dir: str | Path) -> dict[str, Any]:
    """Write every date of ``stack`` as COGs and Items: a self-contained catalog.

    Parameters
    ----------
    stack
        The generated stack.
    out_dir
        Folder of the catalog, replaced whole (written beside it, then renamed).

    Returns
    -------
    dict
        ``catalog`` (path of ``catalog.json``), ``seconds`` (wall time), ``seconds_per_date``,
        ``cog_bytes`` (size of every COG written), ``params`` (:func:`stack_params`).
    """
    out = Path(out_dir)
    start = time.perf_counter()
    with atomic_dir(out) as tmp:
        items = []
        for t in range(stack.n_dates):
            day = stack.dates[t].replace("-", "")
            items.append(write_date(stack, t, tmp / COLLECTION_ID / f"date_{t:03d}_{day}"))
        write_catalog(tmp, items)
        write_json(tmp / "params.json", stack_params(stack))
    seconds = time.perf_counter() - start
    return {
        "catalog": str(out / "catalog.json"),
        "seconds": round(seconds, 2),
        "seconds_per_date": round(seconds / stack.n_dates, 2),
        "cog_bytes": sum(f.stat().st_size for f in out.rglob("*.tif")),
        "params": stack_params(stack),
    }


def catalog_matches(out_dir: str | Path, stack: SyntheticStack) -> bool:
    """Whether ``out_dir`` holds a complete catalog of this very stack (to reuse it)."""
    p = Path(out_dir)
    if not (p / "catalog.json").is_file() or not (p / "params.json").is_file():
        return False
    try:
        return bool(json.loads((p / "params.json").read_text()) == stack_params(stack))
    except (OSError, ValueError):
        return False


def read_tile_items(catalog_json: str | Path) -> list[pystac.Item]:
    """The Items of a catalog written by :func:`write_tile_catalog`, in date order."""
    catalog = pystac.Catalog.from_file(str(catalog_json))
    items = list(catalog.get_items(recursive=True))
    for it in items:
        it.make_asset_hrefs_absolute()
    return sorted(items, key=lambda it: (it.datetime, it.id))
