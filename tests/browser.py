"""A real headless Chromium driven over the DevTools protocol (websocket on 127.0.0.1), for the report tests.

    with Chromium(tmp_path) as browser:
        page = browser.open(Path("report.html"))   # console errors, page text, image sizes, a PNG screenshot

No network: the browser is told not to reach out (no sync, no component updates, no background networking).
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--hide-scrollbars",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
    "--window-size=1200,900",
]

# what the page reports about itself once loaded
PROBE = """(() => ({
  text: document.body.innerText,
  images: [...document.images].map(i => ({plot: i.dataset.plot || '', complete: i.complete,
      natural: [i.naturalWidth, i.naturalHeight], shown: [i.clientWidth, i.clientHeight]})),
  height: document.documentElement.scrollHeight,
  resources: performance.getEntriesByType('resource').map(r => r.name),
}))()"""


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


@dataclass
class Page:
    text: str
    images: list[dict[str, Any]]
    height: int
    resources: list[str]
    errors: list[str] = field(default_factory=list)
    screenshot: bytes = b""


class Chromium:
    def __init__(self, workdir: Path, timeout: float = 60) -> None:
        self.exe = find_chromium()
        if self.exe is None:
            raise RuntimeError("chromium not found; install it with `apt-get install -y chromium` (as .ci/run does)")
        self.profile = workdir / "chromium-profile"
        self.timeout = timeout
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Chromium:
        self.profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [self.exe, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + self.timeout
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {self.proc.poll()})")
            time.sleep(0.1)
        self.port = int(port_file.read_text().splitlines()[0])
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _page_ws(self) -> str:
        import urllib.request

        deadline = time.monotonic() + self.timeout
        while True:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            if pages:
                return pages[0]["webSocketDebuggerUrl"]
            if time.monotonic() > deadline:
                raise RuntimeError("chromium has no page target")
            time.sleep(0.1)

    def open(self, path: Path, width: int = 1200) -> Page:
        """Load ``path`` from disk; collect console errors, exceptions and failed loads; probe and screenshot."""
        from websockets.sync.client import connect

        errors: list[str] = []
        with connect(self._page_ws(), max_size=None, open_timeout=self.timeout) as ws:
            ids = iter(range(1, 10**6))

            def call(method: str, **params: Any) -> dict[str, Any]:
                msg_id = next(ids)
                ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
                while True:
                    msg = json.loads(ws.recv(timeout=self.timeout))
                    if msg.get("id") == msg_id:
                        if "error" in msg:
                            raise RuntimeError(f"{method}: {msg['error']}")
                        return msg.get("result", {})
                    collect(msg)

            def collect(msg: dict[str, Any]) -> str | None:
                method, p = msg.get("method"), msg.get("params", {})
                if method == "Runtime.exceptionThrown":
                    errors.append("exception: " + json.dumps(p.get("exceptionDetails", {}))[:300])
                elif method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
                    errors.append("console: " + json.dumps(p.get("args", []))[:300])
                elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
                    errors.append("log: " + p["entry"].get("text", "")[:300])
                elif method == "Network.loadingFailed":
                    errors.append("load failed: " + p.get("errorText", ""))
                return method

            for domain in ("Page", "Runtime", "Log", "Network"):
                call(f"{domain}.enable")
            call("Emulation.setDeviceMetricsOverride", width=width, height=900, deviceScaleFactor=1, mobile=False)
            call("Page.navigate", url=path.resolve().as_uri())
            deadline = time.monotonic() + self.timeout
            while collect(json.loads(ws.recv(timeout=self.timeout))) != "Page.loadEventFired":
                if time.monotonic() > deadline:
                    raise RuntimeError("the page did not finish loading")
            probe = call("Runtime.evaluate", expression=PROBE, returnByValue=True)["result"]["value"]
            shot = call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        return Page(
            probe["text"],
            probe["images"],
            probe["height"],
            probe["resources"],
            errors,
            base64.b64decode(shot["data"]),
        )
