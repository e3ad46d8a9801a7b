"""Test helpers for unattended operation: a fault-injecting HTTP server, a cached demo catalog.

:func:`fault_server` listens on 127.0.0.1 and either forwards every request to an upstream
server (a reverse proxy in front of the loopback STAC API, rewriting the upstream's URLs in
the answers so clients keep coming back through it) or serves the files of a folder with HTTP
``Range`` support (COGs for GDAL). Before answering, it takes the next entry of its fault
schedule: ``"500"``, ``"503"``, ``"429"`` (an error status), ``"hang"`` (say nothing for
``hang_s`` seconds, then drop the connection), ``"drop"`` (close at once) or ``"ok"``. An empty
schedule answers normally. Every request is logged with the fault it got. With neither an
upstream nor a folder it is a webhook receiver that keeps what it was sent.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
"""The project root."""


@dataclass
class Logged:
    """One request the server received."""

    method: str
    path: str
    fault: str


@dataclass
class FaultState:
    """Schedule and log of a :class:`FaultServer` (thread-safe)."""

    schedule: list[str] = field(default_factory=list)
    match: str = ""
    hang_s: float = 5.0
    require: str = ""
    log: list[Logged] = field(default_factory=list)
    received: list[tuple[dict[str, str], bytes]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def next_fault(self, method: str, path: str) -> str:
        with self.lock:
            fault = "ok"
            if self.schedule and re.search(self.match, path):
                fault = self.schedule.pop(0)
            self.log.append(Logged(method, path, fault))
            return fault

    def set(self, schedule: Iterable[str], match: str = "") -> None:
        """Replace the schedule (applied to requests whose path matches ``match``)."""
        with self.lock:
            self.schedule, self.match = list(schedule), match


_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}


def _handler(state: FaultState, upstream: str | None, root: Path | None) -> type:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:  # quiet
            pass

        def _fault(self) -> bool:
            fault = state.next_fault(self.command, self.path)
            if fault == "ok":
                return False
            if fault == "hang":
                time.sleep(state.hang_s)
                self.close_connection = True
                return True
            if fault == "drop":
                self.close_connection = True
                return True
            body = f"injected {fault}".encode()
            self.send_response(int(fault))
            if fault == "429":
                self.send_header("Retry-After", "0")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return True

        def _body(self) -> bytes:
            n = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(n) if n else b""

        def _proxy(self, body: bytes) -> None:
            assert upstream is not None
            up = urlsplit(upstream)
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
            headers["Host"] = up.netloc
            conn.request(self.command, self.path, body=body or None, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            conn.close()
            mine = f"http://{self.server.server_address[0]}:{self.server.server_address[1]}"
            data = data.replace(upstream.rstrip("/").encode(), mine.encode())
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in _HOP:
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _file(self, head: bool) -> None:
            assert root is not None
            if state.require and state.require not in (urlsplit(self.path).query or ""):
                self.send_error(403)  # like a signed URL without its token
                return
            rel = urlsplit(self.path).path.lstrip("/")
            path = (root / rel).resolve()
            if not path.is_file() or not path.is_relative_to(root.resolve()):
                self.send_error(404)
                return
            size = path.stat().st_size
            start, end = 0, size - 1
            rng = re.match(r"bytes=(\d*)-(\d*)", self.headers.get("Range") or "")
            if rng and (rng.group(1) or rng.group(2)):
                if rng.group(1):
                    start = int(rng.group(1))
                    end = min(int(rng.group(2)), size - 1) if rng.group(2) else size - 1
                else:
                    start = max(0, size - int(rng.group(2)))
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
            else:
                self.send_response(200)
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Type", "image/tiff")
            self.send_header("Content-Length", str(end - start + 1))
            self.end_headers()
            if not head:
                with open(path, "rb") as f:
                    f.seek(start)
                    self.wfile.write(f.read(end - start + 1))

        def _receive(self, body: bytes) -> None:
            with state.lock:
                state.received.append((dict(self.headers.items()), body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def _serve(self, head: bool = False) -> None:
            try:
                body = self._body()  # always read: an unread body would poison keep-alive
                if self._fault():
                    return
                if upstream is not None:
                    self._proxy(body)
                elif root is not None:
                    self._file(head)
                else:
                    self._receive(body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def do_GET(self) -> None:
            self._serve()

        def do_POST(self) -> None:
            self._serve()

        def do_HEAD(self) -> None:
            self._serve(head=True)

    return Handler


@contextmanager
def fault_server(
    *,
    upstream: str | None = None,
    root: Path | None = None,
    hang_s: float = 5.0,
    require: str = "",
) -> Iterator[tuple[str, FaultState]]:
    """Run a fault-injecting loopback server; yield its URL and its state.

    Give ``upstream`` (a URL) to proxy, ``root`` (a folder) to serve files, or neither to
    receive: every request that gets no fault is answered 200 and kept in ``state.received``
    (headers, body), like a webhook receiver. Files are served only to requests whose query
    string holds ``require`` (a stand-in for a signing token).
    """
    state = FaultState(hang_s=hang_s, require=require)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state, upstream, root))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------ demo catalog


def _source_hash() -> str:
    h = hashlib.sha256()
    for p in sorted(
        [*(ROOT / "pipeline" / "simulate").rglob("*.py"), *(ROOT / "seeds").rglob("*")]
    ):
        if p.is_file():
            h.update(str(p.relative_to(ROOT)).encode())
            h.update(p.read_bytes())
    return h.hexdigest()[:16]


def run_cli(work: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    """``basewatch -c WORK/cfg.yaml ARGS...`` in a subprocess run in ``work``, output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "-c", str(work / "cfg.yaml"), *args],
        cwd=work,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def demo_catalog(start: str, end: str, site: str = "tartus") -> Path:
    """Folder of a demo catalog of ``site`` over ``start``..``end``, built once and cached.

    The cache (under the system temp folder) is keyed by the simulator's sources and the seeds,
    so a change to either builds a new catalog. Copy it before modifying it.
    """
    from pipeline.simulate import build_demo_catalog

    cache = Path(tempfile.gettempdir()) / f"basewatch-test-catalogs-{os.getuid()}"
    out = cache / f"{site}-{start}-{end}-{_source_hash()}"
    if (out / "catalog.json").is_file():
        return out
    cache.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache, prefix=".build-"))
    build_demo_catalog(tmp / "demo", seeds_dir=ROOT / "seeds", sites=[site], start=start, end=end)
    try:
        os.rename(tmp / "demo", out)
    except OSError:  # built meanwhile by another process
        pass
    shutil.rmtree(tmp, ignore_errors=True)
    return out


def hide_items(catalog_dir: Path, days: Iterable[str]) -> list[dict]:
    """Unlink the Items of ``days`` (``yyyymmdd``) from the collection; returns the links."""
    import json

    path = catalog_dir / "sentinel-2-l2a" / "collection.json"
    doc = json.loads(path.read_text())
    hidden = [ln for ln in doc["links"] if any(d in ln["href"] for d in days)]
    doc["links"] = [ln for ln in doc["links"] if ln not in hidden]
    path.write_text(json.dumps(doc, indent=1))
    return hidden


def show_items(catalog_dir: Path, links: list[dict]) -> None:
    """Link Items back into the collection (the "new Items" of a watch test)."""
    import json

    path = catalog_dir / "sentinel-2-l2a" / "collection.json"
    doc = json.loads(path.read_text())
    doc["links"] += links
    path.write_text(json.dumps(doc, indent=1))
