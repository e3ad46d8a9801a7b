"""A loopback STAC API for tests: ``rustac serve`` over stac-geoparquet, DuckDB backend.

rustac's in-memory backend ignores CQL2 ``filter`` (a filtered search returns nothing), so the
Items are translated to stac-geoparquet and served with DuckDB, which supports ``filter``,
``intersects``, ``datetime`` and ``collections``. DuckDB loads its spatial extension from
``~/.duckdb/extensions``; offline it must come from the ``rustac-duckdb-extensions`` wheel, so
the server runs with a private HOME whose ``.duckdb/extensions`` links to that wheel's folder.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pystac

RUSTAC = Path(sys.executable).parent / "rustac"
"""The rustac command-line tool installed in the venv beside the Python running the tests."""


def unavailable_reason() -> str | None:
    """Why the loopback API cannot run here (a pytest skip reason), or None if it can."""
    if not RUSTAC.is_file():
        return f"rustac CLI not found at {RUSTAC}"
    try:
        import rustac_duckdb_extensions  # noqa: F401
    except ImportError:
        return "rustac-duckdb-extensions is not installed"
    return None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _duckdb_home(workdir: Path) -> Path:
    import rustac_duckdb_extensions

    home = workdir / "home"
    (home / ".duckdb").mkdir(parents=True, exist_ok=True)
    link = home / ".duckdb" / "extensions"
    if not link.exists():
        link.symlink_to(Path(rustac_duckdb_extensions.extension_directory()))
    return home


def _answers(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextmanager
def serve_items(
    items: Iterable[pystac.Item | dict[str, Any]], workdir: Path, timeout_s: float = 60.0
) -> Iterator[str]:
    """Serve ``items`` as a STAC API on a free loopback port; yield its URL.

    Parameters
    ----------
    items
        Items (objects or dicts), each with its ``collection`` set.
    workdir
        A scratch folder for the geoparquet file, the private HOME and the server log.
    timeout_s
        How long to wait for the server to answer before giving up.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    feats = [it.to_dict() if isinstance(it, pystac.Item) else it for it in items]
    src = workdir / "items.json"
    src.write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    parquet = workdir / "items.parquet"
    subprocess.run(
        [str(RUSTAC), "translate", str(src), str(parquet)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    env = {**os.environ, "HOME": str(_duckdb_home(workdir))}
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = workdir / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [str(RUSTAC), "serve", "--addr", f"127.0.0.1:{port}", str(parquet)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + timeout_s
        while not _answers(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"rustac serve did not start: {log_path.read_text(errors='replace')[-2000:]}"
                )
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


SEARCH_AOI_LONLAT = (35.86, 34.90, 35.89, 34.92)
"""Bounds (lon/lat) of the AOI the search tests use: around the Tartus naval facility."""

_NEAR = (35.5, 34.5, 36.4, 35.3)
_FAR = (10.0, 10.0, 11.0, 11.0)


def _api_item(
    item_id: str,
    when: str,
    cloud: float | None,
    bbox: tuple[float, float, float, float] = _NEAR,
    collection: str = "sentinel-2-l2a",
    red_href: str | None = None,
) -> pystac.Item:
    import datetime as dt

    from shapely.geometry import box, mapping

    props: dict[str, Any] = {"platform": "sentinel-2b", "s2:processing_baseline": "05.10"}
    if cloud is not None:
        props["eo:cloud_cover"] = cloud
    item = pystac.Item(
        id=item_id,
        geometry=mapping(box(*bbox)),
        bbox=list(bbox),
        datetime=dt.datetime.fromisoformat(when.replace("Z", "+00:00")),
        properties=props,
        collection=collection,
    )
    for key, sid in (
        ("blue", "B02"),
        ("green", "B03"),
        ("red", "B04"),
        ("nir", "B08"),
        ("swir16", "B11"),
        ("swir22", "B12"),
        ("scl", "SCL"),
    ):
        href = f"https://example.invalid/{item_id}/{sid}.tif"
        if key == "red" and red_href is not None:
            href = red_href
        item.add_asset(key, pystac.Asset(href=href, media_type=pystac.MediaType.COG))
    return item


def search_test_items() -> list[pystac.Item]:
    """Items with known answers for the AOI :data:`SEARCH_AOI_LONLAT`, November 2024, cloud
    limit 80 %. Ids ending in ``_in`` (and the 25 ``S2C_..._fill`` Items) must be found; the
    others each fail exactly one condition. Collection ``hostile`` holds an Item whose red
    asset is ``file:///etc/passwd``."""
    items = [
        _api_item("S2B_36SYD_20241102_in", "2024-11-02T08:30:10Z", 12.0),
        _api_item("S2B_37SBU_20241102_in", "2024-11-02T08:30:10Z", 12.0),
        _api_item("S2A_36SYD_20241107_cloudy", "2024-11-07T08:30:10Z", 95.0),
        _api_item("S2A_31PDR_20241112_far", "2024-11-12T08:30:10Z", 5.0, bbox=_FAR),
        _api_item("S2B_36SYD_20241031_before", "2024-10-31T23:59:00Z", 5.0),
        _api_item("S2B_36SYD_20241130_in", "2024-11-30T23:00:00Z", 80.0),
        _api_item("S2A_36SYD_20241201_after", "2024-12-01T00:00:01Z", 5.0),
        _api_item("LC09_174036_20241115_landsat", "2024-11-15T08:10:00Z", 5.0, collection="l9"),
        _api_item("S2A_36SYD_20241115_nocloudcover", "2024-11-15T08:30:10Z", None),
        _api_item(
            "EVIL_20241110",
            "2024-11-10T08:30:10Z",
            5.0,
            collection="hostile",
            red_href="file:///etc/passwd",
        ),
    ]
    items += [
        _api_item(f"S2C_36SYD_202411{d:02d}_fill", f"2024-11-{d:02d}T08:31:00Z", 30.0)
        for d in range(3, 28)
    ]
    return items
