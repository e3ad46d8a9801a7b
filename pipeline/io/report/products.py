"""Outputs GIS tools open: GeoParquet detections, change-score COGs, a results STAC Catalog (I/O).

- :func:`write_detections_parquet`: the detections as GeoParquet (geopandas, lon/lat,
  EPSG:4326), one row per object with the same columns as ``detections.geojson``.
- :func:`write_change_cogs`: the change score of each date pair as a Cloud-Optimised GeoTIFF
  (float32, NaN where not scored, deflate, internal tiles, overviews, GDAL's COG layout) on the
  site grid; :func:`check_cog` checks a file's layout the way GDAL's
  ``validate_cloud_optimized_geotiff`` does (tiled, overviews, IFDs and data in COG order).
- :func:`write_results_catalog`: a self-contained STAC Catalog with one Item per change product
  (date pair) and one for the detections, each linked with ``rel="derived_from"`` to the source
  scene Items it was made from, so results are searched like inputs. The Items use core STAC
  fields only (plus ``basewatch:`` properties), so :func:`validate_results_catalog` validates
  them with pystac **offline** against the core JSON schemas bundled with pystac.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import xarray as xr
from pyproj import Transformer
from shapely.geometry import box

from pipeline.errors import DataError
from pipeline.io.atomic import PUBLIC_MODE, atomic_file

log = logging.getLogger(__name__)

COG_BLOCKSIZE = 128
"""Internal tile size of the COGs (pixels); small, because a site is a few hundred pixels."""
COG_OPTIONS: dict[str, Any] = {
    "BLOCKSIZE": COG_BLOCKSIZE,
    "COMPRESS": "DEFLATE",
    "PREDICTOR": "YES",
    "OVERVIEW_RESAMPLING": "AVERAGE",
}
"""Creation options of GDAL's COG driver."""
PARQUET_MEDIA_TYPE = "application/vnd.apache.parquet"
"""Media type of the GeoParquet asset."""
GEOJSON_MEDIA_TYPE = "application/geo+json"
"""Media type of GeoJSON files and STAC Items."""


@dataclass(frozen=True)
class ChangeProduct:
    """One change-score COG: the score between two dates."""

    date_before: str
    """First date of the pair (``YYYY-MM-DD``)."""
    date_after: str
    """Second date of the pair."""
    start: dt.datetime
    """Acquisition time of the before date (UTC)."""
    end: dt.datetime
    """Acquisition time of the after date (UTC)."""
    href: str
    """Path of the COG relative to the report folder (``change/score_<before>_<after>.tif``)."""
    n_scored_px: int
    """Pixels with a score (valid in both views)."""
    max_score: float | None
    """Largest score of the pair, None when nothing was scored."""


def write_detections_parquet(detections: Mapping[str, Any], path: str | Path) -> Path:
    """Write a lon/lat detections FeatureCollection as GeoParquet, atomically.

    Parameters
    ----------
    detections
        GeoJSON FeatureCollection (``data/<site>/detections.geojson``); may be empty.
    path
        Output ``.parquet`` file.

    Returns
    -------
    Path
        ``path``; ``geopandas.read_parquet(path)`` gives the detections back, CRS EPSG:4326.
    """
    import geopandas as gpd

    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    features = list(detections.get("features", []))
    if features:
        gdf = gpd.GeoDataFrame.from_features(features, crs="EPSG:4326")
    else:
        gdf = gpd.GeoDataFrame({"id": [], "kind": []}, geometry=[], crs="EPSG:4326")
    with atomic_file(p, suffix=f".tmp{p.suffix}", mode=PUBLIC_MODE) as tmp:
        gdf.to_parquet(tmp, index=False)
    return p


def _utc(t: Any) -> dt.datetime:
    return np.datetime64(t, "ms").astype(dt.datetime).replace(tzinfo=dt.UTC)


def write_change_cogs(score: xr.DataArray, out_dir: str | Path, *, crs: str) -> list[ChangeProduct]:
    """Write the change score of each date pair as a COG with overviews.

    Parameters
    ----------
    score
        (pair, y, x) float32 score with coordinates ``date_before``, ``date_after`` (on
        ``pair``) and pixel-centre ``y``, ``x`` in metres; NaN where not scored. Each pair is
        read once (pass a computed array to avoid recomputing a lazy graph per pair).
    out_dir
        The report folder; files go to ``out_dir/change/score_<before>_<after>.tif``.
    crs
        CRS of the grid (``EPSG:32636``).

    Returns
    -------
    list of ChangeProduct
        One per pair, in pair order.

    Raises
    ------
    DataError
        When ``score`` lacks the pair dimension or its date coordinates.
    """
    import rioxarray  # noqa: F401  (registers the .rio accessor)

    for name in ("date_before", "date_after", "x", "y"):
        if name not in score.coords:
            raise DataError(f"change score lacks coordinate '{name}': rerun the detect stage")
    if score.dims != ("pair", "y", "x"):
        raise DataError(f"change score has dims {score.dims}, expected (pair, y, x)")
    folder = Path(out_dir) / "change"
    folder.mkdir(parents=True, exist_ok=True)
    products = []
    for p in range(score.sizes["pair"]):
        one = score.isel(pair=p)
        before = str(np.datetime_as_string(one["date_before"].values, unit="D"))
        after = str(np.datetime_as_string(one["date_after"].values, unit="D"))
        values = np.asarray(one.values, dtype=np.float32)
        da = xr.DataArray(
            values,
            dims=("y", "x"),
            coords={"y": score["y"].values, "x": score["x"].values},
            attrs={"long_name": f"change score {before} to {after}"},
        )
        da = da.rio.write_crs(crs).rio.write_nodata(np.float32(np.nan), encoded=False)
        name = f"score_{before}_{after}.tif"
        path = folder / name
        n_overviews = max(1, int(np.ceil(np.log2(max(values.shape) / COG_BLOCKSIZE))))
        with atomic_file(path, suffix=f".tmp{path.suffix}", mode=PUBLIC_MODE) as tmp:
            da.rio.to_raster(
                tmp,
                driver="COG",
                OVERVIEW_COUNT=n_overviews,
                tags={
                    "date_before": before,
                    "date_after": after,
                    "units": str(score.attrs.get("units", "chi-square")),
                },
                **COG_OPTIONS,
            )
        finite = np.isfinite(values)
        products.append(
            ChangeProduct(
                date_before=before,
                date_after=after,
                start=_utc(one["date_before"].values),
                end=_utc(one["date_after"].values),
                href=f"change/{name}",
                n_scored_px=int(finite.sum()),
                max_score=float(values[finite].max()) if finite.any() else None,
            )
        )
    return products


def read_change_cogs(report_dir: str | Path) -> xr.DataArray:
    """Read back every change-score COG of a report folder as one (pair, y, x) array.

    Parameters
    ----------
    report_dir
        ``reports/<site>``, holding ``change/score_<before>_<after>.tif``.

    Returns
    -------
    xarray.DataArray
        float32 score, NaN where not scored, with ``date_before`` and ``date_after`` (strings)
        on ``pair``, pixel-centre ``y``, ``x`` and the CRS in ``attrs["crs"]``.

    Raises
    ------
    DataError
        When the folder holds no change COG.
    """
    import rioxarray

    files = sorted((Path(report_dir) / "change").glob("score_*_*.tif"))
    if not files:
        raise DataError(f"no change COGs in {Path(report_dir) / 'change'}: run the report stage")
    arrays = []
    for f in files:
        da = rioxarray.open_rasterio(f, masked=True)
        if not isinstance(da, xr.DataArray):
            raise DataError(f"{f} is not a single-band raster: rerun the report stage")
        arrays.append(da.squeeze("band", drop=True).astype(np.float32).load())
    crs = str(arrays[0].rio.crs)
    stacked = xr.concat([a.drop_vars("spatial_ref", errors="ignore") for a in arrays], "pair")
    parts = [f.stem.split("_") for f in files]
    out = stacked.assign_coords(
        date_before=("pair", [p[1] for p in parts]), date_after=("pair", [p[2] for p in parts])
    )
    units = str(arrays[0].attrs.get("units", "chi-square"))
    out.attrs = {"crs": crs, "long_name": "change score", "units": units}
    return out


def check_cog(path: str | Path) -> list[str]:
    """The ways ``path`` is not a Cloud-Optimised GeoTIFF; empty when it is one.

    Checks what GDAL's ``validate_cloud_optimized_geotiff`` checks, read through rasterio:
    a GeoTIFF, internally tiled, with overviews (themselves tiled), written with the COG layout
    (``LAYOUT=COG``: the ghost header), the main image's IFD before the overviews' IFDs, and
    the pixel data ordered from the smallest overview to the full-resolution image.
    """
    import rasterio

    problems = []
    with rasterio.open(path) as ds:
        if ds.driver != "GTiff":
            return [f"driver is {ds.driver}, not GTiff"]
        if not ds.profile.get("tiled"):
            problems.append("not tiled")
        n_ovr = len(ds.overviews(1))
        if n_ovr == 0:
            problems.append("no overviews")
        if ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") != "COG":
            problems.append("no COG layout (LAYOUT=COG ghost header missing)")

        def offsets(ovr: int | None) -> tuple[int, int]:
            kw = {} if ovr is None else {"ovr": ovr}
            ifd = ds.get_tag_item("IFD_OFFSET", "TIFF", bidx=1, **kw)
            data = ds.get_tag_item("BLOCK_OFFSET_0_0", "TIFF", bidx=1, **kw)
            return int(ifd or 0), int(data or 0)

        main_ifd, main_data = offsets(None)
        ovrs = [offsets(i) for i in range(n_ovr)]
        ifds = [main_ifd] + [o[0] for o in ovrs]
        if ifds != sorted(ifds):
            problems.append("IFDs not in order (main image first, then overviews)")
        datas = [o[1] for o in reversed(ovrs)] + [main_data]
        if datas != sorted(datas):
            problems.append("pixel data not in order (smallest overview first)")
        if n_ovr and not all(b[0] == b[1] for b in ds.block_shapes):
            problems.append("blocks are not square tiles")
    return problems


def scene_day(item: pystac.Item) -> str:
    """The solar day (``YYYY-MM-DD``) of a scene Item: UTC shifted by whole hours of longitude
    / 15 (odc-stac's grouping), so the Items of one acquisition share it."""
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        return "?"
    lon = (item.bbox[0] + item.bbox[2]) / 2 if item.bbox else 0.0
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC).replace(tzinfo=None)
    return (when + dt.timedelta(hours=int(lon / 15))).date().isoformat()


def scene_hrefs(items: Sequence[pystac.Item]) -> dict[str, str]:
    """Where each source scene Item can be read: its ``self`` URL, else its local JSON file.

    Items of a STAC API keep their ``self`` link (an https URL). Items of a local catalog (the
    demo) lie beside their assets as ``<item id>.json``.

    Returns
    -------
    dict
        Item id to an absolute URL or path; Items with neither are left out.
    """
    out = {}
    for it in items:
        self_href = it.get_self_href()
        if self_href and self_href.startswith(("http://", "https://")):
            out[it.id] = self_href
            continue
        for asset in it.assets.values():
            href = asset.get_absolute_href() or asset.href
            if href and os.path.isabs(href):
                candidate = Path(href).parent / f"{it.id}.json"
                if candidate.is_file():
                    out[it.id] = str(candidate)
                    break
    return out


def _footprint(x: np.ndarray, y: np.ndarray, crs: str) -> tuple[dict, list[float]]:
    half = abs(float(x[1] - x[0])) / 2 if x.size > 1 else 5.0
    utm = box(x.min() - half, y.min() - half, x.max() + half, y.max() + half)
    tr = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)
    xs, ys = tr.transform(*utm.exterior.xy)
    ring = [[round(a, 7), round(b, 7)] for a, b in zip(xs, ys, strict=True)]
    bbox = [min(xs), min(ys), max(xs), max(ys)]
    return {"type": "Polygon", "coordinates": [ring]}, [round(v, 7) for v in bbox]


def _derived_from(item: pystac.Item, hrefs: Sequence[str], item_dir: Path) -> None:
    for href in hrefs:
        if not href.startswith(("http://", "https://")):
            href = os.path.relpath(href, item_dir)  # the catalog stays movable with the repo
        item.add_link(pystac.Link("derived_from", href, media_type=GEOJSON_MEDIA_TYPE))


def write_results_catalog(
    report_dir: str | Path,
    *,
    site_name: str,
    site_title: str,
    grid: xr.DataArray | xr.Dataset,
    crs: str,
    products: Sequence[ChangeProduct],
    scenes_by_date: Mapping[str, Sequence[str]],
    detections: Mapping[str, Any],
    detection_assets: Mapping[str, tuple[str, str]],
    simulated: bool,
) -> Path:
    """Write ``report_dir/stac/catalog.json``: the run's results as a self-contained Catalog.

    Parameters
    ----------
    report_dir
        The report folder holding the products (asset hrefs are relative to it).
    site_name, site_title
        The site.
    grid
        Anything with the site grid's ``x`` and ``y`` pixel-centre coordinates (metres).
    crs
        CRS of the grid.
    products
        The change COGs (:func:`write_change_cogs`); one Item each.
    scenes_by_date
        Date (``YYYY-MM-DD``) to the hrefs of its source scene Items (:func:`scene_hrefs`).
    detections
        The detections FeatureCollection (counts per pair and the period are taken from it).
    detection_assets
        Asset key to ``(href relative to report_dir, media type)`` of the detections Item
        (GeoParquet, GeoJSON, report, CSV tables).
    simulated
        The inputs were the simulated demo catalog (``basewatch:simulated``).

    Returns
    -------
    Path
        The catalog file.
    """
    root_dir = Path(report_dir)
    stac_dir = root_dir / "stac"
    geometry, bbox = _footprint(grid["x"].values, grid["y"].values, crs)
    feats = [f.get("properties") or {} for f in detections.get("features", [])]
    base = {
        "basewatch:site": site_name,
        "basewatch:simulated": bool(simulated),
        "basewatch:crs": crs,
        "gsd": abs(float(grid["x"].values[1] - grid["x"].values[0])),
    }
    kind = "SIMULATED demo " if simulated else ""
    cat = pystac.Catalog(
        id=f"basewatch-{site_name}-results",
        description=f"basewatch {kind}results for {site_title}: change-score COGs per date pair "
        "and the detected objects, each linked to the source Sentinel-2 L2A scenes.",
        title=f"basewatch results: {site_title}",
    )
    items: list[tuple[pystac.Item, list[str]]] = []
    for prod in products:
        in_pair = [p for p in feats if str(p.get("date_after"))[:10] == prod.date_after]
        dates = {prod.date_before, prod.date_after} | {
            str(p.get("date_before"))[:10] for p in in_pair
        }
        item = pystac.Item(
            id=f"{site_name}-change-{prod.date_before}-{prod.date_after}",
            geometry=geometry,
            bbox=bbox,
            datetime=None,
            properties={
                **base,
                "start_datetime": prod.start.isoformat().replace("+00:00", "Z"),
                "end_datetime": prod.end.isoformat().replace("+00:00", "Z"),
                "basewatch:product": "change-score",
                "basewatch:date_before": prod.date_before,
                "basewatch:date_after": prod.date_after,
                "basewatch:n_scored_px": prod.n_scored_px,
                "basewatch:max_score": prod.max_score,
                "basewatch:n_removed": sum(p.get("kind") == "removed" for p in in_pair),
                "basewatch:n_appeared": sum(p.get("kind") == "appeared" for p in in_pair),
            },
        )
        item.add_asset(
            "score",
            pystac.Asset(
                str(root_dir / prod.href),
                title=f"Change score {prod.date_before} to {prod.date_after} (chi-square units)",
                media_type=pystac.MediaType.COG,
                roles=["data"],
            ),
        )
        items.append((item, sorted(dates)))
    all_dates = sorted(scenes_by_date)
    if all_dates:
        start, end = all_dates[0], all_dates[-1]
        det_item = pystac.Item(
            id=f"{site_name}-detections",
            geometry=geometry,
            bbox=bbox,
            datetime=None,
            properties={
                **base,
                "start_datetime": f"{start}T00:00:00Z",
                "end_datetime": f"{end}T23:59:59Z",
                "basewatch:product": "detections",
                "basewatch:n_detections": len(feats),
                "basewatch:n_removed": sum(p.get("kind") == "removed" for p in feats),
                "basewatch:n_appeared": sum(p.get("kind") == "appeared" for p in feats),
            },
        )
        for key, (href, media_type) in detection_assets.items():
            role = "overview" if media_type == "text/html" else "data"
            det_item.add_asset(
                key, pystac.Asset(str(root_dir / href), media_type=media_type, roles=[role])
            )
        items.append((det_item, all_dates))
    for item, _ in items:
        cat.add_item(item)
    cat.normalize_hrefs(str(stac_dir))
    for item, item_dates in items:
        hrefs = sorted({h for d in item_dates for h in scenes_by_date.get(d, ())})
        _derived_from(item, hrefs, Path(item.get_self_href() or stac_dir).parent)
    cat.make_all_asset_hrefs_relative()
    cat.save(pystac.CatalogType.SELF_CONTAINED)
    return stac_dir / "catalog.json"


def validate_results_catalog(path: str | Path) -> int:
    """Validate a results catalog with pystac (offline) and check that its links resolve.

    Every object is validated against the core STAC JSON schemas bundled with pystac (the
    Items use no extension, so no schema is fetched from the network). Then every asset must
    be an existing file and every Item must have a ``derived_from`` link.

    Returns
    -------
    int
        The number of STAC objects validated.

    Raises
    ------
    DataError
        When an asset file is missing or an Item has no ``derived_from`` link.
    pystac.errors.STACValidationError
        When an object breaks the STAC schema.
    """
    cat = pystac.Catalog.from_file(str(path))
    n = cat.validate_all()
    for item in cat.get_items(recursive=True):
        for key, asset in item.assets.items():
            href = asset.get_absolute_href()
            if href is None or not Path(href).is_file():
                raise DataError(f"results Item {item.id} asset '{key}' ({href}) is missing")
        if not item.get_links("derived_from"):
            raise DataError(f"results Item {item.id} has no derived_from link to its scenes")
    log.debug("results catalog %s: %d objects valid", path, n + 1)
    return int(n) + 1
