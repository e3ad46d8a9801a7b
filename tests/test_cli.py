"""The CLI explains itself and turns bad input into one line and an exit code, never a traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.errors import EXIT_CODES

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    "demo-catalog", "search", "load", "coregister", "detect", "evaluate", "report", "run",
    "align", "pair", "watch", "tile",
]  # fmt: skip


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_top_level_help_lists_commands() -> None:
    r = _run("--help")
    assert r.returncode == 0
    for cmd in COMMANDS:
        assert cmd in r.stdout


@pytest.mark.parametrize("cmd", COMMANDS)
def test_subcommand_help(cmd: str) -> None:
    r = _run(cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert "Usage" in r.stdout
    # each help says what the command writes or does, not just its name
    assert len(r.stdout.split()) > 15


def test_unknown_site_is_one_line() -> None:
    r = _run("search", "--site", "atlantis")
    assert r.returncode == EXIT_CODES["SiteError"]
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1
    assert "unknown site 'atlantis'" in lines[0] and "khmeimim" in lines[0]


@pytest.mark.parametrize(
    "text",
    ["sites: [oops\n", "catalog: {urll: x}\n", "load: {chunk_px: -3}\n"],
)
def test_malformed_config_is_one_line(tmp_path: Path, text: str) -> None:
    cfg = tmp_path / "params.yaml"
    cfg.write_text(text)
    r = _run("--config", str(cfg), "search", "--site", "tartus")
    assert r.returncode == EXIT_CODES["ConfigError"]
    assert "Traceback" not in r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and str(cfg) in lines[0]


def test_missing_stage_input_names_the_stage(tmp_path: Path) -> None:
    cfg = tmp_path / "params.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nseeds_dir: {ROOT / 'seeds'}\n")
    r = _run("--config", str(cfg), "detect", "--site", "tartus", cwd=tmp_path)
    assert r.returncode == EXIT_CODES["StageInputError"], r.stderr
    assert "basewatch coregister" in r.stderr
    assert "Traceback" not in r.stderr
