"""Shared pytest fixtures."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from stac_server import search_test_items, serve_items, unavailable_reason


@pytest.fixture(scope="session")
def shared_stac_items() -> Path:
    """Real STAC Item JSON in ``../shared/data/stac_items`` (skips when absent)."""
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "stac_items"
    if not path.is_dir():
        pytest.skip(f"shared reference data not found at {path}")
    return path


@pytest.fixture(scope="session")
def stac_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a loopback STAC API (rustac + DuckDB) serving :func:`search_test_items`."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with serve_items(search_test_items(), tmp_path_factory.mktemp("stac_api")) as url:
        yield url
