"""STAC search: a STAC API through pystac-client, or a local static catalog; asset-key mapping.

The project speaks one band vocabulary, the Earth Search v1 asset keys (:data:`BANDS` plus
:data:`SCL`). Planetary Computer and Earth Search v0 name the same assets after the Sentinel-2
band ids (``B02`` ... ``SCL``); :func:`normalise_item` makes an Item's assets reachable under the
vocabulary keys whatever its provider, so the loader asks for ``red`` everywhere.

Catalogs are untrusted input. Asset hrefs of the bands the pipeline reads must be http(s) URLs
for a STAC API, and paths inside the catalog's own folder for a local catalog; ``file://``,
GDAL ``/vsi...`` paths and path traversal are refused with a :class:`CatalogError`. A local
catalog's links are followed only inside its folder, so a hostile catalog cannot make the
search read other files or reach the network.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pystac
from pystac.stac_io import DefaultStacIO
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry

from pipeline.config import CatalogConfig, NetworkConfig
from pipeline.errors import CatalogError, StageInputError
from pipeline.io.atomic import PUBLIC_MODE, write_text
from pipeline.io.redact import redact_logs, redact_text, redact_url
from pipeline.io.signing import signer_for

log = logging.getLogger(__name__)

BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")
"""Reflectance bands of the vocabulary (Earth Search v1 asset keys)."""

SCL = "scl"
"""The scene classification layer of the vocabulary."""

ALL_BANDS: tuple[str, ...] = (*BANDS, SCL)
"""Every band the pipeline can load."""

S2_BAND_IDS: dict[str, str] = {
    "blue": "B02",
    "green": "B03",
    "red": "B04",
    "nir": "B08",
    "swir16": "B11",
    "swir22": "B12",
    "scl": "SCL",
}
"""Sentinel-2 band id of each vocabulary band (Planetary Computer and Earth Search v0 keys)."""

_NATIVE_RES_M: dict[str, int] = {
    "blue": 10,
    "green": 10,
    "red": 10,
    "nir": 10,
    "swir16": 20,
    "swir22": 20,
    "scl": 20,
}

ASSET_KEYS: dict[str, tuple[str, ...]] = {
    band: (band, sid, sid.lower(), f"{sid}_{_NATIVE_RES_M[band]}m")
    for band, sid in S2_BAND_IDS.items()
}
"""Asset keys tried, in order, for each vocabulary band: Earth Search v1 (``red``), Planetary
Computer and Earth Search v0 (``B04``), lower case (``b04``) and resolution-suffixed (``B04_10m``).
Failing these, an asset whose single ``eo:bands`` entry (or STAC 1.1 ``bands`` entry) names the
band is used."""


def band_asset_key(item: pystac.Item, band: str) -> str:
    """The key of the asset holding vocabulary ``band`` in ``item``.

    Parameters
    ----------
    item
        A Sentinel-2 L2A Item from any supported provider.
    band
        A vocabulary band name (one of :data:`ALL_BANDS`).

    Returns
    -------
    str
        The asset key, e.g. ``"red"`` (Earth Search v1) or ``"B04"`` (Planetary Computer).

    Raises
    ------
    CatalogError
        When ``band`` is not in the vocabulary or the Item has no asset for it.
    """
    if band not in ASSET_KEYS:
        raise CatalogError(
            f"unknown band '{band}': use one of {', '.join(ALL_BANDS)} (load.bands in the config)"
        )
    for key in ASSET_KEYS[band]:
        if key in item.assets:
            return key
    sid = S2_BAND_IDS[band]
    for key, asset in item.assets.items():
        # eo:bands (STAC 1.0) or the common bands of STAC 1.1 (eo:common_name inside).
        entries = asset.extra_fields.get("eo:bands") or asset.extra_fields.get("bands") or []
        if len(entries) != 1:
            continue
        entry = entries[0]
        common = entry.get("common_name") or entry.get("eo:common_name")
        if entry.get("name") == sid or (band != SCL and common == band):
            return key
    raise CatalogError(
        f"Item {item.id} has no asset for band '{band}' (looked for "
        f"{', '.join(ASSET_KEYS[band])}): use a Sentinel-2 L2A collection"
    )


def normalise_item(item: pystac.Item) -> pystac.Item:
    """A copy of ``item`` whose band assets are also reachable under the vocabulary keys.

    Parameters
    ----------
    item
        A Sentinel-2 L2A Item (Earth Search v0/v1, Planetary Computer, or the demo catalog).

    Returns
    -------
    pystac.Item
        A clone; each vocabulary band found in the Item is added as an asset under its
        vocabulary key (same href, made absolute), original keys kept. Bands the Item lacks are
        skipped; the loader reports them.
    """
    out = item.clone()
    for band in ALL_BANDS:
        if band in out.assets:
            continue
        try:
            key = band_asset_key(out, band)
        except CatalogError:
            continue
        asset = out.assets[key].clone()
        href = out.assets[key].get_absolute_href()
        if href is not None:
            asset.href = href
        out.add_asset(band, asset)
    return out


def _crs_epsg(props: dict[str, Any]) -> int | None:
    """EPSG code from one set of projection fields, or None when they name no EPSG CRS."""
    epsg = props.get("proj:epsg")
    if epsg is not None:
        return int(epsg)
    code = props.get("proj:code")
    if isinstance(code, str) and code.upper().startswith("EPSG:"):
        return int(code.split(":", 1)[1])
    for key in ("proj:wkt2", "proj:projjson"):
        value = props.get(key)
        if value:
            from pyproj import CRS
            from pyproj.exceptions import CRSError

            try:
                crs = CRS.from_json_dict(value) if isinstance(value, dict) else CRS(value)
            except CRSError:
                return None
            found = crs.to_epsg()
            return int(found) if found is not None else None
    return None


def item_epsg(item: pystac.Item) -> int | None:
    """EPSG code of an Item's pixel grid, or None.

    Read from the projection extension on the Item, then on its assets, whichever form the
    catalog uses: ``proj:epsg`` (projection v1), ``proj:code`` (``"EPSG:32636"``, projection
    v2 and STAC 1.1 catalogs, where ``proj:epsg`` is gone), ``proj:wkt2`` or ``proj:projjson``
    (matched to an EPSG code by pyproj).
    """
    sources: list[dict[str, Any]] = [item.properties]
    sources += [a.extra_fields for a in item.assets.values()]
    for props in sources:
        epsg = _crs_epsg(props)
        if epsg is not None:
            return epsg
    return None


# ---------------------------------------------------------------------------------------------
# Href safety


def _is_url(href: str) -> bool:
    return urlparse(href).scheme in ("http", "https")


def _has_scheme(href: str) -> bool:
    # A one-letter "scheme" would be a Windows drive letter; anything longer is a URL scheme.
    return len(urlparse(href).scheme) > 1


def _inside(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


def check_asset_hrefs(item: pystac.Item, root: Path | None) -> None:
    """Refuse band assets whose hrefs point where the pipeline must not read.

    Only the assets of the vocabulary bands are checked: they are the only ones the pipeline
    opens. Other assets (thumbnails, metadata, Earth Search's ``s3://`` JPEG 2000 copies) are
    never read and are left alone.

    Parameters
    ----------
    item
        An Item from a STAC API (``root`` None) or a local catalog.
    root
        Folder of the local catalog, or None for a STAC API.

    Raises
    ------
    CatalogError
        Naming the Item and asset: for an API an href that is not http(s); for a local catalog
        an href with a URL scheme (``file://``, ``http://`` ...), a GDAL ``/vsi`` path, or one
        that resolves outside the catalog's folder.
    """
    for band in ALL_BANDS:
        try:
            key = band_asset_key(item, band)
        except CatalogError:
            continue
        raw = item.assets[key].href
        where = f"Item {item.id} asset '{key}' href {redact_text(raw)!r}"
        if raw.lower().startswith("/vsi"):
            raise CatalogError(f"{where}: GDAL /vsi paths are refused: use a plain URL or path")
        href = item.assets[key].get_absolute_href() or raw
        if root is None:
            if not _is_url(href):
                raise CatalogError(
                    f"{where}: an API's assets must be http(s) URLs: this catalog is not usable"
                )
            continue
        if _has_scheme(raw) or _has_scheme(href):
            raise CatalogError(
                f"{where}: a local catalog's assets must be paths inside {root}: refused"
            )
        if not _inside(Path(href), root):
            raise CatalogError(
                f"{where}: resolves outside the catalog folder {root}: refused (path traversal)"
            )


class _ConfinedStacIO(DefaultStacIO):
    """pystac I/O that reads only files inside one folder (a local catalog's).

    pystac wraps errors raised while resolving links, so the refused href is also kept in
    :attr:`refused` for the caller's message.
    """

    def __init__(self, root: Path) -> None:
        super().__init__()
        self.root = root
        self.refused: str | None = None

    def read_text_from_href(self, href: str) -> str:
        lowered = href.lower()
        if _has_scheme(href) or lowered.startswith("/vsi") or not _inside(Path(href), self.root):
            self.refused = href
            raise CatalogError(self.refusal())
        return super().read_text_from_href(href)

    def refusal(self) -> str:
        """The message for the refused href."""
        return f"local catalog {self.root} links to {self.refused!r}, outside its folder: refused"


# ---------------------------------------------------------------------------------------------
# Search


def _item_datetime(item: pystac.Item) -> dt.datetime:
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise CatalogError(f"Item {item.id} has no datetime: this catalog is not usable")
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.astimezone(dt.UTC)


def _sort_key(item: pystac.Item) -> tuple[dt.datetime, str]:
    return (_item_datetime(item), item.id)


def _cloud_ok(item: pystac.Item, max_cloud: float) -> bool:
    cc = item.properties.get("eo:cloud_cover")
    # Like a CQL2 comparison on a missing property: an Item without eo:cloud_cover is excluded.
    return cc is not None and float(cc) <= max_cloud


def _matches(
    item: pystac.Item,
    catalog: CatalogConfig,
    aoi_lonlat: BaseGeometry,
    start: dt.date,
    end: dt.date,
) -> bool:
    if item.collection_id != catalog.collection:
        return False
    if not _cloud_ok(item, catalog.max_cloud_cover):
        return False
    if not start <= _item_datetime(item).date() <= end:
        return False
    if item.geometry is None:
        return False
    try:
        return bool(shape(item.geometry).intersects(aoi_lonlat))
    except Exception:
        raise CatalogError(f"Item {item.id} has an unreadable geometry: fix the catalog") from None


def local_catalog_file(url: str | Path) -> Path:
    """The JSON file of a local catalog given as a file or a folder.

    A folder is searched for ``catalog.json``, then ``collection.json``.

    Raises
    ------
    CatalogError
        When neither exists.
    """
    p = Path(url)
    if p.is_dir():
        for name in ("catalog.json", "collection.json"):
            if (p / name).is_file():
                return p / name
        raise CatalogError(
            f"local catalog folder {p} has no catalog.json or collection.json: point "
            "catalog.url at the catalog file"
        )
    if not p.is_file():
        raise CatalogError(
            f"local catalog {p} does not exist: generate the demo catalog (basewatch demo) "
            "or set catalog.url to a STAC API URL or an existing catalog.json"
        )
    return p


_UPWARD_RELS = ("root", "parent")


def _search_local(
    catalog: CatalogConfig, aoi_lonlat: BaseGeometry, start: dt.date, end: dt.date
) -> list[pystac.Item]:
    path = local_catalog_file(catalog.url).resolve()
    root = path.parent
    stac_io = _ConfinedStacIO(root)
    found: list[pystac.Item] = []
    what = "cannot be read"
    try:
        doc = json.loads(stac_io.read_text_from_href(str(path)))
        # Walk from this file as the root: its own root/parent links may lie outside the folder.
        doc["links"] = [ln for ln in doc.get("links", []) if ln.get("rel") not in _UPWARD_RELS]
        obj = pystac.read_dict(doc, href=str(path), stac_io=stac_io)
        if not isinstance(obj, pystac.Catalog):
            raise CatalogError(
                f"{path} is a {type(obj).__name__}, not a STAC Catalog or Collection: "
                "point catalog.url at catalog.json"
            )
        what = "holds an Item or link that cannot be read"
        for item in obj.get_items(recursive=True):
            if _matches(item, catalog, aoi_lonlat, start, end):
                check_asset_hrefs(item, root)
                found.append(item)
    except CatalogError:
        raise
    except Exception as exc:
        if stac_io.refused is not None:
            raise CatalogError(stac_io.refusal()) from None
        raise CatalogError(f"local catalog {path} {what} ({exc}): fix or regenerate it") from None
    found.sort(key=_sort_key)
    return found[: catalog.max_items]


def _cloud_filter(max_cloud: float) -> dict[str, Any]:
    return {"op": "<=", "args": [{"property": "eo:cloud_cover"}, max_cloud]}


RETRY_STATUS: tuple[int, ...] = (429, 500, 502, 503, 504)
"""HTTP statuses after which a STAC request is retried (with backoff, honouring Retry-After)."""


def api_io(network: NetworkConfig) -> Any:
    """A pystac-client ``StacApiIO`` with retries, backoff and a timeout.

    urllib3's ``Retry`` retries refused connections, read timeouts (a hanging server) and the
    statuses in :data:`RETRY_STATUS`, waiting ``0, 2 b, 4 b, ...`` seconds (``b`` =
    ``network.backoff_s``; a ``Retry-After`` header is honoured up to 60 s). Searches are POSTs
    that only read, so every method is retried.
    """
    from pystac_client.stac_api_io import StacApiIO
    from urllib3 import Retry

    n = network.retries
    retry = Retry(
        total=n,
        connect=n,
        read=n,
        status=n,
        other=0,
        allowed_methods=None,
        status_forcelist=RETRY_STATUS,
        backoff_factor=network.backoff_s,
        backoff_max=60.0,
        retry_after_max=60,
        raise_on_status=True,
    )
    return StacApiIO(timeout=network.timeout_s, max_retries=retry)


def _search_api(
    catalog: CatalogConfig,
    aoi_lonlat: BaseGeometry,
    start: dt.date,
    end: dt.date,
    network: NetworkConfig,
) -> list[pystac.Item]:
    from pystac_client import Client
    from pystac_client.warnings import DoesNotConformTo

    url = redact_text(catalog.url)
    try:
        with warnings.catch_warnings():
            # Small servers (e.g. rustac) support CQL2 filter without announcing it.
            warnings.simplefilter("ignore", DoesNotConformTo)
            signer = signer_for(catalog)
            client = Client.open(
                catalog.url,
                stac_io=api_io(network),
                modifier=signer.sign_inplace if signer is not None else None,
            )
            search = client.search(
                collections=[catalog.collection],
                intersects=mapping(aoi_lonlat),
                datetime=f"{start.isoformat()}/{end.isoformat()}",
                filter=_cloud_filter(catalog.max_cloud_cover),
                filter_lang="cql2-json",
                max_items=catalog.max_items,
            )
            items = list(search.items())
    except CatalogError:
        raise
    except Exception as exc:
        msg = redact_text(str(exc).splitlines()[0][:300]) if str(exc) else type(exc).__name__
        raise CatalogError(
            f"STAC API {url} cannot be searched after {network.retries} retries ({msg}): "
            "check catalog.url and the network; the next run tries again"
        ) from None
    kept = []
    for item in items:
        # The API filtered already; re-check what a server might silently ignore.
        if item.collection_id not in (None, catalog.collection):
            continue
        if not _cloud_ok(item, catalog.max_cloud_cover):
            continue
        check_asset_hrefs(item, None)
        kept.append(item)
    kept.sort(key=_sort_key)
    return kept


def search_items(
    catalog: CatalogConfig,
    aoi_lonlat: BaseGeometry,
    start: dt.date,
    end: dt.date,
    network: NetworkConfig | None = None,
) -> pystac.ItemCollection:
    """Find the Items of a collection over an AOI and a period.

    Parameters
    ----------
    catalog
        Where to search: ``catalog.url`` is a STAC API (http/https, searched with pystac-client
        and a CQL2-JSON ``filter`` on ``eo:cloud_cover``) or a local static catalog
        (``catalog.json`` / ``collection.json``, or a folder holding one).
    aoi_lonlat
        Area of interest in lon/lat; an Item is kept when its geometry intersects it.
    start, end
        First and last day, inclusive (UTC dates of the Items' datetime).
    network
        Retries, backoff and timeout of API requests (:func:`api_io`); defaults when None.

    Returns
    -------
    pystac.ItemCollection
        The Items of ``catalog.collection`` with ``eo:cloud_cover <= catalog.max_cloud_cover``
        (Items without it are excluded), at most ``catalog.max_items``, sorted by
        (datetime, id). Empty when nothing matches: the calling stage decides.

    Raises
    ------
    CatalogError
        When the API cannot be reached, the local catalog is missing or unreadable, or an
        Item's band asset href is refused (see :func:`check_asset_hrefs`).
    """
    redact_logs()
    if _is_url(catalog.url):
        items = _search_api(catalog, aoi_lonlat, start, end, network or NetworkConfig())
    elif _has_scheme(catalog.url):
        raise CatalogError(
            f"catalog.url {redact_text(catalog.url)!r}: only http(s) STAC APIs and local "
            "catalog paths are supported"
        )
    else:
        items = _search_local(catalog, aoi_lonlat, start, end)
    log.info("search %s: %d Items", redact_text(catalog.url), len(items))
    return pystac.ItemCollection(items, clone_items=False)


# ---------------------------------------------------------------------------------------------
# items.json


def _portable_dict(item: pystac.Item) -> dict[str, Any]:
    d = item.to_dict(include_self_link=False, transform_hrefs=False)
    for key, asset in item.assets.items():
        href = asset.get_absolute_href()
        if href is None or not (_is_url(href) or os.path.isabs(href)):
            raise CatalogError(
                f"Item {item.id} asset '{key}' href {asset.href!r} cannot be made absolute: "
                "the Item has no self link"
            )
        # Signed URLs expire and their tokens are secrets: never persist the query string.
        d["assets"][key]["href"] = redact_url(href)
    # Links to the catalog's own files would dangle once moved: keep only URLs.
    d["links"] = [
        {**ln, "href": redact_url(str(ln["href"]))}
        for ln in d.get("links", [])
        if _is_url(str(ln.get("href", "")))
    ]
    return d


def write_items(items: Iterable[pystac.Item], path: str | Path) -> Path:
    """Write Items as a STAC ItemCollection (GeoJSON FeatureCollection), atomically.

    Asset hrefs are written absolute, so the file works from any folder, and without their
    query strings (:func:`redact_url`): signing tokens are never written.

    Parameters
    ----------
    items
        The Items, written in the given order.
    path
        Output file; its folder is created.

    Returns
    -------
    Path
        ``path``.
    """
    doc = {"type": "FeatureCollection", "features": [_portable_dict(it) for it in items]}
    return write_text(path, json.dumps(doc, indent=1), mode=PUBLIC_MODE)


def read_items(path: str | Path) -> pystac.ItemCollection:
    """Read an ItemCollection written by :func:`write_items`.

    Raises
    ------
    StageInputError
        When the file is missing or is not an ItemCollection.
    """
    p = Path(path)
    if not p.is_file():
        raise StageInputError(f"{p} does not exist: run the search stage first")
    try:
        return pystac.ItemCollection.from_dict(json.loads(p.read_text()), preserve_dict=False)
    except Exception as exc:
        raise StageInputError(
            f"{p} is not a STAC ItemCollection ({exc}): run the search stage again"
        ) from None
