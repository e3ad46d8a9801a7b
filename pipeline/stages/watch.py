"""The cron entry, ``basewatch watch``: process only what is new, locked, idempotent.

For each site, a run:

1. **Searches** the catalog from the oldest of the site's last ``watch.history_dates`` usable
   dates to ``dates.end`` (or today with ``watch.follow``). Items the store has not seen and
   dated after the newest processed one are *new*; an unseen Item for a date already processed
   is recorded as ``late`` and not used (its date was compared without it).
2. When something is new, **loads** the new dates and the history dates, one date at a time (an
   asset that cannot be read after GDAL's retries skips its date, reported; a failing newest
   date is retried on the next runs, ``watch.max_attempts`` in all), **co-registers** them to a
   history date whose shift to the site's reference date is stored (so every stored shift stays
   relative to one reference), and **detects** on that window: each new date is compared with
   each pixel's last valid view among the window's dates. Only detections whose ``date_after``
   is a new date are kept.
3. **Records** everything in one transaction of the store (:mod:`pipeline.io.store`): the Items,
   the dates, the detections, the occupancy, the alerts to send, and a flag saying the outputs
   are behind.
4. Brings the **outputs** up to date: appends the new detections and date pairs to
   ``data/<site>/detections.geojson`` and recomputes ``metrics/<site>.json``, each written
   (atomically) only when its content changes; then clears the flag.

Then it **delivers** pending alerts (:mod:`pipeline.io.alerts`).

On its first run for a site with the outputs of ``dvc repro`` present, watch *adopts* them as
the history (``watch.adopt``) instead of processing the period again.

A run with nothing new reads the store read-only and writes no file. A lock (``fcntl.flock``
on ``data/.watch.lock``) stops two runs overlapping. A run killed at any point leaves the
previous outputs and store intact, and the next run completes the work: outputs are derived
from the store, which changes only by whole transactions.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import BasewatchError, DataError, LockedError, SiteError
from pipeline.io import alerts, catalog
from pipeline.io.atomic import read_json, write_json
from pipeline.io.store import CLOUDY, COREG_FAILED, KEPT, READ_FAILED, Store, store_path
from pipeline.paths import SitePaths, site_paths
from pipeline.sites import Site, get_site, site_path
from pipeline.stages.watch_window import item_day, item_iso, occupancy, process_window

log = logging.getLogger(__name__)

PAUSE_ENV = "BASEWATCH_TEST_PAUSE_AT"
"""Test hook: name of a point (:data:`PAUSE_POINTS`) where a run stops and sleeps, so a test
can kill it there deterministically."""
PAUSE_FILE_ENV = "BASEWATCH_TEST_PAUSE_FILE"
"""Test hook: file written with the point's name when the run reaches it."""
PAUSE_POINTS = (
    "after-search",
    "after-load",
    "after-detect",
    "mid-db-write",
    "after-db-write",
    "mid-outputs",
    "mid-alerts",
    "after-alerts",
)
"""Named points of a run, in order (see :func:`pause`)."""


def pause(point: str) -> None:
    """Sleep for ever at ``point`` when ``$BASEWATCH_TEST_PAUSE_AT`` names it (tests only)."""
    if os.environ.get(PAUSE_ENV) != point:
        return
    marker = os.environ.get(PAUSE_FILE_ENV)
    if marker:
        Path(marker).write_text(point)
    while True:  # pragma: no cover - the test kills the process here
        time.sleep(60)


def lock_path(cfg: Config) -> Path:
    """The lock file: ``watch.lock``, else ``<data_dir>/.watch.lock``."""
    return Path(cfg.watch.lock) if cfg.watch.lock else Path(cfg.data_dir) / ".watch.lock"


@contextmanager
def watch_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created empty, never written).

    Raises
    ------
    LockedError
        At once, when another process holds it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise LockedError(
            f"another `basewatch watch` is running (it holds the lock {path}): this run stops; "
            "the next scheduled run will do the work"
        ) from None
    try:
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


# ------------------------------------------------------------------------------------ results


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass
class SiteResult:
    """What one run did for one site."""

    site: str
    new_dates: list[str] = field(default_factory=list)
    """New acquisition dates (scenes) processed in this run, whatever their outcome."""
    cloudy: list[str] = field(default_factory=list)
    """New dates dropped as mostly cloud or no data."""
    coreg_failed: list[str] = field(default_factory=list)
    """New dates rejected by co-registration."""
    skipped: list[str] = field(default_factory=list)
    """One line per new date skipped or left for a retry because an asset cannot be read."""
    detections: list[dict] = field(default_factory=list)
    """Properties of the new detections."""
    late: int = 0
    """Items that arrived for dates already processed (recorded, not used)."""
    adopted: str | None = None
    """What was adopted from the ``dvc repro`` outputs on this first run, if anything."""

    def summary(self) -> str:
        """One line, e.g. ``khmeimim: 2 new scenes, 1 removal in zone apron-north``."""
        parts = [f"{_plural(len(self.new_dates), 'new scene')}" if self.new_dates else ""]
        if not self.new_dates:
            parts = ["no new scenes"]
        for kind, word in (("removed", "removal"), ("appeared", "appearance")):
            zones = Counter(p.get("zone") for p in self.detections if p.get("kind") == kind)
            n = sum(zones.values())
            if n == 0:
                continue
            where = [f"{c} in zone {z}" if z else f"{c} outside zones" for z, c in zones.items()]
            if len(zones) == 1:
                parts.append(f"{_plural(n, word)} {where[0].split(' ', 1)[1]}")
            else:
                parts.append(f"{_plural(n, word)} ({', '.join(where)})")
        if self.new_dates and not self.detections:
            parts.append("no detections")
        if self.cloudy:
            parts.append(f"{len(self.cloudy)} cloudy")
        if self.coreg_failed:
            parts.append(f"{len(self.coreg_failed)} not co-registered")
        parts += self.skipped
        if self.late:
            parts.append(f"{_plural(self.late, 'late Item')} ignored")
        if self.adopted:
            parts.append(self.adopted)
        return f"{self.site}: {', '.join(p for p in parts if p)}"


@dataclass
class WatchReport:
    """Everything a run did: one result or error per site, and the alert delivery."""

    results: list[SiteResult] = field(default_factory=list)
    errors: list[tuple[str, BasewatchError]] = field(default_factory=list)
    delivery: alerts.Delivery | None = None

    def lines(self) -> list[str]:
        """The summary lines (stdout)."""
        out = [r.summary() for r in self.results]
        d = self.delivery
        if d is not None and (d.sent or d.pending or d.failed):
            sent = ", ".join(f"{n} to {sink}" for sink, n in d.sent.items()) or "none sent"
            out.append(f"alerts: {sent}; {d.pending} pending, {d.failed} failed")
        return out

    def warnings(self) -> list[str]:
        """Problems that did not stop the run (stderr)."""
        return list(self.delivery.errors) if self.delivery else []


# --------------------------------------------------------------------------------------- run


def run_watch(
    cfg: Config, sites: Sequence[str] | None = None, score: MetricsFn | None = None
) -> WatchReport:
    """One watch run over ``sites`` (default: the config's): see the module docstring.

    ``score`` writes the metrics of each site (None: counts only, no ground truth read).

    Errors of one site (:class:`BasewatchError`) are collected in the report and do not stop
    the other sites.

    Raises
    ------
    LockedError
        When another run holds the lock.
    """
    report = WatchReport()
    catalog.redact_logs()
    with watch_lock(lock_path(cfg)), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*has no geotransform.*")
        warnings.filterwarnings("ignore", category=FutureWarning)
        with Store(store_path(cfg)) as store:
            for name in sites or cfg.sites:
                try:
                    report.results.append(_watch_site(cfg, store, name, score))
                except BasewatchError as exc:
                    report.errors.append((name, exc))
            report.delivery = alerts.deliver(store, cfg, pause)
            pause("after-alerts")
    return report


def check_utm_zone(site: Site, seeds_dir: str | Path = "seeds") -> None:
    """Refuse an AOI that lies outside the UTM zone of the site's grid (often: lat/lon swapped).

    Raises
    ------
    SiteError
        Naming the site file, the AOI centre and the zone.
    """
    zone, north = site.epsg % 100, site.epsg // 100 == 326
    if site.epsg // 100 not in (326, 327) or not 1 <= zone <= 60:
        return
    c = site.aoi.centroid
    west = -180.0 + 6.0 * (zone - 1)
    margin = 1.0  # Sentinel-2 tiles reach beyond their zone's edges
    if not (west - margin <= c.x <= west + 6.0 + margin) or (
        c.y < -margin if north else c.y > margin
    ):
        raise SiteError(
            f"{site_path(site.name, seeds_dir)}: AOI centre (lon {c.x:.4f}, lat {c.y:.4f}) is "
            f"outside UTM zone {zone}{'N' if north else 'S'} (EPSG:{site.epsg}, lon {west:g} to "
            f"{west + 6:g}): GeoJSON wants [lon, lat]; are they swapped? Fix the AOI or epsg"
        )


def _watch_site(cfg: Config, store: Store, name: str, score: MetricsFn | None) -> SiteResult:
    site = get_site(name, cfg.seeds_dir)
    check_utm_zone(site, cfg.seeds_dir)
    paths = site_paths(cfg, name)
    result = SiteResult(name)
    if store.site_state(name) is None and cfg.watch.adopt and _can_adopt(paths):
        result.adopted = _adopt(store, site, paths)
    seen = store.processed_items(name)
    kept = [d["date"] for d in store.dates(name, KEPT)]
    history = kept[-cfg.watch.history_dates :]
    done = [r["date"] for r in seen.values() if r["status"] in ("done", "adopted", "failed")]
    last_day = max(done) if done else None
    start = dt.date.fromisoformat(history[0]) if history else cfg.dates.start
    if last_day and not history:
        start = dt.date.fromisoformat(last_day)
    end = dt.datetime.now(dt.UTC).date() if cfg.watch.follow else cfg.dates.end
    items = list(catalog.search_items(cfg.catalog, site.aoi, start, end, cfg.network))
    if not items and not seen:
        raise DataError(
            f"no Items in {catalog.redact_text(cfg.catalog.url)} intersect the AOI of site "
            f"{name} between {start} and {end}: check that the AOI in "
            f"{site_path(name, cfg.seeds_dir)} is [lon, lat] and inside the catalog's tiles, "
            "and the dates and cloud limit"
        )
    pause("after-search")
    new: list[Any] = []
    late: list[Any] = []
    for it in items:
        rec = seen.get(it.id)
        if rec is None or rec["status"] == "retry":
            (late if last_day and item_day(it) <= last_day and rec is None else new).append(it)
    if late:
        with store.transaction():
            for it in late:
                store.add_item(
                    name, it.id, item_iso(it), item_day(it), "late", collection=it.collection_id
                )
        result.late = len(late)
    if new:
        by_date: dict[str, list[Any]] = {}
        for it in items:
            rec = seen.get(it.id)
            if rec and rec["status"] in ("done", "adopted") and rec["date"] in set(history):
                by_date.setdefault(rec["date"], []).append(it)
        process_window(cfg, store, site, by_date, new, result, pause)
    state = store.site_state(name)
    if state is not None and state.outputs_dirty:
        update_outputs(cfg, store, site, paths, state.simulated, score)
        with store.transaction():
            store.set_outputs_dirty(name, False)
    return result


# ---------------------------------------------------------------------------------- adoption


def _can_adopt(paths: SitePaths) -> bool:
    needed = (paths.items, paths.load_report, paths.coreg, paths.detections)
    return all(p.is_file() for p in needed)


def _adopt(store: Store, site: Site, paths: SitePaths) -> str:
    """Take the outputs of ``dvc repro`` / ``basewatch run`` as the site's history."""
    items = catalog.read_items(paths.items)
    load_report, coreg = read_json(paths.load_report), read_json(paths.coreg)
    fc = read_json(paths.detections)
    failed = set(coreg.get("failed_dates", []))
    per_date = {str(d["date"])[:10]: d for d in coreg.get("dates", [])}
    pairs = {str(p.get("date_after"))[:10]: p for p in fc.get("pairs", [])}
    simulated = bool(fc.get("simulated")) or any(
        it.properties.get("basewatch:simulated") for it in items
    )
    with store.transaction():
        store.set_site(site.name, coreg.get("reference_date"), "adopted", simulated)
        for it in items:
            assets = {k: catalog.redact_url(a.href) for k, a in it.assets.items()}
            store.add_item(
                site.name,
                it.id,
                item_iso(it),
                item_day(it),
                "adopted",
                collection=it.collection_id,
                assets=assets,
            )
        vf = load_report.get("valid_fraction", {})
        for d in load_report.get("dates_dropped", []):
            store.add_date(
                site.name,
                d["date"],
                CLOUDY,
                valid_fraction=d.get("valid_fraction"),
                reason=d.get("reason"),
            )
        for day in load_report.get("dates_kept", []):
            c = per_date.get(day, {})
            store.add_date(
                site.name,
                day,
                COREG_FAILED if day in failed else KEPT,
                valid_fraction=vf.get(day),
                shift_x_px=c.get("shift_x_px"),
                shift_y_px=c.get("shift_y_px"),
                quality=c.get("quality"),
                n_valid=c.get("n_valid"),
                coreg_status=c.get("status"),
                reason=c.get("reason"),
                pair=pairs.get(day),
            )
        feats = fc.get("features", [])
        for f in feats:
            store.add_detection(site.name, f, "adopted")
        store.replace_occupancy(site.name, occupancy(store, site))
    return f"adopted {len(items)} Items and {len(feats)} detections from {paths.data}"


# ----------------------------------------------------------------------------------- outputs


def _same_json(path: Path, obj: Any) -> bool:
    try:
        return bool(read_json(path) == json.loads(json.dumps(obj, default=str)))
    except (OSError, ValueError):
        return False


def update_outputs(
    cfg: Config,
    store: Store,
    site: Site,
    paths: SitePaths,
    sim: bool,
    score: MetricsFn | None = None,
) -> None:
    """Bring ``detections.geojson`` and the metrics up to date with the store.

    The GeoJSON gains the stored detections and date pairs of the dates it does not cover yet
    (a ``dvc repro`` run that rewrote it stays authoritative for its own dates). Each file is
    written only when its content changes.
    """
    if paths.detections.is_file():
        fc = read_json(paths.detections)
    else:
        fc = {"type": "FeatureCollection", "name": f"{site.name} detections", "simulated": sim}
    fc.setdefault("features", [])
    fc.setdefault("pairs", [])
    covered = {str(p.get("date_after"))[:10] for p in fc["pairs"]}
    covered |= {str(f["properties"].get("date_after"))[:10] for f in fc["features"]}
    ids = {f["properties"].get("id") for f in fc["features"]}
    add = [
        f
        for f in store.detections_since(site.name)
        if f["properties"]["date_after"] not in covered and f["properties"]["id"] not in ids
    ]
    pairs = [
        d["pair"] for d in store.dates(site.name, KEPT) if d["pair"] and d["date"] not in covered
    ]
    if add or pairs or not paths.detections.is_file():
        fc["features"] += add
        fc["pairs"] = sorted(fc["pairs"] + pairs, key=lambda p: str(p.get("date_after")))
        write_json(paths.detections, fc)
    pause("mid-outputs")
    metrics = _metrics(cfg, store, site, fc["features"], score)
    if not _same_json(paths.metrics, metrics):
        write_json(paths.metrics, metrics)


def coreg_record(store: Store, site: str) -> dict[str, Any]:
    """The site's co-registration results in the layout of ``coreg.json``, from the store."""
    state = store.site_state(site)
    rows = [d for d in store.dates(site) if d["status"] in (KEPT, COREG_FAILED)]
    keys = ("shift_x_px", "shift_y_px", "quality", "n_valid")
    dates = [
        {
            "date": d["date"],
            **{k: d[k] for k in keys},
            "status": d["coreg_status"],
            "reason": d["reason"],
        }
        for d in rows
    ]
    return {
        "reference_date": state.reference_date if state else None,
        "dates": dates,
        "failed_dates": [d["date"] for d in rows if d["status"] == COREG_FAILED],
    }


MetricsFn = Callable[[Config, str, list[dict], dict[str, Any]], dict[str, Any]]
"""Scores of a site's detections: ``(cfg, site, features, coreg record) -> metrics``. The CLI
passes :func:`pipeline.evaluation.stage.watch_metrics` (ground truth is read only there)."""


def _metrics(
    cfg: Config, store: Store, site: Site, features: list[dict], score: MetricsFn | None
) -> dict[str, Any]:
    """The metrics ``basewatch evaluate`` would write for these detections (no truth: counts)."""
    coreg = coreg_record(store, site.name)
    if score is not None:
        return score(cfg, site.name, features, coreg)
    return {"n_detections": len(features), "truth": None, "failed_dates": coreg["failed_dates"]}


__all__ = [
    "PAUSE_POINTS",
    "READ_FAILED",
    "SiteResult",
    "WatchReport",
    "check_utm_zone",
    "coreg_record",
    "lock_path",
    "occupancy",
    "pause",
    "run_watch",
    "update_outputs",
    "watch_lock",
]
