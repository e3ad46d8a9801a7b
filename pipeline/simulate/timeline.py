"""Acquisitions of a simulated site: the calendar, the sun, and every per-date random draw.

Every random number of a date comes from a generator seeded by (seed, site, date, purpose), so a
date renders the same whatever period is generated around it, and the same seed gives the same
catalog.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import zlib
from dataclasses import dataclass

import numpy as np

from pipeline.simulate.scenario import Scenario

CENTER_WAVELENGTH_UM: tuple[float, ...] = (0.49, 0.56, 0.665, 0.842, 1.61, 2.19)
"""Centre wavelength of each band of :data:`pipeline.simulate.materials.BANDS`."""

_LAUNCH = {
    "sentinel-2a": dt.date(2015, 6, 23),
    "sentinel-2b": dt.date(2017, 3, 7),
    "sentinel-2c": dt.date(2024, 9, 5),
}

PURPOSE = {"date": 1, "clouds": 2, "noise": 3, "scl": 4, "scene": 5}
"""Stream of random numbers, one per use, so adding a draw in one place changes no other."""


def rng_for(seed: int, site: str, *keys: int) -> np.random.Generator:
    """A generator for (seed, site, *keys): stable across runs, platforms and Python versions."""
    return np.random.default_rng([seed, zlib.crc32(site.encode()), *keys])


def sun_position(when: dt.datetime, lat: float, lon: float) -> tuple[float, float]:
    """Sun azimuth (degrees clockwise from north) and elevation (degrees) at a place and time.

    The NOAA low-precision formulae (about 0.1 degree), plenty for shadows.
    """
    doy = when.timetuple().tm_yday
    hour = when.hour + when.minute / 60.0 + when.second / 3600.0
    g = 2.0 * math.pi / 365.0 * (doy - 1 + (hour - 12.0) / 24.0)
    eqtime = 229.18 * (
        0.000075
        + 0.001868 * math.cos(g)
        - 0.032077 * math.sin(g)
        - 0.014615 * math.cos(2 * g)
        - 0.040849 * math.sin(2 * g)
    )
    decl = (
        0.006918
        - 0.399912 * math.cos(g)
        + 0.070257 * math.sin(g)
        - 0.006758 * math.cos(2 * g)
        + 0.000907 * math.sin(2 * g)
        - 0.002697 * math.cos(3 * g)
        + 0.00148 * math.sin(3 * g)
    )
    ha = math.radians((hour * 60.0 + eqtime + 4.0 * lon) / 4.0 - 180.0)
    phi = math.radians(lat)
    cos_zen = math.sin(phi) * math.sin(decl) + math.cos(phi) * math.cos(decl) * math.cos(ha)
    elevation = 90.0 - math.degrees(math.acos(max(-1.0, min(1.0, cos_zen))))
    az = math.degrees(
        math.atan2(math.sin(ha), math.cos(ha) * math.sin(phi) - math.tan(decl) * math.cos(phi))
    )
    return (az + 180.0) % 360.0, elevation


@dataclass(frozen=True)
class Acquisition:
    """One acquisition of the site and everything drawn for it."""

    date: dt.date
    """Acquisition date (UTC)."""
    when: dt.datetime
    """Sensing time (UTC, timezone-aware)."""
    platform: str
    """sentinel-2a / -2b / -2c."""
    relative_orbit: int
    """Relative orbit number."""
    absolute_orbit: int
    """Absolute orbit number (plausible, derived from the date)."""
    sun_azimuth: float
    """Degrees clockwise from north."""
    sun_elevation: float
    """Degrees above the horizon."""
    shift_px: tuple[float, float]
    """Content displacement vs the true world, site-grid px, (east, north)."""
    gain: tuple[float, ...]
    """Per-band multiplicative drift."""
    offset: tuple[float, ...]
    """Per-band additive drift (reflectance)."""
    cloud_fraction: float
    """Target fraction of the site grid under cloud."""
    cloud_height_m: float
    """Height of the clouds (sets the shadow offset)."""
    cirrus: bool
    """Whether a thin cirrus veil is present."""
    false_cloud: bool
    """Whether SCL flags patches of bright concrete as cloud."""
    swath_edge: float
    """Fraction of the AOI without data in the first tile's Item (0 = none)."""

    @property
    def shadow_offset_m(self) -> tuple[float, float]:
        """Ground displacement (east, north) of the shadow of a point 1 m high."""
        k = 1.0 / math.tan(math.radians(max(self.sun_elevation, 5.0)))
        az = math.radians(self.sun_azimuth)
        return (-k * math.sin(az), -k * math.cos(az))

    @property
    def datatake_id(self) -> str:
        """Sentinel-2 datatake identifier, e.g. ``GS2B_20241102T082019_040000_N05.10``."""
        sat = self.platform[-1].upper()
        return f"GS2{sat}_{self.when:%Y%m%dT%H%M%S}_{self.absolute_orbit:06d}_N05.10"


def acquisition_dates(scn: Scenario) -> list[tuple[dt.date, int]]:
    """(date, index of the orbit) of every pass in the calendar, sorted by date."""
    out = []
    cal = scn.calendar
    for k, orbit in enumerate(cal.orbits):
        delta = (cal.start - orbit.first_date).days
        n0 = -((-delta) // orbit.repeat_days)
        day = orbit.first_date + dt.timedelta(days=n0 * orbit.repeat_days)
        while day <= cal.end:
            out.append((day, k))
            day += dt.timedelta(days=orbit.repeat_days)
    out.sort()
    for (a, _), (b, _) in itertools.pairwise(out):
        if a == b:
            raise ValueError(f"two orbits of scenario {scn.site} image it on {a}: shift one")
    return out


def acquisitions(
    scn: Scenario,
    seed: int,
    lonlat: tuple[float, float],
    start: dt.date | None = None,
    end: dt.date | None = None,
) -> list[Acquisition]:
    """The site's acquisitions between ``start`` and ``end`` (default: the whole calendar)."""
    out = []
    w = scn.weather
    for day, k in acquisition_dates(scn):
        if (start and day < start) or (end and day > end):
            continue
        orbit = scn.calendar.orbits[k]
        when = dt.datetime.combine(day, orbit.time_utc, tzinfo=dt.UTC)
        az, el = sun_position(when, lonlat[1], lonlat[0])
        rng = rng_for(seed, scn.site, day.toordinal(), PURPOSE["date"])
        m = scn.sensor.max_shift_px
        shift = tuple(round(float(v), 4) for v in rng.uniform(-m, m, 2))
        gd = scn.sensor.gain_drift
        gain = 1.0 + rng.uniform(-gd, gd) + rng.normal(0.0, gd / 4.0, 6)
        lam = np.asarray(CENTER_WAVELENGTH_UM)
        offset = rng.uniform(-0.3, 1.0) * scn.sensor.haze_offset * (0.49 / lam) ** 2
        lo, hi = w.clear_cloud_fraction
        clear = 0.0 if rng.uniform() < 0.5 else float(rng.uniform(lo, hi))
        height = float(rng.uniform(*w.cloud_height_m))
        dw = w.dates.get(day)
        days = (day - _LAUNCH[orbit.platform]).days
        absolute = int(days * 143 // 10)
        absolute += (orbit.relative_orbit - absolute) % 143
        out.append(
            Acquisition(
                date=day,
                when=when,
                platform=orbit.platform,
                relative_orbit=orbit.relative_orbit,
                absolute_orbit=absolute,
                sun_azimuth=round(az, 4),
                sun_elevation=round(el, 4),
                shift_px=(shift[0], shift[1]),
                gain=tuple(float(v) for v in gain),
                offset=tuple(float(v) for v in offset),
                cloud_fraction=dw.cloud_fraction if dw else clear,
                cloud_height_m=height,
                cirrus=bool(dw and dw.cirrus),
                false_cloud=day in w.false_cloud_on_concrete,
                swath_edge=float(w.swath_edge.get(day, 0.0)),
            )
        )
    return out
