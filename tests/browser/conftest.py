"""The console's browser tests: one headless Chromium and one shipflow stack per session.

The stack is the real thing on loopback: the API served by uvicorn with a token per role,
a worker on its own task queue, the local runtime for deploys, all on the session's
Temporal dev server and a SQLite database. It runs in a thread with its own event loop,
so the tests themselves are plain synchronous code driving the browser like a person.
Screenshots go to `test-output/console/` (see `tests.browser.cdp.output_dir`).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from pydantic import SecretStr

from shipflow.activities.core.client import connect
from shipflow.activities.core.settings import Settings
from shipflow.api.app import create_app
from tests.api.conftest import TOKENS, token_settings
from tests.browser.cdp import Browser, Page, chromium_binary, output_dir
from tests.conftest import TEST_PAYLOAD_KEYS
from tests.helpers import new_worker, wait_until
from tests.local.support import RuntimeProcess


class Stack:
    """API + worker in a thread of their own; `http(role)` is a client with that role's token."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="console-stack", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(60) or self._error is not None:
            raise RuntimeError(f"the console stack did not start: {self._error!r}")

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported by start()
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        client = await connect(self.settings)
        config = uvicorn.Config(
            create_app(self.settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
        server = uvicorn.Server(config)
        serving = asyncio.create_task(server.serve())
        async with new_worker(client, self.settings):

            def started() -> bool:
                if serving.done():
                    raise RuntimeError("uvicorn stopped")
                return bool(server.started)

            await wait_until(started, interval=0.02)
            port = server.servers[0].sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            self._ready.set()
            await self._stop.wait()
            server.should_exit = True
            await serving

    def close(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(30)

    def http(self, role: str = "admin") -> httpx.Client:
        return httpx.Client(
            base_url=self.url, headers={"Authorization": f"Bearer {TOKENS[role]}"}, timeout=30
        )

    def apply(self, text: str) -> None:
        with self.http() as http:
            response = http.post("/flows", content=text, headers={"Content-Type": "text/yaml"})
            assert response.status_code in (200, 201), response.text

    def start_run(self, flow: str, args: dict[str, Any], role: str = "operator") -> str:
        with self.http(role) as http:
            response = http.post(f"/flows/{flow}/runs", json={"args": args})
            assert response.status_code == 202, response.text
            run_id: str = response.json()["run_id"]
            return run_id

    def run(self, run_id: str) -> dict[str, Any]:
        with self.http("viewer") as http:
            body: dict[str, Any] = http.get(f"/runs/{run_id}").json()
            return body


@pytest.fixture(scope="session")
def chromium() -> Iterator[Browser]:
    binary = chromium_binary()
    if binary is None:
        pytest.skip("chromium is not installed (make test installs it: infra/scripts/ensure-chromium.sh)")
    browser = Browser(binary)
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture(scope="session")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RuntimeProcess]:
    rt = RuntimeProcess(tmp_path_factory.mktemp("console-runtime") / "runtime")
    rt.start()
    try:
        yield rt
    finally:
        rt.cleanup()


@pytest.fixture(scope="session")
def stack(
    temporal_address: str, runtime: RuntimeProcess, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    data = tmp_path_factory.mktemp("console") / "shipflow"
    settings = token_settings(
        Settings(
            temporal_address=temporal_address,
            data_dir=data,
            task_queue=f"tq-console-{uuid.uuid4().hex[:8]}",
            heartbeat_timeout_s=3.0,
            sticky_timeout_s=2.0,
            payload_keys=SecretStr(TEST_PAYLOAD_KEYS),
            runtime_url=runtime.url,
            runtime_key_file=runtime.key_file,
        )
    )
    served = Stack(settings)
    served.start()
    try:
        yield served
    finally:
        served.close()


@pytest.fixture
def page(chromium: Browser, stack: Stack, request: pytest.FixtureRequest) -> Iterator[Page]:
    """A fresh tab; on failure, a screenshot named after the test is kept."""
    tab = chromium.page()
    try:
        yield tab
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            tab.screenshot(output_dir() / f"FAILED-{request.node.name}.png")
        tab.close()


def login(tab: Page, stack: Stack, role: str, path: str = "/") -> None:
    """Open `path` and log in through the form, as a person would."""
    tab.goto(stack.url + path)
    tab.evaluate("localStorage.clear()")
    tab.goto(stack.url + path)
    tab.wait("document.querySelector('#login-token')")
    tab.fill("#login-token", TOKENS[role])
    tab.click("#login button[type=submit]")
    tab.wait(f"document.querySelector('#who').innerText.includes({json.dumps(role)})")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


def shot(tab: Page, name: str) -> Path:
    return tab.screenshot(output_dir() / f"{name}.png")
