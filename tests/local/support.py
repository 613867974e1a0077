"""Helpers of the local-target tests: a real runtime process, the demo service, a load client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.base import RolloutRequest
from shipflow.activities.targets.local.process import kill_now, pid_alive
from shipflow.activities.targets.local.target import LocalTarget
from tests.helpers import free_port, wait_until_sync

ROOT = Path(__file__).resolve().parents[2]
DEMO_APP = str(ROOT / "infra" / "demo" / "app.py")


def demo_service(
    port: int,
    *,
    replicas: int = 1,
    env: dict[str, str] | None = None,
    period: str = "0.1s",
    deadline: str = "8s",
    probes: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A `target.services` entry running the demo app, readiness on /healthz."""
    return {
        "command": [sys.executable, DEMO_APP, "--port", "{port}", "--version", "{image}"],
        "port": port,
        "replicas": replicas,
        "env": env or {},
        "termination_grace": "3s",
        "progress_deadline": deadline,
        "probes": probes
        if probes is not None
        else {"readiness": {"http": {"path": "/healthz"}, "period": period, "failure_threshold": 2}},
    }


class RuntimeProcess:
    """`python -m shipflow.worker.runtime` as a child process, restartable."""

    def __init__(self, data_dir: Path):
        self.data_dir = data_dir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = data_dir / "runtime.log"
        self.key_file = data_dir / "runtime.key"

    @property
    def key(self) -> str:
        """The key the runtime generated at its first start."""
        return self.key_file.read_text().strip()

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def settings(self, **kwargs: Any) -> Settings:
        """Worker settings that reach this runtime with its key."""
        return Settings(runtime_url=self.url, runtime_key_file=self.key_file, **kwargs)

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        out = open(self.log, "ab")  # noqa: SIM115 (the child keeps it)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shipflow.worker.runtime", "--data-dir",
             str(self.data_dir), "--port", str(self.port)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        proc = self.proc

        def answers() -> bool:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"runtime did not start: {self.log.read_text()[-2000:]}")
            return False

        try:
            wait_until_sync(
                answers,
                # Its imports alone took 15 s once on a machine at load 12 (it answers in ~2 s
                # on a quiet one): a wait on a condition costs nothing when it is fast.
                timeout=40,
                interval=0.02,
                what=lambda: f"runtime did not start: {self.log.read_text()[-2000:]}",
            )
        except BaseException:
            self.kill()  # a fixture that fails here never reaches its cleanup
            raise

    def kill(self, signum: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signum)
            self.proc.wait(10)
        self.proc = None

    def get(self, path: str) -> Any:
        return httpx.get(self.url + path, headers=self.headers, timeout=5).json()

    def service(self, name: str) -> dict[str, Any]:
        return self.get(f"/services/{name}")

    def pids(self, name: str, image: str | None = None) -> set[int]:
        return {
            i["pid"]
            for i in self.service(name)["instances"]
            if i["state"] != "stopping" and (image is None or i["image"] == image)
        }

    def saved_pids(self) -> list[int]:
        try:
            state = json.loads((self.data_dir / "state.json").read_text())
        except (OSError, ValueError):
            return []
        return [i["pid"] for s in state["services"].values() for i in s["instances"] if i["pid"]]

    def cleanup(self) -> None:
        """Remove every service (stops its instances), then the runtime; kill leftovers."""
        with contextlib.suppress(Exception):
            if self.proc is not None:
                for svc in self.get("/services"):
                    httpx.delete(f"{self.url}/services/{svc['name']}", headers=self.headers, timeout=30)
        pids = self.saved_pids()
        self.kill(signal.SIGTERM)
        for pid in pids:
            if pid_alive(pid):
                kill_now(pid)


@dataclass
class Load:
    """Clients that send GET /version through a port continuously, one connection each."""

    port: int
    results: list[tuple[float, bool, str]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    async def _one(self) -> tuple[bool, str]:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", self.port), 5
            )
            writer.write(b"GET /version HTTP/1.0\r\nHost: x\r\n\r\n")
            await writer.drain()
            data = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            head, _, body = data.partition(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.") or b" 200 " not in head.split(b"\r\n")[0] + b" ":
                return False, f"bad answer {head[:60]!r}"
            return True, json.loads(body)["version"]
        except Exception as e:
            return False, f"{type(e).__name__}: {e}"

    async def _loop(self) -> None:
        while not self._stop.is_set():
            ok, what = await self._one()
            self.results.append((time.monotonic(), ok, what))
            await asyncio.sleep(0.005)

    def start(self, clients: int = 3) -> None:
        self._tasks = [asyncio.create_task(self._loop()) for _ in range(clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def failures(self) -> list[tuple[float, bool, str]]:
        return [r for r in self.results if not r[1]]

    def versions_after(self, t: float) -> set[str]:
        return {r[2] for r in self.results if r[0] > t and r[1]}


class Beats:
    """A Progress that records what the target reports; cancellation on demand."""

    def __init__(self, resume: dict[str, Any] | None = None, cancel_when: Any = None):
        self.resume = resume
        self.beats: list[dict[str, Any]] = []
        self._cancel_when = cancel_when

    def beat(self, details: dict[str, Any]) -> None:
        self.beats.append(details)

    def cancelled(self) -> bool:
        return bool(self._cancel_when and self.beats and self._cancel_when(self.beats[-1]))


def run_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT)
    return env


def make_target(runtime: RuntimeProcess, services: dict[str, dict[str, Any]]) -> LocalTarget:
    settings = runtime.settings(data_dir=runtime.data_dir.parent / "shipflow")
    return LocalTarget({"kind": "local", "services": services}, settings)


def request(service: str, image: str, run: str = "run-1", step: str = "deploy") -> RolloutRequest:
    return RolloutRequest(run_id=run, step_id=step, service=service, image=image)
