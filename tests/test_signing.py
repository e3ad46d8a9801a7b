"""Planetary Computer signing (pipeline.io.signing) against loopback servers, offline.

A loopback token endpoint and an asset server that demands its tokens (tests/sas_servers.py)
play Planetary Computer; the ``planetary-computer`` package fetches and caches the tokens. Reads
of real COGs go through GDAL; the search goes through pystac-client and the loopback STAC API.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pystac
import pytest
from faults import ROOT, demo_catalog, run_cli
from sas_servers import SasServers, serve_sas
from stac_server import serve_items, unavailable_reason
from test_load import DATE_A, DATE_C, LOAD_CFG, make_site, write_item

from pipeline.config import CatalogConfig
from pipeline.errors import AssetAccessError, CatalogError
from pipeline.io.load import load_site
from pipeline.io.signing import AssetSigner, read_signed, signer_for, signing_mode

CONTAINER = "sentinel2-l2"

pytestmark = pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")


@pytest.fixture(autouse=True)
def _fresh_token_cache() -> Iterator[None]:
    """Each test starts and ends with the package's token cache empty."""
    from planetary_computer.sas import TOKEN_CACHE

    TOKEN_CACHE.clear()
    yield
    TOKEN_CACHE.clear()


def _signer(sas: SasServers) -> AssetSigner:
    return AssetSigner(("127.0.0.1",), sas.token_url)


def test_signing_mode_from_config_and_url() -> None:
    pc = "https://planetarycomputer.microsoft.com/api/stac/v1"
    es = "https://earth-search.aws.element84.com/v1"
    assert signing_mode(CatalogConfig(url=pc)) == "planetary-computer"
    assert signing_mode(CatalogConfig(url=es)) == "none"
    assert signing_mode(CatalogConfig(url="demo_catalog/catalog.json")) == "none"
    assert signing_mode(CatalogConfig(url=pc, signing="none")) == "none"
    assert signing_mode(CatalogConfig(url=es, signing="planetary-computer")) == "planetary-computer"
    assert signer_for(CatalogConfig(url=es)) is None
    signer = signer_for(CatalogConfig(url=pc, token_url="http://127.0.0.1:9/token"))
    assert signer is not None and signer.hosts == (".blob.core.windows.net",)


def test_sign_href_fetches_caches_and_renews_tokens(tmp_path: Path) -> None:
    with serve_sas(tmp_path) as sas:
        signer = _signer(sas)
        href = f"{sas.asset_url}/{CONTAINER}/a/B04.tif"
        signed = signer.sign_href(href)
        assert signed.startswith(href + "?st=") and "&sig=" in signed
        assert sas.token_requests == [f"/127/{CONTAINER}"]
        # Cached: a second href of the container gets the same token without a request.
        other = signer.sign_href(f"{sas.asset_url}/{CONTAINER}/b/B08.tif")
        assert other.split("?")[1] == signed.split("?")[1] and len(sas.token_requests) == 1
        # An href already signed is signed again with the current token (query replaced).
        assert signer.sign_href(signed) == signed
        # Hosts that are not signed are left alone.
        assert signer.sign_href("https://sentinel-cogs.s3.amazonaws.com/x/B04.tif").count("?") == 0
        assert signer.sign_href("/data/x/B04.tif") == "/data/x/B04.tif"
        # renew() drops the cached token: the next signing fetches a new one.
        signer.renew()
        renewed = signer.sign_href(href)
        assert len(sas.token_requests) == 2 and renewed != signed
        assert sas.accepts(renewed.split("?")[1])


def test_a_token_about_to_expire_is_replaced_before_use(tmp_path: Path) -> None:
    # Tokens that live 30 s are stale to the package (it renews under 60 s left).
    with serve_sas(tmp_path, ttl_s=30) as sas:
        signer = _signer(sas)
        href = f"{sas.asset_url}/{CONTAINER}/a/B04.tif"
        first, second = signer.sign_href(href), signer.sign_href(href)
        assert len(sas.token_requests) == 2 and first != second


def test_unreachable_token_endpoint_is_a_catalog_error(tmp_path: Path) -> None:
    from stac_server import free_port

    signer = AssetSigner(("127.0.0.1",), f"http://127.0.0.1:{free_port()}/token")
    with pytest.raises(CatalogError, match=r"no SAS token for 127/sentinel2-l2 .*token_url"):
        signer.sign_href(f"http://127.0.0.1:1/{CONTAINER}/x.tif")


def test_modifier_signs_items_dicts_and_pages(tmp_path: Path) -> None:
    with serve_sas(tmp_path) as sas:
        signer = _signer(sas)
        href = f"{sas.asset_url}/{CONTAINER}/a/B04.tif"
        page = {"type": "FeatureCollection", "features": [{"assets": {"red": {"href": href}}}]}
        signer.sign_inplace(page)
        assert page["features"][0]["assets"]["red"]["href"].startswith(href + "?st=")
        item = pystac.Item("x", None, None, DATE_A, {})
        item.add_asset("red", pystac.Asset(href))
        signed = signer.sign_items([item])[0]
        assert "sig=" in signed.assets["red"].href and item.assets["red"].href == href
        signer.sign_inplace(item)
        assert "sig=" in item.assets["red"].href


# ------------------------------------------------------------------------------------------
# Reading through the asset server: signing before the read, renewal on a 403


@pytest.fixture(scope="module")
def cog_items(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[pystac.Item]]:
    folder = tmp_path_factory.mktemp("pc_cogs")
    items = [
        write_item(folder, 32636, DATE_A),
        write_item(folder, 32636, DATE_C, raster_scale=False, baseline="03.01", dn_offset=0),
    ]
    return folder, items


def _served(items: list[pystac.Item], folder: Path, asset_url: str) -> list[pystac.Item]:
    out = []
    for it in items:
        clone = it.clone()
        for asset in clone.assets.values():
            rel = Path(asset.href).relative_to(folder)
            asset.href = f"{asset_url}/{CONTAINER}/{rel}"
        out.append(clone)
    return out


def _kept(signed: list[pystac.Item]) -> list[str]:
    return load_site(signed, make_site(), LOAD_CFG)[1]["dates_kept"]


def test_unsigned_reads_are_refused_with_one_line(cog_items: Any) -> None:
    folder, items = cog_items
    with serve_sas(folder) as sas:
        served = _served(items, folder, sas.asset_url)
        with pytest.raises(AssetAccessError, match=r"HTTP 403.*catalog\.signing") as err:
            read_signed(_kept, served, None)
        assert "\n" not in str(err.value) and sas.denied


def test_reads_are_signed_just_before(cog_items: Any) -> None:
    folder, items = cog_items
    with serve_sas(folder) as sas:
        served = _served(items, folder, sas.asset_url)
        assert read_signed(_kept, served, _signer(sas)) == ["2024-11-02", "2024-11-12"]
        assert sas.served and not sas.denied
        assert len(sas.token_requests) == 1  # one container, one token
        assert all("sig=" in q for q in sas.queries)
        assert all("?" not in a.href for it in served for a in it.assets.values())  # untouched


def test_a_403_renews_the_token_once_and_reads_again(cog_items: Any) -> None:
    folder, items = cog_items
    with serve_sas(folder) as sas:
        served = _served(items, folder, sas.asset_url)
        runs: list[int] = []

        def work(signed: list[pystac.Item]) -> list[str]:
            runs.append(len(runs))
            if len(runs) == 1:
                sas.revoke_all()  # the token went stale between signing and reading
            return _kept(signed)

        assert read_signed(work, served, _signer(sas)) == ["2024-11-02", "2024-11-12"]
        assert len(runs) == 2 and len(sas.token_requests) == 2
        assert sas.denied and sas.served


def test_a_second_403_is_a_data_error_without_the_token(cog_items: Any) -> None:
    folder, items = cog_items
    with serve_sas(folder, ttl_s=-5) as sas:  # every token is expired for the server
        served = _served(items, folder, sas.asset_url)
        with pytest.raises(AssetAccessError, match=r"HTTP 403") as err:
            read_signed(_kept, served, _signer(sas))
        assert len(sas.token_requests) >= 2  # signed, then renewed once
        for sig in sas.signatures:
            assert sig not in str(err.value)
        assert "sig=" not in str(err.value)


# ------------------------------------------------------------------------------------------
# The CLI on a loopback catalog that demands tokens


@pytest.mark.slow
def test_cli_search_and_load_on_a_catalog_that_demands_tokens(tmp_path: Path) -> None:
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    catalog = demo_catalog("2024-12-01", "2025-01-02")
    with serve_sas(catalog) as sas:
        items = []
        for path in sorted((catalog / "sentinel-2-l2a").glob("*/*.json")):
            item = pystac.Item.from_file(str(path))
            if not "20241202" <= item.id.split("_")[2] <= "20241210":
                continue
            for asset in item.assets.values():
                rel = Path(asset.get_absolute_href()).relative_to(catalog)
                asset.href = f"{sas.asset_url}/{CONTAINER}/{rel}"
            item.clear_links()
            item.collection_id = "sentinel-2-l2a"
            items.append(item)
        with serve_items(items, tmp_path / "api") as api_url:
            cfg = {
                "kind": "basewatch-config",
                "sites": ["tartus"],
                "catalog": {
                    "url": api_url,
                    "signing": "planetary-computer",
                    "token_url": sas.token_url,
                    "signed_hosts": ["127.0.0.1"],
                },
                "dates": {"start": "2024-12-01", "end": "2024-12-10"},
                "network": {"retries": 1, "backoff_s": 0.05, "timeout_s": 10},
                "data_dir": str(tmp_path / "data"),
                "metrics_dir": str(tmp_path / "metrics"),
                "reports_dir": str(tmp_path / "reports"),
                "seeds_dir": str(ROOT / "seeds"),
            }
            (tmp_path / "cfg.yaml").write_text(json.dumps(cfg))
            s = run_cli(tmp_path, "--debug", "-v", "search", "--site", "tartus")
            assert s.returncode == 0, s.stderr[-3000:]
            n_search_tokens = len(sas.token_requests)
            assert n_search_tokens >= 1  # the modifier signed the search results
            sas.revoke_all()  # by the time the load runs, those tokens are stale
            ld = run_cli(tmp_path, "--debug", "-v", "load", "--site", "tartus")
            assert ld.returncode == 0, ld.stderr[-3000:]
            assert len(sas.token_requests) > n_search_tokens  # signed again before reading
            assert sas.served and all("sig=" in q for q in sas.queries)
        report = json.loads((tmp_path / "data" / "tartus" / "load.json").read_text())
        assert report["n_items"] == len(items) and report["dates_kept"]
        # No token anywhere: logs, items.json, load.json, the cube's metadata.
        sigs = sas.signatures
        assert sigs
        texts = [s.stdout, s.stderr, ld.stdout, ld.stderr]
        files = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "cfg.yaml"]
        assert any(p.name == "items.json" for p in files)
        for sig in sigs:
            for text in texts:
                assert sig not in text, [ln[:300] for ln in text.splitlines() if sig in ln][:3]
            for p in files:
                assert sig.encode() not in p.read_bytes(), p
        assert "sig=" not in (tmp_path / "data" / "tartus" / "items.json").read_text()
