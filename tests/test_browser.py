"""Open the demo run's report in headless Chromium, as an analyst would, over the DevTools protocol.

Checks: the page loads with no console error or uncaught exception, makes no request off the
machine (only ``file:`` and ``data:`` URLs), every image loads (``naturalWidth > 0``), a click on
a header of the detections table sorts it (and a second click reverses it), the index page links
the site. A full-page screenshot is saved in the test's temporary folder.

Needs Debian's ``chromium`` (``.ci/run`` installs it) and the ``websocket-client`` package;
skips, saying which is missing, without them.
"""

from __future__ import annotations

import base64
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from demo_run import demo_run

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed: `apt-get install chromium` (the CI does it in .ci/run)",
)


class Page:
    """One Chromium tab driven over the DevTools protocol; records console errors and requests."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.events: list[dict] = []
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.call(f"{domain}.enable")

    def _record(self, msg: dict) -> None:
        method, params = msg.get("method"), msg.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            self.errors.append(json.dumps(params.get("args"))[:300])
        elif method == "Runtime.exceptionThrown":
            self.errors.append(json.dumps(params.get("exceptionDetails"))[:300])
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            self.errors.append(params["entry"].get("text", "")[:300])
        elif method == "Network.requestWillBeSent":
            self.requests.append(params["request"]["url"])
        elif method == "Network.loadingFailed":
            self.errors.append(f"loading failed: {params.get('errorText')}")
        self.events.append(msg)

    def call(self, method: str, **params: Any) -> dict:
        """Send a command and wait for its result (recording the events that arrive meanwhile)."""
        mid = next(self.ids)
        self.ws.send(json.dumps({"id": mid, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == mid:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._record(msg)

    def wait_for(self, method: str, timeout: float = 30.0) -> None:
        """Wait for an event (already received or to come)."""
        if any(e.get("method") == method for e in self.events):
            return
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            self._record(msg)
            if msg.get("method") == method:
                return
        raise TimeoutError(method)

    def open(self, url: str) -> None:
        """Navigate and wait until the page and its images have loaded."""
        self.events.clear()
        self.call("Page.navigate", url=url)
        self.wait_for("Page.loadEventFired")

    def js(self, expression: str) -> Any:
        """Evaluate JavaScript in the page and return its (JSON) value."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click at the centre of the element (scrolled into view)."""
        box = self.js(
            f"(() => {{ const e = document.querySelector({json.dumps(selector)}); "
            "e.scrollIntoView({block: 'center'}); const r = e.getBoundingClientRect(); "
            "return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        for kind in ("mousePressed", "mouseReleased"):
            self.call(
                "Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left",
                clickCount=1,
            )  # fmt: skip

    def screenshot(self, path: Path) -> None:
        """Full-page PNG."""
        size = self.js("[document.documentElement.scrollWidth, document.body.scrollHeight]")
        self.call(
            "Emulation.setDeviceMetricsOverride", width=1200, height=min(int(size[1]), 16000),
            deviceScaleFactor=1, mobile=False,
        )  # fmt: skip
        shot = self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Page]:
    pytest.importorskip("websocket", reason="needs the websocket-client package to drive Chromium")
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc = subprocess.Popen(
        [CHROMIUM, *FLAGS, "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
         f"--user-data-dir={profile}", "--window-size=1200,900", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        port_file = profile / "DevToolsActivePort"
        end = time.monotonic() + 60
        while not port_file.exists() or not port_file.read_text().strip():
            if proc.poll() is not None or time.monotonic() > end:
                pytest.fail("Chromium did not start its DevTools endpoint")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            tabs = [t for t in json.load(r) if t.get("type") == "page"]
        p = Page(tabs[0]["webSocketDebuggerUrl"])
        yield p
        p.ws.close()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _column(page: Page, index: int) -> list[str]:
    return page.js(
        "Array.from(document.querySelectorAll('#detections-table tbody tr'))"
        f".map(r => r.cells[{index}].getAttribute('data-sort') ?? r.cells[{index}].textContent)"
    )


def test_report_in_chromium(page: Page, tmp_path: Path) -> None:
    run = demo_run()
    index = run.paths.report_html
    page.open(index.as_uri())
    assert page.js("document.title").startswith("basewatch: Tartus")
    assert page.errors == [], page.errors
    off_machine = [u for u in page.requests if not u.startswith(("file:", "data:"))]
    assert off_machine == [], f"requests off the machine: {off_machine}"
    assert any(u.endswith("img/site_map.png") for u in page.requests)

    images = page.js(
        "Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, i.naturalWidth])"
    )
    n_features = len(json.loads(run.paths.detections.read_text())["features"])
    assert len(images) == n_features + 2  # site map, occupancy, one triptych per detection
    broken = [src for src, done, width in images if not done or width == 0]
    assert broken == [], f"images that did not load: {broken}"

    headers = page.js(
        "Array.from(document.querySelectorAll('#detections-table thead th'))"
        ".map(h => h.textContent)"
    )
    col = headers.index("area_m2")
    page.click(f"#detections-table thead th:nth-child({col + 1})")
    asc = [float(v) for v in _column(page, col)]
    assert asc == sorted(asc)
    assert page.js(f"document.querySelectorAll('#detections-table th')[{col}]"
                   ".getAttribute('aria-sort')") == "ascending"  # fmt: skip
    page.click(f"#detections-table thead th:nth-child({col + 1})")
    desc = [float(v) for v in _column(page, col)]
    assert desc == sorted(asc, reverse=True)
    kinds_col = headers.index("kind")
    page.click(f"#detections-table thead th:nth-child({kinds_col + 1})")
    kinds = _column(page, kinds_col)
    assert kinds == sorted(kinds)
    assert page.errors == [], page.errors

    shot = tmp_path / "report.png"
    page.screenshot(shot)
    assert shot.stat().st_size > 50_000

    page.open((index.parent.parent / "index.html").as_uri())
    assert page.js("document.querySelector(\"a[href='tartus/index.html']\") !== null")
    assert page.errors == [] and all(u.startswith(("file:", "data:")) for u in page.requests), (
        page.requests
    )
