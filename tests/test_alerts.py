"""Alerts: which detections alert, the JSON-lines file, the webhook, delivered once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from faults import fault_server

from pipeline.config import AlertsConfig, Config
from pipeline.errors import ConfigError
from pipeline.io import alerts
from pipeline.io.store import Store


def _feature(fid: str, kind: str = "removed", conf: float = 1.0) -> dict:
    return {
        "type": "Feature",
        "properties": {
            "id": fid,
            "kind": kind,
            "date_before": "2024-12-05",
            "date_after": "2024-12-12",
            "zone": "pier-west",
            "area_m2": 3300.0,
            "confidence": conf,
            "centroid_lon": 35.87,
            "centroid_lat": 34.91,
        },
        "geometry": None,
    }


def _cfg(tmp_path: Path, **alert_kw: object) -> Config:
    return Config(data_dir=str(tmp_path / "data"), alerts=AlertsConfig(**alert_kw))


def _queue(store: Store, cfg: Config, ids: list[str]) -> None:
    with store.transaction():
        store.set_site("tartus", None, "watch", True)
        for fid in ids:
            f = _feature(fid)
            store.add_detection("tartus", f, "watch")
            for sink in alerts.sinks(cfg):
                store.add_alert(fid, sink, "tartus", alerts.alert_payload("tartus", f, True))


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_only_confident_removals_alert() -> None:
    cfg = AlertsConfig(min_confidence=0.9)
    assert alerts.wants_alert(_feature("a")["properties"], cfg)
    assert not alerts.wants_alert(_feature("b", kind="appeared")["properties"], cfg)
    assert not alerts.wants_alert(_feature("c", conf=0.89)["properties"], cfg)
    payload = alerts.alert_payload("tartus", _feature("a"), True)
    assert payload == alerts.alert_payload("tartus", _feature("a"), True)  # deterministic
    assert payload["id"] == "alert-a" and payload["zone"] == "pier-west" and payload["simulated"]


def test_append_alerts_dedupes_and_keeps_foreign_lines(tmp_path: Path) -> None:
    path = tmp_path / "alerts.jsonl"
    path.write_text('{"id": "alert-old"}\nsomeone wrote this')  # no final newline
    assert alerts.append_alerts(path, [{"id": "alert-old"}, {"id": "alert-new"}]) == 1
    assert path.read_text().splitlines() == [
        '{"id": "alert-old"}',
        "someone wrote this",
        '{"id": "alert-new"}',
    ]
    mtime = path.stat().st_mtime_ns
    assert alerts.append_alerts(path, [{"id": "alert-new"}]) == 0
    assert path.stat().st_mtime_ns == mtime  # nothing new: untouched
    assert not list(tmp_path.glob(".alerts.jsonl.*"))  # no temporary file left


def test_file_alerts_are_sent_once_even_after_a_crash(tmp_path: Path) -> None:
    cfg = _cfg(tmp_path)
    store = Store(cfg.data_dir + "/watch.sqlite")
    _queue(store, cfg, ["t-1", "t-2"])

    def crash(point: str) -> None:
        raise KeyboardInterrupt(point)  # killed after writing the file, before recording it

    with pytest.raises(KeyboardInterrupt, match="mid-alerts"):
        alerts.deliver(store, cfg, pause=crash)
    assert [a["status"] for a in store.alerts()] == ["pending", "pending"]
    out = alerts.deliver(store, cfg)
    assert out.sent == {"file": 2} and out.pending == 0
    assert [a["id"] for a in _lines(alerts.alert_file(cfg))] == ["alert-t-1", "alert-t-2"]
    assert [a["status"] for a in store.alerts()] == ["sent", "sent"]
    again = alerts.deliver(store, cfg)
    assert again.sent == {} and len(_lines(alerts.alert_file(cfg))) == 2
    store.close()


def test_webhook_retries_then_delivers_with_an_idempotency_key(tmp_path: Path) -> None:
    with fault_server() as (url, state):
        cfg = _cfg(tmp_path, webhook_url=url + "/hook?token=SECRET", retries=3, backoff_s=0.01)
        store = Store(tmp_path / "w.sqlite")
        _queue(store, cfg, ["t-1"])
        state.set(["503", "429", "drop"])
        out = alerts.deliver(store, cfg)
        assert out.sent == {"file": 1, "webhook": 1} and not out.errors
        assert [e.fault for e in state.log] == ["503", "429", "drop", "ok"]
        ((headers, body),) = state.received
        assert headers["Idempotency-Key"] == "alert-t-1"
        assert json.loads(body)["detection_id"] == "t-1"
        assert alerts.deliver(store, cfg).sent == {}  # sent once
        assert len(state.received) == 1
        store.close()


def test_webhook_that_keeps_failing_stays_pending_then_fails(tmp_path: Path) -> None:
    with fault_server() as (url, state):
        cfg = _cfg(tmp_path, webhook_url=url + "/hook?token=SECRET", retries=1, max_attempts=2)
        store = Store(tmp_path / "w.sqlite")
        _queue(store, cfg, ["t-1"])
        state.set(["500"] * 10)
        waits: list[float] = []
        first = alerts.deliver(store, cfg, sleep=waits.append)
        assert first.pending == 1 and first.failed == 0 and waits == [1.0]
        assert "HTTP 500" in first.errors[0] and "SECRET" not in first.errors[0]
        (hook,) = [a for a in store.alerts() if a["sink"] == "webhook"]
        assert hook["status"] == "pending" and hook["attempts"] == 1
        second = alerts.deliver(store, cfg, sleep=waits.append)
        assert second.failed == 1 and second.pending == 0
        assert [a["status"] for a in store.alerts()] == ["sent", "failed"]
        assert alerts.deliver(store, cfg).failed == 0  # given up: not retried again
        store.close()


def test_unreachable_webhook_error_names_no_secret(tmp_path: Path) -> None:
    from stac_server import free_port

    cfg = AlertsConfig(retries=0, timeout_s=2)
    with pytest.raises(OSError) as err:
        alerts.post_json(f"http://127.0.0.1:{free_port()}/h?sig=SECRET", {"id": "x"}, cfg)
    assert "SECRET" not in str(err.value) and "refused" in str(err.value).lower()


def test_webhook_url_from_the_environment_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASEWATCH_WEBHOOK_URL", "https://hooks.example.org/x")
    assert alerts.webhook_url(AlertsConfig()) == "https://hooks.example.org/x"
    assert alerts.sinks(Config()) == ["file", "webhook"]
    monkeypatch.setenv("BASEWATCH_WEBHOOK_URL", "file:///etc/passwd?sig=SECRET")
    with pytest.raises(ConfigError, match=r"not an http\(s\) URL") as err:
        alerts.webhook_url(AlertsConfig())
    assert "SECRET" not in str(err.value)
    monkeypatch.delenv("BASEWATCH_WEBHOOK_URL")
    assert alerts.sinks(Config()) == ["file"]
