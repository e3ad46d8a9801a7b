"""Loopback stand-ins for Planetary Computer's SAS token endpoint and its blob storage, for tests.

:class:`SasServers` runs two HTTP servers on 127.0.0.1, sharing one set of issued tokens:

- the token endpoint ``GET /<account>/<container>`` answers like Planetary Computer's
  (``{"msft:expiry": ..., "token": "st=...&se=...&sp=rl&sig=..."}``), a new token each call;
- the asset server serves files of one folder at ``/<container>/<path>`` (HEAD, GET, byte
  ranges, as GDAL's ``/vsicurl/`` reads COGs), only with a query string holding a token it
  issued that is neither expired nor revoked; otherwise 403, as Azure answers.

Tests revoke tokens (:meth:`SasServers.revoke_all`) to play a token the server no longer takes,
and give tokens a short life (``ttl_s``) to play expiry.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class SasServers:
    """Shared state of the token endpoint and the asset server."""

    root: Path
    """Folder whose files the asset server serves (``/<container>/<path>`` -> ``root/<path>``)."""
    ttl_s: float = 2700.0
    """Life of a new token, seconds (Planetary Computer's is about 45 minutes)."""
    token_url: str = ""
    """URL of the token endpoint, set when serving."""
    asset_url: str = ""
    """Base URL of the asset server, set when serving."""
    issued: dict[str, dt.datetime] = field(default_factory=dict)
    """Signature of each issued token -> its expiry."""
    revoked: set[str] = field(default_factory=set)
    """Signatures the asset server no longer accepts."""
    token_requests: list[str] = field(default_factory=list)
    """Path of each token request, in order."""
    denied: list[str] = field(default_factory=list)
    """Path of each refused asset request."""
    served: list[str] = field(default_factory=list)
    """Path of each served asset request."""
    queries: list[str] = field(default_factory=list)
    """Query string of every asset request (for the tests that look for leaked tokens)."""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def new_token(self, path: str) -> dict[str, str]:
        """Issue a token (the token endpoint's answer)."""
        now = dt.datetime.now(dt.UTC)
        expiry = now + dt.timedelta(seconds=self.ttl_s)
        sig = secrets.token_urlsafe(24)
        with self.lock:
            self.issued[sig] = expiry
            self.token_requests.append(path)
        st, se = now.strftime("%Y-%m-%dT%H:%M:%SZ"), expiry.strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "msft:expiry": expiry.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "token": f"st={st}&se={se}&sp=rl&sv=2021-06-08&sr=c&sig={sig}",
        }

    def accepts(self, query: str) -> bool:
        """Whether a request with this query string carries a live token."""
        sig = (parse_qs(query).get("sig") or [""])[0]
        with self.lock:
            expiry = self.issued.get(sig)
            return (
                expiry is not None and sig not in self.revoked and expiry > dt.datetime.now(dt.UTC)
            )

    def revoke_all(self) -> None:
        """Stop accepting every token issued so far."""
        with self.lock:
            self.revoked |= set(self.issued)

    @property
    def signatures(self) -> list[str]:
        """The ``sig`` of every token issued so far."""
        with self.lock:
            return list(self.issued)


def _token_handler(state: SasServers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(state.new_token(self.path)).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


def _asset_handler(state: SasServers) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self, head: bool) -> None:
            parts = urlsplit(self.path)
            with state.lock:
                state.queries.append(parts.query)
            if not state.accepts(parts.query):
                with state.lock:
                    state.denied.append(parts.path)
                body = b"<Error><Code>AuthenticationFailed</Code></Error>"
                self.send_response(403)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if not head:
                    self.wfile.write(body)
                return
            rel = parts.path.lstrip("/").split("/", 1)[-1]
            path = (state.root / rel).resolve()
            if not path.is_file() or not path.is_relative_to(state.root.resolve()):
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            data = path.read_bytes()
            with state.lock:
                state.served.append(parts.path)
            rng = self.headers.get("Range")
            start, end = 0, len(data) - 1
            if rng and rng.startswith("bytes="):
                a, _, b = rng[6:].partition("-")
                start = int(a or 0)
                end = min(int(b) if b else len(data) - 1, len(data) - 1)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "image/tiff")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if not head:
                self.wfile.write(data[start : end + 1])

        def do_GET(self) -> None:
            self._serve(head=False)

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@contextmanager
def serve_sas(root: Path, ttl_s: float = 2700.0) -> Iterator[SasServers]:
    """Run the token endpoint and the asset server on free loopback ports.

    Yields the shared :class:`SasServers` with ``token_url`` and ``asset_url`` set.
    """
    state = SasServers(root=root, ttl_s=ttl_s)
    servers = [
        ThreadingHTTPServer(("127.0.0.1", 0), _token_handler(state)),
        ThreadingHTTPServer(("127.0.0.1", 0), _asset_handler(state)),
    ]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    state.token_url = f"http://127.0.0.1:{servers[0].server_address[1]}"
    state.asset_url = f"http://127.0.0.1:{servers[1].server_address[1]}"
    try:
        yield state
    finally:
        for s in servers:
            s.shutdown()
            s.server_close()
