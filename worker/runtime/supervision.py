"""Supervision of service instances: spawn, probe, restart, drain and stop.

Each instance has one supervision task that keeps it running for as long as it is not
stopping: it spawns the command (in a session of its own, so it outlives the runtime),
runs the startup probe, then readiness and liveness with Kubernetes semantics, and
restarts the instance with a capped backoff when it exits or fails liveness. Readiness
is what the front port routes by; `stop_instance` takes an instance out of routing
first, waits for its open connections (up to the termination grace), then stops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shipflow.activities.core.settings import inherited_environ
from shipflow.activities.targets.local import process
from shipflow.worker.runtime import probes as probing
from shipflow.worker.runtime.state import Instance, Service, revision
from shipflow.workflows.spec import LocalService, Probe

log = logging.getLogger("shipflow.runtime")

#: Poll interval of the supervision loops (process exit, rollout progress).
TICK_S = 0.02
#: Polling interval of the implicit readiness check (no readiness probe: port accepts TCP).
TCP_READY_PERIOD_S = 0.05


class Supervisor:
    """Starts and stops instances of services; `save` persists the runtime's state."""

    def __init__(self, data_dir: Path, save: Callable[[], None]):
        self.data_dir = data_dir
        self.save = save

    def start_instance(self, svc: Service, image: str, spec: LocalService) -> Instance:
        inst = Instance(
            id=uuid.uuid4().hex[:8], image=image, port=0, spec=spec, revision=revision(spec, image)
        )
        svc.instances.append(inst)
        inst.task = asyncio.create_task(self.supervise(svc, inst, adopted=False))
        return inst

    def adopt(self, svc: Service, inst: Instance) -> None:
        """Supervise an instance restored from the state file (running or to restart)."""
        svc.instances.append(inst)
        inst.task = asyncio.create_task(self.supervise(svc, inst, adopted=inst.pid > 0))

    def _env(self, inst: Instance) -> dict[str, str]:
        # The runtime's environment less shipflow's own secrets (the stack starts it with its
        # tokens and keys): an instance sees only what its spec gives it on top.
        env = {**inherited_environ(), "PORT": str(inst.port), "SHIPFLOW_IMAGE": inst.image}
        for key, value in inst.spec.env.items():
            env[key] = fill(value, inst.image, inst.port)
        return env

    def _spawn(self, svc: Service, inst: Instance) -> None:
        inst.port = process.free_port()
        inst.ready = inst.started = False
        log_path = self.data_dir / "logs" / f"{svc.name}-{inst.id}.log"
        inst.log = str(log_path)
        try:
            inst.proc = process.spawn(
                [fill(part, inst.image, inst.port) for part in inst.spec.command],
                cwd=inst.spec.cwd,
                env=self._env(inst),
                log_path=log_path,
                masked=svc.masked,
            )
        except OSError as e:
            inst.proc = None
            inst.pid = 0
            inst.last_problem = f"cannot start {inst.spec.command[0]!r}: {e.strerror or e}"
            return
        inst.pid = inst.proc.pid
        inst.start_time = process.proc_start_time(inst.pid)
        inst.spawned_at = time.monotonic()
        self.save()

    async def supervise(self, svc: Service, inst: Instance, *, adopted: bool) -> None:
        """Keep one instance running: spawn, probe, restart on exit or liveness failure."""
        if not adopted:
            self._spawn(svc, inst)
        while not inst.stopping:
            try:
                reason = await self._watch(svc, inst) if inst.pid else inst.last_problem
            except Exception as e:  # a bug in a probe must not end supervision silently
                log.exception("%s/%s supervision error", svc.name, inst.id)
                reason = f"supervision error: {e!r}"
            if inst.stopping:
                return
            inst.ready = inst.started = False
            if inst.pid and not process.exited(inst.proc, inst.pid, inst.start_time):
                process.signal_group(inst.pid, signal.SIGKILL)
                await self.wait_exit(inst, 2.0)
            if inst.proc is not None:
                inst.last_exit = inst.proc.returncode
            inst.restarts += 1
            inst.last_problem = reason
            log.warning("%s/%s restarting (%s)", svc.name, inst.id, reason)
            self.save()
            await asyncio.sleep(min(0.1 * 2 ** (inst.restarts - 1), 5.0))
            if inst.stopping:
                return
            self._spawn(svc, inst)

    async def _watch(self, svc: Service, inst: Instance) -> str:
        """Return why the instance must be restarted: it exited or failed a probe."""
        exit_task = asyncio.create_task(self.wait_exit(inst, None))
        probe_task = asyncio.create_task(self._probe(svc, inst))
        try:
            done, _ = await asyncio.wait(
                {exit_task, probe_task}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            await cancel_all(exit_task, probe_task)
        if exit_task in done:
            code = inst.proc.returncode if inst.proc is not None else None
            text = f"exited with code {code}" if code is not None else "exited"
            out = process.tail(Path(inst.log), 300)
            return text + (f"; last output: {out}" if out else "")
        return probe_task.result()

    async def wait_exit(self, inst: Instance, timeout: float | None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not process.exited(inst.proc, inst.pid, inst.start_time):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            await asyncio.sleep(TICK_S if inst.proc is not None else 0.1)
        return True

    async def _probe(self, svc: Service, inst: Instance) -> str:
        """Run startup, then readiness and liveness. Returns only on a restart-worthy failure."""
        probes = inst.spec.probes
        env = {"PORT": str(inst.port), "SHIPFLOW_IMAGE": inst.image}
        started = inst.spawned_at or time.monotonic()
        if probes.startup is not None and not inst.started:
            prober = probing.Prober(probes.startup, inst.port, env, svc.masked)
            if not await prober.run_until_decided(started):
                return f"startup probe {prober.name()} failed: {prober.last.detail}"
        inst.started = True
        readiness = asyncio.create_task(self._readiness(svc, inst, probes.readiness, env, started))
        try:
            if probes.liveness is None:
                await readiness
                return "readiness loop ended"
            prober = probing.Prober(probes.liveness, inst.port, env, svc.masked)
            await prober.ticks(started)
            while True:
                began = time.monotonic()
                await prober.step()
                if prober.failed():
                    return f"liveness probe {prober.name()} failed: {prober.last.detail}"
                await asyncio.sleep(max(0.0, prober.period - (time.monotonic() - began)))
        finally:
            await cancel_all(readiness)

    async def _readiness(
        self, svc: Service, inst: Instance, probe: Probe | None, env: dict[str, str], started: float
    ) -> None:
        if probe is None:
            # No readiness probe declared: ready once the instance port accepts TCP. A
            # process that is merely running is not yet serving, and routing to it would
            # fail requests, so the port is the least evidence that counts.
            while not inst.ready:
                if await accepts(inst.port):
                    self._set_ready(svc, inst, True)
                    break
                inst.last_problem = f"port {inst.port} does not accept connections yet"
                await asyncio.sleep(TCP_READY_PERIOD_S)
            await asyncio.Event().wait()  # stays ready; liveness and exits are watched elsewhere
            return
        prober = probing.Prober(probe, inst.port, env, svc.masked)
        await prober.ticks(started)
        while True:
            began = time.monotonic()
            await prober.step()
            if prober.passed() and not inst.ready:
                self._set_ready(svc, inst, True)
            elif prober.failed() and inst.ready:
                self._set_ready(svc, inst, False)
            if not prober.last.ok:
                inst.last_problem = f"readiness probe {prober.name()}: {prober.last.detail}"
            await asyncio.sleep(max(0.0, prober.period - (time.monotonic() - began)))

    def _set_ready(self, svc: Service, inst: Instance, ready: bool) -> None:
        if inst.stopping:
            return
        inst.ready = ready
        log.info("%s/%s %s", svc.name, inst.id, "ready" if ready else "not ready")
        self.save()

    async def stop_instance(self, svc: Service, inst: Instance) -> None:
        """Drain (leave routing, let open connections finish), SIGTERM the group, then SIGKILL."""
        inst.stopping = True
        inst.ready = False
        if inst.task is not None:
            await cancel_all(inst.task)
        self.save()
        grace = inst.spec.termination_grace.total_seconds()
        deadline = time.monotonic() + grace
        await until(lambda: inst.connections == 0, deadline)
        if inst.pid:
            process.signal_group(inst.pid, signal.SIGTERM)
            if not await self.wait_exit(inst, max(0.0, deadline - time.monotonic())):
                log.warning("%s/%s did not stop in %ss: SIGKILL", svc.name, inst.id, grace)
            process.signal_group(inst.pid, signal.SIGKILL)  # stragglers of the group
            await self.wait_exit(inst, 2.0)
        if inst in svc.instances:
            svc.instances.remove(inst)
        self.save()


async def cancel_all(*tasks: asyncio.Task[Any]) -> None:
    """Cancel tasks and wait until they are done.

    Never swallows a cancellation of the calling task itself: a supervision loop that
    ate its own cancellation would outlive the runtime's shutdown (and could even
    restart an instance while the runtime stops).
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()  # again each round: a task may have swallowed the first one
        done, pending = await asyncio.wait(pending, timeout=0.5)
        for task in done:
            if not task.cancelled():
                task.exception()  # retrieved, so asyncio does not log it as lost


async def until(condition: Callable[[], bool], deadline: float) -> bool:
    """Wait until `condition()` holds (True) or the monotonic `deadline` passes (False)."""
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(TICK_S)


def fill(text: str, image: str, port: int) -> str:
    return text.replace("{image}", image).replace("{port}", str(port))


async def accepts(port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
