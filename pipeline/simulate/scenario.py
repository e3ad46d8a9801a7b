"""Scenario files: what a simulated site looks like and what happens there.

A scenario is ``seeds/scenario/<site>.yaml``, read with ``yaml.safe_load`` and validated here
(pydantic, ``extra="forbid"``: unknown keys are errors). It holds the MGRS tiles the site falls in,
the acquisition calendar, the weather and sensor settings, the surfaces of the scene and the
objects with the dates they are present. The file's header documents the layout; the field
descriptions below are the reference.

Positions are metres in a *frame*: ``site`` (origin at the AOI centre, x = grid east,
y = grid north) or the name of a zone of the site (origin at the centre of the zone's minimum
rotated rectangle, y along its long side pointing north-ish, or east-ish for zones within 45
degrees of east-west; x is y turned 90 degrees clockwise).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from pipeline.errors import ConfigError
from pipeline.simulate.materials import SURFACES

XY = tuple[float, float]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Tile(_Strict):
    """An MGRS tile of Sentinel-2 that covers the site; the site gets one Item per tile per date."""

    code: str = Field(
        pattern=r"^\d{2}[C-X][A-HJ-NP-Z]{2}$", description="MGRS tile code, e.g. 36SYE."
    )
    epsg: int = Field(description="EPSG code of the tile's UTM zone, e.g. 32636.")
    ul: XY = Field(description="Upper-left corner of the tile, metres in its own CRS.")

    @model_validator(mode="after")
    def _aligned(self) -> Tile:
        if any(abs(v / 60.0 - round(v / 60.0)) > 1e-9 for v in self.ul):
            raise ValueError(f"tile {self.code}: ul {self.ul} must be multiples of 60 m")
        if str(self.epsg)[3:] != self.code[:2]:
            raise ValueError(f"tile {self.code}: epsg {self.epsg} is not its UTM zone")
        return self


class Orbit(_Strict):
    """One satellite on one relative orbit: an acquisition every ``repeat_days``."""

    platform: Literal["sentinel-2a", "sentinel-2b", "sentinel-2c"] = Field(description="Satellite.")
    relative_orbit: int = Field(ge=1, le=143, description="Sentinel-2 relative orbit number.")
    first_date: dt.date = Field(description="A date this satellite images the site.")
    repeat_days: int = Field(10, ge=1, description="Days between its acquisitions.")
    time_utc: dt.time = Field(description="Sensing time over the site (UTC).")


class Calendar(_Strict):
    """The acquisitions generated: every orbit's dates between start and end (inclusive)."""

    start: dt.date = Field(description="First day of the simulated period.")
    end: dt.date = Field(description="Last day of the simulated period.")
    orbits: tuple[Orbit, ...] = Field(min_length=1, description="Satellite passes.")

    @model_validator(mode="after")
    def _ordered(self) -> Calendar:
        if self.end < self.start:
            raise ValueError(f"calendar.end {self.end} is before calendar.start {self.start}")
        return self


class DateWeather(_Strict):
    """Weather of one date."""

    cloud_fraction: float = Field(
        ge=0, le=1, description="Fraction of the site grid under cloud (opacity >= 0.1)."
    )
    cirrus: bool = Field(False, description="Add a thin cirrus veil (SCL 10 on its densest parts).")


class Weather(_Strict):
    """Clouds, cloud shadows and the SCL's known failures."""

    clear_cloud_fraction: XY = Field(
        (0.0, 0.03), description="Dates not listed in `dates` get a cloud fraction in this range."
    )
    cloud_height_m: XY = Field(
        (600.0, 1500.0), description="Range of cloud heights; sets how far shadows fall."
    )
    dates: dict[dt.date, DateWeather] = Field(
        default_factory=dict, description="Weather of chosen dates."
    )
    false_cloud_on_concrete: tuple[dt.date, ...] = Field(
        (), description="Clear dates on which SCL flags patches of bright concrete as cloud."
    )
    swath_edge: dict[dt.date, float] = Field(
        default_factory=dict,
        description="Dates whose first tile's Item has no data over this fraction of the AOI "
        "(its east part); the second tile's Item covers it.",
    )


class Sensor(_Strict):
    """Image formation and radiometric noise."""

    max_shift_px: float = Field(
        1.0, ge=0, le=3, description="Misregistration per date: uniform in +-this, x and y."
    )
    psf_sigma_px: float = Field(0.45, gt=0, le=2, description="Gaussian PSF sigma, band pixels.")
    noise_reflectance: float = Field(0.004, ge=0, description="Sensor noise (1 sigma).")
    gain_drift: float = Field(0.03, ge=0, description="Per-date gain spread (+- relative).")
    haze_offset: float = Field(0.008, ge=0, description="Largest per-date additive haze (blue).")


class Surface(_Strict):
    """A surface painted into the scene; later entries are painted over earlier ones."""

    cls: str = Field(
        alias="class",
        description="Surface class (see materials.SURFACES); for a patchwork, the class of the "
        "gaps between plots (tracks, streets).",
    )
    shape: Literal["rect", "polygon", "zone", "patchwork"] = Field(description="Geometry kind.")
    frame: str = Field("site", description="Frame of center/points: 'site' or a zone name.")
    center: XY = Field((0.0, 0.0), description="rect/patchwork: centre (x, y) in the frame, m.")
    size: XY | None = Field(None, description="rect/patchwork: (width along x, length along y).")
    angle_deg: float = Field(0.0, description="rect/patchwork: extra rotation, clockwise.")
    points: tuple[XY, ...] | None = Field(None, description="polygon: vertices in the frame, m.")
    zone: str | None = Field(None, description="zone: name of the site zone to paint.")
    grow_m: float = Field(0.0, description="zone: buffer the zone polygon by this many metres.")
    plot_m: XY | None = Field(None, description="patchwork: plot side range (min, max), m.")
    gap_m: float = Field(0.0, ge=0, description="patchwork: width of the gaps between plots.")
    mix: dict[str, float] | None = Field(
        None, description="patchwork: class of each plot drawn with these weights."
    )

    @model_validator(mode="after")
    def _complete(self) -> Surface:
        need = {
            "rect": ("size",),
            "polygon": ("points",),
            "zone": ("zone",),
            "patchwork": ("size", "plot_m", "mix"),
        }[self.shape]
        missing = [k for k in need if getattr(self, k) is None]
        if missing:
            raise ValueError(f"a '{self.shape}' surface needs {', '.join(missing)}")
        names = [self.cls, *(self.mix or {})]
        unknown = [n for n in names if n not in SURFACES]
        if unknown:
            raise ValueError(
                f"unknown surface class {unknown[0]!r}: use one of {', '.join(SURFACES)}"
            )
        if self.points is not None and len(self.points) < 3:
            raise ValueError("a polygon needs at least 3 points")
        return self


class SceneObject(_Strict):
    """An object (aircraft, ship, vehicle row) and the dates it is present."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Unique id, used in truth.")
    model: str = Field(description="Object model (see objects.MODELS), e.g. il76, frigate.")
    frame: str = Field("site", description="Frame of `at`: 'site' or a zone name.")
    at: XY = Field(description="Centre (x, y) in the frame, metres.")
    heading_deg: float = Field(0.0, description="Nose/bow direction, clockwise from frame y.")
    count: int | None = Field(None, ge=1, le=20, description="vehicle_row: vehicles in the row.")
    present: tuple[tuple[dt.date, dt.date], ...] | None = Field(
        None, description="Inclusive [first, last] date intervals present; omitted = always."
    )

    @model_validator(mode="after")
    def _intervals(self) -> SceneObject:
        for a, b in self.present or ():
            if b < a:
                raise ValueError(f"object {self.id}: interval [{a}, {b}] ends before it starts")
        return self

    def is_present(self, day: dt.date) -> bool:
        """Whether the object is in place on ``day``."""
        if self.present is None:
            return True
        return any(a <= day <= b for a, b in self.present)


class Scenario(_Strict):
    """A whole scenario file."""

    kind: Literal["basewatch-scenario"] = Field(description="Marks the file as a scenario.")
    site: str = Field(description="Site name; must match the file name and the site seed.")
    tiles: tuple[Tile, ...] = Field(
        min_length=1,
        description="Tiles covering the site; the first is in the site grid's own UTM zone.",
    )
    item_margin_m: float = Field(600.0, ge=0, description="Item window = AOI bounds + this.")
    calendar: Calendar
    weather: Weather = Field(
        default_factory=lambda: Weather.model_validate({}), description="Clouds, SCL failures."
    )
    sensor: Sensor = Field(
        default_factory=lambda: Sensor.model_validate({}), description="Image formation, noise."
    )
    surfaces: tuple[Surface, ...] = Field(min_length=1, description="Painted in order.")
    objects: tuple[SceneObject, ...] = Field(default=(), description="Objects of the scene.")

    @model_validator(mode="after")
    def _unique_ids(self) -> Scenario:
        seen: set[str] = set()
        for obj in self.objects:
            if obj.id in seen:
                raise ValueError(f"object id {obj.id!r} is used twice: make it unique")
            seen.add(obj.id)
        return self


def scenario_path(site: str, seeds_dir: str | Path = "seeds") -> Path:
    """Path of the scenario file of ``site``."""
    return Path(seeds_dir) / "scenario" / f"{site}.yaml"


def load_scenario(site: str, seeds_dir: str | Path = "seeds") -> Scenario:
    """Read and validate the scenario of ``site``.

    Parameters
    ----------
    site
        Site name (``khmeimim``).
    seeds_dir
        Folder holding ``scenario/<site>.yaml``.

    Returns
    -------
    Scenario
        The validated scenario.

    Raises
    ------
    ConfigError
        When the file is missing, is not YAML, or has unknown or invalid keys.
    """
    path = scenario_path(site, seeds_dir)
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(
            f"scenario file {path} does not exist: write one to simulate site {site}"
        ) from None
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"scenario file {path} is not valid YAML ({exc}): fix it") from None
    try:
        scn = Scenario.model_validate(doc)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            msg = f"unknown key '{key}': remove it or check its spelling"
        else:
            msg = f"key '{key}': {err['msg'].removeprefix('Value error, ')}"
        raise ConfigError(f"scenario file {path}: {msg}") from None
    if scn.site != site:
        raise ConfigError(f"scenario file {path}: site is {scn.site!r}, expected {site!r}")
    return scn
