"""Conditions of the detection sweep that the detector does not model.

The sweep's scenes (:mod:`pipeline.simulate.sweep_scene`) are drawn, by default, with the same
physics
the detector's cloud check assumes (:mod:`pipeline.kernels.detect.clouds`): clouds of one
water-cloud-top
spectrum, shadows that darken every band by the same factor, rectangular objects. The
conditions here are physical choices made *independently* of that model, so that the sweep
also measures what happens when the world is not the detector's:

- **cloud spectrum** (:func:`cloud_spectrum`):

  - ``"ice"``: an optically thick *ice* cloud (cirrostratus, anvil tops). As bright and flat as
    a water cloud through the visible and NIR, but ice absorbs far more at 1.6 and 2.2 um than
    liquid water (the basis of cloud-phase retrievals), so its SWIR is much lower: SWIR 1.6 at
    25-45 % and SWIR 2.2 at 12-30 % of the visible level (water cloud: about 70 % and 50 %);
  - ``"haze"``: a haze- or smoke-like aerosol layer whose reflectance rises toward the blue as
    ``(0.49 / lambda)^k`` with an Angstrom exponent ``k`` of 1-2 (aerosol, not Rayleigh's 4),
    0.30-0.45 in the blue;

- **shadow spectrum** (:func:`shadow_depth`): a cloud shadow blocks (part of) the direct
  sunbeam but not the diffuse skylight, which is bluer; so blue is darkened less than NIR and
  SWIR. The diffuse share of the irradiance is ``f(lambda) = f_blue (0.49 / lambda)^k``
  (``f_blue`` 0.25-0.45, ``k`` 1-2) and a full shadow removes a share ``b`` of the direct beam:
  depth ``b (1 - f)`` per band.

  - ``"diffuse"``: ``b`` such that the band-mean depth is the modelled shadow's
    (:data:`MODELLED_SHADOW_DEPTH`): only the colour of the shadow changes, not its strength;
  - ``"umbra"``: ``b = 1``, the whole direct beam blocked (an opaque cloud's umbra): only the
    diffuse light remains, so the shadow is deeper (band mean about 0.8) as well as coloured;

- **object shape** (:func:`shape_outline`): aircraft-like crosses (fuselage, swept wings of
  span 0.7-1.1 x length, tailplane), ship-like hulls (length/beam 5.5-8, a transom stern and a
  pointed bow), and ellipses in the modelled rectangle's box; ``"varied"`` draws one of them
  per object. They are rasterised like the rectangles (4 x 4 samples per 2 m sub-pixel).

Parameters are drawn per scene (spectra) or per object (shapes), each condition from a random
stream of its own (:func:`condition_rng`), so a scene with an unmodelled condition is its
modelled twin (same ground, objects, dates, cloud fields, shifts and noise) with that one
condition changed.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import Point, Polygon

__all__ = [
    "CLOUD_SPECTRA",
    "CONDITIONS",
    "CONDITION_NOTES",
    "MODELLED_SHADOW_DEPTH",
    "OBJECT_SHAPES",
    "SHADOW_SPECTRA",
    "WATER_CLOUD",
    "CloudSpectrum",
    "ObjectShape",
    "ShadowSpectrum",
    "cloud_spectrum",
    "condition_rng",
    "polygon_cover",
    "shadow_depth",
    "shape_outline",
]

CloudSpectrum = Literal["water", "ice", "haze"]
ShadowSpectrum = Literal["grey", "diffuse", "umbra"]
ObjectShape = Literal["rectangle", "cross", "hull", "ellipse", "varied"]

CLOUD_SPECTRA: tuple[str, ...] = ("water", "ice", "haze")
"""``water`` is the modelled one (the detector's ``CLOUD_TOP`` shape)."""
SHADOW_SPECTRA: tuple[str, ...] = ("grey", "diffuse", "umbra")
"""``grey`` is the modelled one (every band darkened by the same factor)."""
OBJECT_SHAPES: tuple[str, ...] = ("rectangle", "cross", "hull", "ellipse", "varied")
"""``rectangle`` is the modelled one."""
DRAWN_SHAPES: tuple[str, ...] = ("cross", "hull", "ellipse")
"""The shapes ``varied`` draws from, one per object."""

MODELLED_SHADOW_DEPTH = 0.5
"""Share of the ground's reflectance a full modelled shadow removes, in every band."""

WATER_CLOUD = np.array((0.560, 0.550, 0.540, 0.530, 0.390, 0.270), dtype=np.float32)
"""The modelled cloud (blue, green, red, nir, swir16, swir22): flat, lower in the SWIR."""

CENTRE_UM = np.array((0.49, 0.56, 0.665, 0.842, 1.61, 2.19), dtype=np.float64)
"""Centre wavelengths of the sweep's bands (blue, green, red, nir, swir16, swir22), um."""

CONDITION_NOTES: dict[str, str] = {
    "cloud ice": "thick ice cloud: visible/NIR flat about 0.5-0.6, SWIR 1.6 at 25-45 % and "
    "SWIR 2.2 at 12-30 % of the visible (water cloud, modelled: 70 % and 50 %)",
    "cloud haze": "aerosol haze layer: reflectance 0.30-0.45 in the blue falling as "
    "(0.49/lambda)^k, k 1-2",
    "shadow diffuse": "shadow keeps the diffuse skylight (share f_blue (0.49/lambda)^k, f_blue "
    "0.25-0.45, k 1-2): blue darkened least, SWIR most; band-mean depth 0.5 as modelled",
    "shadow umbra": "as diffuse, but the whole direct beam blocked: depth 1 - f per band "
    "(band mean about 0.8, modelled 0.5)",
    "shapes varied": "aircraft-like crosses (span 0.7-1.1 x length), ship-like hulls "
    "(length/beam 5.5-8, pointed bow) and ellipses (the rectangle's box), one per object",
}
"""What each unmodelled condition is (repeated in the sweep's summary)."""

_STREAM = 0x5EED
"""Tag of the conditions' own random stream (apart from the scene's)."""


CONDITIONS: tuple[str, ...] = ("cloud", "shadow", "shapes")
"""The unmodelled conditions, each with a random stream of its own."""


def condition_rng(
    condition: str, seed: int, cloud_fraction: float, misregistration_px: float
) -> np.random.Generator:
    """The random stream of one unmodelled condition of one scene (not the scene's own).

    Parameters
    ----------
    condition
        One of :data:`CONDITIONS`.
    seed, cloud_fraction, misregistration_px
        The scenario's (as the scene's stream is keyed).

    Returns
    -------
    numpy.random.Generator
        Independent of the scene's stream and of the other conditions', so drawing from it
        changes nothing else: a scene with two conditions has each drawn as when alone.
    """
    return np.random.default_rng(
        [
            seed,
            round(cloud_fraction * 1000),
            round(misregistration_px * 1000),
            _STREAM,
            CONDITIONS.index(condition),
        ]
    )


def cloud_spectrum(kind: str, rng: np.random.Generator) -> np.ndarray:
    """The cloud reflectance of one scene, per band (see the module docstring).

    Parameters
    ----------
    kind
        ``"water"`` (modelled), ``"ice"`` or ``"haze"``.
    rng
        The conditions' stream (:func:`condition_rng`); not drawn from for ``"water"``.

    Returns
    -------
    numpy.ndarray
        (6,) float32 reflectance (blue, green, red, nir, swir16, swir22).
    """
    if kind == "water":
        return WATER_CLOUD.copy()
    if kind == "ice":
        vis = rng.uniform(0.50, 0.62)
        nir = vis * rng.uniform(0.93, 0.99)
        swir16, swir22 = vis * rng.uniform(0.25, 0.45), vis * rng.uniform(0.12, 0.30)
        spec = (vis, vis * 0.995, vis * 0.99, nir, swir16, swir22)
    elif kind == "haze":
        blue, k = rng.uniform(0.30, 0.45), rng.uniform(1.0, 2.0)
        spec = tuple(blue * (CENTRE_UM[0] / CENTRE_UM) ** k)
    else:
        raise ValueError(f"cloud_spectrum {kind!r} is not one of {CLOUD_SPECTRA}: use one of them")
    return np.asarray(spec, dtype=np.float32)


def shadow_depth(kind: str, rng: np.random.Generator) -> np.ndarray:
    """Share of the ground's reflectance a full shadow removes, per band.

    Parameters
    ----------
    kind
        ``"grey"`` (modelled: :data:`MODELLED_SHADOW_DEPTH` in every band), ``"diffuse"`` (the
        diffuse skylight, bluer, stays: blue darkened least; same band-mean depth) or
        ``"umbra"`` (only the diffuse skylight stays).
    rng
        The conditions' stream; not drawn from for ``"grey"``.

    Returns
    -------
    numpy.ndarray
        (6,) float32 depth in 0..1 (blue, green, red, nir, swir16, swir22).
    """
    if kind == "grey":
        return np.full(len(CENTRE_UM), MODELLED_SHADOW_DEPTH, dtype=np.float32)
    if kind not in ("diffuse", "umbra"):
        raise ValueError(
            f"shadow_spectrum {kind!r} is not one of {SHADOW_SPECTRA}: use one of them"
        )
    f_blue, k = rng.uniform(0.25, 0.45), rng.uniform(1.0, 2.0)
    diffuse = f_blue * (CENTRE_UM[0] / CENTRE_UM) ** k
    direct = 1.0 - diffuse
    blocked = MODELLED_SHADOW_DEPTH / direct.mean() if kind == "diffuse" else 1.0
    return (blocked * direct).astype(np.float32)


def _cross(length: float, rng: np.random.Generator) -> Polygon:
    """An aircraft seen from above, nose towards +u: fuselage, swept wings, tailplane (m)."""
    span = length * rng.uniform(0.7, 1.1)
    body = max(0.1 * length, 2.0)
    half = length / 2
    fuselage = Polygon(
        [(-half, -body / 2), (half - body, -body / 2), (half, 0.0), (half - body, body / 2),
         (-half, body / 2)]
    )  # fmt: skip
    root_le, root_c, tip_c, sweep = 0.12 * length, 0.2 * length, 0.08 * length, 0.15 * length
    wing = Polygon(
        [(root_le, 0.0), (root_le - sweep, span / 2), (root_le - sweep - tip_c, span / 2),
         (root_le - root_c, 0.0), (root_le - sweep - tip_c, -span / 2),
         (root_le - sweep, -span / 2)]
    )  # fmt: skip
    tail_span = max(0.35 * length, body)
    tail = Polygon(
        [(-half + 0.12 * length, 0.0), (-half + 0.04 * length, tail_span / 2),
         (-half, tail_span / 2), (-half, -tail_span / 2), (-half + 0.04 * length, -tail_span / 2)]
    )  # fmt: skip
    return shapely.union_all([fuselage, wing, tail])


def _hull(length: float, rng: np.random.Generator) -> Polygon:
    """A ship seen from above, bow towards +u: transom stern, parallel body, pointed bow (m)."""
    beam = max(length / rng.uniform(5.5, 8.0), 3.0)
    half, b2 = length / 2, beam / 2
    shoulder = half - 0.3 * length  # where the bow starts to narrow
    bow = [(shoulder + t * 0.3 * length, b2 * (1 - t * t)) for t in np.linspace(0.0, 1.0, 9)[:-1]]
    side = [(-half, 0.8 * b2), (-half + 0.2 * length, b2), *bow, (half, 0.0)]
    other = [(u, -v) for u, v in reversed(side[:-1])]
    return Polygon(side + other)


def _ellipse(length: float) -> Polygon:
    """An ellipse in the modelled rectangle's box (length x max(0.4 length, 4 m))."""
    width = max(0.4 * length, 4.0)
    return affinity.scale(Point(0.0, 0.0).buffer(1.0, quad_segs=16), length / 2, width / 2)


def shape_outline(kind: str, length_m: float, rng: np.random.Generator) -> tuple[str, Polygon]:
    """The outline of one object in its own frame (metres; ``u`` along the heading, ``v`` across).

    Parameters
    ----------
    kind
        ``"cross"``, ``"hull"``, ``"ellipse"`` or ``"varied"`` (one of those drawn).
    length_m
        Length along the heading.
    rng
        The conditions' stream (proportions, and the shape for ``"varied"``).

    Returns
    -------
    tuple
        The shape drawn, and its outline centred on (0, 0).
    """
    if kind == "varied":
        kind = DRAWN_SHAPES[int(rng.integers(len(DRAWN_SHAPES)))]
    if kind == "cross":
        poly = _cross(length_m, rng)
    elif kind == "hull":
        poly = _hull(length_m, rng)
    elif kind == "ellipse":
        poly = _ellipse(length_m)
    else:
        raise ValueError(
            f"object_shape {kind!r} is not one of {OBJECT_SHAPES[1:]}: use one of them"
        )
    # centre on the bounding box along the heading, as the rectangles are centred
    minu, minv, maxu, maxv = poly.bounds
    return kind, affinity.translate(poly, -(minu + maxu) / 2, -(minv + maxv) / 2)


def polygon_cover(
    n_hr: int, centre_hr: tuple[float, float], outline_m: Polygon, m_per_hr: float, angle: float
) -> tuple[tuple[slice, slice], np.ndarray]:
    """Coverage (0..1) of an outline, rotated by ``angle``, on the 2 m grid (4 x 4 samples each).

    Parameters
    ----------
    n_hr
        Side of the sub-pixel grid.
    centre_hr
        (row, col) of the outline's origin, sub-pixels.
    outline_m
        The outline in its own frame (metres, ``u`` along the heading).
    m_per_hr
        Metres per sub-pixel.
    angle
        Heading (radians), as the rectangles': ``u = dx cos + dy sin`` (rows grow southwards).

    Returns
    -------
    tuple
        The window (row and column slices) and the coverage within it, float32.
    """
    minu, minv, maxu, maxv = outline_m.bounds
    reach = max(abs(minu), abs(maxu), abs(minv), abs(maxv))
    half = math.sqrt(2.0) * reach / m_per_hr + 2
    r0, r1 = max(0, int(centre_hr[0] - half)), min(n_hr, int(centre_hr[0] + half) + 1)
    c0, c1 = max(0, int(centre_hr[1] - half)), min(n_hr, int(centre_hr[1] + half) + 1)
    k = 4
    offs = (np.arange(k) + 0.5) / k
    rr = (np.arange(r0, r1)[:, None] + offs[None, :]).ravel()
    cc = (np.arange(c0, c1)[:, None] + offs[None, :]).ravel()
    dy, dx = rr[:, None] - centre_hr[0], cc[None, :] - centre_hr[1]
    u = (dx * math.cos(angle) + dy * math.sin(angle)) * m_per_hr
    v = (-dx * math.sin(angle) + dy * math.cos(angle)) * m_per_hr
    shapely.prepare(outline_m)
    inside = shapely.contains_xy(outline_m, u, v)
    cover = inside.reshape(r1 - r0, k, c1 - c0, k).mean(axis=(1, 3)).astype(np.float32)
    return (slice(r0, r1), slice(c0, c1)), cover
