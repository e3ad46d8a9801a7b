"""Rendering of one site: the world grids, and every Item of every acquisition.

An Item of a date is made like this:

1. the static scene at the date's season position, objects present that day painted in with
   their shadows (2 m world grid in the tile's CRS; the world of the second UTM zone is a
   reprojection of the first);
2. imaged onto the Item's 10 m and 20 m grids: area average over each pixel, displaced by the
   date's misregistration (same metres on the ground for both Items), Gaussian PSF;
3. the sky: cloud shadows, cirrus, clouds (same fields for both Items);
4. radiometry: the date's gain and offset drift, then sensor noise;
5. on swath-edge dates, no data over part of the first tile's window;
6. quantised to L2A DN (reflectance * 10000 + 1000, 0 = no data), and the SCL.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.errors import ConfigError
from pipeline.simulate.clouds import (
    SCL_CIRRUS,
    SCL_CLOUD_HIGH,
    SCL_CLOUD_MEDIUM,
    Sky,
    SkySampler,
    apply_sky,
    cloud_fraction,
    make_sky,
    sample_sky,
    scene_classification,
)
from pipeline.simulate.geometry import (
    Grid,
    imaging_operator,
    item_grid,
    reproject_geom,
    shift_in_crs,
    site_frames,
    snapped_grid,
)
from pipeline.simulate.materials import BANDS
from pipeline.simulate.objects import draw_objects, place_objects, prepare_objects
from pipeline.simulate.scenario import Scenario, scenario_path
from pipeline.simulate.scene import (
    StaticScene,
    block_mean,
    paint_table,
    render_static,
    season_tau,
    surface_paints,
)
from pipeline.simulate.timeline import PURPOSE, Acquisition, rng_for
from pipeline.sites import Site

WORLD_RES_M = 2.0
"""Resolution of the high-resolution world."""
WORLD_MARGIN_M = 100.0
"""World extent beyond the Item windows (PSF support, misregistration, reprojection)."""
DN_OFFSET = 1000
"""L2A baseline >= 04.00 radiometric offset: DN = reflectance * 10000 + 1000."""
SWATH_EDGE_HEADING_DEG = 13.0
"""Direction of the swath edge, clockwise from north (along the descending ground track)."""


def to_dn(refl: np.ndarray, nodata: np.ndarray) -> np.ndarray:
    """Reflectance -> uint16 L2A DN (1..65535; 0 where ``nodata``)."""
    dn = np.clip(np.rint(refl * 10000.0) + DN_OFFSET, 1, 65535).astype(np.uint16)
    dn[nodata] = 0
    return dn


@dataclass
class RenderedItem:
    """The rasters and statistics of one Item."""

    grid10: Grid
    """The 10 m grid."""
    grid20: Grid
    """The 20 m grid."""
    dn: dict[str, np.ndarray]
    """Asset key -> uint16 DN (10 m or 20 m)."""
    scl: np.ndarray
    """uint8 SCL at 20 m."""
    cloud_cover: float
    """Percent of data pixels with SCL 8, 9 or 10."""
    nodata_percent: float
    """Percent of the window without data."""


class SiteSimulation:
    """Everything fixed for a site: objects, worlds, grids, sky sampling."""

    def __init__(self, site: Site, scn: Scenario, seed: int, seeds_dir: str = "seeds") -> None:
        where = f"scenario file {scenario_path(site.name, seeds_dir)}"
        if scn.tiles[0].epsg != site.epsg:
            raise ConfigError(
                f"{where}: the first tile {scn.tiles[0].code} must be in the site grid's CRS "
                f"EPSG:{site.epsg}"
            )
        self.site, self.scn, self.seed = site, scn, seed
        frames = site_frames(site)
        self.center = frames["site"].origin
        c = site.aoi.centroid
        self.center_lonlat = (c.x, c.y)
        self.objects = place_objects(scn.objects, site, frames, seed, where)
        self.items = [item_grid(site, t, scn.item_margin_m) for t in scn.tiles]

        worlds = []
        for g in self.items:
            gw, gs, ge, gn = g.bounds
            m = WORLD_MARGIN_M
            worlds.append(
                snapped_grid(g.epsg, (gw - m, gs - m, ge + m, gn + m), WORLD_RES_M, step=60.0)
            )
        cover = [reproject_geom(g.footprint(), g.epsg, site.epsg) for g in worlds]
        canvas = snapped_grid(
            site.epsg,
            (
                min(p.bounds[0] for p in cover),
                min(p.bounds[1] for p in cover),
                max(p.bounds[2] for p in cover),
                max(p.bounds[3] for p in cover),
            ),
            WORLD_RES_M,
            step=60.0,
        )
        rng = rng_for(seed, site.name, PURPOSE["scene"])
        table = paint_table(surface_paints(scn, site, frames, rng, where), rng)
        self.worlds: list[StaticScene] = render_static(table, canvas, worlds, rng)
        self.grid_objects = [
            prepare_objects(self.objects, wd.grid, site.epsg) for wd in self.worlds
        ]

        gb = site.geobox(10.0)
        a = gb.affine
        site_grid = Grid(site.epsg, a.c, a.f, a.a, gb.width, gb.height)
        grids = {"site": site_grid}
        for i, g in enumerate(self.items):
            grids[f"{i}/10"], grids[f"{i}/20"] = g, g.coarsen(2)
        self.sampler = SkySampler.build(canvas, grids)
        self.bright20 = [
            block_mean(wd.bright, wd.grid, g.coarsen(2))
            for wd, g in zip(self.worlds, self.items, strict=True)
        ]
        self._swath_s = {k: self._across_track(k) for k in grids}
        self._buffers: dict[int, np.ndarray] = {}

    def _buffer(self, tile_index: int) -> np.ndarray:
        """A reusable world-sized array for tile ``tile_index`` (one per tile, kept)."""
        if tile_index not in self._buffers:
            self._buffers[tile_index] = np.empty_like(self.worlds[tile_index].base)
        return self._buffers[tile_index]

    def _across_track(self, key: str) -> np.ndarray:
        """Signed distance east of a swath-edge line through the site centre, per pixel."""
        x, y = self.sampler.coords[key]
        t = np.radians(SWATH_EDGE_HEADING_DEG)
        return (x - self.center[0]) * np.cos(t) - (y - self.center[1]) * np.sin(t)

    def _nodata(self, acq: Acquisition, tile_index: int, key: str) -> np.ndarray:
        s = self._swath_s[key]
        if tile_index != 0 or acq.swath_edge <= 0:
            return np.zeros(s.shape, dtype=bool)
        limit = float(np.quantile(self._swath_s["site"], 1.0 - acq.swath_edge))
        return s > limit

    def cloud_fraction(self, sky: Sky) -> float:
        """True fraction of the site grid under cloud (truth's cloud_fraction)."""
        return cloud_fraction(sky, self.sampler, "site")

    def sky(self, acq: Acquisition) -> Sky:
        """The sky of ``acq`` (drawn from the seed; the same for every tile)."""
        rng = rng_for(self.seed, self.site.name, acq.date.toordinal(), PURPOSE["clouds"])
        return make_sky(acq, self.sampler, "site", rng)

    def render(self, acq: Acquisition, tile_index: int, sky: Sky | None = None) -> RenderedItem:
        """Render the Item of tile ``tile_index`` on ``acq`` (``sky`` may be passed to reuse)."""
        sky = sky if sky is not None else self.sky(acq)
        world = self.worlds[tile_index]
        grid10 = self.items[tile_index]
        grid20 = grid10.coarsen(2)
        layers = world.at(season_tau(acq.date), out=self._buffer(tile_index))
        present = [
            g for g in self.grid_objects[tile_index].values() if g.obj.spec.is_present(acq.date)
        ]
        shadow = shift_in_crs(acq.shadow_offset_m, self.center, self.site.epsg, grid10.epsg)
        draw_objects(layers, world.grid, present, shadow)

        shift_m = (acq.shift_px[0] * 10.0, acq.shift_px[1] * 10.0)
        shift_m = shift_in_crs(shift_m, self.center, self.site.epsg, grid10.epsg)
        sigma = self.scn.sensor.psf_sigma_px
        refl10 = imaging_operator(grid10, world.grid, shift_m, sigma).apply(layers[:4])
        refl20 = imaging_operator(grid20, world.grid, shift_m, sigma).apply(layers[4:])

        s10 = sample_sky(sky, self.sampler, f"{tile_index}/10")
        s20 = sample_sky(sky, self.sampler, f"{tile_index}/20")
        refl10 = apply_sky(refl10, s10, slice(0, 4))
        refl20 = apply_sky(refl20, s20, slice(4, 6))

        gain = np.asarray(acq.gain, dtype=np.float32)[:, None, None]
        offset = np.asarray(acq.offset, dtype=np.float32)[:, None, None]
        rng = rng_for(
            self.seed, self.site.name, acq.date.toordinal(), PURPOSE["noise"], grid10.epsg
        )
        noise = self.scn.sensor.noise_reflectance
        refl10 = refl10 * gain[:4] + offset[:4]
        refl10 += rng.normal(0.0, noise, refl10.shape).astype(np.float32)
        refl20 = refl20 * gain[4:] + offset[4:]
        refl20 += rng.normal(0.0, noise, refl20.shape).astype(np.float32)

        nodata20 = self._nodata(acq, tile_index, f"{tile_index}/20")
        nodata10 = np.repeat(np.repeat(nodata20, 2, axis=0), 2, axis=1)
        h, w = grid20.shape
        coarse10 = refl10.reshape(4, h, 2, w, 2).mean(axis=(2, 4))
        scl = scene_classification(
            np.concatenate([coarse10, refl20]), s20, self.bright20[tile_index], nodata20
        )
        dn = {b: to_dn(refl10[i], nodata10) for i, b in enumerate(BANDS[:4])}
        dn.update({b: to_dn(refl20[i], nodata20) for i, b in enumerate(BANDS[4:])})
        data = scl != 0
        n_data = max(int(data.sum()), 1)
        cloudy = np.isin(scl, (SCL_CLOUD_MEDIUM, SCL_CLOUD_HIGH, SCL_CIRRUS))
        return RenderedItem(
            grid10=grid10,
            grid20=grid20,
            dn=dn,
            scl=scl,
            cloud_cover=round(100.0 * int(cloudy.sum()) / n_data, 4),
            nodata_percent=round(100.0 * float(nodata20.mean()), 4),
        )
