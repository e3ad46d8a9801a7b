"""Signing of asset hrefs (Planetary Computer SAS tokens), right before pixels are read (I/O).

Planetary Computer serves its Sentinel-2 COGs from Azure Blob Storage only to URLs that carry a
shared-access (SAS) token in their query string. The token of one storage container comes from
a token endpoint and lives about 45 minutes; the ``planetary-computer`` package fetches it, caches
it per container and renews it when less than a minute is left
(:func:`planetary_computer.sas.get_token`). :class:`AssetSigner` uses that package for the token
and appends it to each href of a configured host:

- as the pystac-client ``modifier`` of a search (:meth:`AssetSigner.sign_inplace`), so Items
  come back signed as Planetary Computer's own examples do;
- again just before the loader reads (:meth:`AssetSigner.sign_items`): a token from the search
  is often stale by then, and ``items.json`` never holds one (``redact.redact_url``);
- and once more after an HTTP 403 on a read, with the cached token dropped
  (:meth:`AssetSigner.renew`), see :func:`read_signed`.

The token endpoint is ``catalog.token_url`` (else the package's ``PC_SDK_SAS_URL`` setting or its
default); tests point it and ``catalog.signed_hosts`` at loopback servers. Tokens are secrets:
they are never logged (``redact.redact_logs``) nor written (``catalog.write_items``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, MutableMapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pystac

from pipeline.config import CatalogConfig
from pipeline.errors import AssetAccessError, CatalogError
from pipeline.io.redact import redact_logs, redact_text

log = logging.getLogger(__name__)

PLANETARY_COMPUTER_HOST = "planetarycomputer.microsoft.com"
"""Host of the Planetary Computer STAC API: ``catalog.signing: auto`` signs for it."""


def signing_mode(catalog: CatalogConfig) -> str:
    """``"planetary-computer"`` or ``"none"``: ``catalog.signing``, with ``auto`` resolved.

    ``auto`` means planetary-computer when ``catalog.url`` is on
    :data:`PLANETARY_COMPUTER_HOST` (or a subdomain of it), none otherwise.
    """
    if catalog.signing != "auto":
        return catalog.signing
    host = (urlsplit(catalog.url).hostname or "").lower()
    on_pc = host == PLANETARY_COMPUTER_HOST or host.endswith("." + PLANETARY_COMPUTER_HOST)
    return "planetary-computer" if on_pc else "none"


def _host_matches(href: str, hosts: Iterable[str]) -> bool:
    parts = urlsplit(href)
    if parts.scheme not in ("http", "https"):
        return False
    host = (parts.hostname or "").lower()
    netloc = parts.netloc.rsplit("@", 1)[-1].lower()
    for pattern in hosts:
        p = pattern.lower()
        if p.startswith(".") and host.endswith(p):
            return True
        if p in (host, netloc):
            return True
    return False


class AssetSigner:
    """Appends a Planetary Computer SAS token to the hrefs of assets on the signed hosts.

    Parameters
    ----------
    hosts
        Hosts whose hrefs are signed (``catalog.signed_hosts``): a host name, ``host:port``, or
        a suffix starting with a dot.
    token_url
        The SAS token endpoint (``catalog.token_url``); None keeps the package's setting. A
        token of account ``a`` and container ``c`` is fetched from ``<token_url>/a/c``.

    Notes
    -----
    The account is the first label of the href's host and the container the first part of
    its path, as in ``https://<account>.blob.core.windows.net/<container>/...``. An href that
    is already signed is signed again with the current token (its query string replaced).
    """

    def __init__(self, hosts: Iterable[str], token_url: str | None = None) -> None:
        from planetary_computer.settings import Settings

        redact_logs()  # signed hrefs appear in GDAL's and rasterio's debug records
        self.hosts = tuple(hosts)
        self.token_url = token_url
        if token_url is not None:
            # The package reads its endpoint from this (cached) settings object.
            Settings.get().sas_url = token_url.rstrip("/")

    def _token_key(self, account: str, container: str) -> str:
        from planetary_computer.settings import Settings

        return f"{Settings.get().sas_url}/{account}/{container}"

    def sign_href(self, href: str) -> str:
        """``href`` with a current token, or unchanged when its host is not signed.

        Raises
        ------
        CatalogError
            When the token endpoint cannot be reached or answers with an error.
        """
        if not _host_matches(href, self.hosts):
            return href
        from planetary_computer.sas import get_token

        parts = urlsplit(href)
        bare = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
        account = (parts.hostname or "").split(".")[0]
        container = parts.path.lstrip("/").split("/", 1)[0]
        try:
            token = get_token(account, container, retry_total=2, retry_backoff_factor=0.5)
        except Exception as exc:
            msg = redact_text(str(exc).splitlines()[0][:200]) if str(exc) else type(exc).__name__
            raise CatalogError(
                f"no SAS token for {account}/{container} from "
                f"{redact_text(self._token_key(account, container))} ({msg}): check "
                "catalog.token_url and the network (a subscription key goes in "
                "PC_SDK_SUBSCRIPTION_KEY)"
            ) from None
        return str(token.sign(bare).href)

    def renew(self) -> None:
        """Forget every cached token of the signed hosts, so the next signing fetches new ones.

        Called after an HTTP 403: the server no longer accepts a token the cache still holds
        (revoked, or expired by the server's clock before the cache's).
        """
        from planetary_computer.sas import TOKEN_CACHE
        from planetary_computer.settings import Settings

        prefix = f"{Settings.get().sas_url}/"
        for key in [k for k in TOKEN_CACHE if k.startswith(prefix)]:
            del TOKEN_CACHE[key]
        log.info("signing: cached SAS tokens dropped; the next read fetches new ones")

    def _sign_assets(self, assets: MutableMapping[str, Any]) -> None:
        for asset in assets.values():
            if isinstance(asset, pystac.Asset):
                asset.href = self.sign_href(asset.href)
            elif isinstance(asset, MutableMapping) and isinstance(asset.get("href"), str):
                asset["href"] = self.sign_href(asset["href"])

    def sign_inplace(self, obj: Any) -> None:
        """Sign the assets of ``obj`` in place: a pystac-client ``modifier``.

        ``obj`` is what pystac-client hands a modifier: an Item, ItemCollection or Collection,
        or a page of search results as a dict (a FeatureCollection or one Item).
        """
        if isinstance(obj, pystac.ItemCollection):
            for item in obj:
                self._sign_assets(item.assets)
        elif isinstance(obj, pystac.Item | pystac.Collection):
            self._sign_assets(obj.assets)
        elif isinstance(obj, MutableMapping):
            features = obj.get("features")
            if isinstance(features, list):
                for feature in features:
                    if isinstance(feature, MutableMapping):
                        self._sign_assets(feature.get("assets") or {})
            elif isinstance(obj.get("assets"), Mapping):
                self._sign_assets(obj["assets"])

    def sign_items(self, items: Iterable[pystac.Item]) -> list[pystac.Item]:
        """Clones of ``items`` whose asset hrefs carry a current token (the input is untouched)."""
        out = []
        for item in items:
            clone = item.clone()
            self._sign_assets(clone.assets)
            out.append(clone)
        return out


T = TypeVar("T")


def read_signed(
    work: Callable[[list[pystac.Item]], T],
    items: Sequence[pystac.Item],
    signer: AssetSigner | None,
) -> T:
    """Run ``work`` (which reads pixels) on ``items`` signed just before; renew once on a 403.

    Parameters
    ----------
    work
        Builds and computes whatever reads the Items' assets, from the Items it is given.
    items
        The Items as searched (unsigned: ``items.json`` holds no token).
    signer
        Signs the Items' asset hrefs (:mod:`pipeline.io.signing`); None to run ``work`` as is.

    Returns
    -------
    Whatever ``work`` returns.

    Raises
    ------
    pipeline.errors.AssetAccessError
        When a read is refused again with tokens fetched anew.
    """
    if signer is None:
        return work(list(items))
    try:
        return work(signer.sign_items(items))
    except AssetAccessError as exc:
        log.info("%s: fetching new tokens and reading once more", exc)
        signer.renew()
        return work(signer.sign_items(items))


def signer_for(catalog: CatalogConfig) -> AssetSigner | None:
    """The signer ``catalog`` asks for (:func:`signing_mode`), or None when it needs none."""
    if signing_mode(catalog) == "none":
        return None
    return AssetSigner(catalog.signed_hosts, catalog.token_url)
