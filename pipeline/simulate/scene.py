"""The static scene: surfaces painted on the high-resolution world grid, with texture.

A scene is a raster of *paint ids* (which painted polygon covers each world pixel) and a
multiplicative texture. Each paint has a spectrum that is linear in time,
``base + tau(t) * trend`` with ``tau`` from 0 on 1 November to 1 on 31 January; ``trend`` is
non-zero only on vegetation whose cover changes (winter crops green up). Objects and clouds are
added per date elsewhere.

The world of the second UTM zone is painted from the same polygons projected into its CRS, with
the texture resampled from the first world, so both Items of a date see the same ground.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass

import numpy as np
from pyproj import Transformer
from rasterio.features import rasterize
from scipy.ndimage import affine_transform, gaussian_filter, zoom
from shapely.geometry.base import BaseGeometry

from pipeline.errors import ConfigError
from pipeline.simulate.geometry import Frame, Grid, get_frame, rect_polygon
from pipeline.simulate.materials import SURFACES, spectrum
from pipeline.simulate.scenario import Scenario, Surface
from pipeline.sites import Site

SEASON_START = dt.date(2024, 11, 1)
"""tau = 0."""
SEASON_END = dt.date(2025, 1, 31)
"""tau = 1."""


def season_tau(day: dt.date) -> float:
    """Position of ``day`` in the season (0 on 1 November, 1 on 31 January; not clipped)."""
    return (day - SEASON_START).days / (SEASON_END - SEASON_START).days


@dataclass(frozen=True)
class Paint:
    """One painted polygon and its surface."""

    ring: np.ndarray
    """(n, 2) exterior ring in the site CRS."""
    cls: str
    """Surface class (materials.SURFACES)."""


@dataclass
class PaintTable:
    """Per-paint reflectance, texture amplitude and flags (drawn once, shared by all worlds)."""

    rings: list[np.ndarray]
    """Exterior ring of every paint, site CRS."""
    base: np.ndarray
    """(bands, paints) reflectance at tau = 0."""
    trend: np.ndarray
    """(bands, paints) reflectance change from tau = 0 to tau = 1."""
    texture: np.ndarray
    """(paints,) relative amplitude of the fine texture."""
    bright: np.ndarray
    """(paints,) 1.0 on bright concrete (SCL's false clouds), else 0."""


@dataclass
class StaticScene:
    """The scene without objects or clouds, on one world grid."""

    grid: Grid
    """World grid (2 m)."""
    base: np.ndarray
    """(bands, rows, cols) float32 reflectance at tau = 0."""
    trend: np.ndarray
    """(bands, rows, cols) float32 reflectance change from tau = 0 to tau = 1."""
    bright: np.ndarray
    """(rows, cols) float32, 1 on bright concrete (SCL's false clouds), 0 elsewhere."""

    @classmethod
    def from_paints(
        cls, grid: Grid, ids: np.ndarray, texture: np.ndarray, table: PaintTable
    ) -> StaticScene:
        """Materialise the per-pixel layers from paint ids and texture."""
        base = np.empty((6, *grid.shape), dtype=np.float32)
        trend = np.empty((6, *grid.shape), dtype=np.float32)
        for b in range(6):
            np.multiply(np.take(table.base[b], ids), texture, out=base[b])
            np.multiply(np.take(table.trend[b], ids), texture, out=trend[b])
        return cls(grid, base, trend, np.take(table.bright, ids))

    def at(self, tau: float, out: np.ndarray | None = None) -> np.ndarray:
        """(bands, rows, cols) float32 reflectance at season position ``tau`` (into ``out``)."""
        out = np.multiply(self.trend, np.float32(tau), out=out)
        out += self.base
        return out


def _exterior(geom: BaseGeometry) -> np.ndarray:
    return np.asarray(geom.exterior.coords)[:-1]


def _split(
    w: float,
    h: float,
    lo: float,
    hi: float,
    rng: np.random.Generator,
    x0: float = 0.0,
    y0: float = 0.0,
) -> list[tuple[float, float, float, float]]:
    """Recursive random split of a w x h rectangle into plots with sides in about [lo, hi]."""
    if max(w, h) <= hi or (max(w, h) < 2 * lo):
        return [(x0, y0, w, h)]
    if w >= h:
        f = rng.uniform(max(lo / w, 0.3), min(1 - lo / w, 0.7))
        return _split(f * w, h, lo, hi, rng, x0, y0) + _split(
            (1 - f) * w, h, lo, hi, rng, x0 + f * w, y0
        )
    f = rng.uniform(max(lo / h, 0.3), min(1 - lo / h, 0.7))
    return _split(w, f * h, lo, hi, rng, x0, y0) + _split(
        w, (1 - f) * h, lo, hi, rng, x0, y0 + f * h
    )


def _patchwork(surface: Surface, frame: Frame, rng: np.random.Generator) -> list[Paint]:
    assert surface.size is not None and surface.plot_m is not None and surface.mix is not None
    w, h = surface.size
    paints = [Paint(_exterior(rect_polygon(frame, (w, h))), surface.cls)]
    classes = list(surface.mix)
    weights = np.asarray([surface.mix[c] for c in classes], dtype=float)
    weights /= weights.sum()
    g = surface.gap_m / 2.0
    plots = np.asarray(
        _split(w, h, surface.plot_m[0], surface.plot_m[1], rng, -w / 2, -h / 2), dtype=float
    )
    x, y, pw, ph = plots.T
    keep = (pw > 2 * g) & (ph > 2 * g)
    x, y, pw, ph = x[keep], y[keep], pw[keep], ph[keep]
    kind = rng.choice(len(classes), size=len(x), p=weights)
    corners = np.stack(
        [
            np.column_stack([x + g, y + g]),
            np.column_stack([x + pw - g, y + g]),
            np.column_stack([x + pw - g, y + ph - g]),
            np.column_stack([x + g, y + ph - g]),
        ],
        axis=1,
    )
    grid_corners = frame.to_grid(corners.reshape(-1, 2)).reshape(-1, 4, 2)
    paints += [Paint(c, classes[k]) for c, k in zip(grid_corners, kind, strict=True)]
    return paints


def surface_paints(
    scn: Scenario, site: Site, frames: dict[str, Frame], rng: np.random.Generator, where: str
) -> list[Paint]:
    """Every polygon of the scenario's surfaces in paint order, in the site CRS."""
    zones = {z.name: z for z in site.zones}
    paints: list[Paint] = []
    for i, s in enumerate(scn.surfaces):
        w = f"{where}: surfaces[{i}]"
        frame = get_frame(frames, s.frame, w)
        if s.shape == "rect":
            assert s.size is not None
            rect = rect_polygon(frame.sub(s.center, s.angle_deg), s.size)
            paints.append(Paint(_exterior(rect), s.cls))
        elif s.shape == "polygon":
            assert s.points is not None
            paints.append(Paint(frame.to_grid(np.asarray(s.points)), s.cls))
        elif s.shape == "zone":
            if s.zone not in zones:
                raise ConfigError(f"{w}: site {site.name} has no zone '{s.zone}'")
            geom = site.to_utm(zones[s.zone].geometry)
            if s.grow_m:
                geom = geom.buffer(s.grow_m, join_style="mitre")
            paints.append(Paint(_exterior(geom), s.cls))
        else:
            paints.extend(_patchwork(s, frame.sub(s.center, s.angle_deg), rng))
    return paints


def smooth_noise(shape: tuple[int, int], sigma_px: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise with unit standard deviation (float32)."""
    if sigma_px > 4:
        f = int(sigma_px // 2)
        small = (math.ceil(shape[0] / f) + 2, math.ceil(shape[1] / f) + 2)
        lo = gaussian_filter(rng.standard_normal(small, dtype=np.float32), sigma_px / f)
        field = zoom(lo, f, order=1)[: shape[0], : shape[1]]
    else:
        field = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma_px)
    field -= field.mean()
    field /= max(float(field.std()), 1e-12)
    return field.astype(np.float32, copy=False)


def paint_table(paints: list[Paint], rng: np.random.Generator) -> PaintTable:
    """Draw each paint's spectrum (per-field jitter, cover, trend, roof material)."""
    n = len(paints)
    base = np.zeros((6, n), dtype=np.float32)
    trend = np.zeros((6, n), dtype=np.float32)
    texture = np.zeros(n, dtype=np.float32)
    bright = np.zeros(n, dtype=np.float32)
    for k, p in enumerate(paints):
        sc = SURFACES[p.cls]
        bg = spectrum(sc.roofs[int(rng.integers(len(sc.roofs)))] if sc.roofs else sc.background)
        jitter = 1.0 + sc.jitter * float(rng.uniform(-1.0, 1.0))
        cover0 = float(rng.uniform(*sc.cover0))
        change = float(rng.uniform(*sc.trend))
        if sc.canopy is not None:
            diff = spectrum(sc.canopy) - bg
            base[:, k] = (bg + cover0 * diff) * jitter
            trend[:, k] = change * diff * jitter
        else:
            base[:, k] = bg * jitter
        texture[k] = sc.texture
        bright[k] = 1.0 if sc.bright else 0.0
    return PaintTable([p.ring for p in paints], base, trend, texture, bright)


def rasterize_ids(table: PaintTable, grid: Grid, site_epsg: int) -> np.ndarray:
    """Paint index per pixel of ``grid``; the first paint is the background everywhere."""
    rings = table.rings
    if grid.epsg != site_epsg:
        tr = Transformer.from_crs(site_epsg, grid.epsg, always_xy=True)
        allxy = np.concatenate(rings)
        x, y = tr.transform(allxy[:, 0], allxy[:, 1])
        moved = np.column_stack([x, y])
        ends = np.cumsum([len(r) for r in rings])[:-1]
        rings = np.split(moved, ends)
    shapes = (
        ({"type": "Polygon", "coordinates": [[*r.tolist(), r[0].tolist()]]}, k + 1)
        for k, r in enumerate(rings)
    )
    ids = rasterize(shapes, out_shape=grid.shape, transform=grid.transform, fill=0, dtype="int32")
    ids -= 1
    np.maximum(ids, 0, out=ids)
    return ids


def render_static(
    table: PaintTable, canvas: Grid, worlds: list[Grid], rng: np.random.Generator
) -> list[StaticScene]:
    """Paint the scene on each world grid.

    ``canvas`` (site CRS) covers every world; texture is drawn on it once. A world in the site
    CRS is a crop of the canvas; a world in another CRS is painted from the projected polygons
    and gets the canvas texture resampled.
    """
    ids = rasterize_ids(table, canvas, canvas.epsg)
    fine = smooth_noise(canvas.shape, 0.8, rng)
    texture = np.float32(0.02) * smooth_noise(canvas.shape, 60.0, rng)
    texture += np.take(table.texture, ids) * fine
    texture += np.float32(1.0)
    del fine
    out = []
    for g in worlds:
        if g.epsg == canvas.epsg:
            c0 = round((g.x0 - canvas.x0) / canvas.res)
            r0 = round((canvas.y0 - g.y0) / canvas.res)
            win = (slice(r0, r0 + g.height), slice(c0, c0 + g.width))
            crop_ids, crop_tex = np.ascontiguousarray(ids[win]), np.ascontiguousarray(texture[win])
            out.append(StaticScene.from_paints(g, crop_ids, crop_tex, table))
        else:
            tex = _warp(texture[None], canvas, g)[0]
            out.append(StaticScene.from_paints(g, rasterize_ids(table, g, canvas.epsg), tex, table))
    return out


MAX_AFFINE_ERROR_PX = 0.02
"""Largest error allowed of the affine approximation of the UTM-to-UTM projection (world px)."""
WARP_BLOCK_PX = 1024
"""Side of the blocks that each get their own affine map."""


def _block_affine(
    tr: Transformer, src_grid: Grid, dst_grid: Grid, r0: int, c0: int, nr: int, nc: int
) -> tuple[np.ndarray, tuple[float, float]]:
    """Affine map (block-local output index -> input index) fitted to exact projections."""
    rr, cc = np.meshgrid(np.linspace(0, nr - 1, 7), np.linspace(0, nc - 1, 7), indexing="ij")
    x = dst_grid.x0 + (c0 + cc + 0.5) * dst_grid.res
    y = dst_grid.y0 - (r0 + rr + 0.5) * dst_grid.res
    sx, sy = tr.transform(x, y)
    src_c = ((np.asarray(sx) - src_grid.x0) / src_grid.res - 0.5).ravel()
    src_r = ((src_grid.y0 - np.asarray(sy)) / src_grid.res - 0.5).ravel()
    design = np.column_stack([rr.ravel(), cc.ravel(), np.ones(rr.size)])
    coef_r = np.linalg.lstsq(design, src_r, rcond=None)[0]
    coef_c = np.linalg.lstsq(design, src_c, rcond=None)[0]
    err = max(np.abs(design @ coef_r - src_r).max(), np.abs(design @ coef_c - src_c).max())
    if err > MAX_AFFINE_ERROR_PX:
        raise ValueError(f"UTM-to-UTM projection not affine enough over a block ({err:.3f} px)")
    return np.array([coef_r[:2], coef_c[:2]]), (float(coef_r[2]), float(coef_c[2]))


def _warp(src: np.ndarray, src_grid: Grid, dst_grid: Grid) -> np.ndarray:
    """Bilinear resampling of (layers, rows, cols) between grids of two UTM zones.

    Between neighbouring UTM zones the projection is affine to a few centimetres over a
    kilometre: each block of :data:`WARP_BLOCK_PX` gets an affine map fitted to exactly projected
    points, its error checked (GDAL's warper approximates the same way, to 0.125 px by default).
    """
    tr = Transformer.from_crs(dst_grid.epsg, src_grid.epsg, always_xy=True)
    out = np.empty((src.shape[0], *dst_grid.shape), dtype=np.float32)
    for r0 in range(0, dst_grid.height, WARP_BLOCK_PX):
        for c0 in range(0, dst_grid.width, WARP_BLOCK_PX):
            nr = min(WARP_BLOCK_PX, dst_grid.height - r0)
            nc = min(WARP_BLOCK_PX, dst_grid.width - c0)
            matrix, offset = _block_affine(tr, src_grid, dst_grid, r0, c0, nr, nc)
            for k in range(src.shape[0]):
                out[k, r0 : r0 + nr, c0 : c0 + nc] = affine_transform(
                    src[k],
                    matrix,
                    offset=offset,
                    output_shape=(nr, nc),
                    order=1,
                    mode="nearest",
                    output=np.float32,
                )
    return out


def block_mean(values: np.ndarray, src: Grid, dst: Grid) -> np.ndarray:
    """Mean of ``values`` (on ``src``) over each pixel of the coarser, aligned grid ``dst``."""
    f = round(dst.res / src.res)
    c0 = round((dst.x0 - src.x0) / src.res)
    r0 = round((src.y0 - dst.y0) / src.res)
    if dst.epsg != src.epsg or abs(f * src.res - dst.res) > 1e-9 or c0 < 0 or r0 < 0:
        raise ValueError("block_mean needs an aligned, coarser grid inside the source")
    win = values[r0 : r0 + dst.height * f, c0 : c0 + dst.width * f]
    return win.reshape(dst.height, f, dst.width, f).mean(axis=(1, 3)).astype(np.float32)
