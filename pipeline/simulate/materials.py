"""Spectral library of the simulated scenes: surface reflectance of surfaces and objects.

Values are bottom-of-atmosphere reflectance (0..1) in the project's band order
:data:`BANDS` (Sentinel-2 B02, B03, B04, B08, B11, B12). They are plausible textbook spectra, not
measurements: concrete bright and flat, red Mediterranean soil, green vegetation with a high NIR,
water dark in NIR/SWIR, and so on.

Surfaces whose vegetation cover changes with the season mix a background endmember and a canopy
endmember: ``cover(t) = cover0 + trend * tau`` with ``tau`` running from 0 on 1 November to 1 on
31 January (winter crops green up after the autumn rains).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BANDS: tuple[str, ...] = ("blue", "green", "red", "nir", "swir16", "swir22")
"""Band order of every spectrum and every rendered array."""

BANDS_10M: tuple[str, ...] = ("blue", "green", "red", "nir")
"""Bands delivered at 10 m."""

BANDS_20M: tuple[str, ...] = ("swir16", "swir22")
"""Reflectance bands delivered at 20 m."""

SPECTRA: dict[str, tuple[float, float, float, float, float, float]] = {
    # surfaces
    "sea": (0.055, 0.045, 0.025, 0.012, 0.006, 0.004),
    "harbour_water": (0.060, 0.055, 0.036, 0.018, 0.008, 0.005),
    "concrete": (0.200, 0.230, 0.260, 0.290, 0.330, 0.280),
    "runway": (0.175, 0.205, 0.235, 0.265, 0.305, 0.265),
    "asphalt": (0.070, 0.080, 0.090, 0.110, 0.140, 0.130),
    "hardstand": (0.140, 0.170, 0.200, 0.250, 0.300, 0.260),
    "soil": (0.070, 0.100, 0.150, 0.210, 0.310, 0.260),
    "dry_grass": (0.070, 0.100, 0.130, 0.220, 0.300, 0.220),
    "canopy": (0.030, 0.070, 0.040, 0.420, 0.210, 0.100),
    "orchard_canopy": (0.030, 0.060, 0.040, 0.330, 0.170, 0.080),
    "greenhouse": (0.300, 0.320, 0.330, 0.370, 0.330, 0.270),
    "roof_concrete": (0.170, 0.190, 0.210, 0.240, 0.280, 0.250),
    "roof_dark": (0.080, 0.090, 0.100, 0.120, 0.140, 0.120),
    "roof_tile": (0.080, 0.100, 0.170, 0.230, 0.270, 0.220),
    "roof_metal": (0.250, 0.270, 0.280, 0.300, 0.280, 0.240),
    "rubble": (0.140, 0.160, 0.180, 0.210, 0.240, 0.210),
    "sand": (0.180, 0.220, 0.270, 0.310, 0.380, 0.330),
    # objects
    "aircraft_grey": (0.110, 0.120, 0.120, 0.150, 0.140, 0.110),
    "aircraft_light": (0.360, 0.380, 0.390, 0.420, 0.360, 0.290),
    "aircraft_white": (0.500, 0.520, 0.530, 0.550, 0.450, 0.360),
    "olive_drab": (0.050, 0.068, 0.068, 0.155, 0.135, 0.090),
    "ship_grey": (0.100, 0.110, 0.110, 0.120, 0.100, 0.080),
    "ship_superstructure": (0.200, 0.210, 0.210, 0.220, 0.190, 0.160),
    "ship_black": (0.030, 0.035, 0.035, 0.040, 0.035, 0.030),
    "cargo_hull": (0.080, 0.090, 0.130, 0.160, 0.150, 0.120),
    # atmosphere
    "cloud": (0.560, 0.550, 0.540, 0.530, 0.390, 0.270),
}
"""Reflectance per band of every material."""


@dataclass(frozen=True)
class SurfaceClass:
    """A kind of ground surface that scenario files can paint."""

    background: str
    """Material of the ground (a key of :data:`SPECTRA`)."""
    canopy: str | None = None
    """Material of the vegetation canopy mixed in, or None."""
    cover0: tuple[float, float] = (0.0, 0.0)
    """Range of the canopy cover on 1 November (drawn per field)."""
    trend: tuple[float, float] = (0.0, 0.0)
    """Range of the cover change from 1 November to 31 January (drawn per field)."""
    texture: float = 0.03
    """Relative amplitude of the fine (2 m) texture."""
    jitter: float = 0.05
    """Relative brightness spread between fields or buildings of this class."""
    bright: bool = False
    """Bright man-made surface that the real SCL sometimes flags as cloud."""
    water: bool = False
    """Open water."""
    roofs: tuple[str, ...] = ()
    """For buildings: roof materials drawn per building (``background`` is the default)."""


SURFACES: dict[str, SurfaceClass] = {
    "sea": SurfaceClass("sea", texture=0.01, jitter=0.0, water=True),
    "harbour_water": SurfaceClass("harbour_water", texture=0.01, jitter=0.0, water=True),
    "concrete": SurfaceClass("concrete", texture=0.015, jitter=0.02, bright=True),
    "runway": SurfaceClass("runway", texture=0.015, jitter=0.0, bright=True),
    "asphalt": SurfaceClass("asphalt", texture=0.02, jitter=0.05),
    "hardstand": SurfaceClass("hardstand", texture=0.03, jitter=0.04),
    "rubble": SurfaceClass("rubble", texture=0.08, jitter=0.03),
    "sand": SurfaceClass("sand", texture=0.03, jitter=0.03),
    "soil": SurfaceClass("soil", texture=0.04, jitter=0.08),
    "fallow": SurfaceClass("soil", "canopy", (0.0, 0.06), (0.0, 0.03), 0.05, 0.10),
    "winter_crop": SurfaceClass("soil", "canopy", (0.04, 0.18), (0.30, 0.60), 0.04, 0.08),
    "pasture": SurfaceClass("dry_grass", "canopy", (0.15, 0.30), (0.08, 0.25), 0.05, 0.08),
    "orchard": SurfaceClass("soil", "orchard_canopy", (0.45, 0.70), (-0.02, 0.05), 0.10, 0.06),
    "airfield_grass": SurfaceClass("dry_grass", "canopy", (0.10, 0.14), (0.10, 0.16), 0.04, 0.03),
    "greenhouse": SurfaceClass("greenhouse", texture=0.05, jitter=0.10),
    "building": SurfaceClass(
        "roof_concrete",
        texture=0.06,
        jitter=0.20,
        roofs=("roof_concrete", "roof_concrete", "roof_dark", "roof_tile", "roof_metal"),
    ),
    "hangar": SurfaceClass("roof_metal", texture=0.03, jitter=0.10),
}
"""Surface classes a scenario can use (``class:`` of a surface, keys of a patchwork ``mix``)."""


def spectrum(name: str) -> np.ndarray:
    """Reflectance of material ``name`` as a float32 array over :data:`BANDS`."""
    return np.asarray(SPECTRA[name], dtype=np.float32)
