"""Items to a lazy cube on the site grid; harmonised reflectance and the validity mask (I/O).

odc-stac reads each band's AOI window from the COGs onto the fixed site grid (cubic
resampling for reflectance, nearest for SCL) and fuses the Items of one solar day, the Item in
the grid's own EPSG first, so a no-data part of it is filled from the neighbouring zone's Item
of the same datatake. Reflectance is harmonised per time slice when the day's Items agree on
their radiometry (always, in practice: one datatake); otherwise each Item is harmonised on its
own and fused afterwards (see :mod:`pipeline.io.harmonise`).

The cube (``data/<site>/cube.zarr``) follows the Cube contract: dims (time, y, x), float32
reflectance per band, ``scl`` uint8 (0 = no data), ``valid`` bool, attrs ``crs`` and ``site``.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import warnings
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dask
import numpy as np
import pystac
import xarray as xr
from odc.geo.geobox import GeoBox

from pipeline.config import LoadConfig, NetworkConfig
from pipeline.errors import (
    AssetAccessError,
    BasewatchError,
    CatalogError,
    DataError,
    StageInputError,
)
from pipeline.io.atomic import atomic_dir
from pipeline.io.catalog import (
    BANDS,
    SCL,
    band_asset_key,
    item_epsg,
    normalise_item,
    redact_text,
    redact_url,
)
from pipeline.io.date_checks import date_checks
from pipeline.io.harmonise import ScaleOffset, band_radiometry, dark_masks, harmonise, valid_mask
from pipeline.sites import Site

__all__ = [
    "compute_cube",
    "gdal_options",
    "load_cube",
    "load_site",
    "read_cube",
    "reading",
    "solar_day",
    "valid_mask",
    "write_cube",
]

log = logging.getLogger(__name__)

STAC_CFG: dict[str, Any] = {
    "*": {
        "assets": {
            "*": {"data_type": "uint16", "nodata": 0},
            SCL: {"data_type": "uint8", "nodata": 0},
        },
        "warnings": "ignore",
    }
}
"""Pixel type and no-data value for Items that lack ``raster:bands`` (Planetary Computer)."""


def gdal_options(network: NetworkConfig) -> dict[str, str]:
    """GDAL settings for COG reads over HTTP: retries with backoff, timeouts.

    GDAL retries a request that fails with one of ``GDAL_HTTP_RETRY_CODES`` (or times out)
    ``GDAL_HTTP_MAX_RETRY`` times, waiting ``GDAL_HTTP_RETRY_DELAY`` seconds, doubled each time.
    """
    timeout = str(max(1, int(np.ceil(network.timeout_s))))
    return {
        "GDAL_HTTP_MAX_RETRY": str(network.retries),
        "GDAL_HTTP_RETRY_DELAY": str(network.backoff_s),
        "GDAL_HTTP_RETRY_CODES": "429,500,502,503,504",
        "GDAL_HTTP_TIMEOUT": timeout,
        "GDAL_HTTP_CONNECTTIMEOUT": timeout,
        "GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR",
    }


def _culprit(message: str, items: Sequence[pystac.Item]) -> str | None:
    """``Item <id> asset '<key>' <href>`` of the asset a GDAL error message names, if any."""
    for item in items:
        for key, asset in item.assets.items():
            href = asset.get_absolute_href() or asset.href
            bare = href.split("?", 1)[0]
            if bare and bare in message:
                return f"Item {item.id} asset '{key}' {redact_url(href)}"
    return None


class _ReadErrors(logging.Handler):
    """Keeps the read warnings and errors of odc-loader and rasterio (they name the file; the
    exception does not), so the user sees one line: ours."""

    LOGGERS = ("odc.loader._rio", "rasterio._env")

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []
        self._propagate: dict[str, bool] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _ReadErrors:
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self._propagate[name] = logger.propagate
            logger.addHandler(self)
            logger.propagate = False
        return self

    def __exit__(self, *exc: object) -> None:
        for name, propagate in self._propagate.items():
            logger = logging.getLogger(name)
            logger.removeHandler(self)
            logger.propagate = propagate
        for line in self.messages:
            log.debug("%s", redact_text(line))


def _chain(exc: BaseException | None) -> list[str]:
    out: list[str] = []
    while exc is not None and len(out) < 10:
        out.append(str(exc))
        exc = exc.__cause__ or exc.__context__
    return out


def _probe(items: Sequence[pystac.Item]) -> tuple[str, str] | None:
    """(culprit, problem) of the first band asset that cannot be opened as a georeferenced
    raster or read, or None. Used after an error that does not name its file."""
    import rasterio
    from rasterio.windows import Window

    for item in items:
        for band in (*BANDS, SCL):
            try:
                key = band_asset_key(item, band)
            except CatalogError:
                continue
            href = item.assets[key].get_absolute_href() or item.assets[key].href
            culprit = f"Item {item.id} asset '{key}' {redact_url(href)}"
            try:
                with rasterio.open(href) as src:
                    if src.crs is None or src.transform.is_identity:
                        return culprit, "no georeferencing (GeoTIFF tags unreadable)"
                    src.read(1, window=Window(0, 0, min(256, src.width), min(256, src.height)))
            except Exception as exc:
                chain = [m for m in _chain(exc) if m.strip()]
                return culprit, chain[-1].splitlines()[0][:300] if chain else type(exc).__name__
    return None


@contextmanager
def reading(what: str, items: Sequence[pystac.Item] = ()) -> Iterator[None]:
    """Turn a failed COG read while computing into a :class:`DataError` about ``what``,
    naming the Item and asset: from the error, odc-loader's log of it, or a probe of the
    assets (a corrupt file can fail anywhere in the reader, not only in rasterio).

    Wrap any computation of a lazy cube in it (:func:`compute_cube` does; the tile stage wraps
    its window-by-window reads). Our own errors raised inside pass through unchanged."""
    from rasterio.errors import NotGeoreferencedWarning, RasterioError

    with _ReadErrors() as handler, warnings.catch_warnings():
        # odc-loader's in-memory reprojection of a window trips this warning: noise here.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            yield
        except BasewatchError:
            raise
        except Exception as exc:
            chain = [m for m in _chain(exc) if m.strip()]
            # The deepest cause says what went wrong ("got 19384 bytes, expected 88947").
            msg = redact_text(chain[-1].splitlines()[0][:300]) if chain else type(exc).__name__
            culprit = _culprit("\n".join(chain + handler.messages), items)
            denied = _DENIED.search("\n".join(chain + handler.messages))
            if denied is not None:
                raise AssetAccessError(
                    f"{what}: the asset server refused a read (HTTP {denied.group(1)})"
                    f"{': ' + culprit if culprit else ''}: "
                    "the signing token is missing or expired; set catalog.signing (see "
                    "docs/real-scenes.md)"
                ) from None
            if culprit is None and items:
                found = _probe(items)
                if found is not None:
                    culprit, msg = found[0], redact_text(found[1])
            if culprit is not None:
                raise DataError(
                    f"{what}: a COG cannot be read: {culprit}: {msg}: re-download the asset or "
                    "drop the Item"
                ) from None
            if isinstance(exc, RasterioError):
                raise DataError(
                    f"{what}: a COG cannot be read ({msg}): check the Items' assets"
                ) from None
            raise


_DENIED = re.compile(r"HTTP\D{0,20}\b(401|403)\b")  # GDAL (curl) on a refused read


def compute_cube(ds: xr.Dataset, items: Sequence[pystac.Item], what: str) -> xr.Dataset:
    """Read a lazy cube into memory; a failed COG read is a :class:`DataError` naming its Item
    and asset (``what`` says what was being loaded)."""
    with reading(what, [normalise_item(it) for it in items]):
        return ds.compute()


def _solar_day(item: pystac.Item, lon: float) -> dt.date:
    # odc-stac's solar day: UTC shifted by whole hours of longitude / 15.
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise DataError(f"Item {item.id} has no datetime: it cannot be placed in time")
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return (when + dt.timedelta(hours=int(lon / 15))).date()


def solar_day(item: pystac.Item, geobox: GeoBox) -> dt.date:
    """The day the loader puts ``item`` in on ``geobox`` (odc-stac's solar day)."""
    return _solar_day(item, _centre_lon(geobox))


def _centre_lon(geobox: GeoBox) -> float:
    ((lon, _),) = geobox.extent.centroid.to_crs("epsg:4326").points
    return float(lon)


def _ordered(items: Sequence[pystac.Item], geobox: GeoBox) -> tuple[list[pystac.Item], list]:
    """Items sorted by solar day, the grid's own EPSG first, then datetime and id."""
    lon = _centre_lon(geobox)
    own = geobox.crs.epsg if geobox.crs is not None else None

    def key(it: pystac.Item) -> tuple:
        when = it.datetime or it.common_metadata.start_datetime
        return (_solar_day(it, lon), item_epsg(it) != own, when, it.id)

    ordered = sorted(items, key=key)
    return ordered, [_solar_day(it, lon) for it in ordered]


def _check_bands(items: Sequence[pystac.Item], bands: Sequence[str]) -> None:
    for it in items:
        for band in (*bands, SCL):
            band_asset_key(it, band)  # raises CatalogError naming Item and band


def _odc_load(
    items: list[pystac.Item],
    geobox: GeoBox,
    bands: Sequence[str],
    keys: list[Any],
    chunk_px: int | None,
    resampling: str,
    network: NetworkConfig,
) -> xr.Dataset:
    import odc.stac
    import rasterio

    # Grouping key per Item, computed by the caller: the solar day (as odc-stac's "solar_day"
    # computes it) or the Item's own index. Keyed here so each time step's Items are known.
    def group(_item: pystac.Item, _parsed: Any, idx: int) -> Any:
        return keys[idx]

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        try:
            # odc-stac captures the GDAL options active here and applies them to every read.
            with rasterio.Env(**gdal_options(network)):
                ds = odc.stac.load(
                    items,
                    bands=[*bands, SCL],
                    geobox=geobox,
                    groupby=group,
                    preserve_original_order=True,
                    chunks=None if chunk_px is None else {"x": chunk_px, "y": chunk_px},
                    resampling={"*": resampling, SCL: "nearest"},
                    stac_cfg=STAC_CFG,
                )
        except ValueError as exc:
            raise DataError(f"odc-stac cannot load the Items ({exc}): check their assets") from None
    if ds.sizes.get("time") != len(set(keys)):
        raise DataError(f"odc-stac grouped {len(items)} Items into {ds.sizes.get('time')} dates")
    return ds


def _fuse_first(slices: list[xr.DataArray], missing: Any) -> xr.DataArray:
    """Per pixel the first slice that has data (NaN or ``missing`` marks no data)."""
    out = slices[0]
    for nxt in slices[1:]:
        gap = out.isnull() if missing is None else out == missing
        out = xr.where(gap, nxt, out)
    return out


def load_cube(
    items: Iterable[pystac.Item],
    geobox: GeoBox,
    bands: Sequence[str] = BANDS,
    chunk_px: int | None = 512,
    *,
    dilation_px: int = 3,
    site_name: str = "",
    resampling: str = "cubic",
    network: NetworkConfig | None = None,
) -> xr.Dataset:
    """Lazy cube of harmonised reflectance, SCL and validity on ``geobox``.

    Parameters
    ----------
    items
        Sentinel-2 L2A Items of any supported provider (asset keys are normalised).
    geobox
        The output grid (the site grid).
    bands
        Reflectance bands of the vocabulary; ``scl`` is always loaded too.
    chunk_px
        Spatial chunk size of the dask arrays; None: read now, into numpy arrays (one window).
    dilation_px
        Growth of the SCL cloud / shadow masks, pixels (see :func:`valid_mask`).
    site_name
        Stored as the ``site`` attribute.
    resampling
        Resampling of the reflectance bands (``cubic`` or ``bilinear``); SCL uses ``nearest``.
    network
        Retries and timeouts of COG reads over HTTP (:func:`gdal_options`); defaults if None.

    Returns
    -------
    xarray.Dataset
        Dask-backed, nothing read yet beyond metadata (numpy-backed, read, if ``chunk_px`` is
        None). One time step per solar day (its coordinate is the datetime of the day's first
        Item); variables per the Cube contract.

    Raises
    ------
    DataError
        No Items, or Items that cannot be loaded or converted to reflectance.
    CatalogError
        An Item lacks an asset for a requested band.
    """
    bands = [b for b in bands if b != SCL]
    unknown = [b for b in bands if b not in BANDS]
    if unknown:
        raise DataError(f"unknown reflectance band(s) {unknown}: use some of {', '.join(BANDS)}")
    norm = [normalise_item(it) for it in items]
    if not norm:
        raise DataError("no Items to load: widen the dates or the cloud limit, or check the AOI")
    _check_bands(norm, bands)
    ordered, days = _ordered(norm, geobox)
    radiometry: list[dict[str, ScaleOffset]] = [
        {b: band_radiometry(it, b) for b in bands} for it in ordered
    ]
    day_list = sorted(set(days))
    members = {d: [i for i, di in enumerate(days) if di == d] for d in day_list}
    agree = all(
        len({radiometry[i][b].key for i in members[d]}) == 1 for d in day_list for b in bands
    )

    times = [np.datetime64(_naive_utc(ordered[members[d][0]]), "ns") for d in day_list]
    net = network or NetworkConfig()
    data: dict[str, xr.DataArray] = {}
    if agree:
        raw = _odc_load(ordered, geobox, bands, days, chunk_px, resampling, net)
        first = [members[d][0] for d in day_list]
        for b in bands:
            scale = xr.DataArray([radiometry[i][b].scale for i in first], dims="time")
            offset = xr.DataArray([radiometry[i][b].offset for i in first], dims="time")
            data[b] = harmonise(raw[b], scale, offset)
        data[SCL] = raw[SCL]
    else:
        log.info("Items of one day disagree on radiometry: harmonising each Item before fusing")
        keys = list(range(len(ordered)))
        raw = _odc_load(ordered, geobox, bands, keys, chunk_px, resampling, net)
        for b in bands:
            per_item = [
                harmonise(raw[b].isel(time=i), radiometry[i][b].scale, radiometry[i][b].offset)
                for i in range(len(ordered))
            ]
            fused = [_fuse_first([per_item[i] for i in members[d]], None) for d in day_list]
            data[b] = xr.concat(fused, dim="time", coords="minimal", compat="override")
        scl_fused = [_fuse_first([raw[SCL].isel(time=i) for i in members[d]], 0) for d in day_list]
        data[SCL] = xr.concat(scl_fused, dim="time", coords="minimal", compat="override")

    ds = xr.Dataset({b: data[b].drop_vars("time", errors="ignore") for b in (*bands, SCL)})
    ds = ds.assign_coords(time=("time", np.array(times, dtype="datetime64[ns]")))
    if "spatial_ref" in raw.coords:
        ds = ds.assign_coords(spatial_ref=raw.coords["spatial_ref"])
    ds[SCL] = ds[SCL].astype(np.uint8)
    has_data = ds[bands[0]].notnull() if bands else ds[SCL] != 0
    for b in bands[1:]:
        has_data = has_data & ds[b].notnull()
    ds["valid"] = (valid_mask(ds[SCL], dilation_px) & has_data).astype(bool)
    for b in bands:
        ds[b].attrs = {"long_name": f"{b} surface reflectance (harmonised)", "units": "1"}
    ds[SCL].attrs = {"long_name": "Sentinel-2 scene classification (SCL)", "nodata": 0}
    ds["valid"].attrs = {
        "long_name": "usable pixel: has data, not cloud/shadow/cirrus/saturated (dilated)",
        "dilation_px": int(dilation_px),
    }
    ds.attrs = {"crs": str(geobox.crs), "site": site_name}
    return ds.transpose("time", "y", "x", ...)


def _naive_utc(item: pystac.Item) -> dt.datetime:
    when = item.datetime or item.common_metadata.start_datetime
    assert when is not None  # checked by _solar_day
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return when


def _day_items(items: Sequence[pystac.Item], geobox: GeoBox) -> list[list[pystac.Item]]:
    """The Items of each date in the cube's time order, the one stamping the date first."""
    ordered, days = _ordered([normalise_item(it) for it in items], geobox)
    return [[it for it, e in zip(ordered, days, strict=True) if e == d] for d in sorted(set(days))]


def items_by_time(
    items: Sequence[pystac.Item], geobox: GeoBox, times: Sequence[Any]
) -> list[list[pystac.Item]]:
    """The Items :func:`load_cube` fused into each of ``times`` (a cube's time coordinates).

    Parameters
    ----------
    items
        The Items the cube was loaded from (any subset of its dates may have been kept).
    geobox
        The cube's grid.
    times
        Time coordinates of the cube (``numpy.datetime64``): the datetime of each day's first
        Item.

    Returns
    -------
    list of list of pystac.Item
        Per time, the Items of its solar day, in the order the loader fuses them.

    Raises
    ------
    DataError
        When a time is not the first datetime of any day of ``items``.
    """
    days = {np.datetime64(_naive_utc(day[0]), "ns"): day for day in _day_items(items, geobox)}
    out = []
    for t in times:
        key = np.datetime64(t, "ns")
        if key not in days:
            raise DataError(f"no Items of the cube's date {key}: pass the Items it was loaded from")
        out.append(days[key])
    return out


def aoi_mask(site: Site, geobox: GeoBox) -> np.ndarray:
    """Boolean raster of the site's AOI on ``geobox`` (pixel centres inside the polygon)."""
    from rasterio.features import rasterize
    from shapely.geometry import mapping

    return rasterize(
        [(mapping(site.to_utm(site.aoi)), 1)],
        out_shape=tuple(geobox.shape),
        transform=geobox.affine,
        fill=0,
        dtype="uint8",
    ).astype(bool)


def load_site(
    items: Sequence[pystac.Item],
    site: Site,
    load_cfg: LoadConfig,
    network: NetworkConfig | None = None,
) -> tuple[xr.Dataset, dict[str, Any]]:
    """The cube of one site, with the dates that are too cloudy or empty dropped.

    Parameters
    ----------
    items
        The site's Items (the search output).
    site
        The site; its grid is ``site.geobox(load_cfg.resolution_m)``.
    load_cfg
        Bands, chunking, mask dilation and the minimum valid fraction of the AOI.
    network
        Retries and timeouts of COG reads over HTTP; defaults when None.

    Returns
    -------
    tuple of xarray.Dataset and dict
        The lazy cube of the kept dates (valid-fraction check computed, pixels not kept in
        memory) and a report ``{"site", "n_items", "n_dates", "dates_kept": [date, ...],
        "dates_dropped": [{"date", "valid_fraction", "reason"}], "valid_fraction": {date: f},
        and the per-date checks of :func:`pipeline.io.date_checks.date_checks` (``radiometry``,
        ``radiometry_disagreements``, ``geometry``, ``geometry_unrefined``), with ISO dates
        (UTC) of the time coordinates.

    Raises
    ------
    DataError
        No Items, or the AOI covers no pixel of the grid.
    """
    geobox = site.geobox(load_cfg.resolution_m)
    if len(items) == 0:
        raise DataError(
            f"no Items for site {site.name}: widen the dates or the cloud limit, or check the "
            "catalog"
        )
    ds = load_cube(
        items,
        geobox,
        load_cfg.bands,
        load_cfg.chunk_px,
        dilation_px=load_cfg.cloud_dilation_px,
        site_name=site.name,
        network=network,
    )
    aoi = aoi_mask(site, geobox)
    n_aoi = int(aoi.sum())
    if n_aoi == 0:
        raise DataError(f"site {site.name}: the AOI covers no pixel of its grid: check the seed")
    used = ds["valid"] & xr.DataArray(aoi, dims=("y", "x"))
    bands = [b for b in load_cfg.bands if b in ds.data_vars and b != SCL]
    masks = [used, *dark_masks(ds, used, bands)]  # one pass: valid and dark-object counts
    with reading(f"load {site.name}", [normalise_item(it) for it in items]):
        counts = dask.compute(*[m.sum(("y", "x")).data for m in masks])
    frac = np.asarray(counts[0], dtype=float) / n_aoi
    dates = [str(np.datetime_as_string(t, unit="D")) for t in ds["time"].values]
    checks = date_checks(site.name, dates, _day_items(items, geobox), bands, counts)
    keep: list[int] = []
    dropped: list[dict[str, Any]] = []
    for i, (d, f) in enumerate(zip(dates, frac, strict=True)):
        if f >= load_cfg.min_valid_fraction:
            keep.append(i)
        else:
            dropped.append(
                {
                    "date": d,
                    "valid_fraction": round(float(f), 4),
                    "reason": f"valid fraction {f:.3f} of the AOI < min_valid_fraction "
                    f"{load_cfg.min_valid_fraction}",
                }
            )
    report = {
        "site": site.name,
        "n_items": len(items),
        "n_dates": len(dates),
        "dates_kept": [dates[i] for i in keep],
        "dates_dropped": dropped,
        "valid_fraction": {d: round(float(f), 4) for d, f in zip(dates, frac, strict=True)},
        **checks,
    }
    log.info("load %s: %d Items, %d dates, %d kept", site.name, len(items), len(dates), len(keep))
    return ds.isel(time=keep), report


def _zarr_chunks(ds: xr.Dataset) -> dict[str, int]:
    sizes = {"time": 1, "y": min(512, ds.sizes.get("y", 1)), "x": min(512, ds.sizes.get("x", 1))}
    for var in ds.data_vars.values():
        if var.chunks is not None and var.dims == ("time", "y", "x"):
            sizes["y"] = max(1, int(var.chunks[1][0]))
            sizes["x"] = max(1, int(var.chunks[2][0]))
            break
    return sizes


def write_cube(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a cube as zarr, atomically: to a temporary folder beside ``path``, then renamed.

    Dask-backed variables are computed chunk by chunk while writing. An existing cube at
    ``path`` is replaced only once the new one is complete.

    Returns
    -------
    Path
        ``path``.
    """
    p = Path(path)
    chunks = {k: v for k, v in _zarr_chunks(ds).items() if k in ds.dims}
    out = ds.chunk(chunks)
    for var in out.variables.values():
        var.encoding = {}
    encoding: dict[str, dict[str, Any]] = {}
    for name, arr in out.data_vars.items():
        if arr.dtype.kind in "biu":
            encoding[str(name)] = {"_FillValue": None}
    with atomic_dir(p) as tmp, consolidated_warning_hidden(), reading(f"write {p}"):
        out.to_zarr(tmp, mode="w", encoding=encoding, consolidated=True)
    return p


@contextmanager
def consolidated_warning_hidden() -> Iterator[None]:
    """Hide zarr 3's warning that consolidated metadata is not in its format 3 specification
    (every store this project writes is consolidated, and read back by xarray)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
        yield


def read_cube(path: str | Path) -> xr.Dataset:
    """Open a cube written by :func:`write_cube` (lazy, dask-backed).

    Raises
    ------
    StageInputError
        When ``path`` does not exist or is not a zarr store.
    """
    p = Path(path)
    if not p.exists():
        raise StageInputError(f"{p} does not exist: run the load stage first")
    try:
        with consolidated_warning_hidden():
            ds = xr.open_zarr(p, consolidated=None)
    except Exception as exc:
        raise StageInputError(
            f"{p} is not a readable cube ({exc}): run the load stage again"
        ) from None
    if "time" in ds.coords:
        ds = ds.assign_coords(time=ds["time"].values.astype("datetime64[ns]"))
    return ds
