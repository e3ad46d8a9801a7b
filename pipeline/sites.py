"""Sites: an area of interest and named zones, read from ``seeds/sites/<site>.geojson``.

A site file is a GeoJSON FeatureCollection in lon/lat (EPSG:4326). Exactly one Feature has
``"role": "aoi"``; the others have ``"role": "zone"``, a unique ``name`` and a ``kind`` (``apron``,
``runway``, ``pier``, ``quay``, ``parking``, ...). The collection's top-level ``properties`` hold
``name``, ``title`` and ``epsg`` (the UTM zone of the site grid).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import shapely
from odc.geo.geobox import GeoBox
from pyproj import Transformer
from shapely.geometry import mapping, shape
from shapely.geometry.base import BaseGeometry
from shapely.validation import explain_validity

from pipeline.errors import SiteError

GRID_ANCHOR_M = 60.0
"""Site grid bounds are snapped to multiples of this, so 10, 20 and 60 m Sentinel-2 pixels align."""


@dataclass(frozen=True)
class Zone:
    """A named part of a site whose occupancy is tracked."""

    name: str
    """Unique name within the site, e.g. ``apron-north``."""
    kind: str
    """What the zone is: ``apron``, ``runway``, ``pier``, ``quay``, ``parking``, ..."""
    geometry: BaseGeometry
    """Polygon in lon/lat."""


@dataclass(frozen=True)
class Site:
    """A fixed site watched from orbit."""

    name: str
    """Short identifier used in paths (``khmeimim``)."""
    title: str
    """Human-readable name."""
    epsg: int
    """EPSG code of the site grid (a UTM zone)."""
    aoi: BaseGeometry
    """Area of interest, lon/lat."""
    zones: tuple[Zone, ...] = field(default_factory=tuple)
    """Named zones, lon/lat."""

    @property
    def crs(self) -> str:
        """CRS of the site grid as ``EPSG:nnnn``."""
        return f"EPSG:{self.epsg}"

    def to_utm(self, geom: BaseGeometry) -> BaseGeometry:
        """Project a lon/lat geometry to the site grid's CRS."""
        tr = Transformer.from_crs(4326, self.epsg, always_xy=True)
        return shapely.transform(geom, tr.transform, interleaved=False)

    def to_lonlat(self, geom: BaseGeometry) -> BaseGeometry:
        """Project a geometry in the site grid's CRS to lon/lat."""
        tr = Transformer.from_crs(self.epsg, 4326, always_xy=True)
        return shapely.transform(geom, tr.transform, interleaved=False)

    def geobox(self, resolution_m: float = 10.0) -> GeoBox:
        """The fixed site grid: the AOI's UTM bounds snapped outward to :data:`GRID_ANCHOR_M`.

        Sentinel-2 tile origins are multiples of 60 m, so this grid shares its pixel edges with
        the tiles of the site's own UTM zone.
        """
        minx, miny, maxx, maxy = self.to_utm(self.aoi).bounds
        a = GRID_ANCHOR_M
        minx, miny = np.floor(minx / a) * a, np.floor(miny / a) * a
        maxx, maxy = np.ceil(maxx / a) * a, np.ceil(maxy / a) * a
        return GeoBox.from_bbox(
            (minx, miny, maxx, maxy), crs=self.crs, resolution=resolution_m, tight=True
        )

    def zone(self, name: str) -> Zone:
        """The zone called ``name``."""
        for z in self.zones:
            if z.name == name:
                return z
        raise SiteError(
            f"site {self.name} has no zone '{name}': known zones are "
            f"{', '.join(z.name for z in self.zones)}"
        )

    def zone_raster(self, geobox: GeoBox) -> np.ndarray:
        """Zone index per pixel of ``geobox`` (0 = outside every zone, i + 1 = ``zones[i]``)."""
        from rasterio.features import rasterize

        shapes = [(mapping(self.to_utm(z.geometry)), i + 1) for i, z in enumerate(self.zones)]
        if not shapes:
            return np.zeros(geobox.shape, dtype=np.int16)
        return rasterize(
            shapes,
            out_shape=tuple(geobox.shape),
            transform=geobox.affine,
            fill=0,
            dtype="int16",
        )

    def to_geojson(self) -> dict:
        """The site as a GeoJSON FeatureCollection (the same layout as the seed file)."""
        feats = [{"type": "Feature", "properties": {"role": "aoi"}, "geometry": mapping(self.aoi)}]
        feats += [
            {
                "type": "Feature",
                "properties": {"role": "zone", "name": z.name, "kind": z.kind},
                "geometry": mapping(z.geometry),
            }
            for z in self.zones
        ]
        return {
            "type": "FeatureCollection",
            "properties": {"name": self.name, "title": self.title, "epsg": self.epsg},
            "features": feats,
        }


def _check_lonlat(geom: BaseGeometry, where: str) -> None:
    if geom.is_empty:
        raise SiteError(f"{where}: geometry is empty: draw a polygon with an area")
    if not geom.is_valid:
        raise SiteError(f"{where}: invalid polygon ({explain_validity(geom)}): redraw it")
    minx, miny, maxx, maxy = geom.bounds
    if not (
        -180 <= minx <= 180 and -180 <= maxx <= 180 and -90 <= miny <= 90 and -90 <= maxy <= 90
    ):
        raise SiteError(
            f"{where}: coordinates {geom.bounds} are not lon/lat degrees: GeoJSON wants [lon, lat]"
        )


def read_site(path: str | Path) -> Site:
    """Read and validate a site GeoJSON file.

    Parameters
    ----------
    path
        The site file.

    Returns
    -------
    Site
        The validated site.

    Raises
    ------
    SiteError
        When the file is missing or malformed, or a geometry is invalid.
    """
    p = Path(path)
    try:
        doc = json.loads(p.read_text())
    except FileNotFoundError:
        raise SiteError(f"site file {p} does not exist") from None
    except (OSError, ValueError) as exc:
        raise SiteError(f"site file {p} is not valid GeoJSON ({exc}): fix it") from None
    props = doc.get("properties") or {}
    name = props.get("name") or p.stem
    try:
        epsg = int(props["epsg"])
    except (KeyError, TypeError, ValueError):
        raise SiteError(
            f"{p}: top-level properties.epsg (the UTM zone EPSG code) is missing"
        ) from None
    aoi = None
    zones: list[Zone] = []
    for i, feat in enumerate(doc.get("features", [])):
        fprops = feat.get("properties") or {}
        role = fprops.get("role")
        where = f"{p} feature {i} ({fprops.get('name', role)})"
        try:
            geom = shape(feat["geometry"])
        except Exception:
            raise SiteError(f"{where}: geometry cannot be read: fix the GeoJSON") from None
        _check_lonlat(geom, where)
        if role == "aoi":
            if aoi is not None:
                raise SiteError(f"{p}: more than one feature has role 'aoi': keep one")
            aoi = geom
        elif role == "zone":
            zname = fprops.get("name")
            if not zname:
                raise SiteError(f"{where}: a zone needs a 'name' property")
            if any(z.name == zname for z in zones):
                raise SiteError(f"{where}: zone name '{zname}' is used twice: make it unique")
            zones.append(Zone(name=zname, kind=str(fprops.get("kind", "zone")), geometry=geom))
        else:
            raise SiteError(f"{where}: properties.role must be 'aoi' or 'zone', not {role!r}")
    if aoi is None:
        raise SiteError(f"{p}: no feature has role 'aoi': add the area of interest")
    for z in zones:
        if not aoi.intersects(z.geometry):
            raise SiteError(f"{p}: zone '{z.name}' lies outside the AOI: move it or grow the AOI")
    return Site(
        name=name, title=str(props.get("title", name)), epsg=epsg, aoi=aoi, zones=tuple(zones)
    )


def site_path(name: str, seeds_dir: str | Path = "seeds") -> Path:
    """Path of the seed file of site ``name``."""
    return Path(seeds_dir) / "sites" / f"{name}.geojson"


def known_sites(seeds_dir: str | Path = "seeds") -> list[str]:
    """Names of the sites that have a seed file."""
    return sorted(p.stem for p in (Path(seeds_dir) / "sites").glob("*.geojson"))


def get_site(name: str, seeds_dir: str | Path = "seeds") -> Site:
    """Load site ``name`` from the seeds folder, with a clear error for an unknown name."""
    p = site_path(name, seeds_dir)
    if not p.exists():
        known = ", ".join(known_sites(seeds_dir)) or "none"
        raise SiteError(f"unknown site '{name}': known sites are {known}")
    return read_site(p)
