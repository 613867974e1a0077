"""A small Chrome DevTools Protocol client: headless Chromium driven over one websocket.

Enough for tests that look at a page as a person does: open a URL, read what is shown,
click, type, wait until something appears, take a screenshot. Playwright would bring its
own browser build and a Node driver; this is ~150 lines over `websockets` and Debian's
`chromium` (installed by `infra/scripts/ensure-chromium.sh`).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from tests.helpers import wait_until_sync


class BrowserError(AssertionError):
    """The page threw, or a condition never held: an assertion failure in a test."""


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    return None


class Browser:
    """One headless Chromium process; `page()` opens a tab."""

    def __init__(self, binary: str):
        self._profile = tempfile.mkdtemp(prefix="shipflow-chromium-")
        self.process = subprocess.Popen(
            [
                binary,
                "--headless=new",
                "--no-sandbox",  # tests run as root in a container
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                f"--user-data-dir={self._profile}",
                "--window-size=1280,900",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        port_file = Path(self._profile) / "DevToolsActivePort"

        def listening() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError("chromium exited before it opened its DevTools port")
            return port_file.exists() and len(port_file.read_text().splitlines()) >= 2

        try:  # the file appears once chromium listens: nothing else to wait on
            wait_until_sync(listening, timeout=30, what="chromium opens its DevTools port")
        except BaseException:
            self.close()
            raise
        port, path = port_file.read_text().splitlines()[:2]
        self._ws = connect(f"ws://127.0.0.1:{port}{path}", max_size=64 * 1024 * 1024)
        self._ids = itertools.count(1)

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> Any:
        """Send one command and return its result (events met meanwhile are dropped)."""
        return _send(self._ws, next(self._ids), method, params, session)

    def page(self, width: int = 1280, height: int = 900) -> Page:
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        return Page(self, target, session, width, height)

    def close(self) -> None:
        try:
            self._ws.close()
        except Exception:  # closing anyway
            pass
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self._profile, ignore_errors=True)


def _send(
    ws: ClientConnection, ident: int, method: str, params: dict[str, Any] | None, session: str | None
) -> Any:
    message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
    if session:
        message["sessionId"] = session
    ws.send(json.dumps(message))
    while True:
        answer = json.loads(ws.recv(timeout=60))
        if answer.get("id") == ident:
            if "error" in answer:
                raise BrowserError(f"{method}: {answer['error']}")
            return answer.get("result", {})


class Page:
    """One tab. Every read goes through `evaluate`, i.e. what the page's DOM shows."""

    def __init__(self, browser: Browser, target: str, session: str, width: int, height: int):
        self._browser = browser
        self.target = target
        self.session = session
        self.send("Page.enable")
        self.send("Runtime.enable")
        self.resize(width, height)

    def send(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return self._browser.send(method, params, self.session)

    def resize(self, width: int, height: int) -> None:
        self.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
        )

    def goto(self, url: str, *, ready: str = "document.readyState === 'complete'") -> None:
        self.send("Page.navigate", {"url": url})
        self.wait(ready, timeout=20)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression (promises awaited)."""
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
        )
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"{expression[:200]}: {text}")
        return result["result"].get("value")

    def wait(self, expression: str, *, timeout: float = 30.0, interval: float = 0.1) -> Any:
        """Poll a JavaScript expression until it is truthy; fail (with the page's text)
        after `timeout` seconds."""

        def truthy() -> tuple[Any] | None:
            try:
                value = self.evaluate(expression)
            except BrowserError:
                return None  # e.g. the element is not rendered yet
            # An element comes back as {}: truthy here, so the result is wrapped.
            return (value,) if value or isinstance(value, dict) else None

        def page_shows() -> str:
            shown = self.evaluate("document.body ? document.body.innerText : ''") or ""
            return f"{expression}\n--- page shows:\n{shown[:3000]}"

        (value,) = wait_until_sync(truthy, timeout=timeout, interval=interval, what=page_shows)
        return value

    def text(self, selector: str = "body") -> str:
        value = self.evaluate(
            f"(document.querySelector({json.dumps(selector)}) || {{innerText: ''}}).innerText"
        )
        return str(value or "")

    def click(self, selector: str) -> None:
        """Click the first element matching `selector` (waits until it exists and is enabled)."""
        sel = json.dumps(selector)
        self.wait(f"(e => e && !e.disabled)(document.querySelector({sel}))", timeout=20)
        self.evaluate(f"document.querySelector({sel}).click()")

    def fill(self, selector: str, value: str) -> None:
        """Type `value` into an input or textarea, firing the events a keyboard would."""
        sel = json.dumps(selector)
        self.wait(f"document.querySelector({sel})", timeout=20)
        self.evaluate(
            f"(e => {{ e.focus(); e.value = {json.dumps(value)};"
            " e.dispatchEvent(new Event('input', {bubbles: true}));"
            " e.dispatchEvent(new Event('change', {bubbles: true})); })"
            f"(document.querySelector({sel}))"
        )

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = self.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": False})
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def close(self) -> None:
        try:
            self._browser.send("Target.closeTarget", {"targetId": self.target})
        except BrowserError:
            pass


def output_dir() -> Path:
    """Where browser tests keep their screenshots: `$SHIPFLOW_TEST_OUTPUT/console`
    (default `test-output/console` in the working directory)."""
    return Path(os.environ.get("SHIPFLOW_TEST_OUTPUT", "test-output")) / "console"
