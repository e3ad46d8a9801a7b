"""Objects of the simulated scenes: models, true-size shapes, placement, rendering, events.

Every object is drawn at its true size and shape (fuselage, wings and tailplane for aircraft,
hull and superstructure for ships, one rectangle per vehicle) as polygons in the site CRS. The
renderer turns them into per-pixel coverage on the 2 m world grid by rasterising at 0.5 m and
averaging, and casts each object's shadow away from the sun.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from rasterio.features import rasterize
from shapely import affinity
from shapely.geometry import MultiPolygon, Polygon, mapping
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union

from pipeline.errors import ConfigError
from pipeline.simulate.geometry import Frame, Grid, get_frame, reproject_geom
from pipeline.simulate.materials import spectrum
from pipeline.simulate.scenario import SceneObject
from pipeline.sites import Site


@dataclass(frozen=True)
class Model:
    """An object model: its class, true dimensions, shape and paint."""

    cls: str
    """Class written to truth (fighter, transport, helicopter, ship, vehicle_row, ...)."""
    length_m: float
    """Overall length (0 for vehicle rows: set by the count)."""
    width_m: float
    """Wingspan, rotor diameter, beam or vehicle length."""
    height_m: float
    """Height that sets the shadow length."""
    shape: str
    """Outline generator: swept_jet, transport, turboprop, helicopter, ship, submarine, row."""
    material: str
    """Main paint (a key of materials.SPECTRA)."""
    accent: str | None = None
    """Paint of the superstructure (ships)."""
    accent_span: tuple[float, float] = (-0.2, 0.15)
    """Superstructure extent along the hull, fractions of the length from the centre."""


MODELS: dict[str, Model] = {
    "su24": Model("fighter", 22.7, 17.6, 6.2, "swept_jet", "aircraft_grey"),
    "su34": Model("fighter", 23.3, 14.7, 6.1, "swept_jet", "aircraft_grey"),
    "su35": Model("fighter", 21.9, 15.3, 5.9, "swept_jet", "aircraft_grey"),
    "il76": Model("transport", 46.6, 50.5, 14.8, "transport", "aircraft_light"),
    "an124": Model("transport", 69.1, 73.3, 20.8, "transport", "aircraft_light"),
    "tu154": Model("transport", 48.0, 37.6, 11.4, "transport", "aircraft_white"),
    "il20": Model("transport", 35.9, 37.4, 10.2, "turboprop", "aircraft_light"),
    "an26": Model("transport", 23.8, 29.2, 8.6, "turboprop", "aircraft_light"),
    "airliner": Model("airliner", 37.6, 35.8, 11.8, "transport", "aircraft_white"),
    "mi8": Model("helicopter", 25.3, 21.3, 5.6, "helicopter", "olive_drab"),
    "ka52": Model("helicopter", 16.0, 14.5, 5.0, "helicopter", "olive_drab"),
    "frigate": Model("ship", 124.8, 15.2, 20.0, "ship", "ship_grey", "ship_superstructure"),
    "landing_ship": Model(
        "ship", 112.5, 15.0, 15.0, "ship", "ship_grey", "ship_superstructure", (-0.42, -0.18)
    ),
    "support_ship": Model(
        "ship", 70.0, 12.0, 14.0, "ship", "ship_grey", "ship_superstructure", (-0.45, -0.22)
    ),
    "cargo_ship": Model(
        "ship", 100.0, 16.0, 18.0, "ship", "cargo_hull", "ship_superstructure", (-0.45, -0.3)
    ),
    "submarine": Model("ship", 73.8, 9.9, 6.0, "submarine", "ship_black"),
    "tug": Model("ship", 25.0, 9.0, 8.0, "ship", "ship_grey", "ship_superstructure", (-0.1, 0.2)),
    "patrol_boat": Model(
        "ship", 20.0, 5.0, 5.0, "ship", "ship_grey", "ship_superstructure", (-0.15, 0.15)
    ),
    "vehicle_row": Model("vehicle_row", 0.0, 8.0, 3.0, "row", "olive_drab"),
}
"""Object models a scenario can use (``model:`` of an object)."""

VEHICLE_WIDTH_M = 3.0
"""Width of one vehicle of a row (vehicles stand side by side)."""
VEHICLE_GAP_M = 2.0
"""Gap between the vehicles of a row."""


def _sym(half: Sequence[tuple[float, float]]) -> Polygon:
    """Polygon symmetric about the u axis from its right half [(v >= 0, u), ...] (nose first)."""
    right = list(half)
    left = [(-v, u) for v, u in reversed(right) if v != 0.0]
    return Polygon(right + left)


def _wing(
    root_v: float,
    root_le: float,
    root_chord: float,
    tip_v: float,
    sweep_deg: float,
    tip_chord: float,
) -> list[Polygon]:
    tip_le = root_le - (tip_v - root_v) * math.tan(math.radians(sweep_deg))
    right = Polygon(
        [
            (root_v, root_le),
            (tip_v, tip_le),
            (tip_v, tip_le - tip_chord),
            (root_v, root_le - root_chord),
        ]
    )
    return [right, affinity.scale(right, xfact=-1.0, origin=(0.0, 0.0))]


def _outline(
    model: Model, length: float, width: float, count: int | None
) -> list[tuple[Polygon, str]]:
    """Parts of an object in its own frame: v to the right, u forward; (polygon, material)."""
    L, S, m = length, width, model.material
    if model.shape == "swept_jet":
        fw = 0.12 * L
        parts = [_sym([(0.0, 0.5 * L), (fw / 2, 0.33 * L), (fw / 2, -0.5 * L)])]
        parts += _wing(fw / 2, 0.12 * L, 0.40 * L, S / 2, 42.0, 0.08 * L)
        parts += _wing(fw / 2, -0.30 * L, 0.18 * L, 0.33 * S, 35.0, 0.08 * L)
        return [(unary_union(parts), m)]
    if model.shape in ("transport", "turboprop"):
        sweep = 25.0 if model.shape == "transport" else 3.0
        fw = 0.10 * L
        body = _sym(
            [
                (0.0, 0.5 * L),
                (0.35 * fw, 0.49 * L),
                (fw / 2, 0.45 * L),
                (fw / 2, -0.38 * L),
                (0.2 * fw, -0.5 * L),
            ]
        )
        parts = [body]
        parts += _wing(fw / 2, 0.08 * L, 0.20 * L, S / 2, sweep, 0.06 * L)
        parts += _wing(fw / 2, -0.36 * L, 0.12 * L, 0.17 * S, sweep + 5.0, 0.05 * L)
        return [(unary_union(parts), m)]
    if model.shape == "helicopter":
        body = _sym(
            [
                (0.0, 0.40 * L),
                (0.05 * L, 0.36 * L),
                (0.05 * L, -0.15 * L),
                (0.018 * L, -0.17 * L),
                (0.018 * L, -0.5 * L),
            ]
        )
        hub = (0.0, 0.12 * L)
        blade = Polygon([(-0.28, 0.0), (0.28, 0.0), (0.28, S / 2), (-0.28, S / 2)])
        blades = [
            affinity.translate(affinity.rotate(blade, 18.0 + 72.0 * k, origin=(0, 0)), *hub)
            for k in range(5)
        ]
        return [(unary_union([body, *blades]), m)]
    if model.shape == "ship":
        B = S
        hull = _sym(
            [
                (0.0, 0.5 * L),
                (0.3 * B, 0.4 * L),
                (0.5 * B, 0.2 * L),
                (0.5 * B, -0.35 * L),
                (0.45 * B, -0.5 * L),
            ]
        )
        a0, a1 = model.accent_span
        sup = Polygon(
            [(-0.32 * B, a0 * L), (0.32 * B, a0 * L), (0.32 * B, a1 * L), (-0.32 * B, a1 * L)]
        )
        return [(hull, m), (sup, model.accent or m)]
    if model.shape == "submarine":
        B = S
        n = 8
        bow = [
            (0.5 * B * math.sin(t), 0.38 * L + 0.12 * L * math.cos(t))
            for t in np.linspace(0.0, math.pi / 2, n)
        ]
        hull = _sym([*bow, (0.5 * B, -0.3 * L), (0.12 * B, -0.5 * L)])
        return [(hull, m)]
    if model.shape == "row":
        assert count is not None
        step = VEHICLE_WIDTH_M + VEHICLE_GAP_M
        u0 = -(count - 1) * step / 2.0
        half_w, half_l = VEHICLE_WIDTH_M / 2.0, S / 2.0
        return [
            (
                Polygon(
                    [
                        (-half_l, u - half_w),
                        (half_l, u - half_w),
                        (half_l, u + half_w),
                        (-half_l, u + half_w),
                    ]
                ),
                m,
            )
            for u in (u0 + k * step for k in range(count))
        ]
    raise ValueError(f"unknown shape {model.shape}")


@dataclass(frozen=True)
class PlacedObject:
    """An object of a scenario, placed in the site CRS."""

    spec: SceneObject
    """The scenario entry."""
    model: Model
    """Its model."""
    length_m: float
    """Overall length."""
    width_m: float
    """Span, beam or row depth."""
    parts: tuple[tuple[BaseGeometry, str], ...]
    """(polygon in the site CRS, material) per part."""
    footprint: BaseGeometry
    """True footprint (union of the parts; convex hull when they are apart), site CRS."""
    brightness: float
    """Per-object paint brightness factor."""

    @property
    def id(self) -> str:
        """Object id."""
        return self.spec.id


def place_objects(
    objects: Sequence[SceneObject],
    site: Site,
    frames: dict[str, Frame],
    seed: int,
    where: str,
) -> list[PlacedObject]:
    """Place the scenario's objects and check they fit: inside the AOI, not overlapping.

    Raises
    ------
    ConfigError
        When a model or frame is unknown, a vehicle row lacks a count, an object leaves the
        AOI, or two objects overlap.
    """
    aoi = site.to_utm(site.aoi)
    placed: list[PlacedObject] = []
    for spec in objects:
        w = f"{where}: object {spec.id}"
        model = MODELS.get(spec.model)
        if model is None:
            raise ConfigError(f"{w}: unknown model '{spec.model}': use one of {', '.join(MODELS)}")
        if (model.shape == "row") != (spec.count is not None):
            raise ConfigError(f"{w}: 'count' is required for vehicle_row and only for it")
        length = model.length_m
        if model.shape == "row":
            assert spec.count is not None
            length = spec.count * VEHICLE_WIDTH_M + (spec.count - 1) * VEHICLE_GAP_M
        frame = get_frame(frames, spec.frame, w).sub(spec.at, spec.heading_deg)
        parts = []
        for poly, material in _outline(model, length, model.width_m, spec.count):
            coords = frame.to_grid(np.asarray(poly.exterior.coords))
            parts.append((Polygon(coords), material))
        union = unary_union([p for p, _ in parts])
        footprint = union.convex_hull if isinstance(union, MultiPolygon) else union
        if not aoi.contains(footprint):
            raise ConfigError(f"{w}: footprint leaves the site AOI: move it inside")
        rng = np.random.default_rng([seed, zlib.crc32(spec.id.encode()), 7])
        placed.append(
            PlacedObject(
                spec,
                model,
                float(length),
                model.width_m,
                tuple(parts),
                footprint,
                float(rng.uniform(0.9, 1.1)),
            )
        )
    for i, a in enumerate(placed):
        for b in placed[i + 1 :]:
            if a.footprint.buffer(1.0).intersects(b.footprint):
                raise ConfigError(
                    f"{where}: objects {a.id} and {b.id} overlap (or are closer than 1 m): "
                    "move one of them"
                )
    return placed


def coverage(geom: BaseGeometry, grid: Grid, supersample: int = 4) -> tuple[int, int, np.ndarray]:
    """Fraction of each ``grid`` pixel covered by ``geom``: (row0, col0, patch float32).

    The patch is rasterised at ``grid.res / supersample`` and block-averaged, so edges are
    anti-aliased. Empty patches (geometry outside the grid) have size 0.
    """
    w, s, e, n = geom.bounds
    c0 = max(math.floor((w - grid.x0) / grid.res) - 1, 0)
    c1 = min(math.ceil((e - grid.x0) / grid.res) + 1, grid.width)
    r0 = max(math.floor((grid.y0 - n) / grid.res) - 1, 0)
    r1 = min(math.ceil((grid.y0 - s) / grid.res) + 1, grid.height)
    if c1 <= c0 or r1 <= r0:
        return 0, 0, np.zeros((0, 0), dtype=np.float32)
    fine = grid.res / supersample
    hi = rasterize(
        [(mapping(geom), 1)],
        out_shape=((r1 - r0) * supersample, (c1 - c0) * supersample),
        transform=(fine, 0.0, grid.x0 + c0 * grid.res, 0.0, -fine, grid.y0 - r0 * grid.res),
        fill=0,
        dtype="uint8",
    )
    cov = hi.reshape(r1 - r0, supersample, c1 - c0, supersample).mean(axis=(1, 3))
    return r0, c0, cov.astype(np.float32)


SHADOW_DEPTH = 0.65
"""Fraction of the ground's reflectance removed in an object's shadow."""


@dataclass(frozen=True)
class GridObject:
    """An object rasterised on one world grid (its parts' coverage is fixed; shadows are not)."""

    obj: PlacedObject
    """The object."""
    footprint: BaseGeometry
    """Footprint in the grid's CRS."""
    patches: tuple[tuple[int, int, np.ndarray, np.ndarray], ...]
    """(row0, col0, coverage, reflectance per band) per part."""


def prepare_objects(
    objects: Sequence[PlacedObject], grid: Grid, site_epsg: int
) -> dict[str, GridObject]:
    """Rasterise every object's parts on ``grid`` once, keyed by object id."""
    out = {}
    for obj in objects:
        patches = []
        for poly, material in obj.parts:
            r0, c0, cov = coverage(reproject_geom(poly, site_epsg, grid.epsg), grid)
            if cov.size:
                patches.append((r0, c0, cov, spectrum(material) * obj.brightness))
        fp = reproject_geom(obj.footprint, site_epsg, grid.epsg)
        out[obj.id] = GridObject(obj, fp, tuple(patches))
    return out


def draw_objects(
    world: np.ndarray,
    grid: Grid,
    objects: Sequence[GridObject],
    shadow_offset_m: tuple[float, float],
) -> None:
    """Paint ``objects`` (and their shadows) into ``world`` (bands, rows, cols), in place.

    ``shadow_offset_m`` is the ground displacement of the shadow of a 1 m high point (east,
    north, in ``grid``'s CRS); an object's shadow is its footprint moved by 0.4 x its height
    times that, minus the footprint itself. All shadows are cast before any object is painted.
    """
    for gobj in objects:
        h = 0.4 * gobj.obj.model.height_m
        dx, dy = h * shadow_offset_m[0], h * shadow_offset_m[1]
        shadow = affinity.translate(gobj.footprint, dx, dy).difference(gobj.footprint)
        if shadow.is_empty:
            continue
        r0, c0, cov = coverage(shadow, grid)
        if cov.size:
            win = world[:, r0 : r0 + cov.shape[0], c0 : c0 + cov.shape[1]]
            win *= 1.0 - SHADOW_DEPTH * cov
    for gobj in objects:
        for r0, c0, cov, refl in gobj.patches:
            win = world[:, r0 : r0 + cov.shape[0], c0 : c0 + cov.shape[1]]
            win *= 1.0 - cov
            win += cov * refl[:, None, None]
