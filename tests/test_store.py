"""The watch database: schema and migrations, transactions, read-only idle use, queries."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import DataError
from pipeline.io.store import (
    CLOUDY,
    KEPT,
    MIGRATIONS,
    SCHEMA_VERSION,
    Store,
    occupancy_rows,
)

ROOT = Path(__file__).resolve().parents[1]


def _feature(fid: str, kind: str, day: str, zone: str | None, area: float, conf: float = 1.0):
    return {
        "type": "Feature",
        "properties": {
            "id": fid,
            "kind": kind,
            "date_before": "2024-12-01",
            "date_after": day,
            "zone": zone,
            "area_m2": area,
            "confidence": conf,
        },
        "geometry": {"type": "Point", "coordinates": [35.87, 34.91]},
    }


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "watch.sqlite")
    with s.transaction():
        s.set_site("tartus", "2024-12-02", "watch", True)
        for day, item, status in (
            ("2024-12-02", "A", "done"),
            ("2024-12-05", "B", "done"),
            ("2024-12-12", "C", "done"),
        ):
            s.add_item("tartus", item, f"{day}T08:30:00+00:00", day, status, assets={"red": "x"})
            s.add_date("tartus", day, KEPT, valid_fraction=0.9, shift_x_px=0.1, pair=None)
        s.add_date("tartus", "2024-12-08", CLOUDY, valid_fraction=0.1)
        s.add_detection(
            "tartus", _feature("t-1", "removed", "2024-12-05", "pier-west", 300), "watch"
        )
        s.add_detection(
            "tartus", _feature("t-2", "appeared", "2024-12-12", "pier-west", 100), "watch"
        )
        s.add_detection("tartus", _feature("t-3", "removed", "2024-12-12", None, 900), "watch")
    yield s
    s.close()


def test_new_file_has_the_schema_version_and_tables(store: Store) -> None:
    conn = sqlite3.connect(store.path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"sites", "processed_items", "dates", "detections", "occupancy", "alerts"} <= tables
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_queries(store: Store) -> None:
    assert store.last_processed("tartus") == "2024-12-12T08:30:00+00:00"
    assert store.last_processed("khmeimim") is None
    assert [f["properties"]["id"] for f in store.detections_since("tartus")] == [
        "t-1",
        "t-2",
        "t-3",
    ]
    assert [f["properties"]["id"] for f in store.detections_since("tartus", "2024-12-12")] == [
        "t-2",
        "t-3",
    ]
    assert store.detections_since("tartus", "2024-12-13") == []
    assert [d["date"] for d in store.dates("tartus", KEPT)] == [
        "2024-12-02",
        "2024-12-05",
        "2024-12-12",
    ]
    state = store.site_state("tartus")
    assert state is not None and state.reference_date == "2024-12-02" and state.simulated
    assert store.site_state("nowhere") is None


def test_reopened_file_is_read_only_and_untouched(store: Store) -> None:
    store.close()
    before = (store.path.read_bytes(), store.path.stat().st_mtime_ns)
    with Store(store.path) as again:
        assert len(again.detections_since("tartus")) == 3
        assert again.processed_items("tartus")["B"]["status"] == "done"
        with pytest.raises(AssertionError, match="outside transaction"):
            again.set_outputs_dirty("tartus", True)
    assert (store.path.read_bytes(), store.path.stat().st_mtime_ns) == before
    assert not store.path.with_name("watch.sqlite-journal").exists()


def test_missing_file_reads_as_empty_and_is_not_created(tmp_path: Path) -> None:
    with Store(tmp_path / "sub" / "none.sqlite") as s:
        assert s.site_state("tartus") is None and s.processed_items("tartus") == {}
        assert s.occupancy_series("tartus") == [] and s.alerts() == []
    assert not (tmp_path / "sub").exists()


def test_a_failed_transaction_writes_nothing(store: Store) -> None:
    with pytest.raises(RuntimeError), store.transaction():
        store.add_item("tartus", "D", "2024-12-15T08:30:00+00:00", "2024-12-15", "done")
        raise RuntimeError("crash inside the transaction")
    assert "D" not in store.processed_items("tartus")
    with pytest.raises(sqlite3.IntegrityError), store.transaction():
        store.add_item("tartus", "D", "2024-12-15T08:30:00+00:00", "2024-12-15", "done")
        store.add_detection("tartus", _feature("t-1", "removed", "2024-12-15", None, 1), "watch")
    assert "D" not in store.processed_items("tartus")


def test_retried_item_counts_attempts(store: Store) -> None:
    for _ in range(2):
        with store.transaction():
            store.add_item("tartus", "E", "2024-12-22T08:30:00+00:00", "2024-12-22", "retry")
    assert store.processed_items("tartus")["E"]["attempts"] == 2
    assert store.last_processed("tartus") == "2024-12-12T08:30:00+00:00"  # retry: not done


def test_sigkill_mid_transaction_rolls_back(store: Store) -> None:
    store.close()
    code = (
        "import os, signal\n"
        "from pipeline.io.store import Store\n"
        f"s = Store({str(store.path)!r})\n"
        "with s.transaction():\n"
        "    s.add_item('tartus', 'KILLED', '2024-12-30T00:00:00', '2024-12-30', 'done')\n"
        "    s.set_outputs_dirty('tartus', True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, timeout=60)
    assert r.returncode == -9
    assert store.path.with_name("watch.sqlite-journal").exists()  # a hot journal was left
    with Store(store.path) as again:
        assert "KILLED" not in again.processed_items("tartus")
        assert again.site_state("tartus").outputs_dirty is False
        assert again._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_old_schema_is_migrated_newer_and_garbage_are_refused(tmp_path: Path) -> None:
    old = tmp_path / "v0.sqlite"
    sqlite3.connect(old).execute("CREATE TABLE unrelated (x)").connection.commit()
    with Store(old) as s:
        assert s._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert s.site_state("tartus") is None
    newer = tmp_path / "v99.sqlite"
    conn = sqlite3.connect(newer)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(DataError, match=r"v99\.sqlite has schema version 99.*upgrade basewatch"):
        Store(newer)
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(os.urandom(4096))
    with pytest.raises(DataError, match=r"garbage\.sqlite is not a readable basewatch database"):
        Store(garbage)


def test_occupancy_definition() -> None:
    dets = [
        {"kind": "removed", "zone": "apron", "date_after": "2024-12-05", "area_m2": 300.0},
        {"kind": "removed", "zone": "apron", "date_after": "2024-12-05", "area_m2": 200.0},
        {"kind": "appeared", "zone": "apron", "date_after": "2024-12-12", "area_m2": 100.0},
        {"kind": "removed", "zone": None, "date_after": "2024-12-12", "area_m2": 999.0},
        {"kind": "removed", "zone": "elsewhere", "date_after": "2024-12-12", "area_m2": 999.0},
    ]
    rows = occupancy_rows(
        dets, ["2024-12-12", "2024-12-02", "2024-12-05"], {"apron": 1000.0, "pier": 50.0}
    )
    apron = [r for r in rows if r["zone"] == "apron"]
    assert [r["date"] for r in apron] == ["2024-12-02", "2024-12-05", "2024-12-12"]
    assert [r["net_m2"] for r in apron] == [0.0, -500.0, 100.0]
    assert [r["cumulative_net_m2"] for r in apron] == [0.0, -500.0, -400.0]
    assert [r["occupancy_change"] for r in apron] == [0.0, -0.5, -0.4]
    assert apron[1]["n_removed"] == 2 and apron[2]["n_appeared"] == 1
    pier = [r for r in rows if r["zone"] == "pier"]
    assert len(pier) == 3 and all(r["cumulative_net_m2"] == 0 for r in pier)


def test_occupancy_series_round_trip(store: Store) -> None:
    dets = [f["properties"] for f in store.detections_since("tartus")]
    rows = occupancy_rows(
        dets, [d["date"] for d in store.dates("tartus", KEPT)], {"pier-west": 2000.0}
    )
    with store.transaction():
        store.replace_occupancy("tartus", rows)
    series = store.occupancy_series("tartus", zone="pier-west")
    assert [(r["date"], r["cumulative_net_m2"]) for r in series] == [
        ("2024-12-02", 0.0),
        ("2024-12-05", -300.0),
        ("2024-12-12", -200.0),
    ]
    assert store.occupancy_series("tartus", zone="nowhere") == []
