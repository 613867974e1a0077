"""Probes of the local runtime, with Kubernetes semantics, run in the runtime's event loop.

One call of `check` is one probe attempt (http, tcp or exec) with its timeout; `Prober`
turns attempts into the Kubernetes state machine: `initial_delay` after start, one attempt
per `period`, `success_threshold` consecutive successes to pass, `failure_threshold`
consecutive failures to fail. HTTP probes are a minimal HTTP/1.0 GET over asyncio
streams rather than an HTTP client, because the runtime probes many instances often and
only needs the status line.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Sequence
from dataclasses import dataclass

from shipflow.activities.core.settings import inherited_environ
from shipflow.workflows.redaction import redact
from shipflow.workflows.spec import Probe


@dataclass
class ProbeResult:
    ok: bool
    detail: str


def describe(probe: Probe, port: int) -> str:
    """A human name for a probe, used in errors: `http GET http://127.0.0.1:8001/healthz`."""
    if probe.http is not None:
        h = probe.http
        return f"http GET {h.scheme}://{h.host}:{h.port or port}{h.path}"
    if probe.tcp is not None:
        return f"tcp {probe.tcp.host}:{probe.tcp.port or port}"
    assert probe.exec is not None
    return "exec " + " ".join(probe.exec.command)


async def check(probe: Probe, port: int, env: dict[str, str]) -> ProbeResult:
    """Run one attempt of `probe` against an instance listening on `port`."""
    timeout = probe.timeout.total_seconds()
    try:
        # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
        # arrives as the attempt completes, and a probe loop must always be cancellable.
        async with asyncio.timeout(timeout):
            return await _attempt(probe, port, env)
    except TimeoutError:
        return ProbeResult(False, f"timed out after {timeout:g}s")
    except OSError as e:
        return ProbeResult(False, e.strerror or str(e) or type(e).__name__)


async def _attempt(probe: Probe, port: int, env: dict[str, str]) -> ProbeResult:
    if probe.http is not None:
        return await _http(probe, port)
    if probe.tcp is not None:
        _, writer = await asyncio.open_connection(probe.tcp.host, probe.tcp.port or port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return ProbeResult(True, "connected")
    assert probe.exec is not None
    return await _exec(probe.exec.command, env)


async def _http(probe: Probe, port: int) -> ProbeResult:
    h = probe.http
    assert h is not None
    context = None
    if h.scheme == "https":
        # Kubernetes does not verify certificates of https probes either.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection(h.host, h.port or port, ssl=context)
    try:
        headers = {"Host": f"{h.host}:{h.port or port}", "User-Agent": "shipflow-probe"}
        headers.update(h.headers)
        head = f"GET {h.path} HTTP/1.0\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write((head + "\r\n").encode())
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    parts = line.decode(errors="replace").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return ProbeResult(False, "no HTTP status line in the answer")
    status = int(parts[1])
    ok = status in h.status if h.status else 200 <= status < 400
    return ProbeResult(ok, f"HTTP {status}")


async def _exec(command: list[str], env: dict[str, str]) -> ProbeResult:
    proc = await asyncio.create_subprocess_exec(
        *command,
        env={**inherited_environ(), **env},
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    text = out.decode(errors="replace").strip()[-200:]
    return ProbeResult(
        proc.returncode == 0, f"exit {proc.returncode}" + (f": {text}" if text else "")
    )


class Prober:
    """The Kubernetes state machine of one probe on one instance.

    `run_until_decided` is the startup-probe form (returns once it passed or failed);
    `step` is one periodic attempt that updates the consecutive counters, which the
    readiness and liveness loops use.
    """

    def __init__(self, probe: Probe, port: int, env: dict[str, str], masked: Sequence[str] = ()):
        self.probe = probe
        self.port = port
        self.env = env
        #: The service's secret values: an exec probe's output is quoted in failures (the
        #: rollout's error, the instance's `last_problem`), so it is masked like its log.
        self.masked = masked
        self.successes = 0
        self.failures = 0
        self.last = ProbeResult(False, "not probed yet")

    @property
    def period(self) -> float:
        return self.probe.period.total_seconds()

    @property
    def initial_delay(self) -> float:
        return self.probe.initial_delay.total_seconds()

    def name(self) -> str:
        return describe(self.probe, self.port)

    async def step(self) -> ProbeResult:
        result = await check(self.probe, self.port, self.env)
        self.last = ProbeResult(result.ok, redact(result.detail, self.masked))
        if self.last.ok:
            self.successes += 1
            self.failures = 0
        else:
            self.failures += 1
            self.successes = 0
        return self.last

    def passed(self) -> bool:
        return self.successes >= self.probe.success_threshold

    def failed(self) -> bool:
        return self.failures >= self.probe.failure_threshold

    async def ticks(self, started: float) -> None:
        """Sleep until the next attempt is due: `initial_delay` after start, then each period."""
        first = started + self.initial_delay
        now = time.monotonic()
        if now < first:
            await asyncio.sleep(first - now)

    async def run_until_decided(self, started: float) -> bool:
        """Probe each period until it passed (True) or failed (False), like a startup probe."""
        await self.ticks(started)
        while True:
            began = time.monotonic()
            await self.step()
            if self.passed():
                return True
            if self.failed():
                return False
            await asyncio.sleep(max(0.0, self.period - (time.monotonic() - began)))
