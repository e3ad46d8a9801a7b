"""Local Sentinel-2 rasters of one date -> bands on one grid (the input side of ``basewatch pair``).

Three kinds of input describe one date (:func:`describe_input`):

- **a folder of single-band files** named by band: ``*_B02.tif``, ``*_B03.tif``, ... (the OSCD
  and SAFE ``IMG_DATA`` layout; ``.tif``, ``.tiff`` or ``.jp2``; a ``_10m``/``_20m`` suffix and
  the vocabulary names ``blue.tif``, ``*_red.tif`` are accepted too; an ``*_SCL.tif`` is used
  as the cloud mask). Other bands (B01, B05, B8A, ...) are ignored.
- **a multi-band GeoTIFF** whose band descriptions name the bands (``B02`` or ``blue``); without
  descriptions the order must be given (``band_order``).
- **a STAC Item JSON** with local asset hrefs (relative to the Item file, absolute paths, or
  ``file://``), assets found by the project's vocabulary or the Sentinel-2 ids
  (:func:`pipeline.io.catalog.band_asset_key`).

Harmonisation (digital numbers to reflectance, ``DN * scale + offset``), decided per input:

1. a STAC Item: :func:`pipeline.io.harmonise.band_radiometry` (``raster:bands`` scale/offset, the
   Earth Search BOA flag, else the processing baseline: from 04.00 on, L2A and L1C alike carry a
   +1000 DN offset); an Item with none of these gets rule 3;
2. a GeoTIFF declaring a scale or offset (GDAL metadata, ``src.scales`` / ``src.offsets``): those;
3. otherwise integer DNs are ``DN / 10000`` with no offset (Level-1C and pre-04.00 products, and
   OSCD), and floating-point values are taken as reflectance already.

DN 0 of integer data, the file's nodata value and non-finite values are no data. A wrong offset
(e.g. a post-04.00 L2A folder read as plain ``/ 10000``) shifts every band of that date by 0.1:
the pairwise radiometric normalisation absorbs it, so the change score is unaffected; only
absolute values are. Level-1C (top-of-atmosphere) inputs have no SCL, so no cloud mask: every
finite pixel is valid.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np
import rasterio
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.warp import Resampling, reproject

from pipeline.errors import BasewatchError, DataError
from pipeline.grid import Grid
from pipeline.io.catalog import BANDS, S2_BAND_IDS, SCL

__all__ = [
    "BandFile",
    "Grid",
    "InputSpec",
    "date_in_names",
    "describe_input",
    "read_bands",
    "reference_grid",
]

QUANTIFICATION = 10000.0
"""Sentinel-2 quantification value: reflectance = DN / 10000 (plus any offset)."""

RASTER_SUFFIXES = (".tif", ".tiff", ".jp2")
"""File types a band folder may hold."""

_NAME_TO_BAND: dict[str, str] = {
    **{b: b for b in (*BANDS, SCL)},
    **{sid.lower(): b for b, sid in S2_BAND_IDS.items()},
    **{sid.lower().replace("b0", "b"): b for b, sid in S2_BAND_IDS.items() if "B0" in sid},
}
"""Lower-case band name or id (``b02``, ``b2``, ``blue``, ``scl``) -> vocabulary band."""

_BAND_FILE = re.compile(
    r"(?:^|[_\-.])(b\d{1,2}a?|scl|blue|green|red|nir|swir16|swir22)(?:_\d{2}m)?$", re.IGNORECASE
)
_DATE_IN_NAME = re.compile(r"(?<!\d)(20\d{2})(0[1-9]|1[0-2])([0-2]\d|3[01])(?:T\d{6})?(?!\d)")
_LEVEL_IN_NAME = re.compile(r"(?:MSI|_|^)(L1C|L2A)(?:_|$)", re.IGNORECASE)


@dataclass(frozen=True)
class BandFile:
    """Where one band of one date lives and how its values become reflectance."""

    band: str
    """Vocabulary name (``blue`` ... ``swir22``, ``scl``)."""
    path: Path
    """Raster file."""
    index: int
    """1-based band of the file."""
    scale: float = 1.0 / QUANTIFICATION
    """Reflectance = value * scale + offset."""
    offset: float = 0.0
    """Added after scaling, reflectance units."""


@dataclass(frozen=True)
class InputSpec:
    """One date of a pair: its files, bands and harmonisation (no pixel read yet)."""

    path: Path
    """What the user gave."""
    kind: str
    """``folder``, ``multiband`` or ``stac``."""
    bands: dict[str, BandFile]
    """Reflectance bands found (vocabulary name -> file)."""
    scl: BandFile | None
    """The scene classification layer, when the input has one (Level-2A)."""
    date: str | None
    """Acquisition date YYYY-MM-DD when the input tells it (STAC datetime, file name)."""
    level: str | None
    """``L1C``, ``L2A`` or None when unknown."""
    harmonisation: str
    """How DNs became reflectance, in words."""


def _fail(path: Path, what: str) -> DataError:
    return DataError(f"{path}: {what}")


def _open(path: Path) -> Any:
    """rasterio dataset of ``path``; DataError naming it when unreadable."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            return rasterio.open(path)
    except (RasterioError, OSError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise _fail(path, f"cannot read raster ({msg}): pass a GeoTIFF or JPEG2000") from None


def _file_radiometry(path: Path, index: int) -> tuple[float, float, str]:
    """Scale, offset and their source for band ``index`` of a raster file (rules 2-3)."""
    with _open(path) as src:
        scale = float(src.scales[index - 1]) if src.scales else 1.0
        offset = float(src.offsets[index - 1]) if src.offsets else 0.0
        integer = np.issubdtype(np.dtype(src.dtypes[index - 1]), np.integer)
    if scale != 1.0 or offset != 0.0:
        return scale, offset, "GeoTIFF scale/offset"
    if integer:
        return 1.0 / QUANTIFICATION, 0.0, "DN / 10000, no offset"
    return 1.0, 0.0, "float values taken as reflectance"


def _date_of(*names: str) -> str | None:
    for name in names:
        m = _DATE_IN_NAME.search(name)
        if m:
            return f"{m.group(1)}-{m.group(2)}-{m.group(3)}"
    return None


def date_in_names(*names: str) -> str | None:
    """The first acquisition date ``YYYYMMDD`` (optionally ``THHMMSS``) in ``names``.

    Parameters
    ----------
    *names
        Texts searched in order (file names, a path).

    Returns
    -------
    str or None
        ``YYYY-MM-DD`` of the first 8-digit date of 2000-2099 not inside a longer number, or
        None.
    """
    return _date_of(*names)


def _level_of(*names: str) -> str | None:
    for name in names:
        m = _LEVEL_IN_NAME.search(name)
        if m:
            return m.group(1).upper()
    return None


def _band_of_name(stem: str) -> str | None:
    m = _BAND_FILE.search(stem)
    return _NAME_TO_BAND.get(m.group(1).lower()) if m else None


def _describe_folder(path: Path) -> InputSpec:
    found: dict[str, list[Path]] = {}
    for f in sorted(path.iterdir()):
        if f.is_file() and f.suffix.lower() in RASTER_SUFFIXES:
            band = _band_of_name(f.stem)
            if band is not None:
                found.setdefault(band, []).append(f)
    dupes = {b: fs for b, fs in found.items() if len(fs) > 1}
    if dupes:
        b, fs = next(iter(dupes.items()))
        raise _fail(path, f"{len(fs)} files for band {b} ({fs[0].name}, {fs[1].name}): keep one")
    bands, sources = {}, set()
    for band in BANDS:
        if band in found:
            f = found[band][0]
            scale, offset, source = _file_radiometry(f, 1)
            bands[band] = BandFile(band, f, 1, scale, offset)
            sources.add(source)
    scl = BandFile(SCL, found[SCL][0], 1, 1.0, 0.0) if SCL in found else None
    names = [f.name for fs in found.values() for f in fs]
    return InputSpec(
        path=path,
        kind="folder",
        bands=bands,
        scl=scl,
        date=_date_of(*names),
        level=_level_of(*names, path.name) or ("L2A" if scl else None),
        harmonisation="; ".join(sorted(sources)) or "none",
    )


def _describe_multiband(path: Path, band_order: tuple[str, ...] | None) -> InputSpec:
    with _open(path) as src:
        count = src.count
        descriptions = list(src.descriptions)
        tags = src.tags()
    if band_order:
        if len(band_order) != count:
            raise _fail(path, f"band order names {len(band_order)} bands but the file has {count}")
        names = [_NAME_TO_BAND.get(b.lower()) for b in band_order]
        bad = [b for b, n in zip(band_order, names, strict=True) if n is None and b != "-"]
        if bad:
            raise _fail(path, f"unknown band {bad[0]!r} in the band order: use B02.. or blue..")
    else:
        names = [_NAME_TO_BAND.get((d or "").strip().lower()) for d in descriptions]
        if not any(names):
            raise _fail(
                path,
                f"its {count} bands have no descriptions naming them (B02 or blue): set band "
                "descriptions, or give the order (--band-order blue,green,red,nir)",
            )
    bands: dict[str, BandFile] = {}
    scl = None
    sources = set()
    for i, band in enumerate(names, start=1):
        if band is None or band in bands:
            continue
        if band == SCL:
            scl = BandFile(SCL, path, i, 1.0, 0.0)
            continue
        scale, offset, source = _file_radiometry(path, i)
        bands[band] = BandFile(band, path, i, scale, offset)
        sources.add(source)
    stamp = str(tags.get("TIFFTAG_DATETIME", "")).replace(":", "")
    return InputSpec(
        path=path,
        kind="multiband",
        bands=bands,
        scl=scl,
        date=_date_of(stamp, path.name),
        level=_level_of(path.stem) or ("L2A" if scl else None),
        harmonisation="; ".join(sorted(sources)) or "none",
    )


def _local_href(item_path: Path, href: str) -> Path:
    parsed = urlparse(href)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if len(parsed.scheme) > 1 or href.lower().startswith("/vsi"):
        raise _fail(
            item_path,
            f"asset href {href!r} is not a local file: download the assets and point the "
            "hrefs at them (relative to the Item or absolute)",
        )
    p = Path(href)
    return p if p.is_absolute() else (item_path.parent / p)


def _describe_stac(path: Path) -> InputSpec:
    import pystac

    from pipeline.io.catalog import band_asset_key
    from pipeline.io.harmonise import band_radiometry

    try:
        item = pystac.Item.from_file(str(path))
    except Exception as exc:  # pystac raises many kinds on malformed JSON
        raise _fail(path, f"not a STAC Item ({type(exc).__name__}: {exc})"[:300]) from None
    bands: dict[str, BandFile] = {}
    sources = set()
    for band in BANDS:
        try:
            key = band_asset_key(item, band)
        except BasewatchError:
            continue
        file = _local_href(path, item.assets[key].href)
        try:
            rad = band_radiometry(item, band)
            scale, offset, source = rad.scale, rad.offset, f"STAC {rad.source}"
        except DataError:
            scale, offset, source = 1.0 / QUANTIFICATION, 0.0, "DN / 10000, no offset"
        bands[band] = BandFile(band, file, 1, scale, offset)
        sources.add(source)
    try:
        scl_key: str | None = band_asset_key(item, SCL)
    except BasewatchError:
        scl_key = None  # Level-1C: no scene classification
    scl = BandFile(SCL, _local_href(path, item.assets[scl_key].href), 1, 1.0) if scl_key else None
    props = item.properties
    level_hint = " ".join(
        str(x)
        for x in (item.id, item.collection_id, props.get("s2:product_type"), props.get("level"))
    )
    when = item.datetime or item.common_metadata.start_datetime
    return InputSpec(
        path=path,
        kind="stac",
        bands=bands,
        scl=scl,
        date=when.date().isoformat() if when else None,
        level=_level_of(*level_hint.replace("-", "_").split()) or ("L2A" if scl else None),
        harmonisation="; ".join(sorted(sources)) or "none",
    )


def describe_input(path: str | Path, band_order: tuple[str, ...] | None = None) -> InputSpec:
    """What one date's input holds: its kind, band files, harmonisation, date and level.

    Parameters
    ----------
    path
        A folder of single-band rasters, a multi-band GeoTIFF, or a STAC Item JSON.
    band_order
        For a multi-band file without band descriptions: the band of each file band in order
        (``B02``/``blue`` ...; ``-`` skips one).

    Returns
    -------
    InputSpec
        The description; no pixel is read.

    Raises
    ------
    DataError
        Naming ``path`` when it does not exist, is of no known kind, or holds no band of the
        vocabulary (blue, green, red, nir, swir16, swir22).
    """
    p = Path(path)
    if not p.exists():
        raise _fail(p, "does not exist: give a band folder, a multi-band GeoTIFF or a STAC Item")
    if p.is_dir():
        spec = _describe_folder(p)
    elif p.suffix.lower() == ".json":
        spec = _describe_stac(p)
    else:
        spec = _describe_multiband(p, band_order)
    if not spec.bands:
        raise _fail(
            p,
            "holds no band of blue, green, red, nir, swir16, swir22 (files *_B02.tif .. "
            "*_B12.tif, band descriptions, or STAC assets)",
        )
    for b in spec.bands.values():
        if not b.path.exists():
            raise _fail(p, f"band {b.band} file {b.path} does not exist")
    return spec


def _grid_of(path: Path) -> Grid:
    with _open(path) as src:
        if src.crs is None:
            raise _fail(path, "has no CRS: georeference it (both dates need one)")
        return Grid(src.crs, src.transform, (src.height, src.width))


def reference_grid(spec: InputSpec) -> Grid:
    """The grid of the input's finest band (its 10 m bands for Sentinel-2).

    Parameters
    ----------
    spec
        An input of :func:`describe_input`.

    Returns
    -------
    Grid
        The grid of the band with the smallest pixels (blue first on ties).
    """
    grids = [(_grid_of(b.path), b.band) for b in spec.bands.values()]
    order = {b: i for i, b in enumerate(BANDS)}
    grids.sort(key=lambda g: (abs(g[0].transform.a * g[0].transform.e), order[g[1]]))
    return grids[0][0]


def _read_one(bf: BandFile, grid: Grid, resampling: Resampling) -> np.ndarray:
    """One band as float32 values on ``grid`` (reprojected when needed), NaN = no data."""
    with _open(bf.path) as src:
        if not 1 <= bf.index <= src.count:
            raise _fail(bf.path, f"has {src.count} band(s), band {bf.index} was asked for")
        if src.crs is None:
            raise _fail(bf.path, "has no CRS: georeference it (both dates need one)")
        own = Grid(src.crs, src.transform, (src.height, src.width))
        try:
            data = src.read(bf.index, masked=True)
        except RasterioError as exc:
            raise _fail(bf.path, f"cannot read band {bf.index} ({exc})") from None
    values = np.ma.filled(data.astype(np.float32), np.nan)
    if np.issubdtype(data.dtype, np.integer) and bf.band != SCL:
        values[np.ma.getdata(data) == 0] = np.nan  # DN 0 is no data in Sentinel-2 products
    if own.same_as(grid):
        return values
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    reproject(
        values,
        out,
        src_transform=own.transform,
        src_crs=own.crs,
        src_nodata=np.nan,
        dst_transform=grid.transform,
        dst_crs=grid.crs,
        dst_nodata=np.nan,
        resampling=resampling,
    )
    return out


def read_bands(
    spec: InputSpec, grid: Grid, bands: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray | None]:
    """Reflectance of ``bands`` on ``grid`` and the SCL there (when the input has one).

    Bands on another grid (20 m bands, another date's grid or CRS) are reprojected onto
    ``grid`` with a cubic kernel, as the loader does; the SCL with nearest neighbour.

    Parameters
    ----------
    spec
        An input of :func:`describe_input`.
    grid
        The output grid.
    bands
        Vocabulary bands to read, all in ``spec.bands``.

    Returns
    -------
    tuple
        ``(B, y, x)`` float32 reflectance (NaN = no data) and the ``(y, x)`` uint8 SCL (0 = no
        data) or None.

    Raises
    ------
    DataError
        Naming the file that cannot be read, or the input when it does not cover ``grid``.
    """
    stack = np.empty((len(bands), *grid.shape), dtype=np.float32)
    for i, band in enumerate(bands):
        bf = spec.bands[band]
        values = _read_one(bf, grid, Resampling.cubic)
        stack[i] = values * np.float32(bf.scale) + np.float32(bf.offset)
    if not np.isfinite(stack).all(axis=0).any():
        raise _fail(spec.path, "has no pixel with data in every band on the reference grid")
    scl = None
    if spec.scl is not None:
        raw = _read_one(spec.scl, grid, Resampling.nearest)
        scl = np.nan_to_num(raw, nan=0.0).astype(np.uint8)
    return stack, scl
