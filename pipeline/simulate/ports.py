"""Scenes built on a real background: real port scenes with their annotated ships removed or added.

The real scenes are sen2ships exports (one date of a port, Sentinel-2 L2A bands B02, B03, B04,
B08, B11 as single-band GeoTIFFs in EPSG:3857 at 10 m, uint16, with the ships as COCO RLE masks).
From one real date this module makes the dates of a benchmark case:

- **Reflectance.** The exports map reflectance 0..1 linearly onto 0..65535 (water ~0.01-0.06,
  vegetation NIR ~0.2-0.4, saturation at 65535 only on roofs and glint), so reflectance =
  ``DN / 65535`` (:data:`DN_FULL_SCALE`, the same factor for every band).
- **Ships** (:func:`decode_rle`, :func:`read_port`): each annotation is an uncompressed COCO RLE
  in column-major order; ships are numbered 1..N in the label raster in annotation order.
- **Removal** (:func:`remove_ships`): a ship's footprint, dilated by :data:`HALO_PX` to take its
  PSF halo, is filled with the water around it, never with a quay (:func:`water_mask`: dark in
  NIR and SWIR, :data:`GUARD_PX` beyond the ships' halos); a staying ship alongside keeps its
  pixels. The fill is a patch of real water of the footprint's shape, from the nearest place
  wholly on water, brought to the level of the water in a ring around the ship (pixels drawn
  at random from that ring where no such patch lies near); a series fills every ship from one
  :func:`water_map`, so a footprint left empty stays the same from date to date.
- **Dates** (:func:`observe`): each date gets its own sub-pixel shift (at most
  :data:`MAX_SHIFT_PX`, cubic spline), gain (:data:`GAIN_RANGE` for the date times 1 +/- 1 % per
  band), haze (an additive field smooth over kilometres, blue-heavy as lambda^-2) and sensor
  noise (:data:`NOISE_SIGMA` reflectance).
- **Cases** (:func:`pair_cases`, :func:`series_case`): seeded, deterministic; the truth is
  which ship changed how (and, in a series, at which date).

Read by ``benchmarks/bench_real.py`` and its tests only; nothing on the detection path imports
this module (the detector never sees the truth).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from pipeline.simulate.port_scene import (
    BAND_FILES,
    DN_FULL_SCALE,
    PortScene,
    crop_scene,
    decode_rle,
    read_port,
    ship_lengths_m,
)

__all__ = [
    "BAND_FILES",
    "DN_FULL_SCALE",
    "PairCase",
    "PortScene",
    "SeriesCase",
    "WaterFill",
    "crop_scene",
    "decode_rle",
    "observe",
    "pair_cases",
    "read_port",
    "remove_ships",
    "series_case",
    "ship_lengths_m",
    "water_fill",
    "water_map",
    "water_mask",
]

WAVELENGTH_UM: dict[str, float] = {
    "blue": 0.49,
    "green": 0.56,
    "red": 0.665,
    "nir": 0.842,
    "swir16": 1.61,
}
"""Centre wavelength of each band (haze scales as lambda^-2)."""

HALO_PX = 2
"""Dilation (px) of a ship's footprint: its PSF halo on the water goes with it."""

GUARD_PX = 3
"""Water within this of a dilated footprint is not used to fill (a ship's glow, its wake and
the mixed pixels of a hull beyond the annotation reach past the halo)."""

RING_PX = 8
"""Width (px) of the ring of water around a removed ship whose pixels fill it where no patch of
water of its shape lies near (:data:`PATCH_SEARCH_PX`)."""

PATCH_SEARCH_PX = 64
"""How far (px) from a ship a patch of water of its footprint's shape is looked for."""

MAX_SHIFT_PX = 0.5
"""Largest sub-pixel shift of a date (length of the shift vector)."""

GAIN_RANGE = 0.05
"""A date's gain is 1 +/- up to this (and each band 1 +/- 1 % more)."""

HAZE_MAX = 0.015
"""Largest mean haze of a date in the blue band (reflectance); other bands lambda^-2 less."""

HAZE_SCALE_PX = 60.0
"""Gaussian sigma (px) of the haze field's spatial variation."""

NOISE_SIGMA = 0.002
"""Sensor noise added to each date (reflectance, 1 sigma, every band)."""

WATER_SPREAD = 4.0
"""Water is at most this many robust sigmas of the water's NIR and SWIR above their medians."""

MIN_WATER_PX = 200
"""Smallest connected body of dark pixels taken as water."""

SERIES_STEP_DAYS = 5
"""Days between the dates of a series (Sentinel-2 revisit)."""


def water_mask(bands: np.ndarray, band_names: tuple[str, ...]) -> np.ndarray:
    """Water pixels: dark in both NIR and SWIR (below each band's Otsu threshold over the scene,
    and within :data:`WATER_SPREAD` robust sigmas of the dark pixels' median), in connected
    bodies of at least :data:`MIN_WATER_PX` (a dark roof is not water). A quay,
    a pier or a ship is bright in both.

    Returns
    -------
    numpy.ndarray
        (y, x) bool.
    """
    from skimage.filters import threshold_otsu

    dark = np.ones(bands.shape[1:], bool)
    for name in ("nir", "swir16"):
        band = bands[band_names.index(name)]
        dark &= band < float(threshold_otsu(band[np.isfinite(band)]))
    for name in ("nir", "swir16"):  # and not the mixed pixels at a quay's edge: within the
        band = bands[band_names.index(name)]  # water's own spread above its median
        q25, q50, q75 = np.percentile(band[dark], [25, 50, 75]) if dark.any() else (0, 0, 0)
        dark &= band < q50 + WATER_SPREAD * (q75 - q25) / 1.349
    labels, n = ndimage.label(dark)
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    big = sizes >= MIN_WATER_PX
    big[0] = False
    return big[labels]


@dataclass(frozen=True)
class WaterFill:
    """What filling any ship of a scene needs, computed once per scene."""

    footprints: list[np.ndarray]
    """Each ship's mask dilated by :data:`HALO_PX`."""
    water: np.ndarray
    """(y, x) bool: water pixels that may fill a ship (:func:`water_mask`, at least
    :data:`GUARD_PX` beyond every dilated footprint)."""


def water_fill(scene: PortScene) -> WaterFill:
    """The footprints and the water that may fill them (see :func:`remove_ships`)."""
    eight = np.ones((3, 3), bool)
    feet = [ndimage.binary_dilation(m, eight, iterations=HALO_PX) for m in scene.ship_masks]
    all_feet = np.logical_or.reduce(feet) if feet else np.zeros(scene.ships.shape, bool)
    guard = ndimage.binary_dilation(all_feet, eight, iterations=GUARD_PX)
    return WaterFill(feet, water_mask(scene.bands, scene.band_names) & ~guard)


def remove_ships(
    scene: PortScene,
    ship_ids: list[int] | np.ndarray,
    rng: np.random.Generator,
    fill: WaterFill | None = None,
    water: np.ndarray | None = None,
) -> np.ndarray:
    """The scene's bands with the given ships removed (their footprints filled with water).

    Each removed ship's footprint (dilated by :data:`HALO_PX`, less the pixels of ships that
    stay) gets the water of :func:`water_map`: pixels (all bands of one pixel together) drawn
    at random from the water around the ship: the fill has the level, spread and band
    correlation of the water right around the ship, not its spatial texture (a ship covers a
    few hundred pixels; the dates' noise and resampling follow).

    Parameters
    ----------
    scene
        The real scene.
    ship_ids
        1-based ships to remove.
    rng
        Source of the texture draws (when ``water`` is None).
    fill
        :func:`water_fill` of the scene (computed here if None).
    water
        A :func:`water_map` of the scene to take the fill from. A series passes one map for
        all its dates, so that a footprint left empty is as still from date to date as the
        rest of the real scene (water drawn afresh at every date, or a pixel two footprints
        share filled by whichever ship is away, would be a change that no event explains).
        None: one is drawn for these ships.

    Returns
    -------
    numpy.ndarray
        (B, y, x) float32 bands; unchanged outside the removed ships' dilated footprints.
    """
    out = scene.bands.copy()
    ids = sorted(int(i) for i in ship_ids)
    if not ids:
        return out
    wf = fill or water_fill(scene)
    if water is None:
        water = water_map(scene, rng, wf, ids)
    staying = (scene.ships > 0) & ~np.isin(scene.ships, ids)  # a ship alongside keeps its pixels
    gone = np.logical_or.reduce([wf.footprints[i - 1] for i in ids]) & ~staying
    out[:, gone] = water[:, gone]
    return out


def water_map(
    scene: PortScene,
    rng: np.random.Generator,
    fill: WaterFill | None = None,
    ship_ids: list[int] | None = None,
) -> np.ndarray:
    """The scene with the footprint of every ship (or of ``ship_ids``) filled with water.

    Each footprint pixel gets water drawn from within :data:`RING_PX` of its ship (the ring
    doubled until it holds 30 water pixels); a pixel of two footprints, from the ship of the
    lower id.

    Parameters
    ----------
    scene
        The real scene.
    rng
        Source of the draws.
    fill
        :func:`water_fill` of the scene (computed here if None).
    ship_ids
        1-based ships whose footprints to fill; None: all.

    Returns
    -------
    numpy.ndarray
        (B, y, x) float32.
    """
    wf = fill or water_fill(scene)
    out = scene.bands.copy()
    done = np.zeros(scene.ships.shape, bool)
    ids = range(1, scene.n_ships + 1) if ship_ids is None else sorted(ship_ids)
    for i in ids:
        foot = wf.footprints[i - 1]
        f = foot & ~done
        done |= f
        if not f.any():
            continue
        rows, cols = np.nonzero(f)
        out[:, rows, cols] = _draw_water(scene, wf, foot, rows, cols, rng)
    return out


def _draw_water(
    scene: PortScene,
    wf: WaterFill,
    foot: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """(B, n) water for the ``n`` pixels ``rows, cols`` of one footprint (see
    :func:`water_map`).

    A patch of real water: the footprint's own shape moved to the nearest place (within
    :data:`PATCH_SEARCH_PX`) where it lies wholly on water (:func:`water_mask`), brought to the
    per-band median of the water within :data:`RING_PX` of the footprint (the ring doubled
    until it holds 30 water pixels): the fill has the level of the water right around the
    ship and the band correlation and spatial texture of real water (water drawn pixel by pixel
    is rougher than any real water, and a sub-pixel shift of that roughness is a change).
    Where no such place exists (a ship in a dock, in a narrow slip), pixels drawn at random
    from that ring.
    """
    ny, nx = foot.shape
    fr, fc = np.nonzero(foot)
    r0, r1 = fr.min(), fr.max() + 1
    c0, c1 = fc.min(), fc.max() + 1
    eight = np.ones((3, 3), bool)
    ring_px = RING_PX
    while True:
        a0, a1 = max(r0 - ring_px, 0), min(r1 + ring_px, ny)
        b0, b1 = max(c0 - ring_px, 0), min(c1 + ring_px, nx)
        ring = ndimage.binary_dilation(foot[a0:a1, b0:b1], eight, iterations=ring_px)
        ring &= wf.water[a0:a1, b0:b1]
        if ring.sum() >= 30 or ring_px >= 64:
            break
        ring_px *= 2
    pool = scene.bands[:, a0:a1, b0:b1][:, ring] if ring.any() else scene.bands[:, wf.water]
    patch = _water_patch(scene, wf, foot[r0:r1, c0:c1], (r0, c0), rows, cols)
    if patch is None:
        return pool[:, rng.integers(0, pool.shape[1], size=rows.size)]
    # the patch's texture at the level of the water right around the ship
    level = np.median(pool, axis=1) - np.median(patch, axis=1)
    return patch + level[:, None].astype(patch.dtype)


def _water_patch(
    scene: PortScene,
    wf: WaterFill,
    shape: np.ndarray,
    corner: tuple[int, int],
    rows: np.ndarray,
    cols: np.ndarray,
) -> np.ndarray | None:
    """(B, n) bands of ``rows, cols`` moved by the nearest offset (within
    :data:`PATCH_SEARCH_PX`) that puts the footprint (``shape``, whose top-left pixel is
    ``corner``) wholly on water; None where there is none."""
    ny, nx = wf.water.shape
    r0, c0 = corner
    h, w = shape.shape
    s = PATCH_SEARCH_PX
    w0, w1 = max(r0 - s, 0), min(r0 + h + s, ny)
    v0, v1 = max(c0 - s, 0), min(c0 + w + s, nx)
    sub = wf.water[w0:w1, v0:v1]
    if sub.shape[0] < h or sub.shape[1] < w:
        return None
    # where the footprint fits on water: an erosion of the water by the footprint, with its
    # top-left corner as the origin (padded so that no place is cut at the far edges)
    padded = np.zeros((sub.shape[0] + h, sub.shape[1] + w), bool)
    padded[: sub.shape[0], : sub.shape[1]] = sub
    fits = ndimage.binary_erosion(padded, shape, origin=(-(h // 2), -(w // 2)))
    fits = fits[: sub.shape[0], : sub.shape[1]]
    if not fits.any():
        return None
    top, left = np.nonzero(fits)
    dys, dxs = top + w0 - r0, left + v0 - c0
    k = int(np.argmin(dys**2 + dxs**2))
    return scene.bands[:, rows + int(dys[k]), cols + int(dxs[k])]


def _haze_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth positive field of mean 1 (between about 0.5 and 1.5)."""
    coarse = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), HAZE_SCALE_PX)
    coarse = coarse / max(float(np.abs(coarse).max()), 1e-9)
    return (1.0 + 0.5 * coarse).astype(np.float32)


@dataclass(frozen=True)
class DateEffects:
    """What :func:`observe` did to one date (reported with the case)."""

    shift_px: tuple[float, float]
    """(x, y) shift applied (px)."""
    gain: tuple[float, ...]
    """Gain per band."""
    haze_blue: float
    """Mean haze added to the blue band (reflectance)."""

    def to_dict(self) -> dict:
        """JSON-ready."""
        return {
            "shift_px": [round(v, 4) for v in self.shift_px],
            "gain": [round(g, 4) for g in self.gain],
            "haze_blue": round(self.haze_blue, 5),
        }


def observe(
    bands: np.ndarray, band_names: tuple[str, ...], rng: np.random.Generator
) -> tuple[np.ndarray, DateEffects]:
    """One date's observation of a scene: shift, gain, haze and sensor noise.

    Parameters
    ----------
    bands
        (B, y, x) reflectance of the scene as it is that date.
    band_names
        Vocabulary names of the bands.
    rng
        Source of the date's draws.

    Returns
    -------
    tuple
        (B, y, x) float32 observed reflectance and the effects drawn.
    """
    angle = rng.uniform(0, 2 * np.pi)
    length = rng.uniform(0.1, MAX_SHIFT_PX)
    sx, sy = float(length * np.cos(angle)), float(length * np.sin(angle))
    date_gain = 1.0 + rng.uniform(-GAIN_RANGE, GAIN_RANGE)
    gains = date_gain * (1.0 + rng.uniform(-0.01, 0.01, size=len(band_names)))
    haze = rng.uniform(0.0, HAZE_MAX)
    field_ = _haze_field(bands.shape[1:], rng)
    out = np.empty(bands.shape, np.float32)
    for b, name in enumerate(band_names):
        moved = ndimage.shift(bands[b], (sy, sx), order=3, mode="nearest")
        scale = (WAVELENGTH_UM["blue"] / WAVELENGTH_UM[name]) ** 2
        noisy = moved * gains[b] + haze * scale * field_
        noisy += rng.normal(0.0, NOISE_SIGMA, size=noisy.shape)
        out[b] = noisy
    return out, DateEffects((sx, sy), tuple(float(g) for g in gains), float(haze))


@dataclass
class PairCase:
    """Two dates of a real port and which ships changed between them."""

    port: str
    """Port."""
    name: str
    """``all_removed``, ``half_removed`` or ``arrivals``."""
    before: np.ndarray
    """(B, y, x) float32 observed before date."""
    after: np.ndarray
    """(B, y, x) float32 observed after date."""
    changes: dict[int, str]
    """Ship id -> ``removed`` or ``appeared``; ships absent from it stayed (or were never
    there on either date)."""
    present: dict[int, tuple[bool, bool]]
    """Ship id -> present (before, after)."""
    effects: list[DateEffects] = field(default_factory=list)
    """The two dates' effects."""


def pair_cases(scene: PortScene, seed: int) -> list[PairCase]:
    """The three pair cases of a port (seeded, deterministic).

    - ``all_removed``: before = the real scene, after = every ship removed;
    - ``half_removed``: before = the real scene, after = a random half of the ships removed;
    - ``arrivals``: before = a random half removed, after = the real scene (they appear).

    Parameters
    ----------
    scene
        The real port scene.
    seed
        Seed of every draw.

    Returns
    -------
    list of PairCase
        The three cases.
    """
    rng = np.random.default_rng(seed)
    wf = water_fill(scene)
    ids = np.arange(1, scene.n_ships + 1)
    half_a = sorted(rng.choice(ids, size=len(ids) // 2, replace=False).tolist())
    half_b = sorted(rng.choice(ids, size=len(ids) // 2, replace=False).tolist())
    plans = [
        ("all_removed", [], ids.tolist()),
        ("half_removed", [], half_a),
        ("arrivals", half_b, []),
    ]
    cases = []
    for name, gone_before, gone_after in plans:
        before_scene = remove_ships(scene, gone_before, rng, wf)
        after_scene = remove_ships(scene, gone_after, rng, wf)
        b_obs, b_eff = observe(before_scene, scene.band_names, rng)
        a_obs, a_eff = observe(after_scene, scene.band_names, rng)
        present = {int(i): (i not in gone_before, i not in gone_after) for i in ids}
        changes = {
            i: ("removed" if pb else "appeared") for i, (pb, pa) in present.items() if pb != pa
        }
        cases.append(PairCase(scene.name, name, b_obs, a_obs, changes, present, [b_eff, a_eff]))
    return cases


@dataclass
class SeriesCase:
    """A series of dates of a real port in which each ship leaves, arrives or stays."""

    port: str
    """Port."""
    dates: list[str]
    """ISO dates, :data:`SERIES_STEP_DAYS` apart."""
    stack: np.ndarray
    """(T, B, y, x) float32 observed dates."""
    events: dict[int, tuple[str, int]]
    """Ship id -> (``removed`` or ``appeared``, index of the first date it is absent or
    present); ships that stay are not in it."""
    present: np.ndarray
    """(T, N) bool: ship i (column i - 1) present at each date."""
    effects: list[DateEffects] = field(default_factory=list)
    """Each date's effects."""


def series_case(
    scene: PortScene, seed: int, n_dates: int = 7, start: str = "2024-01-01"
) -> SeriesCase:
    """A series of ``n_dates`` dates in which every ship leaves at one date, arrives at one
    date or stays (a third each, drawn per ship; the change date uniform over dates 1..T-1).

    Parameters
    ----------
    scene
        The real port scene.
    seed
        Seed of every draw.
    n_dates
        Number of dates (6-8 in the benchmark).
    start
        First date (ISO).

    Returns
    -------
    SeriesCase
        The observed series and its truth.
    """
    rng = np.random.default_rng(seed)
    wf = water_fill(scene)
    n = scene.n_ships
    fate = rng.integers(0, 3, size=n)  # 0 stays, 1 leaves, 2 arrives
    when = rng.integers(1, n_dates, size=n)
    present = np.ones((n_dates, n), bool)
    events: dict[int, tuple[str, int]] = {}
    for i in range(n):
        if fate[i] == 1:
            present[when[i] :, i] = False
            events[i + 1] = ("removed", int(when[i]))
        elif fate[i] == 2:
            present[: when[i], i] = False
            events[i + 1] = ("appeared", int(when[i]))
    t0 = dt.date.fromisoformat(start)
    dates = [(t0 + dt.timedelta(days=SERIES_STEP_DAYS * t)).isoformat() for t in range(n_dates)]
    stack = np.empty((n_dates, *scene.bands.shape), np.float32)
    effects = []
    water = water_map(scene, rng, wf)  # a ship's water, the same at every date it is away
    for t in range(n_dates):
        absent = (np.nonzero(~present[t])[0] + 1).tolist()
        stack[t], eff = observe(remove_ships(scene, absent, rng, wf, water), scene.band_names, rng)
        effects.append(eff)
    return SeriesCase(scene.name, dates, stack, events, present, effects)
