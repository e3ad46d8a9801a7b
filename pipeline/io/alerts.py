"""Alerts of the watch mode: new removals above a confidence go to a file and a webhook, once.

An alert is one JSON object per detection (:func:`alert_payload`): the detection's id, site,
kind, zone, date interval, area, confidence, centroid and whether the data is simulated. No
timestamps, so the same detection always gives the same alert.

Sinks:

- **file** (always): a JSON-lines file, ``<data_dir>/alerts.jsonl`` by default. The file is
  rewritten atomically (temporary file, then rename) with the new lines appended, and an alert
  whose ``id`` is already in the file is not written again.
- **webhook** (when ``alerts.webhook_url`` or the ``$BASEWATCH_WEBHOOK_URL`` variable is set):
  an HTTP POST of the alert as JSON, with an ``Idempotency-Key`` header (the alert id), a
  timeout, and retries with exponential backoff on 429, 5xx and network errors.

Delivery is recorded in the store (:mod:`pipeline.io.store`): the alerts of a run are queued as
``pending`` in the same transaction that records their detections, then delivered, then marked
``sent``. A crash between delivering and recording gives:

- for the file: **exactly once**, since the next run sees the id in the file and only marks it;
- for the webhook: **at least once**; the receiver cannot be asked whether it got the POST, so
  the next run sends it again with the same ``Idempotency-Key`` and ``id``: a receiver that
  keeps the ids it has seen gets each alert exactly once.

A webhook that keeps failing is tried again on each run, up to ``alerts.max_attempts`` runs; the
alert is then marked ``failed`` (it stays in the file and the store).
"""

from __future__ import annotations

import json
import logging
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.client import HTTPException
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.config import AlertsConfig, Config
from pipeline.errors import ConfigError
from pipeline.io.atomic import write_text
from pipeline.io.catalog import redact_text
from pipeline.io.store import Store

log = logging.getLogger(__name__)

FILE, WEBHOOK = "file", "webhook"
"""Names of the sinks (the ``sink`` column of the store's ``alerts`` table)."""

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
"""Webhook answers that are retried; other errors are final for this run."""


def alert_file(cfg: Config) -> Path:
    """The JSON-lines alert file: ``alerts.file``, else ``<data_dir>/alerts.jsonl``."""
    return Path(cfg.alerts.file) if cfg.alerts.file else Path(cfg.data_dir) / "alerts.jsonl"


def webhook_url(cfg: AlertsConfig) -> str | None:
    """The webhook URL (``webhook_url``, else the ``webhook_url_env`` variable), or None.

    Raises
    ------
    ConfigError
        When the URL is not http(s).
    """
    url = cfg.webhook_url or os.environ.get(cfg.webhook_url_env) or None
    if url is not None and urlsplit(url).scheme not in ("http", "https"):
        raise ConfigError(
            f"alerts.webhook_url (or ${cfg.webhook_url_env}) {redact_text(url)!r} is not an "
            "http(s) URL: fix it or unset it"
        )
    return url


def sinks(cfg: Config) -> list[str]:
    """The sinks alerts go to with this config."""
    return [FILE, WEBHOOK] if webhook_url(cfg.alerts) else [FILE]


def wants_alert(properties: Mapping[str, Any], cfg: AlertsConfig) -> bool:
    """True for a removal at least ``cfg.min_confidence`` confident."""
    conf = properties.get("confidence")
    return properties.get("kind") == "removed" and conf is not None and conf >= cfg.min_confidence


def alert_payload(site: str, feature: Mapping[str, Any], simulated: bool) -> dict[str, Any]:
    """The alert of one detection (a GeoJSON Feature), deterministic."""
    p = feature["properties"]
    return {
        "id": f"alert-{p['id']}",
        "detection_id": p["id"],
        "site": site,
        "kind": p["kind"],
        "zone": p.get("zone"),
        "date_before": p.get("date_before"),
        "date_after": p.get("date_after"),
        "area_m2": p.get("area_m2"),
        "confidence": p.get("confidence"),
        "centroid_lon": p.get("centroid_lon"),
        "centroid_lat": p.get("centroid_lat"),
        "simulated": bool(simulated),
    }


# ------------------------------------------------------------------------------------ file


def _existing_ids(text: str) -> set[str]:
    ids = set()
    for line in text.splitlines():
        try:
            ids.add(str(json.loads(line)["id"]))
        except (ValueError, KeyError, TypeError):
            continue  # a line someone edited: kept as it is, never duplicated by us
    return ids


def append_alerts(path: Path, payloads: Sequence[Mapping[str, Any]]) -> int:
    """Add the alerts whose ``id`` is not yet in the JSON-lines file ``path``; atomic.

    Returns
    -------
    int
        How many lines were added (0: the file is left untouched).
    """
    old = path.read_text() if path.exists() else ""
    seen = _existing_ids(old)
    new = []
    for payload in payloads:
        if str(payload["id"]) not in seen:
            seen.add(str(payload["id"]))
            new.append(json.dumps(payload, sort_keys=True) + "\n")
    if not new:
        return 0
    if old and not old.endswith("\n"):
        old += "\n"
    write_text(path, old + "".join(new))
    return len(new)


# --------------------------------------------------------------------------------- webhook


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers else None
    try:
        return min(60.0, max(0.0, float(value))) if value is not None else None
    except ValueError:
        return None


def post_json(
    url: str,
    payload: Mapping[str, Any],
    cfg: AlertsConfig,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """POST ``payload`` as JSON; retries on 429, 5xx, timeouts and network errors.

    Raises
    ------
    OSError
        The last error, once ``cfg.retries`` retries are spent or on an answer that is not
        worth retrying (4xx other than 429). Its text never holds the URL's query string.
    """
    body = json.dumps(payload, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "Idempotency-Key": str(payload["id"]),
        "User-Agent": "basewatch-watch",
    }
    delay = cfg.backoff_s
    for attempt in range(cfg.retries + 1):
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        wait: float | None = None
        try:
            with urllib.request.urlopen(req, timeout=cfg.timeout_s) as resp:
                resp.read()
            return
        except urllib.error.HTTPError as exc:
            if exc.code not in RETRY_STATUS or attempt == cfg.retries:
                raise OSError(f"HTTP {exc.code} {exc.reason}") from None
            wait = _retry_after(exc)
        except (urllib.error.URLError, TimeoutError, ConnectionError, HTTPException) as exc:
            if attempt == cfg.retries:
                reason = getattr(exc, "reason", exc)
                raise OSError(redact_text(f"{type(exc).__name__}: {reason}")) from None
        sleep(wait if wait is not None else delay)
        delay *= 2


# -------------------------------------------------------------------------------- delivery


@dataclass
class Delivery:
    """What one delivery round did."""

    sent: dict[str, int] = field(default_factory=dict)
    """Alerts marked sent, per sink."""
    pending: int = 0
    """Alerts left pending (to retry on the next run)."""
    failed: int = 0
    """Alerts given up on in this round."""
    errors: list[str] = field(default_factory=list)
    """One line per problem, for the run's summary."""


def deliver(
    store: Store,
    cfg: Config,
    pause: Callable[[str], None] = lambda point: None,
    sleep: Callable[[float], None] = time.sleep,
) -> Delivery:
    """Deliver every pending alert of the store, and record each delivery.

    Parameters
    ----------
    store
        The watch database (written only when there is something pending).
    cfg
        The config (sinks and their settings).
    pause
        Test hook, called at ``"mid-alerts"`` after the file is written and before the store
        records it.
    sleep
        Waits between webhook retries.

    Returns
    -------
    Delivery
        Counts and problems.
    """
    out = Delivery()
    pending = store.alerts(status="pending")
    if not pending:
        return out
    to_file = [a for a in pending if a["sink"] == FILE]
    if to_file:
        path = alert_file(cfg)
        added = append_alerts(path, [a["payload"] for a in to_file])
        log.info("alerts: %d written to %s", added, path)
        pause("mid-alerts")
        with store.transaction():
            for a in to_file:
                store.mark_alert(a["detection_id"], FILE, "sent", None)
        out.sent[FILE] = len(to_file)
    to_hook = [a for a in pending if a["sink"] == WEBHOOK]
    url = webhook_url(cfg.alerts) if to_hook else None
    for a in to_hook:
        if url is None:
            out.pending += 1
            out.errors.append("webhook alerts are pending but no webhook URL is configured")
            continue
        try:
            post_json(url, a["payload"], cfg.alerts, sleep=sleep)
        except OSError as exc:
            final = a["attempts"] + 1 >= cfg.alerts.max_attempts
            with store.transaction():
                store.mark_alert(
                    a["detection_id"], WEBHOOK, "failed" if final else "pending", str(exc)
                )
            out.failed += int(final)
            out.pending += int(not final)
            host = urlsplit(url).hostname
            out.errors.append(f"webhook {host}: alert {a['payload']['id']} not delivered ({exc})")
            continue
        with store.transaction():
            store.mark_alert(a["detection_id"], WEBHOOK, "sent", None)
        out.sent[WEBHOOK] = out.sent.get(WEBHOOK, 0) + 1
    out.errors = sorted(set(out.errors), key=out.errors.index)
    return out
