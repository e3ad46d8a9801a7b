"""Untrusted catalogs: hostile asset hrefs are refused through the real search path (a local
catalog and a loopback STAC API), and signing tokens never reach logs, outputs, items.json or
the watch database, while the reads still use them."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pystac
import pytest
from faults import ROOT, demo_catalog, fault_server, run_cli
from stac_server import serve_items, unavailable_reason

from pipeline.errors import EXIT_CODES
from pipeline.io.catalog import redact_text, redact_url, write_items

MARK = "S3CRETsig"
"""The secret part of the token: must appear nowhere but in the requests."""
TOKEN = f"st=2024-12-01T00%3A00Z&se=2099-01-01T00%3A00Z&sp=rl&sr=c&sig={MARK}%2Bx%3D"
"""A Planetary-Computer-like SAS token."""
FIRST = "S2A_36SYD_20241202_0_L2A"


def test_redaction_helpers() -> None:
    url = f"https://u:pw@example.blob.core.windows.net/c/B04.tif?{TOKEN}#frag"
    assert redact_url(url) == "https://example.blob.core.windows.net/c/B04.tif"
    assert redact_url("/data/cat/B04.tif") == "/data/cat/B04.tif"
    text = f"cannot open '/vsicurl/{url}' (HTTP 403)"
    assert redact_text(text) == (
        "cannot open '/vsicurl/https://<redacted>@example.blob.core.windows.net/c/B04.tif"
        "?<redacted>' (HTTP 403)"
    )
    assert MARK not in redact_text(text) and "pw" not in redact_text(text)


def test_items_json_never_holds_query_strings(tmp_path: Path) -> None:
    import datetime as dt

    item = pystac.Item("x", None, None, dt.datetime(2024, 12, 2), {})
    item.add_asset("red", pystac.Asset(f"https://host/B04.tif?{TOKEN}"))
    item.add_link(pystac.Link("via", f"https://host/items/x?{TOKEN}"))
    out = write_items([item], tmp_path / "items.json")
    text = out.read_text()
    assert MARK not in text and "https://host/B04.tif" in text and "?" not in text


def _config(work: Path, url: str, **extra: Any) -> None:
    cfg = {
        "kind": "basewatch-config",
        "sites": ["tartus"],
        "catalog": {"url": url},
        "dates": {"start": "2024-12-01", "end": "2024-12-16"},
        "network": {"retries": 3, "backoff_s": 0.05, "timeout_s": 5},
        "watch": {"history_dates": 2},
        "data_dir": str(work / "data"),
        "metrics_dir": str(work / "metrics"),
        "reports_dir": str(work / "reports"),
        "seeds_dir": str(ROOT / "seeds"),
        **extra,
    }
    (work / "cfg.yaml").write_text(json.dumps(cfg))


@pytest.fixture(scope="module")
def catalog_src() -> Path:
    return demo_catalog("2024-12-01", "2025-01-02")


# ----------------------------------------------------------------------------- local catalog


def _symlink_out(item_dir: Path) -> str:
    (item_dir / "evil.tif").symlink_to("/etc/passwd")
    return "./evil.tif"


LOCAL_HOSTILE = [
    ("file-url", lambda d: "file:///etc/passwd", r"a local catalog's assets must be paths inside"),
    ("traversal", lambda d: "../../../../../../../../etc/passwd", r"resolves outside the catalog"),
    ("absolute", lambda d: "/etc/passwd", r"resolves outside the catalog folder .*traversal"),
    ("vsicurl", lambda d: "/vsicurl/http://127.0.0.1:9/x.tif", r"GDAL /vsi paths are refused"),
    ("symlink", _symlink_out, r"resolves outside the catalog folder"),
]


@pytest.mark.parametrize("name,href,why", LOCAL_HOSTILE, ids=[c[0] for c in LOCAL_HOSTILE])
def test_hostile_local_items_are_refused(
    name: str, href: Any, why: str, catalog_src: Path, tmp_path: Path
) -> None:
    shutil.copytree(catalog_src, tmp_path / "demo")
    item_dir = tmp_path / "demo" / "sentinel-2-l2a" / FIRST
    path = item_dir / f"{FIRST}.json"
    item = json.loads(path.read_text())
    item["assets"]["red"]["href"] = href(item_dir)
    path.write_text(json.dumps(item))
    _config(tmp_path, str(tmp_path / "demo" / "catalog.json"))
    r = run_cli(tmp_path, "watch")
    assert r.returncode == EXIT_CODES["CatalogError"], r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"basewatch: error: tartus: Item {FIRST} asset 'red' href "), line
    assert re.search(why, line), line
    assert "root:" not in r.stdout + r.stderr  # nothing of /etc/passwd was read
    assert not (tmp_path / "data" / "watch.sqlite").exists()


# --------------------------------------------------------------------------- loopback STAC API


def _api_items(catalog: Path, cog_url: str) -> list[pystac.Item]:
    """The catalog's Items of 2024-12-02..15 with their assets served over HTTP with a token,
    plus hostile Items in collections of their own."""
    out = []
    for path in sorted((catalog / "sentinel-2-l2a").glob("*/*.json")):
        item = pystac.Item.from_file(str(path))
        if not "20241202" <= item.id.split("_")[2] <= "20241215":
            continue
        for asset in item.assets.values():
            rel = Path(asset.get_absolute_href()).relative_to(catalog)
            asset.href = f"{cog_url}/{rel}?{TOKEN}"
        item.clear_links()
        item.collection_id = "sentinel-2-l2a"
        out.append(item)
    for collection, href in (
        ("hostile-file", "file:///etc/passwd"),
        ("hostile-vsi", "/vsicurl/http://127.0.0.1:9/secret.tif"),
    ):
        evil = out[0].clone()
        evil.id, evil.collection_id = f"EVIL_{collection}", collection
        evil.assets["red"].href = href
        out.append(evil)
    return out


@pytest.fixture(scope="module")
def signed_api(catalog_src: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    with fault_server(root=catalog_src, require=f"sig={MARK}") as (cog_url, cog):
        items = _api_items(catalog_src, cog_url)
        with serve_items(items, tmp_path_factory.mktemp("api")) as api_url:
            with fault_server(upstream=api_url, hang_s=8.0) as (proxy_url, proxy):
                yield proxy_url, proxy, cog


@pytest.mark.parametrize("collection", ["hostile-file", "hostile-vsi"])
def test_hostile_api_items_are_refused(collection: str, signed_api: Any, tmp_path: Path) -> None:
    proxy_url, _, _ = signed_api
    _config(tmp_path, proxy_url, catalog={"url": proxy_url, "collection": collection})
    r = run_cli(tmp_path, "watch")
    assert r.returncode == EXIT_CODES["CatalogError"], r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith(f"basewatch: error: tartus: Item EVIL_{collection} asset 'red' href ")
    assert "refused" in line or "must be http(s) URLs" in line


@pytest.mark.slow
def test_signed_catalog_through_faults_leaves_no_token_anywhere(
    signed_api: Any, tmp_path: Path
) -> None:
    proxy_url, proxy, cog = signed_api
    _config(tmp_path, proxy_url)
    proxy.set(["500", "429", "hang"], match=r"/search")
    cog.set(["503", "503", "500"])
    n_proxy, n_cog = len(proxy.log), len(cog.log)
    r = run_cli(tmp_path, "--debug", "watch")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("tartus: 4 new scenes, "), r.stdout
    # the search was retried through the faults; the COG reads too (GDAL_HTTP_MAX_RETRY)
    searches = [e.fault for e in proxy.log[n_proxy:] if "/search" in e.path]
    assert searches[:4] == ["500", "429", "hang", "ok"]
    cog_faults = [e.fault for e in cog.log[n_cog:]]
    assert cog_faults[:3] == ["503", "503", "500"] and cog_faults.count("ok") > 20
    # every read carried the token (the server refuses reads without it) ...
    assert all(f"sig={MARK}" in e.path for e in cog.log)
    s = run_cli(tmp_path, "--debug", "-v", "search", "--site", "tartus")
    assert s.returncode == 0, s.stderr[-3000:]
    # ... and the token is nowhere: not in the logs, the outputs, items.json or the database
    for text in (r.stdout, r.stderr, s.stdout, s.stderr):
        assert MARK not in text
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "cfg.yaml"]
    assert any(p.name == "watch.sqlite" for p in files) and any(
        p.name == "items.json" for p in files
    )
    for p in files:
        assert MARK.encode() not in p.read_bytes(), p
    items = json.loads((tmp_path / "data" / "tartus" / "items.json").read_text())
    hrefs = [a["href"] for f in items["features"] for a in f["assets"].values()]
    assert hrefs and all("?" not in h and h.startswith("http://127.0.0.1:") for h in hrefs)
