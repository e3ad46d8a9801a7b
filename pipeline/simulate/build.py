"""The entry point: build the whole demo catalog (both sites) atomically."""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import pystac

from pipeline.config import Config
from pipeline.errors import ConfigError
from pipeline.io.atomic import atomic_dir, write_json
from pipeline.simulate.render import SiteSimulation
from pipeline.simulate.scenario import load_scenario
from pipeline.simulate.stac import COLLECTION_ID, item_id, write_catalog, write_item
from pipeline.simulate.timeline import acquisitions
from pipeline.simulate.truth import site_truth
from pipeline.sites import get_site

log = logging.getLogger(__name__)


def _as_date(value: object, name: str) -> dt.date | None:
    if value is None or (isinstance(value, dt.date) and not isinstance(value, dt.datetime)):
        return value  # type: ignore[return-value]
    if isinstance(value, dt.datetime):
        return value.date()
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise ConfigError(f"{name} {value!r} is not a date: use YYYY-MM-DD") from None


def simulate_site(
    name: str,
    root: Path,
    seeds_dir: str | Path,
    seed: int,
    start: dt.date | None,
    end: dt.date | None,
) -> tuple[list[pystac.Item], dict]:
    """Render every Item of site ``name`` into ``root``; returns the Items and the truth."""
    t0 = time.perf_counter()
    site = get_site(name, seeds_dir)
    scn = load_scenario(name, seeds_dir)
    sim = SiteSimulation(site, scn, seed, str(seeds_dir))
    acqs = acquisitions(scn, seed, sim.center_lonlat, start, end)
    if not acqs:
        raise ConfigError(
            f"scenario of {name} has no acquisition between {start} and {end}: widen the dates"
        )
    log.info("%s: scene ready in %.1f s", name, time.perf_counter() - t0)
    items: list[pystac.Item] = []
    fractions: dict[str, float] = {}
    for acq in acqs:
        sky = sim.sky(acq)
        fractions[acq.date.isoformat()] = round(sim.cloud_fraction(sky), 4)
        for k, tile in enumerate(scn.tiles):
            rendered = sim.render(acq, k, sky)
            folder = root / COLLECTION_ID / item_id(acq, tile)
            items.append(write_item(folder, acq, tile, rendered))
    truth = site_truth(name, site.crs, site.epsg, acqs, fractions, sim.objects)
    log.info("%s: %d Items in %.1f s", name, len(items), time.perf_counter() - t0)
    return items, truth


def build_demo_catalog(
    out_dir: str | Path,
    seeds_dir: str | Path = "seeds",
    seed: int = 20241208,
    sites: Sequence[str] = ("khmeimim", "tartus"),
    start: dt.date | str | None = None,
    end: dt.date | str | None = None,
) -> Path:
    """Generate the SIMULATED demo catalog: COGs, STAC Items and ground truth.

    Parameters
    ----------
    out_dir
        Folder of the catalog; replaced whole (written beside it, then renamed).
    seeds_dir
        Folder holding ``sites/<site>.geojson`` and ``scenario/<site>.yaml``.
    seed
        Seed of every random draw; the same seed gives byte-identical Item JSON and truth.
    sites
        Sites to simulate.
    start, end
        Optional sub-period (inclusive) of the scenarios' calendars.

    Returns
    -------
    Path
        ``<out_dir>/catalog.json``.

    Raises
    ------
    ConfigError
        When a scenario file is missing or invalid, or the period holds no acquisition.
    SiteError
        When a site is unknown.
    """
    d0, d1 = _as_date(start, "start"), _as_date(end, "end")
    if d0 and d1 and d1 < d0:
        raise ConfigError(f"end {d1} is before start {d0}: swap them")
    if not sites:
        raise ConfigError("no site to simulate: give at least one site name")
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        items: list[pystac.Item] = []
        for name in sites:
            site_items, truth = simulate_site(name, tmp, seeds_dir, seed, d0, d1)
            items += site_items
            write_json(tmp / "truth" / f"{name}.json", truth)
        write_catalog(tmp, items)
    return out / "catalog.json"


def run_demo_catalog(cfg: Config) -> Path:
    """Generate the simulated demo catalog (both sites) into ``cfg.demo.out``."""
    return Path(
        build_demo_catalog(
            cfg.demo.out,
            seeds_dir=cfg.seeds_dir,
            seed=cfg.demo.seed,
            sites=cfg.sites,
        )
    )
