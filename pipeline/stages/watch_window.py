"""One site's new dates, with the history they need: load, co-register, detect, record.

Called by :mod:`pipeline.stages.watch` when a site has new Items. The *window* is the site's last
usable history dates plus the new dates. Every date is loaded on its own (a date whose asset
cannot be read is isolated, not fatal), co-registered to one history date, and the window goes
through the change core; only the detections whose ``date_after`` is a new date are recorded.

Shifts: the window's reference is the site's reference date when it is in the window, else
the clearest history date ``H``, whose shift to the site reference ``R`` is stored. Shifts
compose, so each new date's shift to ``R`` is its shift to ``H`` plus ``H``'s shift to ``R``:
the store keeps one reference for the whole record, as ``coreg.json`` does.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pystac
import xarray as xr

from pipeline.config import Config
from pipeline.errors import CatalogError, DataError
from pipeline.io import alerts, catalog
from pipeline.io.store import CLOUDY, COREG_FAILED, KEPT, READ_FAILED, Store
from pipeline.sites import Site

log = logging.getLogger(__name__)

Pause = Callable[[str], None]


def _load_day(
    items: Sequence[pystac.Item], site: Site, cfg: Config
) -> tuple[xr.Dataset | None, dict | None, str | None]:
    """(cube in memory or None when too cloudy, load report, error message or None)."""
    from pipeline.io import load
    from pipeline.io.signing import read_signed, signer_for

    def read(signed: list[pystac.Item]) -> tuple[xr.Dataset | None, dict]:
        cube, report = load.load_site(signed, site, cfg.load, cfg.network)
        if cube.sizes.get("time", 0) == 0:
            return None, report
        return load.compute_cube(cube, signed, f"load {site.name}"), report

    try:
        cube, report = read_signed(read, items, signer_for(cfg.catalog))
        return cube, report, None
    except (DataError, CatalogError) as exc:
        return None, None, catalog.redact_text(str(exc))


def _date_of(cube: xr.Dataset) -> str:
    return str(np.datetime_as_string(cube["time"].values[0], unit="D"))


def _groups(items: Sequence[pystac.Item], site: Site, cfg: Config) -> list[list[pystac.Item]]:
    """Items grouped as the loader groups them (one solar day each), in time order."""
    from pipeline.io.load import solar_day

    geobox = site.geobox(cfg.load.resolution_m)
    days: dict[Any, list[pystac.Item]] = {}
    for it in items:
        days.setdefault(solar_day(it, geobox), []).append(it)
    return [days[d] for d in sorted(days)]


def _first_day(items: Sequence[pystac.Item]) -> str:
    return min(item_day(it) for it in items)


def _detect(
    cfg: Config, site: Site, days: list[str], loaded: dict[str, xr.Dataset], ref_day: str | None
) -> tuple[int, list[Any], list[dict], list[dict]]:
    """Co-register and detect on the window: (reference index, estimates, features, pairs)."""
    from pipeline.io.cluster import client_from_config
    from pipeline.kernels.coregister.shift import coregister_cube
    from pipeline.stages import detect

    window = xr.concat([loaded[d] for d in days], dim="time", coords="minimal", compat="override")
    # The window is detected on its bands and ``valid`` only (no SCL), as it always was.
    window = window.drop_vars("scl", errors="ignore")
    aligned, estimates, ref_i = coregister_cube(
        window,
        cfg.coregister,
        reference_index=days.index(ref_day) if ref_day in days else None,
    )
    if aligned.sizes["time"] < 2:
        return ref_i, estimates, [], []
    with client_from_config(cfg.cluster):
        result = detect.detect_site(aligned, site, cfg)
    return ref_i, estimates, result.features, result.pairs


def _renumber(site: str, features: list[dict], new_days: set[str]) -> list[dict]:
    """The features of the new dates, with ids ``<site>-<yyyymmdd>-<n>`` (n from 1 per date)."""
    out, count = [], dict.fromkeys(new_days, 0)
    for f in features:
        p = dict(f["properties"])
        day = str(p["date_after"])[:10]
        if day not in new_days:
            continue
        count[day] += 1
        p["id"] = f"{site}-{day.replace('-', '')}-{count[day]}"
        for key in ("pair", "label"):  # indices into this window's arrays: meaningless later
            p.pop(key, None)
        p["source"] = "watch"
        out.append({**f, "properties": p})
    return out


def process_window(
    cfg: Config,
    store: Store,
    site: Site,
    history: dict[str, list[pystac.Item]],
    new_items: Sequence[pystac.Item],
    result: Any,
    pause: Pause,
) -> None:
    """Process a site's new Items with their history and record everything in one transaction.

    Parameters
    ----------
    cfg
        The config.
    store
        The watch database.
    site
        The site.
    history
        Stored date -> its Items (from the current search), for the usable history dates.
    new_items
        Items not processed yet (or to retry).
    result
        The site's :class:`pipeline.stages.watch.SiteResult`, filled in.
    pause
        Test hook (:func:`pipeline.stages.watch.pause`).
    """
    name = site.name
    state = store.site_state(name)
    stored = {d["date"]: d for d in store.dates(name)}
    seen = store.processed_items(name)
    loaded: dict[str, xr.Dataset] = {}
    for day, its in sorted(history.items()):
        cube, _, err = _load_day(its, site, cfg)
        if cube is not None:
            loaded[day] = cube
        else:
            log.warning("%s: history date %s not usable now (%s)", name, day, err or "cloudy")
    hist_days = sorted(loaded)
    outcome: dict[str, tuple[str, list[pystac.Item], Any]] = {}
    for its in _groups(new_items, site, cfg):
        cube, report, err = _load_day(its, site, cfg)
        if err is not None:
            outcome[_first_day(its)] = ("error", its, err)
        elif cube is None:
            day = (report or {}).get("dates_dropped", [{}])[0].get("date") or _first_day(its)
            outcome[day] = (CLOUDY, its, report)
        else:
            day = _date_of(cube)
            loaded[day], outcome[day] = cube, (KEPT, its, report)
    pause("after-load")

    new_kept = {d for d, (st, _, _) in outcome.items() if st == KEPT}
    ref_day, offset = state.reference_date if state else None, (0.0, 0.0)
    if ref_day not in hist_days and hist_days:
        ref_day = max(hist_days, key=lambda d: stored[d].get("valid_fraction") or 0.0)
        offset = (
            stored[ref_day].get("shift_x_px") or 0.0,
            stored[ref_day].get("shift_y_px") or 0.0,
        )
    days = sorted(loaded)
    estimates: dict[str, Any] = {}
    features: list[dict] = []
    pairs: list[dict] = []
    if new_kept:
        ref_i, est, features, pairs = _detect(cfg, site, days, loaded, ref_day)
        ref_day = ref_day if ref_day in days else days[ref_i]
        estimates = dict(zip(days, est, strict=True))
    usable_new = {d for d in new_kept if estimates[d].status != "failed"}
    features = _renumber(name, features, usable_new)
    pairs = [p for p in pairs if str(p.get("date_after"))[:10] in usable_new]
    pause("after-detect")

    last_ok = max((d for d, (st, _, _) in outcome.items() if st != "error"), default=None)
    simulated = any(
        bool(it.properties.get("basewatch:simulated"))
        for it in [*new_items, *(i for its in history.values() for i in its)]
    )
    changed = False
    with store.transaction():
        if state is None or state.reference_date is None:
            origin = state.origin if state else "watch"
            store.set_site(name, ref_day if new_kept else None, origin, simulated)
        for day in sorted(outcome):
            status, its, info = outcome[day]
            attempts = 1 + max(seen.get(it.id, {}).get("attempts", 0) for it in its)
            if status == "error":
                final = (
                    last_ok is not None and day < last_ok
                ) or attempts >= cfg.watch.max_attempts
                item_status, message = ("failed" if final else "retry"), str(info)
                what = (
                    "skipped" if final else f"left for retry ({attempts}/{cfg.watch.max_attempts})"
                )
                result.skipped.append(f"{day} {what}: {message}")
            else:
                item_status, message = "done", None
            result.new_dates.append(day)
            for it in its:
                assets = {k: catalog.redact_url(a.href) for k, a in it.assets.items()}
                store.add_item(
                    name,
                    it.id,
                    item_iso(it),
                    day,
                    item_status,
                    collection=it.collection_id,
                    assets=assets,
                    message=message,
                )
            if status == "error":
                if item_status == "failed":
                    store.add_date(name, day, READ_FAILED, reason=message)
                    changed = True
                continue
            changed = True
            vf = (info or {}).get("valid_fraction", {}).get(day)
            if status == CLOUDY:
                result.cloudy.append(day)
                store.add_date(name, day, CLOUDY, valid_fraction=vf, reason="mostly cloud")
                continue
            e = estimates[day]
            ok = e.status != "failed"
            if not ok:
                result.coreg_failed.append(day)
            pair = next((p for p in pairs if str(p.get("date_after"))[:10] == day), None)
            store.add_date(
                name,
                day,
                KEPT if ok else COREG_FAILED,
                valid_fraction=vf,
                shift_x_px=e.shift_x_px + offset[0] if ok else e.shift_x_px,
                shift_y_px=e.shift_y_px + offset[1] if ok else e.shift_y_px,
                quality=e.quality,
                n_valid=e.n_valid,
                coreg_status=e.status,
                reason=e.reason,
                pair=pair,
            )
        for f in features:
            store.add_detection(name, f, "watch")
        pause("mid-db-write")
        if changed:
            store.replace_occupancy(name, occupancy(store, site))
            for f in features:
                if alerts.wants_alert(f["properties"], cfg.alerts):
                    payload = alerts.alert_payload(name, f, simulated)
                    for sink in alerts.sinks(cfg):
                        store.add_alert(f["properties"]["id"], sink, name, payload)
            store.set_outputs_dirty(name, True)
    result.detections = [f["properties"] for f in features]
    pause("after-db-write")


def item_day(item: pystac.Item) -> str:
    """The Item's UTC date, ``YYYY-MM-DD`` (its datetime, else its start datetime)."""
    when = item.datetime or item.common_metadata.start_datetime
    if when is None:
        raise DataError(f"Item {item.id} has no datetime: it cannot be placed in time")
    if when.tzinfo is not None:
        when = when.astimezone(dt.UTC)
    return when.date().isoformat()


def item_iso(item: pystac.Item) -> str:
    """The Item's datetime (else its start datetime) in ISO 8601, in UTC when it has a zone."""
    when = item.datetime or item.common_metadata.start_datetime
    return when.astimezone(dt.UTC).isoformat() if when.tzinfo else when.isoformat()


def occupancy(store: Store, site: Site) -> list[dict[str, Any]]:
    """The site's occupancy rows from the store's detections and kept dates."""
    from pipeline.io.store import occupancy_rows

    areas = {z.name: float(site.to_utm(z.geometry).area) for z in site.zones}
    dets = [f["properties"] for f in store.detections_since(site.name)]
    return occupancy_rows(dets, [d["date"] for d in store.dates(site.name, KEPT)], areas)
