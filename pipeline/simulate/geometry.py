"""Geometry of the simulation: placement frames, pixel grids, Item windows, the imaging operator.

The imaging operator turns the high-resolution world into one band of an Item: each Item pixel
is the area average of the world over its footprint, displaced by the date's misregistration and
blurred by a Gaussian PSF. Box and Gaussian are separable, so the operator is two sparse matrices
(rows and columns) whose weights are exact integrals of the box-Gaussian kernel over every world
pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import shapely
from affine import Affine
from pyproj import Transformer
from scipy.special import ndtr
from shapely.geometry import Polygon
from shapely.geometry.base import BaseGeometry

from pipeline.errors import ConfigError
from pipeline.simulate.scenario import Tile
from pipeline.sites import Site


@dataclass(frozen=True)
class Frame:
    """A local frame for placing things: origin and direction of its y axis."""

    origin: tuple[float, float]
    """Origin, metres in the site CRS."""
    angle_deg: float
    """Direction of the frame's y axis, degrees clockwise from grid north."""

    def to_grid(self, xy: np.ndarray) -> np.ndarray:
        """Frame coordinates (n, 2) -> site CRS coordinates (n, 2)."""
        a = math.radians(self.angle_deg)
        x, y = np.asarray(xy, dtype=float).T
        gx = self.origin[0] + x * math.cos(a) + y * math.sin(a)
        gy = self.origin[1] - x * math.sin(a) + y * math.cos(a)
        return np.column_stack([gx, gy])

    def sub(self, center: tuple[float, float], angle_deg: float = 0.0) -> Frame:
        """The frame moved to ``center`` (frame coordinates) and turned by ``angle_deg``."""
        ((ox, oy),) = self.to_grid(np.array([center]))
        return Frame((float(ox), float(oy)), self.angle_deg + angle_deg)


def _zone_frame(geom: BaseGeometry) -> Frame:
    rect = geom.minimum_rotated_rectangle
    xs, ys = np.asarray(rect.exterior.coords).T
    edges = [(xs[i + 1] - xs[i], ys[i + 1] - ys[i]) for i in range(2)]
    dx, dy = max(edges, key=lambda e: math.hypot(*e))
    angle = math.degrees(math.atan2(dx, dy))
    while angle <= -45.0:
        angle += 180.0
    while angle > 135.0:
        angle -= 180.0
    c = rect.centroid
    return Frame((c.x, c.y), angle)


def site_frames(site: Site) -> dict[str, Frame]:
    """The frames a scenario can use: ``site`` and one per zone."""
    c = site.to_utm(site.aoi).centroid
    frames = {"site": Frame((c.x, c.y), 0.0)}
    for z in site.zones:
        frames[z.name] = _zone_frame(site.to_utm(z.geometry))
    return frames


def get_frame(frames: dict[str, Frame], name: str, where: str) -> Frame:
    """Frame ``name``, or a ConfigError naming ``where`` it was asked for."""
    try:
        return frames[name]
    except KeyError:
        raise ConfigError(
            f"{where}: unknown frame '{name}': use 'site' or a zone ({', '.join(frames)})"
        ) from None


def rect_polygon(frame: Frame, size: tuple[float, float]) -> Polygon:
    """Rectangle of (width along x, length along y) centred on the frame's origin."""
    w, h = size[0] / 2.0, size[1] / 2.0
    return Polygon(frame.to_grid(np.array([(-w, -h), (w, -h), (w, h), (-w, h)])))


@dataclass(frozen=True)
class Grid:
    """A north-up pixel grid in a UTM CRS."""

    epsg: int
    """EPSG code of the CRS."""
    x0: float
    """West edge, metres."""
    y0: float
    """North edge, metres."""
    res: float
    """Pixel size, metres."""
    width: int
    """Columns."""
    height: int
    """Rows."""

    @property
    def crs(self) -> str:
        """CRS as ``EPSG:nnnn``."""
        return f"EPSG:{self.epsg}"

    @property
    def transform(self) -> Affine:
        """Affine transform (pixel corner -> metres)."""
        return Affine(self.res, 0.0, self.x0, 0.0, -self.res, self.y0)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns)."""
        return (self.height, self.width)

    @property
    def bounds(self) -> tuple[float, float, float, float]:
        """(west, south, east, north), metres."""
        return (
            self.x0,
            self.y0 - self.height * self.res,
            self.x0 + self.width * self.res,
            self.y0,
        )

    def centers(self) -> tuple[np.ndarray, np.ndarray]:
        """Pixel-centre coordinates: x of each column, y of each row."""
        x = self.x0 + (np.arange(self.width) + 0.5) * self.res
        y = self.y0 - (np.arange(self.height) + 0.5) * self.res
        return x, y

    def coarsen(self, factor: int) -> Grid:
        """The same extent with pixels ``factor`` times larger."""
        if self.width % factor or self.height % factor:
            raise ValueError(f"grid {self.shape} is not a multiple of {factor}")
        return Grid(
            self.epsg,
            self.x0,
            self.y0,
            self.res * factor,
            self.width // factor,
            self.height // factor,
        )

    def footprint(self) -> Polygon:
        """Outline of the grid in its own CRS."""
        w, s, e, n = self.bounds
        return Polygon([(w, s), (e, s), (e, n), (w, n)])


def snapped_grid(
    epsg: int,
    bounds: tuple[float, float, float, float],
    res: float,
    anchor: tuple[float, float] = (0.0, 0.0),
    step: float | None = None,
) -> Grid:
    """Grid covering ``bounds``, its edges snapped outward to ``anchor + k * step``."""
    step = step or res
    ax, ay = anchor
    w = ax + math.floor((bounds[0] - ax) / step) * step
    s = ay + math.floor((bounds[1] - ay) / step) * step
    e = ax + math.ceil((bounds[2] - ax) / step) * step
    n = ay + math.ceil((bounds[3] - ay) / step) * step
    return Grid(epsg, w, n, res, round((e - w) / res), round((n - s) / res))


def reproject_geom(geom: BaseGeometry, src_epsg: int, dst_epsg: int) -> BaseGeometry:
    """Project a geometry between two CRSs (EPSG codes; 4326 is lon/lat)."""
    if src_epsg == dst_epsg:
        return geom
    tr = Transformer.from_crs(src_epsg, dst_epsg, always_xy=True)

    def project(xy: np.ndarray) -> np.ndarray:
        x, y = tr.transform(xy[:, 0], xy[:, 1])
        return np.column_stack([x, y])

    return shapely.transform(geom, project)


def item_grid(site: Site, tile: Tile, margin_m: float) -> Grid:
    """10 m window of ``tile`` around the site: AOI bounds + margin, on the tile's 60 m grid.

    Raises
    ------
    ConfigError
        When the window is not inside the tile.
    """
    aoi = reproject_geom(site.aoi.segmentize(0.001), 4326, tile.epsg)
    w, s, e, n = aoi.buffer(margin_m, join_style="mitre").bounds
    grid = snapped_grid(tile.epsg, (w, s, e, n), 10.0, anchor=tile.ul, step=60.0)
    tw, ts, te, tn = tile.ul[0], tile.ul[1] - 109800.0, tile.ul[0] + 109800.0, tile.ul[1]
    gw, gs, ge, gn = grid.bounds
    if gw < tw or ge > te or gs < ts or gn > tn:
        raise ConfigError(
            f"scenario of {site.name}: the Item window {grid.bounds} is not inside tile "
            f"{tile.code}: check the tile's ul"
        )
    return grid


def footprint_lonlat(grid: Grid) -> Polygon:
    """Outline of ``grid`` in lon/lat (its four corners; edges stay straight to a metre here)."""
    return reproject_geom(grid.footprint(), grid.epsg, 4326)


def shift_in_crs(
    shift_m: tuple[float, float], at: tuple[float, float], src_epsg: int, dst_epsg: int
) -> tuple[float, float]:
    """Express a ground displacement (east, north metres in ``src``) in another UTM zone."""
    if src_epsg == dst_epsg:
        return shift_m
    tr = Transformer.from_crs(src_epsg, dst_epsg, always_xy=True)
    x0, y0 = tr.transform(at[0], at[1])
    x1, y1 = tr.transform(at[0] + shift_m[0], at[1] + shift_m[1])
    return (x1 - x0, y1 - y0)


def _box_gauss_cdf(t: np.ndarray, width: float, sigma: float) -> np.ndarray:
    """Integral from -inf to t of a unit-area box of ``width`` convolved with a Gaussian."""

    def g(u: np.ndarray) -> np.ndarray:
        z = u / sigma
        return sigma * (z * ndtr(z) + np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi))

    return (g(t + width / 2.0) - g(t - width / 2.0)) / width


def _axis_operator(
    centers: np.ndarray, width: float, sigma: float, edge0: float, step: float, n_src: int
) -> sp.csr_matrix:
    """Weights of source cells ``[edge0 + j*step, edge0 + (j+1)*step]`` for kernel centres."""
    half = width / 2.0 + 4.0 * sigma
    ends = (np.stack([centers - half, centers + half]) - edge0) / step
    lo = np.floor(ends.min(axis=0)).astype(int)
    n = math.ceil(2.0 * half / abs(step)) + 2
    j = lo[:, None] + np.arange(n)[None, :]
    a = edge0 + j * step
    w = np.abs(
        _box_gauss_cdf(a + step - centers[:, None], width, sigma)
        - _box_gauss_cdf(a - centers[:, None], width, sigma)
    )
    if j.min() < 0 or j.max() >= n_src:
        raise ValueError("the world grid does not cover the Item window plus the PSF support")
    w /= w.sum(axis=1, keepdims=True)
    rows = np.repeat(np.arange(len(centers)), n)
    return sp.csr_matrix(
        (w.ravel().astype(np.float32), (rows, j.ravel())), shape=(len(centers), n_src)
    )


@dataclass(frozen=True)
class ImagingOperator:
    """Separable world -> Item operator: ``out = rows @ world @ cols_t``."""

    rows: sp.csr_matrix
    """(Item rows, world rows)."""
    cols_t: sp.csc_matrix
    """(world columns, Item columns)."""

    def apply(self, world: np.ndarray) -> np.ndarray:
        """Image (bands, rows, cols) world layers onto the Item grid (bands, H, W), float32."""
        out = [np.asarray(self.rows @ band) @ self.cols_t for band in world]
        return np.stack([np.asarray(o, dtype=np.float32) for o in out])


def imaging_operator(
    item: Grid, world: Grid, shift_m: tuple[float, float], sigma_px: float
) -> ImagingOperator:
    """Operator imaging ``world`` onto ``item`` with content displaced by ``shift_m``.

    Parameters
    ----------
    item, world
        Output grid and high-resolution source grid (same CRS).
    shift_m
        Displacement of the image content, (east, north) metres: a world feature at ``p``
        appears at ``p + shift_m``.
    sigma_px
        Gaussian PSF sigma in Item pixels, applied on top of the pixel's box footprint.
    """
    if item.epsg != world.epsg:
        raise ValueError("item and world grids must share a CRS")
    xc, yc = item.centers()
    sigma = sigma_px * item.res
    cols = _axis_operator(xc - shift_m[0], item.res, sigma, world.x0, world.res, world.width)
    rows = _axis_operator(yc - shift_m[1], item.res, sigma, world.y0, -world.res, world.height)
    return ImagingOperator(rows=rows, cols_t=cols.T.tocsc())
