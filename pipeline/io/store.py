"""The history database of the watch mode: processed Items, dates, detections, occupancy, alerts.

One SQLite file (stdlib :mod:`sqlite3`, default ``data/watch.sqlite``) holds what
``basewatch watch`` has done for every site, so each run does only what is new and nothing is
lost between runs. Notebooks and reports read it with the queries of :class:`Store`
(:meth:`Store.detections_since`, :meth:`Store.occupancy_series`, :meth:`Store.last_processed`).

Tables (schema version :data:`SCHEMA_VERSION`, kept in ``PRAGMA user_version``; older files are
upgraded by the steps in :data:`MIGRATIONS`, a newer file is refused):

- ``sites``: per site the co-registration reference date (all stored shifts are relative to
  it), whether the outputs (GeoJSON, metrics) must still be brought up to date, and whether its
  history was adopted from ``dvc repro`` outputs or built by watch.
- ``processed_items``: every Item seen (``done``, ``adopted``, ``late`` = arrived for a date
  already processed, ``retry`` / ``failed`` = an asset could not be read), with its asset hrefs
  **without query strings** (signing tokens are never stored).
- ``dates``: every acquisition date: ``kept`` (used), ``cloudy``, ``coreg_failed`` or
  ``read_failed``, with its valid fraction, shift, quality and the detector's pair summary.
- ``detections``: one row per object (GeoJSON properties and geometry as JSON).
- ``occupancy``: per zone and kept date, see :func:`occupancy_rows`.
- ``alerts``: one row per (detection, sink), ``pending`` until delivered, then ``sent``.

Writes happen only inside :meth:`Store.transaction` (``BEGIN IMMEDIATE`` ... ``COMMIT``, rollback
journal, ``synchronous=FULL``): a run killed mid-write leaves the previous state, which SQLite
restores from its journal on the next open. A run with nothing to do opens the file read-only
and changes nothing, not even its modification time.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import DataError

SCHEMA_VERSION = 1
"""Version of the schema this code writes (``PRAGMA user_version``)."""

_V1 = """
CREATE TABLE sites (
    site TEXT PRIMARY KEY,
    reference_date TEXT,
    outputs_dirty INTEGER NOT NULL DEFAULT 0,
    origin TEXT NOT NULL,
    simulated INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE processed_items (
    site TEXT NOT NULL,
    item_id TEXT NOT NULL,
    datetime TEXT NOT NULL,
    date TEXT NOT NULL,
    collection TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1,
    message TEXT,
    assets TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (site, item_id)
);
CREATE TABLE dates (
    site TEXT NOT NULL,
    date TEXT NOT NULL,
    status TEXT NOT NULL,
    valid_fraction REAL,
    shift_x_px REAL,
    shift_y_px REAL,
    quality REAL,
    n_valid INTEGER,
    coreg_status TEXT,
    reason TEXT,
    pair TEXT,
    PRIMARY KEY (site, date)
);
CREATE TABLE detections (
    id TEXT PRIMARY KEY,
    site TEXT NOT NULL,
    kind TEXT NOT NULL,
    date_before TEXT,
    date_after TEXT NOT NULL,
    zone TEXT,
    area_m2 REAL,
    confidence REAL,
    properties TEXT NOT NULL,
    geometry TEXT,
    origin TEXT NOT NULL
);
CREATE INDEX detections_by_site_date ON detections (site, date_after);
CREATE TABLE occupancy (
    site TEXT NOT NULL,
    zone TEXT NOT NULL,
    date TEXT NOT NULL,
    zone_area_m2 REAL NOT NULL,
    n_removed INTEGER NOT NULL,
    n_appeared INTEGER NOT NULL,
    removed_m2 REAL NOT NULL,
    appeared_m2 REAL NOT NULL,
    net_m2 REAL NOT NULL,
    cumulative_net_m2 REAL NOT NULL,
    occupancy_change REAL NOT NULL,
    PRIMARY KEY (site, zone, date)
);
CREATE TABLE alerts (
    detection_id TEXT NOT NULL REFERENCES detections (id),
    sink TEXT NOT NULL,
    site TEXT NOT NULL,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    payload TEXT NOT NULL,
    PRIMARY KEY (detection_id, sink)
);
"""


def _script(sql: str) -> Callable[[sqlite3.Connection], None]:
    # Statement by statement: executescript() would commit the migration's transaction.
    def run(conn: sqlite3.Connection) -> None:
        for statement in sql.split(";"):
            if statement.strip():
                conn.execute(statement)

    return run


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_script(_V1)]
"""``MIGRATIONS[i]`` upgrades a file of schema version ``i`` to ``i + 1`` (inside one
transaction with the version bump). Append a step for every schema change; never edit one."""

KEPT, CLOUDY, COREG_FAILED, READ_FAILED = "kept", "cloudy", "coreg_failed", "read_failed"
"""Statuses of a date."""


def _dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def store_path(cfg: Config) -> Path:
    """The database file of a config: ``watch.store``, else ``<data_dir>/watch.sqlite``."""
    return Path(cfg.watch.store) if cfg.watch.store else Path(cfg.data_dir) / "watch.sqlite"


@dataclass(frozen=True)
class SiteState:
    """What the store knows about a site."""

    reference_date: str | None
    """Co-registration reference date; stored shifts are relative to it."""
    outputs_dirty: bool
    """The GeoJSON / metrics do not yet show everything the store holds."""
    origin: str
    """``adopted`` (history taken from ``dvc repro`` outputs) or ``watch``."""
    simulated: bool
    """The site's scenes come from the simulated demo catalog."""


class Store:
    """The watch database; read-only until :meth:`transaction` needs to write.

    Parameters
    ----------
    path
        The SQLite file; it is created (with its folder) on the first write only.

    Raises
    ------
    DataError
        When the file is not a basewatch database or was written by a newer version.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._writable = False
        if self.path.exists():
            hot_journal = self.path.with_name(self.path.name + "-journal")
            if hot_journal.exists() and hot_journal.stat().st_size > 0:
                self._open_writable()  # a killed write: SQLite rolls it back on this open
            else:
                self._open_readonly()

    # ------------------------------------------------------------------------ connections

    def _connect(self, uri: str, **kw: Any) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30, **kw)
            conn.row_factory = sqlite3.Row
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise DataError(
                f"{self.path} is not a readable basewatch database ({exc}): move it away and "
                "run watch again (it rebuilds the history)"
            ) from None
        if version > SCHEMA_VERSION:
            conn.close()
            raise DataError(
                f"{self.path} has schema version {version}, newer than this basewatch "
                f"({SCHEMA_VERSION}): upgrade basewatch"
            )
        return conn

    def _open_readonly(self) -> None:
        conn = self._connect(f"file:{self.path.resolve()}?mode=ro")
        if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            conn.close()
            self._open_writable()  # needs a migration: a write
            return
        self._conn, self._writable = conn, False

    def _open_writable(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = self._connect(f"file:{self.path.resolve()}?mode=rwc")
        conn.execute("PRAGMA journal_mode=DELETE")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        for step in range(version, SCHEMA_VERSION):
            conn.execute("BEGIN IMMEDIATE")
            try:
                MIGRATIONS[step](conn)
                conn.execute(f"PRAGMA user_version = {step + 1}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self._conn, self._writable = conn, True

    def close(self) -> None:
        """Close the connection."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """Make the file writable (creating and migrating it) and run one transaction.

        Everything written inside the ``with`` block is committed together, or not at all.
        """
        if not self._writable:
            self._open_writable()
        assert self._conn is not None
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def _rows(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        if self._conn is None:
            return []
        return self._conn.execute(sql, tuple(args)).fetchall()

    def _write(self, sql: str, args: Iterable[Any] = ()) -> None:
        assert self._conn is not None and self._conn.in_transaction, "write outside transaction"
        self._conn.execute(sql, tuple(args))

    # ------------------------------------------------------------------------------ queries

    def site_state(self, site: str) -> SiteState | None:
        """The site's state, or None when watch never ran for it."""
        rows = self._rows("SELECT * FROM sites WHERE site = ?", (site,))
        if not rows:
            return None
        r = rows[0]
        return SiteState(
            r["reference_date"], bool(r["outputs_dirty"]), r["origin"], bool(r["simulated"])
        )

    def last_processed(self, site: str) -> str | None:
        """ISO datetime of the newest Item processed for ``site`` (None: none yet)."""
        rows = self._rows(
            "SELECT max(datetime) AS d FROM processed_items WHERE site = ? AND status IN "
            "('done', 'adopted', 'failed')",
            (site,),
        )
        return rows[0]["d"] if rows else None

    def processed_items(self, site: str) -> dict[str, dict[str, Any]]:
        """Item id -> ``{"status", "attempts", "date", "datetime"}`` of every Item seen."""
        rows = self._rows(
            "SELECT item_id, status, attempts, date, datetime FROM processed_items WHERE site = ?",
            (site,),
        )
        return {r["item_id"]: {k: r[k] for k in r.keys() if k != "item_id"} for r in rows}

    def dates(self, site: str, status: str | None = None) -> list[dict[str, Any]]:
        """Dates of ``site`` in order, all or those with ``status``; ``pair`` parsed."""
        sql, args = "SELECT * FROM dates WHERE site = ?", [site]
        if status is not None:
            sql, args = sql + " AND status = ?", [site, status]
        out = []
        for r in self._rows(sql + " ORDER BY date", args):
            d = dict(r)
            d["pair"] = json.loads(d["pair"]) if d["pair"] else None
            out.append(d)
        return out

    def detections_since(self, site: str, date: str | None = None) -> list[dict[str, Any]]:
        """Detections of ``site`` whose ``date_after`` is on or after ``date`` (all if None),
        as GeoJSON Features, in the order they were found."""
        sql, args = "SELECT properties, geometry FROM detections WHERE site = ?", [site]
        if date is not None:
            sql, args = sql + " AND date_after >= ?", [site, str(date)[:10]]
        return [
            {
                "type": "Feature",
                "properties": json.loads(r["properties"]),
                "geometry": json.loads(r["geometry"]) if r["geometry"] else None,
            }
            for r in self._rows(sql + " ORDER BY rowid", args)
        ]

    def occupancy_series(self, site: str, zone: str | None = None) -> list[dict[str, Any]]:
        """Occupancy rows of ``site`` (one zone, or all), by zone then date."""
        sql, args = "SELECT * FROM occupancy WHERE site = ?", [site]
        if zone is not None:
            sql, args = sql + " AND zone = ?", [site, zone]
        return [dict(r) for r in self._rows(sql + " ORDER BY zone, date", args)]

    def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        """Alert rows (all, or with ``status``), ``payload`` parsed, in creation order."""
        sql, args = "SELECT * FROM alerts", []
        if status is not None:
            sql, args = sql + " WHERE status = ?", [status]
        out = []
        for r in self._rows(sql + " ORDER BY rowid", args):
            d = dict(r)
            d["payload"] = json.loads(d["payload"])
            out.append(d)
        return out

    # ------------------------------------------------------------------ writes (transaction)

    def set_site(self, site: str, reference_date: str | None, origin: str, simulated: bool) -> None:
        """Create a site, or update its reference date (its other state is kept)."""
        self._write(
            "INSERT INTO sites (site, reference_date, origin, simulated) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (site) DO UPDATE SET reference_date = excluded.reference_date",
            (site, reference_date, origin, int(simulated)),
        )

    def set_outputs_dirty(self, site: str, dirty: bool) -> None:
        """Mark the site's outputs as behind the store (or caught up)."""
        self._write("UPDATE sites SET outputs_dirty = ? WHERE site = ?", (int(dirty), site))

    def add_item(
        self,
        site: str,
        item_id: str,
        datetime: str,
        date: str,
        status: str,
        *,
        collection: str | None = None,
        assets: Mapping[str, str] | None = None,
        message: str | None = None,
    ) -> None:
        """Record an Item (hrefs must already be redacted); a retried Item counts attempts."""
        self._write(
            "INSERT INTO processed_items (site, item_id, datetime, date, collection, status, "
            "message, assets) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site, item_id) DO "
            "UPDATE SET status = excluded.status, message = excluded.message, "
            "attempts = processed_items.attempts + 1",
            (site, item_id, datetime, date, collection, status, message, _dumps(assets or {})),
        )

    def add_date(self, site: str, date: str, status: str, **fields: Any) -> None:
        """Record a date with its status and any of ``valid_fraction``, ``shift_x_px``,
        ``shift_y_px``, ``quality``, ``n_valid``, ``coreg_status``, ``reason``, ``pair``."""
        cols = ["site", "date", "status", *fields]
        vals = [site, date, status]
        vals += [_dumps(v) if k == "pair" and v is not None else v for k, v in fields.items()]
        self._write(
            f"INSERT OR REPLACE INTO dates ({', '.join(cols)}) "
            f"VALUES ({', '.join('?' for _ in cols)})",
            vals,
        )

    def add_detection(self, site: str, feature: Mapping[str, Any], origin: str) -> None:
        """Record one detection (a GeoJSON Feature whose properties hold ``id``)."""
        p = feature["properties"]
        self._write(
            "INSERT INTO detections (id, site, kind, date_before, date_after, zone, area_m2, "
            "confidence, properties, geometry, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                p["id"],
                site,
                p["kind"],
                p.get("date_before"),
                p["date_after"],
                p.get("zone"),
                p.get("area_m2"),
                p.get("confidence"),
                _dumps(p),
                _dumps(feature.get("geometry")) if feature.get("geometry") else None,
                origin,
            ),
        )

    def add_alert(self, detection_id: str, sink: str, site: str, payload: Mapping) -> None:
        """Queue an alert (``pending``); an existing one is left as it is."""
        self._write(
            "INSERT OR IGNORE INTO alerts (detection_id, sink, site, status, payload) "
            "VALUES (?, ?, ?, 'pending', ?)",
            (detection_id, sink, site, _dumps(payload)),
        )

    def mark_alert(self, detection_id: str, sink: str, status: str, error: str | None) -> None:
        """Record a delivery attempt: ``sent``, still ``pending`` or ``failed``."""
        self._write(
            "UPDATE alerts SET status = ?, last_error = ?, attempts = attempts + 1 "
            "WHERE detection_id = ? AND sink = ?",
            (status, error, detection_id, sink),
        )

    def replace_occupancy(self, site: str, rows: Iterable[Mapping[str, Any]]) -> None:
        """Replace the site's occupancy rows (see :func:`occupancy_rows`)."""
        self._write("DELETE FROM occupancy WHERE site = ?", (site,))
        for r in rows:
            cols = ["site", *r]
            self._write(
                f"INSERT INTO occupancy ({', '.join(cols)}) "
                f"VALUES ({', '.join('?' for _ in cols)})",
                [site, *r.values()],
            )


def occupancy_rows(
    detections: Iterable[Mapping[str, Any]],
    dates: Iterable[str],
    zone_areas_m2: Mapping[str, float],
) -> list[dict[str, Any]]:
    """Occupancy of each zone on each date, from the detections (a simple, stated definition).

    For zone ``z`` and kept date ``d``: ``removed_m2`` / ``appeared_m2`` = total area of the
    objects detected as removed / appeared with ``date_after == d`` whose ``zone`` is ``z`` (the
    zone an object overlaps most); ``net_m2 = appeared_m2 - removed_m2``; ``cumulative_net_m2``
    = running sum of ``net_m2`` since the first date; ``occupancy_change = cumulative_net_m2 /
    zone_area_m2``: the share of the zone's area that has been emptied (negative) or filled
    (positive) since the start of the record. It is not an absolute occupancy: what stood in
    the zone before the first date is unknown.

    Parameters
    ----------
    detections
        Detection properties (``kind``, ``zone``, ``date_after``, ``area_m2``).
    dates
        Kept dates, any order.
    zone_areas_m2
        Area of each zone (every zone gets a row per date, zeros included).

    Returns
    -------
    list of dict
        Rows ordered by zone then date.
    """
    days = sorted(set(dates))
    per: dict[tuple[str, str], dict[str, float]] = {}
    for p in detections:
        zone, day = p.get("zone"), str(p.get("date_after"))[:10]
        if zone not in zone_areas_m2 or p.get("kind") not in ("removed", "appeared"):
            continue
        acc = per.setdefault((str(zone), day), {"removed": 0.0, "appeared": 0.0, "nr": 0, "na": 0})
        acc[str(p["kind"])] += float(p.get("area_m2") or 0.0)
        acc["nr" if p["kind"] == "removed" else "na"] += 1
    rows = []
    for zone in sorted(zone_areas_m2):
        area, total = float(zone_areas_m2[zone]), 0.0
        for day in days:
            acc = per.get((zone, day), {"removed": 0.0, "appeared": 0.0, "nr": 0, "na": 0})
            net = acc["appeared"] - acc["removed"]
            total += net
            rows.append(
                {
                    "zone": zone,
                    "date": day,
                    "zone_area_m2": round(area, 1),
                    "n_removed": int(acc["nr"]),
                    "n_appeared": int(acc["na"]),
                    "removed_m2": round(acc["removed"], 1),
                    "appeared_m2": round(acc["appeared"], 1),
                    "net_m2": round(net, 1),
                    "cumulative_net_m2": round(total, 1),
                    "occupancy_change": round(total / area, 4) if area > 0 else 0.0,
                }
            )
    return rows
