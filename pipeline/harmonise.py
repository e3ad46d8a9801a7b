"""Sentinel-2 L2A digital numbers to surface reflectance, and the SCL validity mask.

Radiometry of one band of one Item (:func:`band_radiometry`), in this order:

1. ``raster:bands`` of the asset, when it gives a ``scale`` or an ``offset``:
   ``reflectance = DN * scale + offset``.
2. Otherwise the processing baseline (``s2:processing_baseline``, or ``Nxxyy`` in the product
   id): from 04.00 on, ESA adds ``BOA_ADD_OFFSET = -1000`` to the DNs, so
   ``reflectance = (DN - 1000) / 10000``; before, ``reflectance = DN / 10000``.

Earth Search's ``earthsearch:boa_offset_applied`` (earlier ``sentinel:boa_offset_applied``):
Element84 set it to ``true`` on Items whose COG pixels *they already shifted* back by the
BOA offset (harmonised to the pre-04.00 range), while the Items' ``raster:bands`` still announce
``offset: -0.1``. Their maintainers call the flag the truth and that offset a leftover (see
Element84/earth-search issues 9 and 66, cirrus-geo/cirrus-earth-search issues 21, 26, 33). So
when the flag is ``true`` the DN has no offset left and only the scale is applied:
``reflectance = DN * scale``. The real Earth Search v1 Items in ``../shared/data`` (baseline
05.09, flag ``true``, ``offset -0.1``) are read that way. When the flag is ``false`` or absent,
rules 1-2 hold as written. DN 0 is no data everywhere (NaN, and not valid).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numpy as np
import pystac
import xarray as xr
from scipy import ndimage

from pipeline.catalog import band_asset_key
from pipeline.errors import DataError

QUANTIFICATION = 10000.0
"""Sentinel-2 L2A quantification value: reflectance = DN / 10000 (before any offset)."""

BOA_ADD_OFFSET = -1000.0
"""DN offset ESA adds from processing baseline 04.00 on (divide by 10000 for reflectance)."""

BOA_FLAGS = ("earthsearch:boa_offset_applied", "sentinel:boa_offset_applied")
"""Item properties that say the provider already removed the BOA offset from the pixels."""

SCL_NODATA, SCL_SATURATED, SCL_SHADOW = 0, 1, 3
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS = 8, 9, 10

SCL_INVALID: tuple[int, ...] = (
    SCL_NODATA,
    SCL_SATURATED,
    SCL_SHADOW,
    SCL_CLOUD_MEDIUM,
    SCL_CLOUD_HIGH,
    SCL_CIRRUS,
)
"""SCL classes that make a pixel unusable."""

SCL_DILATED: tuple[int, ...] = (SCL_SHADOW, SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS)
"""SCL classes (cloud, cloud shadow, cirrus) whose masks are grown, since SCL misses their edges."""


_BASELINE_IN_NAME = re.compile(r"_N(\d{2})(\d{2})_")


def processing_baseline(item: pystac.Item) -> str | None:
    """The Sentinel-2 processing baseline of an Item (``"05.09"``), or None if unknown.

    Read from ``s2:processing_baseline`` or ``sentinel:processing_baseline``, else from the
    ``Nxxyy`` part of the product id (``s2:product_uri``, ``sentinel:product_id``).
    """
    props = item.properties
    for key in ("s2:processing_baseline", "sentinel:processing_baseline"):
        value = props.get(key)
        if value not in (None, ""):
            return str(value)
    for key in ("s2:product_uri", "sentinel:product_id"):
        m = _BASELINE_IN_NAME.search(str(props.get(key, "")))
        if m:
            return f"{m.group(1)}.{m.group(2)}"
    return None


@dataclass(frozen=True)
class Radiometry:
    """How one band of one Item turns DN into reflectance: ``DN * scale + offset``."""

    scale: float
    """Multiplier of the DN."""
    offset: float
    """Added after scaling, reflectance units."""
    source: str
    """Where the numbers come from, for messages and reports."""

    @property
    def key(self) -> tuple[float, float]:
        """``(scale, offset)``, for comparing Items."""
        return (self.scale, self.offset)


def _baseline_number(baseline: str) -> float:
    try:
        return float(baseline)
    except ValueError:
        raise DataError(f"processing baseline {baseline!r} is not a number like '05.09'") from None


def band_radiometry(item: pystac.Item, band: str) -> Radiometry:
    """Scale and offset turning ``band`` DNs of ``item`` into surface reflectance.

    Parameters
    ----------
    item
        A Sentinel-2 L2A Item.
    band
        A reflectance band of the vocabulary (``red``, ...).

    Returns
    -------
    Radiometry
        See the module docstring for the rules.

    Raises
    ------
    DataError
        When neither ``raster:bands`` nor the processing baseline tell how to scale the band.
    """
    key = band_asset_key(item, band)
    asset = item.assets[key]
    raster: list[dict[str, Any]] = asset.extra_fields.get("raster:bands") or []
    first = raster[0] if raster else {}
    flag = next((item.properties[f] for f in BOA_FLAGS if f in item.properties), None)
    if "scale" in first or "offset" in first:
        scale = float(first.get("scale", 1.0))
        offset = float(first.get("offset", 0.0))
        if flag is True:
            return Radiometry(scale, 0.0, "raster:bands scale; BOA offset already in the pixels")
        return Radiometry(scale, offset, "raster:bands")
    baseline = processing_baseline(item)
    if baseline is None:
        raise DataError(
            f"Item {item.id} asset '{key}': no raster:bands scale/offset and no processing "
            "baseline: cannot convert DN to reflectance; add s2:processing_baseline"
        )
    offset = BOA_ADD_OFFSET / QUANTIFICATION
    if flag is True or _baseline_number(baseline) < 4.0:
        offset = 0.0
    return Radiometry(1.0 / QUANTIFICATION, offset, f"processing baseline {baseline}")


def harmonise(
    dn: xr.DataArray,
    scale: float | xr.DataArray,
    offset: float | xr.DataArray,
    nodata: int = 0,
) -> xr.DataArray:
    """Reflectance from DNs: ``dn * scale + offset`` as float32, NaN where ``dn == nodata``.

    ``scale`` and ``offset`` are scalars or DataArrays that broadcast against ``dn`` (e.g. one
    value per time slice). Lazy in, lazy out.
    """
    f32 = dn.astype(np.float32)
    s = scale.astype(np.float32) if isinstance(scale, xr.DataArray) else np.float32(scale)
    o = offset.astype(np.float32) if isinstance(offset, xr.DataArray) else np.float32(offset)
    return (f32 * s + o).where(dn != nodata).astype(np.float32)


def _structure(ndim: int, radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    disk = (yy**2 + xx**2) <= radius**2 + radius  # a round disk, not a diamond, for small r
    return disk.reshape((1,) * (ndim - 2) + disk.shape)


def _valid_numpy(scl: np.ndarray, dilation_px: int) -> np.ndarray:
    bad = np.isin(scl, SCL_INVALID)
    if np.issubdtype(scl.dtype, np.floating):
        bad |= np.isnan(scl)
    if dilation_px > 0:
        grow = np.isin(scl, SCL_DILATED)
        if grow.any():
            bad |= ndimage.binary_dilation(grow, structure=_structure(scl.ndim, dilation_px))
    return ~bad


def valid_mask(scl: Any, dilation_px: int) -> Any:
    """Usable pixels from the SCL: not no-data, saturated, cloud shadow, cloud or cirrus.

    Cloud, cloud shadow and cirrus masks are first grown by a disk of radius ``dilation_px``
    pixels (in y and x only; time slices are independent).

    Parameters
    ----------
    scl
        SCL classes with y, x as the last two axes: numpy, dask or an xarray DataArray of
        either. NaN (in a float array) counts as no data.
    dilation_px
        Radius of the dilation, pixels; 0 for none.

    Returns
    -------
    Same kind as ``scl``
        Boolean, True where usable. Dask in gives dask out (``map_overlap``, nothing computed);
        numpy and dask give the same values.
    """
    if isinstance(scl, xr.DataArray):
        return scl.copy(data=valid_mask(scl.data, dilation_px)).rename("valid")
    if dilation_px < 0:
        raise ValueError("dilation_px must be >= 0")
    if scl.ndim < 2:
        raise ValueError("scl needs y and x as its last two axes")
    if isinstance(scl, da.Array):
        depth = {scl.ndim - 2: dilation_px, scl.ndim - 1: dilation_px}
        return scl.map_overlap(
            _valid_numpy,
            depth=depth,
            boundary="none",
            dtype=bool,
            meta=np.array((), dtype=bool),
            dilation_px=dilation_px,
        )
    return _valid_numpy(np.asarray(scl), dilation_px)
