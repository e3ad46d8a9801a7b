"""Tests of pipeline.io.progress: bars silent off a terminal, JSON logs, and `basewatch
--log-json`."""

from __future__ import annotations

import io
import json
import logging
import subprocess
import sys

import dask.array as da
import pytest
from demo_run import ROOT, demo_run

from pipeline.io import progress


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_only_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    pipe = io.StringIO()
    monkeypatch.setattr(sys, "stderr", pipe)
    assert list(progress.progress(range(5), desc="dates", unit="date")) == [0, 1, 2, 3, 4]
    assert pipe.getvalue() == ""  # cron: nothing on stderr
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    assert list(progress.progress(range(5), desc="dates", unit="date")) == [0, 1, 2, 3, 4]
    assert "dates:" in tty.getvalue() and "/5" in tty.getvalue()  # the bar was drawn
    tty_quiet = _Tty()
    monkeypatch.setattr(sys, "stderr", tty_quiet)
    progress.set_progress_enabled(False)
    try:
        assert sum(progress.progress(range(3), desc="quiet")) == 3
    finally:
        progress.set_progress_enabled(True)
    assert tty_quiet.getvalue() == ""


def test_dask_progress_counts_tasks(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = _Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    x = da.ones((40, 40), chunks=10)
    with progress.dask_progress("chunks"):
        total = float((x * 2).sum().compute(scheduler="threads"))
    assert total == 3200.0
    assert "chunks" in tty.getvalue() and "task" in tty.getvalue()


def test_json_formatter_and_configure_logging() -> None:
    stream = io.StringIO()
    progress.configure_logging(logging.INFO, json_logs=True, stream=stream)
    try:
        log = logging.getLogger("basewatch.test")
        log.info("site %s: %d Items", "tartus", 14, extra={"site": "tartus"})
        log.debug("not shown")
        try:
            raise ValueError("bad")
        except ValueError:
            log.exception("failed")
    finally:
        progress.configure_logging(logging.WARNING)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["level"] == "INFO" and first["message"] == "site tartus: 14 Items"
    assert first["logger"] == "basewatch.test" and first["site"] == "tartus"
    assert first["time"].endswith("Z")
    assert second["exc_type"] == "ValueError" and "Traceback" in second["exc_info"]


def test_cli_log_json_and_quiet() -> None:
    run = demo_run()
    cmd = [sys.executable, "-m", "pipeline.cli", "--config", str(run.config_path)]
    r = subprocess.run(
        [*cmd, "--log-json", "--verbose", "search", "--site", "tartus"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stderr.splitlines() if line.strip()]
    assert records and all({"time", "level", "logger", "message"} <= set(x) for x in records)
    assert any("Items" in x["message"] for x in records)
    assert "tartus: search:" in r.stdout
    q = subprocess.run(
        [*cmd, "--quiet", "search", "--site", "tartus"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert q.returncode == 0 and q.stderr == ""
