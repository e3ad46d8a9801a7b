"""Generated scenes for the detection sweep: a small time series with planted objects and truth.

The scene generator of :mod:`pipeline.evaluation.sweep`, independent of the demo catalog (no COGs,
no STAC: a cube as the loader would give it, plus the truth). One scene (:func:`make_scene`) is a
``grid_px`` square at 10 m in EPSG:32636 over ``n_dates`` dates 5 days apart:

- **Ground**, drawn at 2 m (:data:`SUPER` sub-pixels per pixel): a patchwork of surfaces
  (concrete, hardstand, soil, asphalt, sand, vegetation whose cover grows over the dates, a
  season) with 5 % texture, and one apron patch per cell of :data:`CELL_PX` pixels where an
  object may stand.
- **Objects**: rectangles of length ``size`` and width ``max(0.4 size, 4 m)``, any heading,
  any sub-pixel position, on the apron at the cell centre, per size: :data:`ROLES` (removed
  at some date, appeared at some date, present throughout, or there on one date only: a ship
  anchored for one pass, an aircraft on a stopover). Spectrum = apron spectrum plus
  ``contrast`` in every band (bright objects anywhere, dark ones on bright aprons only):
  ``contrast`` is the RMS over bands of the object-minus-background reflectance (grey aircraft
  on concrete is about 0.14, a grey ship on harbour water 0.08, olive drab on soil 0.10).
- **Per date**: a sub-pixel misregistration (random direction, magnitude uniform up to
  ``misregistration_px``) applied to the 2 m drawing, area-averaged to 10 m, blurred by a
  Gaussian PSF (0.45 px), SWIR bands through 20 m and back (cubic), a gain (+-3 %) and haze
  offset drift, sensor noise (0.004), clouds covering on average ``cloud_fraction`` of the
  scene (per date uniform in 0..2x that) with thin edges beyond what is flagged and shadows
  cast beside them, and now and then a wet apron (one apron darkened by 15 % on one date).
- **Conditions the detector does not model** (off by default;
:mod:`pipeline.simulate.sweep_unmodelled`):
  a cloud spectrum other than the water-cloud top (``ice``, ``haze``), shadows that darken the
  bands unequally (``diffuse``, ``umbra``), and objects that are not rectangles (``cross``,
  ``hull``, ``ellipse``, ``varied``). Each is drawn from a random stream of its own, so the
  scene is otherwise its modelled twin's.
- **Validity** as the loader gives it: not flagged cloud or shadow, the flags dilated by 3 px.
  The thin cloud edges are beyond the flags, and may be beyond the dilation too.

The truth has the layout of the demo catalog's truth files (``objects`` with lon/lat
footprints, ``events`` with ``last_before``/``first_after``, ``shifts``, ``cloud_fraction``),
plus ``observable`` per event: its object is seen clear (at least half of its footprint valid)
on some date of each state. Only :mod:`pipeline.evaluation.sweep`'s scoring reads it.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import xarray as xr
from pyproj import Transformer
from scipy import ndimage

from pipeline.simulate.sweep_unmodelled import (
    CloudSpectrum,
    ObjectShape,
    ShadowSpectrum,
    cloud_spectrum,
    condition_rng,
    polygon_cover,
    shadow_depth,
    shape_outline,
)

__all__ = ["CELL_PX", "ROLES", "SUPER", "Scenario", "SweepScene", "make_scene"]

SUPER = 5
"""Sub-pixels per 10 m pixel of the drawing (2 m)."""

CELL_PX = 24
"""Side of the cell holding one object (pixels)."""

ROLES: tuple[str, ...] = (
    "removed",
    "removed",
    "removed",
    "appeared",
    "appeared",
    "visit",
    "static",
)
"""Roles of the objects of each size, per scene (a visit: present on one date, neither end,
so it appears and is removed)."""

BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")
CRS = "EPSG:32636"
ORIGIN_XY = (767000.0, 3922000.0)
"""Upper-left corner of the scene (near Khmeimim), metres in :data:`CRS`."""
FIRST_DATE = dt.date(2024, 12, 1)
REVISIT_DAYS = 5

_SURFACES = {
    "concrete": (0.200, 0.230, 0.260, 0.290, 0.330, 0.280),
    "hardstand": (0.140, 0.170, 0.200, 0.250, 0.300, 0.260),
    "soil": (0.070, 0.100, 0.150, 0.210, 0.310, 0.260),
    "asphalt": (0.070, 0.080, 0.090, 0.110, 0.140, 0.130),
    "sand": (0.180, 0.220, 0.270, 0.310, 0.380, 0.330),
}
_CANOPY = np.array((0.030, 0.070, 0.040, 0.420, 0.210, 0.100), dtype=np.float32)
_HAZE = np.array((1.0, 0.8, 0.6, 0.4, 0.2, 0.1), dtype=np.float32)
_APRONS = ("concrete", "hardstand", "asphalt", "concrete", "sand")

PSF_SIGMA_PX = 0.45
NOISE = 0.004
GAIN_DRIFT = 0.03
HAZE_MAX = 0.008
CLOUD_SCALE_PX = 20.0
"""Gaussian scale of the cloud field (pixels)."""
EDGE_PX = 5.0
"""Thin cloud beyond the flagged cloud: opacity falls from :data:`EDGE_OPACITY` to 0 over this."""
EDGE_OPACITY = 0.3
SHADOW_OFFSET_PX = (9, -6)
"""Shadow displacement (rows, cols) from its cloud."""
MASK_DILATION_PX = 3
FOOTPRINT_COVER = 0.25
"""A pixel belongs to an object's footprint (for observability) from this coverage on; the
most covered pixel always does."""
WET_PROBABILITY = 0.5
"""Chance that one date of a scene has one wet apron."""
WET_DARKENING = 0.15


@dataclass(frozen=True)
class Scenario:
    """One setting of the sweep."""

    cloud_fraction: float = 0.0
    """Mean share of the scene under (flagged) cloud per date."""
    misregistration_px: float = 0.0
    """Largest misregistration of a date before co-registration (pixels)."""
    contrast: float = 0.08
    """RMS over bands of object minus background reflectance."""
    sizes_m: tuple[float, ...] = (10, 15, 20, 30, 40, 60, 90, 130)
    """Object lengths drawn in each scene."""
    n_dates: int = 8
    """Dates in the series."""
    seed: int = 0
    """Everything random follows from it."""
    cloud_spectrum: CloudSpectrum = "water"
    """Cloud reflectance: ``water`` (modelled: the detector's cloud-top shape), ``ice`` (SWIR
    far lower) or ``haze`` (rising toward the blue); see
    :mod:`pipeline.simulate.sweep_unmodelled`."""
    shadow_spectrum: ShadowSpectrum = "grey"
    """Shadow darkening: ``grey`` (modelled: every band by the same factor), ``diffuse`` (the
    bluer skylight stays: blue darkened least; same mean depth) or ``umbra`` (only the skylight
    stays: deeper too)."""
    object_shape: ObjectShape = "rectangle"
    """Object outline: ``rectangle`` (modelled), ``cross`` (aircraft), ``hull`` (ship),
    ``ellipse``, or ``varied`` (one of the three per object)."""

    @property
    def unmodelled(self) -> tuple[str, ...]:
        """The conditions of this scenario the detector does not model (empty: none), e.g.
        ``("cloud ice", "shapes varied")``."""
        out = []
        if self.cloud_spectrum != "water":
            out.append(f"cloud {self.cloud_spectrum}")
        if self.shadow_spectrum != "grey":
            out.append(f"shadow {self.shadow_spectrum}")
        if self.object_shape != "rectangle":
            out.append(f"shapes {self.object_shape}")
        return tuple(out)

    def modelled_twin(self) -> Scenario:
        """The same scenario with every condition the detector models (same scene otherwise)."""
        return replace(
            self, cloud_spectrum="water", shadow_spectrum="grey", object_shape="rectangle"
        )

    @property
    def grid_px(self) -> int:
        """Side of the scene: one cell per object, cells on a square grid."""
        return CELL_PX * math.ceil(math.sqrt(len(self.sizes_m) * len(ROLES)))


@dataclass
class SweepScene:
    """A generated scene: the cube the detector sees and the truth it never sees."""

    cube: xr.Dataset
    """(time, y, x) bands float32, ``valid`` bool; attrs ``crs``, ``site``."""
    truth: dict[str, Any]
    """Objects, events, shifts, cloud fractions (see the module docstring)."""
    footprints: dict[str, np.ndarray] = field(default_factory=dict)
    """Object id -> (y, x) bool pixels more than half covered by it (for observability)."""


@dataclass
class _Ground:
    """The ground at 2 m: a static base, and vegetation whose cover grows over the dates."""

    base: np.ndarray
    """(B, n, n) float32 reflectance without vegetation."""
    veg: np.ndarray
    """(n, n) bool: vegetated fields."""
    texture: np.ndarray
    """(n, n) float32 relative texture."""
    trend: float
    """Canopy cover gained from the first to the last date."""

    def at(self, t: int, n_dates: int) -> np.ndarray:
        """(B, n, n) reflectance at date index ``t``."""
        cover = np.float32(np.clip(VEG_COVER0 + self.trend * t / max(n_dates - 1, 1), 0, 1))
        mix = self.base * (1 - cover) + _CANOPY[:, None, None] * cover * self.texture
        return np.where(self.veg[None], mix, self.base)


VEG_COVER0 = 0.2
"""Canopy cover of the vegetated fields on the first date."""


def _patchwork(rng: np.random.Generator, n_hr: int) -> _Ground:
    """A patchwork of surfaces at 2 m with texture, and vegetated fields."""
    ids = np.zeros((n_hr, n_hr), dtype=np.int16)
    names = [*_SURFACES, "vegetation"]
    for _ in range(int(0.012 * (n_hr / SUPER) ** 2)):
        r, c = rng.integers(0, n_hr, 2)
        h, w = rng.integers(8 * SUPER, 40 * SUPER, 2)
        ids[r : r + h, c : c + w] = rng.integers(0, len(names))
    spectra = np.array([_SURFACES[k] for k in _SURFACES] + [_SURFACES["soil"]], np.float32)
    texture = 1 + 0.05 * rng.standard_normal((n_hr, n_hr)).astype(np.float32)
    base = spectra[ids].transpose(2, 0, 1) * texture
    return _Ground(base, ids == len(names) - 1, texture, float(0.15 * rng.random()))


def _rectangle_cover(
    n_hr: int, centre_hr: tuple[float, float], length_hr: float, width_hr: float, angle: float
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Coverage (0..1) of a rotated rectangle on the 2 m grid, 4 x 4 samples per sub-pixel."""
    half = 0.5 * math.hypot(length_hr, width_hr) + 2
    r0, r1 = max(0, int(centre_hr[0] - half)), min(n_hr, int(centre_hr[0] + half) + 1)
    c0, c1 = max(0, int(centre_hr[1] - half)), min(n_hr, int(centre_hr[1] + half) + 1)
    k = 4
    offs = (np.arange(k) + 0.5) / k
    rr = (np.arange(r0, r1)[:, None] + offs[None, :]).ravel()
    cc = (np.arange(c0, c1)[:, None] + offs[None, :]).ravel()
    dy, dx = rr[:, None] - centre_hr[0], cc[None, :] - centre_hr[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    inside = (np.abs(u) <= length_hr / 2) & (np.abs(v) <= width_hr / 2)
    cover = inside.reshape(r1 - r0, k, c1 - c0, k).mean(axis=(1, 3)).astype(np.float32)
    return (slice(r0, r1), slice(c0, c1)), cover


def _shift_bilinear(img: np.ndarray, rows: float, cols: float) -> np.ndarray:
    """Move the content of (B, n, n) by ``rows``, ``cols`` sub-pixels (bilinear, edges held)."""
    pad = math.ceil(max(abs(rows), abs(cols))) + 1
    a = np.pad(img, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    n_r, n_c = img.shape[1], img.shape[2]
    out = np.zeros_like(img)
    r0, fr = math.floor(-rows), -rows - math.floor(-rows)
    c0, fc = math.floor(-cols), -cols - math.floor(-cols)
    for dr, wr in ((0, 1 - fr), (1, fr)):
        for dc, wc in ((0, 1 - fc), (1, fc)):
            w = wr * wc
            if w == 0:
                continue
            r, c = pad + r0 + dr, pad + c0 + dc
            out += np.float32(w) * a[:, r : r + n_r, c : c + n_c]
    return out


def _to_10m(hr: np.ndarray, shift_xy: tuple[float, float]) -> np.ndarray:
    """(B, n_hr, n_hr) drawing -> (B, n, n) 10 m view with content moved by ``shift_xy`` px."""
    dx, dy = shift_xy
    moved = _shift_bilinear(hr, -dy * SUPER, dx * SUPER)
    nb, n_hr = moved.shape[0], moved.shape[1]
    n = n_hr // SUPER
    img = moved.reshape(nb, n, SUPER, n, SUPER).mean(axis=(2, 4))
    img = ndimage.gaussian_filter(img, (0, PSF_SIGMA_PX, PSF_SIGMA_PX), mode="nearest")
    for i, band in enumerate(BANDS):
        if band.startswith("swir"):  # delivered at 20 m, resampled to 10 m by the loader
            coarse = img[i].reshape(n // 2, 2, n // 2, 2).mean(axis=(1, 3))
            img[i] = ndimage.zoom(coarse, 2, order=3, mode="nearest", grid_mode=True)
    return img.astype(np.float32)


def _sky(
    rng: np.random.Generator, n: int, fraction: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Cloud opacity, shadow opacity, and the flagged cloud and shadow masks of one date."""
    zeros = np.zeros((n, n), dtype=np.float32)
    if fraction <= 0:
        return zeros, zeros, zeros.astype(bool), zeros.astype(bool)
    field_ = ndimage.gaussian_filter(rng.standard_normal((n, n)), CLOUD_SCALE_PX, mode="wrap")
    field_ /= field_.std()
    thr = float(np.quantile(field_, 1 - fraction))
    flagged = field_ >= thr
    inside = np.clip(0.6 + (field_ - thr), 0, 1)
    dist = ndimage.distance_transform_edt(~flagged)
    edge = EDGE_OPACITY * np.clip(1 - dist / EDGE_PX, 0, 1)
    cloud = np.where(flagged, inside, edge).astype(np.float32)
    dy, dx = SHADOW_OFFSET_PX
    shadow = np.roll(cloud, (dy, dx), axis=(0, 1))
    shadow_flag = np.roll(flagged, (dy, dx), axis=(0, 1)) & ~flagged
    return cloud, np.where(flagged, 0, shadow).astype(np.float32), flagged, shadow_flag


def _lonlat_polygon(to_ll: Transformer, corners_xy: np.ndarray) -> dict[str, Any]:
    lon, lat = to_ll.transform(corners_xy[:, 0], corners_xy[:, 1])
    ring = [[round(float(a), 8), round(float(b), 8)] for a, b in zip(lon, lat, strict=True)]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def make_scene(scn: Scenario) -> SweepScene:
    """Generate one scene of the sweep (see the module docstring).

    Parameters
    ----------
    scn
        The setting: clouds, misregistration, contrast, sizes, dates, seed.

    Returns
    -------
    SweepScene
        The cube (numpy-backed) and its truth.
    """
    rng = np.random.default_rng(
        [scn.seed, round(scn.cloud_fraction * 1000), round(scn.misregistration_px * 1000)]
    )
    # the unmodelled conditions draw from streams of their own: the scene is otherwise the same
    key = (scn.seed, scn.cloud_fraction, scn.misregistration_px)
    cloud_top = cloud_spectrum(scn.cloud_spectrum, condition_rng("cloud", *key))
    shade = shadow_depth(scn.shadow_spectrum, condition_rng("shadow", *key))
    shape_rng = condition_rng("shapes", *key)
    n = scn.grid_px
    n_hr = n * SUPER
    t_n = scn.n_dates
    dates = [FIRST_DATE + dt.timedelta(days=REVISIT_DAYS * i) for i in range(t_n)]
    day = [d.isoformat() for d in dates]
    ground = _patchwork(rng, n_hr)

    cells = n // CELL_PX
    slots = rng.permutation(cells * cells)
    to_ll = Transformer.from_crs(CRS, 4326, always_xy=True)
    objects, events, layers, footprints = [], [], [], {}
    spans: list[tuple[list[bool], int]] = []  # per event: its object's presence, its date
    aprons = []
    k = 0
    for size in scn.sizes_m:
        for role in ROLES:
            cy, cx = divmod(int(slots[k]), cells)
            k += 1
            centre = (
                (cy + 0.5) * CELL_PX + rng.uniform(-3, 3),
                (cx + 0.5) * CELL_PX + rng.uniform(-3, 3),
            )
            apron_name = _APRONS[int(rng.integers(len(_APRONS)))]
            apron = np.array(_SURFACES[apron_name], dtype=np.float32)
            a0 = (
                slice(int((cy * CELL_PX + 3) * SUPER), int(((cy + 1) * CELL_PX - 3) * SUPER)),
                slice(int((cx * CELL_PX + 3) * SUPER), int(((cx + 1) * CELL_PX - 3) * SUPER)),
            )
            aprons.append(a0)
            ground.base[:, a0[0], a0[1]] = apron[:, None, None] * ground.texture[None, a0[0], a0[1]]
            ground.veg[a0] = False
            sign = 1.0 if apron.mean() < 0.15 or rng.random() < 0.5 else -1.0
            spec = np.clip(apron + sign * scn.contrast, 0.01, 0.95)
            length_m, width_m = float(size), max(0.4 * float(size), 4.0)
            angle = rng.uniform(0, math.pi)
            centre_hr = (centre[0] * SUPER, centre[1] * SUPER)
            if scn.object_shape == "rectangle":
                shape_name, outline = "rectangle", None
                win, cover = _rectangle_cover(
                    n_hr, centre_hr, length_m / 10 * SUPER, width_m / 10 * SUPER, angle
                )
                area_m2 = length_m * width_m
            else:
                shape_name, outline = shape_outline(scn.object_shape, length_m, shape_rng)
                win, cover = polygon_cover(n_hr, centre_hr, outline, 10 / SUPER, angle)
                width_m = float(outline.bounds[3] - outline.bounds[1])
                area_m2 = float(outline.area)
            change = int(rng.integers(2, t_n - 1))
            if role == "visit":
                present = [t == change for t in range(t_n)]
            else:
                present = [
                    True if role == "static" else (t < change) == (role == "removed")
                    for t in range(t_n)
                ]
            oid = f"o{k:03d}"
            layers.append((win, cover, spec, present))
            foot = np.zeros((n_hr, n_hr), dtype=np.float32)
            foot[win] = cover
            pix = foot.reshape(n, SUPER, n, SUPER).mean(axis=(1, 3))
            footprints[oid] = (pix >= FOOTPRINT_COVER) | (pix == pix.max())
            ca, sa = math.cos(angle), math.sin(angle)
            hl, hw = length_m / 2, width_m / 2
            local = (
                np.array([(-hl, -hw), (hl, -hw), (hl, hw), (-hl, hw)])
                if outline is None
                else np.asarray(outline.exterior.coords)[:-1]
            )
            x0 = ORIGIN_XY[0] + centre[1] * 10
            y0 = ORIGIN_XY[1] - centre[0] * 10
            # (u, v) along/across the heading; rows grow southwards
            xy = np.column_stack(
                [
                    x0 + local[:, 0] * ca - local[:, 1] * sa,
                    y0 - (local[:, 0] * sa + local[:, 1] * ca),
                ]
            )
            objects.append(
                {
                    "id": oid,
                    "class": "object",
                    "length_m": length_m,
                    "width_m": width_m,
                    "shape": shape_name,
                    "area_m2": round(area_m2, 1),
                    "role": role,
                    "contrast": round(float(np.sqrt(np.mean((spec - apron) ** 2))), 4),
                    "geometry": _lonlat_polygon(to_ll, xy),
                    "present": [d for d, p in zip(day, present, strict=True) if p],
                }
            )
            for t in range(1, t_n):
                if present[t] != present[t - 1]:
                    events.append(
                        {
                            "object_id": oid,
                            "kind": "appeared" if present[t] else "removed",
                            "last_before": day[t - 1],
                            "first_after": day[t],
                            "length_m": length_m,
                        }
                    )
                    spans.append((present, t))

    wet_date = int(rng.integers(1, t_n)) if rng.random() < WET_PROBABILITY else -1
    wet_apron = aprons[int(rng.integers(len(aprons)))]
    stack = np.empty((t_n, len(BANDS), n, n), dtype=np.float32)
    valid = np.empty((t_n, n, n), dtype=bool)
    shifts, fractions = {}, {}
    for t in range(t_n):
        hr = ground.at(t, t_n)
        for win, cover, spec, present in layers:
            if present[t]:
                sub = hr[:, win[0], win[1]]
                hr[:, win[0], win[1]] = sub * (1 - cover) + spec[:, None, None] * cover
        if t == wet_date:
            hr[:, wet_apron[0], wet_apron[1]] *= 1 - WET_DARKENING
        mag = rng.uniform(0, scn.misregistration_px)
        ang = rng.uniform(0, 2 * math.pi)
        sx, sy = mag * math.cos(ang), mag * math.sin(ang)
        img = _to_10m(hr, (sx, sy))
        gain = 1 + rng.uniform(-GAIN_DRIFT, GAIN_DRIFT) + rng.uniform(-0.005, 0.005, len(BANDS))
        img = img * gain[:, None, None].astype(np.float32)
        img += (rng.uniform(0, HAZE_MAX) * _HAZE)[:, None, None]
        frac = min(0.9, rng.uniform(0, 2 * scn.cloud_fraction))
        cloud, shadow, flag_c, flag_s = _sky(rng, n, frac)
        img = img * (1 - shade[:, None, None] * shadow[None])
        img = img * (1 - cloud)[None] + cloud_top[:, None, None] * cloud[None]
        img += NOISE * rng.standard_normal(img.shape).astype(np.float32)
        flags = ndimage.binary_dilation(flag_c | flag_s, iterations=MASK_DILATION_PX)
        stack[t] = np.where(flags[None], np.nan, img)
        valid[t] = ~flags
        shifts[day[t]] = {"shift_x_px": round(sx, 4), "shift_y_px": round(sy, 4)}
        fractions[day[t]] = round(float(flag_c.mean()), 4)

    for ev, (pres, at) in zip(events, spans, strict=True):
        foot = footprints[str(ev["object_id"])]
        seen = [bool(valid[i][foot].mean() >= 0.5) for i in range(t_n)]
        # seen clear in the state before the change and in the state after it, each state
        # bounded by the object's other changes (a visit's after-state is its one date)
        lo = at - 1
        while lo > 0 and pres[lo - 1] == pres[at - 1]:
            lo -= 1
        hi = at
        while hi + 1 < t_n and pres[hi + 1] == pres[at]:
            hi += 1
        ev["observable"] = any(seen[lo:at]) and any(seen[at : hi + 1])

    xs = ORIGIN_XY[0] + 10 * (np.arange(n) + 0.5)
    ys = ORIGIN_XY[1] - 10 * (np.arange(n) + 0.5)
    times = np.array([np.datetime64(d, "ns") for d in day])
    data = {b: (("time", "y", "x"), stack[:, i]) for i, b in enumerate(BANDS)}
    data["valid"] = (("time", "y", "x"), valid)
    cube = xr.Dataset(
        data, coords={"time": times, "y": ys, "x": xs}, attrs={"crs": CRS, "site": "sweep"}
    )
    truth = {
        "site": "sweep",
        "simulated": True,
        "crs": CRS,
        "dates": day,
        "shifts": shifts,
        "cloud_fraction": fractions,
        "wet_date": day[wet_date] if wet_date >= 0 else None,
        "wet_apron_px": [
            wet_apron[0].start // SUPER,
            wet_apron[0].stop // SUPER,
            wet_apron[1].start // SUPER,
            wet_apron[1].stop // SUPER,
        ],
        "origin_xy": list(ORIGIN_XY),
        "objects": objects,
        "events": events,
        "area_km2": (n * 10 / 1000) ** 2,
    }
    return SweepScene(cube=cube, truth=truth, footprints=footprints)
