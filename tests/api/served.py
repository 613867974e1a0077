"""The API on a real socket: as its own process (`python -m shipflow.api.app`), as a
deployment runs it, or served by uvicorn inside the test's process.

The process is for where the process itself is what a test looks at: whether it starts at
all, and how much memory it holds (read from /proc) while it is being sent a hostile
request. `served_in_process` is for what needs a socket but not a process.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import uvicorn

from shipflow.activities.core.settings import Settings
from shipflow.api.app import create_app
from tests.helpers import free_port, wait_until, wait_until_sync


def api_env(settings_env: dict[str, str], data_dir: Path) -> tuple[dict[str, str], str]:
    """The environment for an API process: ours minus every `SHIPFLOW_*`, plus `settings_env`."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPFLOW_")}
    env.update(
        {
            "SHIPFLOW_API_URL": f"http://127.0.0.1:{port}",
            "SHIPFLOW_DATA_DIR": str(data_dir),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(settings_env)
    return env, f"http://127.0.0.1:{port}"


@asynccontextmanager
async def served_in_process(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """The app served by uvicorn in this process on a free loopback port, behind an httpx
    client: for what needs a real socket (a stream, which httpx's ASGI transport buffers
    whole; the CLI; the server's own headers)."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        await wait_until(lambda: server.started or task.done(), timeout=20)
        assert not task.done(), "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            yield http
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 15)


class ApiProcess:
    """`python -m shipflow.api.app` in a subprocess; `rss_kb()` / `peak_rss_kb()` read /proc."""

    def __init__(self, settings_env: dict[str, str], data_dir: Path):
        env, self.url = api_env(settings_env, data_dir)
        self.log = data_dir.parent / "api.log"
        data_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "shipflow.api.app"], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        def answers() -> bool:
            if self.process.poll() is not None:
                raise AssertionError(f"the API exited: {self.log.read_text()[-2000:]}")
            try:
                return httpx.get(self.url + "/healthz", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        # Polling a port that is not open yet: there is no event to wait on.
        wait_until_sync(answers, timeout=timeout, interval=0.1, what="the API answers /healthz")

    def _status_kb(self, field: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
        raise AssertionError(f"no {field} in /proc/{self.process.pid}/status")

    def rss_kb(self) -> int:
        return self._status_kb("VmRSS")

    def peak_rss_kb(self) -> int:
        """The most resident memory the process ever had (VmHWM)."""
        return self._status_kb("VmHWM")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()
