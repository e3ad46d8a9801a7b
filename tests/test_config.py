"""Config: defaults, the shipped params file, and one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.config import Config, load_config
from pipeline.errors import ConfigError
from pipeline.paths import site_paths

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_validate() -> None:
    cfg = load_config(ROOT / "configs" / "params.yaml")
    assert cfg.sites == ("khmeimim", "tartus")
    assert cfg.dates.start < cfg.dates.end
    assert cfg.catalog.url.endswith("catalog.json")


def test_defaults_equal_shipped_params_where_documented() -> None:
    # The shipped file may only restate or tune defaults; it must not drift silently.
    shipped = load_config(ROOT / "configs" / "params.yaml")
    assert shipped.catalog.collection == Config().catalog.collection


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("sites: [a\n", "not valid YAML"),
        ("nonsense_key: 1\n", "unknown key 'nonsense_key'"),
        ("detect: {false_alarm_rate: 2}\n", "detect.false_alarm_rate"),
        ("dates: {start: 2025-01-01, end: 2024-01-01}\n", "swap them"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("catalog: {max_cloud_cover: lots}\n", "catalog.max_cloud_cover"),
    ],
)
def test_bad_config_one_line_error(tmp_path: Path, text: str, needle: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(p)
    msg = str(info.value)
    assert needle in msg
    assert str(p) in msg
    assert "\n" not in msg


def test_missing_explicit_config_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")


def test_site_paths_layout() -> None:
    p = site_paths(Config(), "tartus", root="/x")
    assert p.items == Path("/x/data/tartus/items.json")
    assert p.metrics == Path("/x/metrics/tartus.json")
    assert p.report_html == Path("/x/reports/tartus/index.html")
