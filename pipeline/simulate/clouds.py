"""Clouds, cloud shadows, cirrus and the Scene Classification Layer (SCL) of a date.

The sky of a date is a few smooth random fields on a coarse grid in the site's CRS that extends
kilometres beyond the scene (a cloud outside the AOI can shade it): cloud opacity (thresholded
Gaussian-filtered noise with soft edges), cloud brightness texture and, on some dates, a thin
cirrus veil. Every Item grid samples the same fields at its pixel centres, so the two Items of a
date see the same clouds; shadows sample the opacity towards the sun, ``height / tan(elevation)``
away.

The SCL is computed the way the real one behaves: classes from the rendered reflectance
(vegetation, not vegetated, water), cloud medium/high probability on cloud cores only (thin cloud
edges are missed), cloud shadows, thin cirrus, and on some clear dates patches of bright
concrete falsely flagged as cloud.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from pyproj import Transformer
from scipy.ndimage import map_coordinates

from pipeline.simulate.geometry import Grid
from pipeline.simulate.materials import spectrum
from pipeline.simulate.scene import smooth_noise
from pipeline.simulate.timeline import Acquisition

CLOUD_GRID_RES_M = 20.0
"""Resolution of the sky fields."""
CLOUD_GRID_MARGIN_M = 3500.0
"""How far the sky extends beyond the world (shadows of clouds outside the scene)."""
EDGE_WIDTH = 0.25
"""Soft-edge width of the clouds, in units of the (unit-variance) cloud field."""
CLOUD_VISIBLE = 0.1
"""Opacity from which a pixel counts as cloudy in truth's cloud_fraction."""
SCL_MEDIUM, SCL_HIGH = 0.4, 0.75
"""Opacity from which SCL says cloud medium (8) / high (9) probability."""
SHADOW_DEPTH = 0.6
"""Fraction of the ground's reflectance removed under a fully opaque cloud's shadow."""
CIRRUS_REFLECTANCE = np.asarray([0.025, 0.024, 0.023, 0.021, 0.014, 0.010], dtype=np.float32)
"""Reflectance added by a full cirrus veil, per band."""
CIRRUS_FLAGGED = 0.5
"""Cirrus density from which SCL says thin cirrus (10); thinner veils go unflagged."""

SCL_NODATA, SCL_SHADOW, SCL_VEGETATION, SCL_BARE, SCL_WATER = 0, 3, 4, 5, 6
SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS = 8, 9, 10


def _grid_coords(grid: Grid, sky: Grid) -> tuple[np.ndarray, np.ndarray]:
    """Coordinates (x, y) in the sky's CRS of every pixel centre of ``grid``, (rows, cols)."""
    xc, yc = grid.centers()
    xx, yy = np.meshgrid(xc, yc)
    if grid.epsg != sky.epsg:
        tr = Transformer.from_crs(grid.epsg, sky.epsg, always_xy=True)
        xx, yy = tr.transform(xx, yy)
    return np.asarray(xx), np.asarray(yy)


@dataclass
class SkySampler:
    """Where every grid of a site samples the sky fields (precomputed once per site)."""

    sky: Grid
    """The sky grid (site CRS)."""
    coords: dict[str, tuple[np.ndarray, np.ndarray]]
    """Per grid key: (x, y) of its pixel centres in the sky's CRS."""

    @classmethod
    def build(cls, world: Grid, grids: dict[str, Grid]) -> SkySampler:
        """Sampler for a site whose scene covers ``world`` and whose outputs are ``grids``."""
        m = CLOUD_GRID_MARGIN_M
        w, s, e, n = world.bounds
        r = CLOUD_GRID_RES_M
        sky = Grid(
            world.epsg,
            w - m,
            n + m,
            r,
            math.ceil((e - w + 2 * m) / r),
            math.ceil((n - s + 2 * m) / r),
        )
        return cls(sky, {k: _grid_coords(g, sky) for k, g in grids.items()})

    def sample(
        self, field: np.ndarray, key: str, offset_m: tuple[float, float] = (0.0, 0.0)
    ) -> np.ndarray:
        """Bilinear sample of a sky field at the pixel centres of grid ``key`` (+ offset)."""
        x, y = self.coords[key]
        col = (x + offset_m[0] - self.sky.x0) / self.sky.res - 0.5
        row = (self.sky.y0 - (y + offset_m[1])) / self.sky.res - 0.5
        out = map_coordinates(field, [row, col], order=1, mode="nearest")
        return out.astype(np.float32, copy=False)


@dataclass
class Sky:
    """The sky of one date on the sky grid."""

    opacity: np.ndarray
    """Cloud opacity 0..1."""
    brightness: np.ndarray
    """Cloud brightness factor (texture), around 1."""
    cirrus: np.ndarray | None
    """Cirrus veil density 0..1, or None."""
    false_cloud: np.ndarray | None
    """Field whose high values mark where SCL flags bright concrete as cloud, or None."""
    cloud_offset_m: tuple[float, float]
    """From a ground point to the cloud that shades it (towards the sun), metres."""


def make_sky(acq: Acquisition, sampler: SkySampler, site_key: str, rng: np.random.Generator) -> Sky:
    """Draw the sky of ``acq``: clouds covering ``acq.cloud_fraction`` of grid ``site_key``."""
    shape = sampler.sky.shape
    z = (
        0.75 * smooth_noise(shape, 20.0, rng)
        + 0.55 * smooth_noise(shape, 6.0, rng)
        + 0.25 * smooth_noise(shape, 2.0, rng)
    )
    if acq.cloud_fraction > 0:
        z_site = sampler.sample(z, site_key)
        q = float(np.quantile(z_site, 1.0 - acq.cloud_fraction))
        opacity = np.clip((z - q) / EDGE_WIDTH + CLOUD_VISIBLE, 0.0, 1.0).astype(np.float32)
    else:
        opacity = np.zeros(shape, dtype=np.float32)
    brightness = (1.0 + 0.12 * np.clip(smooth_noise(shape, 3.0, rng), -2.5, 2.5)).astype(np.float32)
    cirrus = None
    if acq.cirrus:
        c = smooth_noise(shape, 30.0, rng) + 0.3 * smooth_noise(shape, 5.0, rng)
        cirrus = np.clip(0.5 * (c + 0.3), 0.0, 1.0).astype(np.float32)
    false_cloud = smooth_noise(shape, 4.0, rng) if acq.false_cloud else None
    k = acq.cloud_height_m / math.tan(math.radians(max(acq.sun_elevation, 5.0)))
    az = math.radians(acq.sun_azimuth)
    return Sky(opacity, brightness, cirrus, false_cloud, (k * math.sin(az), k * math.cos(az)))


@dataclass
class SkySample:
    """The sky of a date on one output grid."""

    opacity: np.ndarray
    shadow: np.ndarray
    brightness: np.ndarray
    cirrus: np.ndarray | None
    false_cloud: np.ndarray | None


def sample_sky(sky: Sky, sampler: SkySampler, key: str) -> SkySample:
    """The sky fields at the pixel centres of grid ``key``."""
    return SkySample(
        opacity=sampler.sample(sky.opacity, key),
        shadow=sampler.sample(sky.opacity, key, sky.cloud_offset_m),
        brightness=sampler.sample(sky.brightness, key),
        cirrus=None if sky.cirrus is None else sampler.sample(sky.cirrus, key),
        false_cloud=None if sky.false_cloud is None else sampler.sample(sky.false_cloud, key),
    )


def apply_sky(refl: np.ndarray, s: SkySample, bands: slice) -> np.ndarray:
    """Shade, veil and cover ground reflectance (bands, rows, cols) with the sampled sky."""
    out = refl * (1.0 - SHADOW_DEPTH * s.shadow)[None]
    if s.cirrus is not None:
        out += CIRRUS_REFLECTANCE[bands, None, None] * s.cirrus[None]
    cloud = spectrum("cloud")[bands, None, None] * s.brightness[None]
    a = s.opacity[None]
    return (out * (1.0 - a) + cloud * a).astype(np.float32)


def cloud_fraction(sky: Sky, sampler: SkySampler, site_key: str) -> float:
    """Fraction of grid ``site_key`` whose cloud opacity is at least :data:`CLOUD_VISIBLE`."""
    return float(np.mean(sampler.sample(sky.opacity, site_key) >= CLOUD_VISIBLE - 1e-6))


def scene_classification(
    refl20: np.ndarray, s: SkySample, bright20: np.ndarray, nodata: np.ndarray
) -> np.ndarray:
    """SCL (uint8) at 20 m from reflectance (blue, green, red, nir, swir16, swir22) and the sky.

    Parameters
    ----------
    refl20
        (6, rows, cols) reflectance at 20 m as delivered (clouds included).
    s
        The sky sampled on the 20 m grid.
    bright20
        Fraction of bright concrete per 20 m pixel.
    nodata
        True where the Item has no data.
    """
    green, red, nir, swir = refl20[1], refl20[2], refl20[3], refl20[4]
    ndvi = (nir - red) / np.maximum(nir + red, 1e-6)
    scl = np.full(nir.shape, SCL_BARE, dtype=np.uint8)
    scl[ndvi > 0.4] = SCL_VEGETATION
    scl[(nir < 0.05) & (green > nir) & (swir < 0.05)] = SCL_WATER
    scl[(s.shadow >= 0.35) & (s.opacity < SCL_MEDIUM)] = SCL_SHADOW
    if s.cirrus is not None:
        scl[(s.cirrus > CIRRUS_FLAGGED) & (s.opacity < SCL_MEDIUM)] = SCL_CIRRUS
    if s.false_cloud is not None:
        fake = (bright20 > 0.6) & (s.false_cloud > 0.6)
        scl[fake] = np.where(s.false_cloud[fake] > 1.2, SCL_CLOUD_HIGH, SCL_CLOUD_MEDIUM)
    scl[s.opacity >= SCL_MEDIUM] = SCL_CLOUD_MEDIUM
    scl[s.opacity >= SCL_HIGH] = SCL_CLOUD_HIGH
    scl[nodata] = SCL_NODATA
    return scl
