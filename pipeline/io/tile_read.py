"""Reading a stack window by window for :mod:`pipeline.stages.tile` (the only part that touches
data).

A :class:`StackReader` hands out one window of one date at a time: the detect stage never holds
a date of the whole tile. :class:`CubeReader` reads an xarray cube (numpy, zarr or dask
backed); :class:`ItemsReader` reads the windows of a cube loaded from STAC Items straight from
their COGs; :class:`pipeline.simulate.tile.SyntheticStack` generates one.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

import dask
import numpy as np
from affine import Affine

from pipeline.errors import DataError
from pipeline.grid import grid_transform

if TYPE_CHECKING:
    import pystac

    from pipeline.config import NetworkConfig

SAMPLE_WINDOW_PX = 32
"""Side of the sample windows of the radiometric fit."""

BOX_MAX_PX = 4_000_000
"""Largest box (pixels, about 2000 px square: 80 MB of one date's bands) that
:meth:`ItemsReader.read_many` loads whole to cut several windows from."""


class StackReader(Protocol):
    """A (date, band, y, x) stack read one window of one date at a time."""

    shape: tuple[int, int]
    """(rows, cols) of the grid."""
    n_dates: int
    """Number of dates."""
    n_bands: int
    """Number of bands."""

    @property
    def dates(self) -> list[str]:
        """ISO date of each date index."""
        ...

    @property
    def transform(self) -> Affine:
        """Affine transform of the grid."""
        ...

    crs: str
    """CRS of the grid (metric)."""

    def read(self, t: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """(B, h, w) float32 bands and (h, w) bool validity of date ``t`` over a window."""
        ...


class CubeReader:
    """A :class:`StackReader` over an xarray cube (numpy, zarr or dask backed).

    Windows of a dask-backed cube are computed inside the calling task with the synchronous
    scheduler (the task is already one of a pool's workers).

    Parameters
    ----------
    cube
        Dataset with the bands (float32 reflectance) and ``valid`` on (time, y, x), pixel-centre
        ``x``/``y`` coordinates and a ``crs`` attribute.
    bands
        Bands compared.

    Raises
    ------
    DataError
        When a band, ``valid`` or ``crs`` is missing.
    """

    def __init__(self, cube: Any, bands: tuple[str, ...] = ("blue", "green", "red", "nir")):
        missing = [b for b in (*bands, "valid") if b not in cube]
        if missing:
            raise DataError(f"cube has no variable(s) {', '.join(missing)}: load them first")
        if not cube.attrs.get("crs"):
            raise DataError("cube has no 'crs' attribute: load it with pipeline.io.load")
        self.cube = cube
        self.bands = tuple(bands)
        self.shape = (int(cube.sizes["y"]), int(cube.sizes["x"]))
        self.n_dates = int(cube.sizes["time"])
        self.n_bands = len(self.bands)
        self.crs = str(cube.attrs["crs"])
        self._token = uuid.uuid4().hex

    def __dask_tokenize__(self) -> str:
        """A key of its own (hashing the cube's whole dask graph would be slow)."""
        return self._token

    @property
    def dates(self) -> list[str]:
        """ISO date of each time step."""
        return [str(np.datetime_as_string(t, unit="D")) for t in self.cube["time"].values]

    @property
    def transform(self) -> Affine:
        """Affine transform from the pixel-centre coordinates."""
        return grid_transform(self.cube["x"].values, self.cube["y"].values)

    def read(self, t: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """(B, h, w) float32 bands and (h, w) bool validity of date ``t`` over a window."""
        return self.read_many(t, [(rows, cols)])[0]

    def read_many(
        self, t: int, windows: list[tuple[slice, slice]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`read` of several windows of date ``t`` in one computation: a chunk of a
        dask-backed cube that several windows touch is read once, not once per window."""
        parts = [
            self.cube[[*self.bands, "valid"]].isel({"time": t, "y": r, "x": c}).transpose("y", "x")
            for r, c in windows
        ]
        with dask.config.set(scheduler="synchronous"):
            parts = list(dask.compute(*parts))  # one read of every variable (numpy: a no-op)
        return [
            (
                np.stack([np.asarray(w[b].values, dtype=np.float32) for b in self.bands]),
                np.asarray(w["valid"].values, dtype=bool),
            )
            for w in parts
        ]


def _covered(ds: Any, bands: tuple[str, ...]) -> bool:
    """Whether a loaded window has data in every band and the SCL at every pixel."""
    from pipeline.io.load import SCL

    if not bool((np.asarray(ds[SCL].values) != 0).all()):
        return False
    return all(bool(np.isfinite(np.asarray(ds[b].values)).all()) for b in bands)


class ItemsReader(CubeReader):
    """A :class:`CubeReader` whose windows are read straight from the cube's Items' COGs.

    :meth:`read` loads one window of one date with odc-stac into memory (no dask graph): the
    day's Items, the window grown by the cloud mask's dilation, harmonised and masked by
    :func:`pipeline.io.load.load_cube` itself, then cropped. Each read decodes only the COG
    blocks under the window; computed from the lazy cube instead, a window with a halo computes
    every chunk it touches (up to 9 when the chunks are the windows' size) through a dask
    graph. The same values (``tests/test_tile_read.py``): only the day's Items in the cube's
    CRS are read (:attr:`own_items`; a pixel's source is an affine function of its place,
    whatever the window), and where they leave a gap in the window that the loader fills from
    an Item of another CRS (the next UTM zone, near a zone border as at Khmeimim and Tartus),
    or the day has none, the window is read from the lazy cube instead: GDAL warps with an
    approximate transformer fitted to each destination window, so a window and a cube chunk
    would give slightly different values (up to 3e-4 reflectance on the demo catalog) and the
    detections would depend on the tile stage's chunking. :meth:`read_many` (the sample step's
    many small windows of one date) loads the box around them once when it is at most
    :data:`BOX_MAX_PX` (a site's grid), else reads them from the lazy cube in one computation
    (windows spread over a tile).

    Parameters
    ----------
    cube
        A cube of :func:`pipeline.io.load.load_cube` (or :func:`pipeline.io.load.load_site`),
        any of its dates kept.
    items
        The Items it was loaded from (signed, if the catalog signs them).
    bands
        Bands compared.
    resampling
        The reflectance resampling it was loaded with.
    network
        Retries and timeouts of COG reads over HTTP; defaults when None.

    Raises
    ------
    DataError
        As :class:`CubeReader`, when a date of the cube has no Items, or when its ``valid``
        does not say the cloud mask's dilation (``dilation_px``, set by ``load_cube``).
    """

    def __init__(
        self,
        cube: Any,
        items: Sequence[pystac.Item],
        bands: tuple[str, ...] = ("blue", "green", "red", "nir"),
        *,
        resampling: str = "cubic",
        network: NetworkConfig | None = None,
    ):
        from odc.geo.geobox import GeoBox

        from pipeline.io.catalog import item_epsg
        from pipeline.io.load import items_by_time

        super().__init__(cube, bands)
        dilation = cube["valid"].attrs.get("dilation_px")
        if dilation is None:
            raise DataError("cube's 'valid' has no dilation_px: load it with pipeline.io.load")
        self.dilation_px = int(dilation)  # the same mask as the cube's, window by window
        self.geobox = GeoBox(self.shape, self.transform, self.crs)
        self.day_items = items_by_time(items, self.geobox, cube["time"].values)
        own = self.geobox.crs.epsg
        self.own_items = [
            [item for item in day if own is not None and item_epsg(item) == own]
            for day in self.day_items
        ]
        """Per date, its Items in the cube's CRS, in the loader's order (which puts them first,
        by the same :func:`pipeline.io.catalog.item_epsg`)."""
        self.resampling = resampling
        self.network = network

    def read(self, t: int, rows: slice, cols: slice) -> tuple[np.ndarray, np.ndarray]:
        """(B, h, w) float32 bands and (h, w) bool validity of date ``t`` over a window."""
        from pipeline.io.load import load_cube

        own = self.own_items[t]
        if not own:
            return super().read_many(t, [(rows, cols)])[0]
        ny, nx = self.shape
        r0, r1, _ = rows.indices(ny)
        c0, c1, _ = cols.indices(nx)
        m = self.dilation_px
        y0, y1, x0, x1 = max(r0 - m, 0), min(r1 + m, ny), max(c0 - m, 0), min(c1 + m, nx)
        grown = load_cube(
            own,
            self.geobox[y0:y1, x0:x1],
            self.bands,
            chunk_px=None,
            dilation_px=self.dilation_px,
            resampling=self.resampling,
            network=self.network,
        ).isel(time=0)
        if len(own) < len(self.day_items[t]) and not _covered(grown, self.bands):
            # the loader fills this window's gaps from Items warped from another CRS
            return super().read_many(t, [(rows, cols)])[0]
        win = grown.isel(y=slice(r0 - y0, r1 - y0), x=slice(c0 - x0, c1 - x0))
        bands = np.stack([np.asarray(win[b].values, dtype=np.float32) for b in self.bands])
        return bands, np.asarray(win["valid"].values, dtype=bool)

    def read_many(
        self, t: int, windows: list[tuple[slice, slice]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """:meth:`read` of several windows of date ``t``: one load of the box around them when
        it is at most :data:`BOX_MAX_PX`, else one computation of the lazy cube."""
        if not windows:
            return []
        ny, nx = self.shape
        spans = [(r.indices(ny)[:2], c.indices(nx)[:2]) for r, c in windows]
        y0, y1 = min(r[0] for r, _ in spans), max(r[1] for r, _ in spans)
        x0, x1 = min(c[0] for _, c in spans), max(c[1] for _, c in spans)
        if (y1 - y0) * (x1 - x0) > BOX_MAX_PX:
            return super().read_many(t, windows)
        bands, valid = self.read(t, slice(y0, y1), slice(x0, x1))
        return [
            (
                bands[:, r0 - y0 : r1 - y0, c0 - x0 : c1 - x0],
                valid[r0 - y0 : r1 - y0, c0 - x0 : c1 - x0],
            )
            for (r0, r1), (c0, c1) in spans
        ]


def read_window(
    reader: StackReader, t: int, rows: slice, cols: slice
) -> tuple[np.ndarray, np.ndarray]:
    """(B, h, w) float32 bands and (h, w) validity (valid, and finite in every band)."""
    return _checked(*reader.read(t, rows, cols))


def _checked(bands: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bands = np.ascontiguousarray(bands, dtype=np.float32)
    valid = np.ascontiguousarray(valid, dtype=bool) & np.isfinite(bands).all(axis=0)
    return bands, valid


def sample_windows(shape: tuple[int, int], max_sample_px: int) -> list[tuple[slice, slice]]:
    """Equal windows spread on a regular grid, about ``max_sample_px`` pixels in all."""
    ny, nx = shape
    h, w = min(SAMPLE_WINDOW_PX, ny), min(SAMPLE_WINDOW_PX, nx)
    n_side = max(1, math.ceil(math.sqrt(max_sample_px / (h * w))))
    out = []
    for i in range(n_side):
        r0 = min(max(round((i + 0.5) * ny / n_side - h / 2), 0), ny - h)
        for j in range(n_side):
            c0 = min(max(round((j + 0.5) * nx / n_side - w / 2), 0), nx - w)
            out.append((slice(r0, r0 + h), slice(c0, c0 + w)))
    return out


def read_sample(
    reader: StackReader, t: int, windows: list[tuple[slice, slice]]
) -> tuple[np.ndarray, np.ndarray]:
    """(n, B, h, w) bands and (n, h, w) validity of the ``windows`` of date ``t`` (in one
    read when the reader has ``read_many``, as :class:`CubeReader`)."""
    read_many = getattr(reader, "read_many", None)
    if read_many is None:
        parts = [read_window(reader, t, r, c) for r, c in windows]
    else:
        parts = [_checked(*got) for got in read_many(t, windows)]
    return np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts])
