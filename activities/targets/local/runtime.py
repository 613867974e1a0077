"""The local runtime: supervises service instances and owns their readiness-gated front ports.

Run: `python -m shipflow.activities.targets.local.runtime --data-dir D --port 7300`

It is its own long-lived asyncio process, apart from the worker, because services must
keep serving while workers come and go: a rollout runs here to its end even if the worker
that asked for it is killed, and the next attempt of the step finds it by its
`rollout_id` and waits for it instead of starting over (so no instance is replaced twice).

Why not supervisor, circus or honcho: they restart processes, but none routes new
connections only to instances that pass an in-process readiness probe, drains an
instance before stopping it, or rolls a version out one surge instance at a time. Those
are the whole point here, and they need the proxy, the probes and the supervision in one
event loop, which is a few hundred lines of asyncio.

State (services, desired image, instances with pid/port/image, front ports, recent
rollouts) is written to `<data-dir>/state.json` after every change (write to a temporary
file, then rename). A restarted runtime re-adopts the instances whose pid still runs (same
kernel start time, so a reused pid is not mistaken) and whose port still answers, binds
the front ports again, and resumes rollouts that were running.

HTTP API on loopback (JSON, one request per connection). Every call but `/healthz`
needs `Authorization: Bearer <key>` (see `runtime_key`: generated at first start into
`<data-dir>/runtime.key`, mode 0600, or given in `SHIPFLOW_RUNTIME_KEY`): 401 without it.
A request whose `Host` is not the runtime's own address (`127.0.0.1:PORT`,
`localhost:PORT`, the bound host) is refused with 403, so a web page cannot reach the
port by DNS rebinding. The front ports (the services' own traffic) need neither.
    GET    /healthz                                   open: liveness of the runtime only
    GET    /debug/tasks                               what every task waits on
    GET    /services                                  every service, summarized
    GET    /services/{name}                           one service and its instances
    PUT    /services/{name}/rollout                   {spec, image, rollout_id}: start or resume
    GET    /services/{name}/rollouts/{rollout_id}     progress and result
    POST   /services/{name}/rollouts/{rollout_id}/abort
    DELETE /services/{name}                           stop every instance, close the front port
Errors are `{"error": <code>, "detail": <message>}` with codes `invalid`, `not_found`,
`conflict`, `command_not_found`, `port_in_use`, `unauthorized`, `forbidden_host`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from shipflow.activities.targets.local import probes as probing
from shipflow.activities.targets.local import process
from shipflow.activities.targets.local.proxy import FrontPort
from shipflow.activities.targets.local.runtime_key import (
    KEY_ENV,
    RuntimeKeyError,
    ensure_key,
    key_matches,
)
from shipflow.workflows.spec import LocalService, Probe

log = logging.getLogger("shipflow.runtime")

#: A new instance that exits this many times during a rollout fails the rollout.
CRASH_LIMIT = 3
#: Poll interval of the supervision loops (process exit, rollout progress).
TICK_S = 0.02
#: Polling interval of the implicit readiness check (no readiness probe: port accepts TCP).
TCP_READY_PERIOD_S = 0.05
KEEP_ROLLOUTS = 20


class ApiError(Exception):
    def __init__(self, status: int, code: str, detail: str):
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


class RolloutAborted(Exception):
    pass


class RolloutError(Exception):
    pass


# ---------------------------------------------------------------- model


def revision(spec: LocalService, image: str) -> str:
    """What makes two instances interchangeable: image, command, env and cwd.

    A rollout replaces every instance of another revision, so changing a service's
    command or env in the flow rolls it out even when the image stays the same.
    """
    raw = json.dumps([image, spec.command, spec.env, spec.cwd], sort_keys=True)
    return hashlib.sha256(raw.encode()).hexdigest()[:12]


@dataclass
class Instance:
    id: str
    image: str
    port: int
    spec: LocalService
    revision: str = ""
    pid: int = 0
    start_time: int | None = None
    log: str = ""
    proc: subprocess.Popen[bytes] | None = None
    ready: bool = False
    started: bool = False  # startup probe passed (or none declared)
    stopping: bool = False
    restarts: int = 0
    last_exit: int | None = None
    last_problem: str = ""
    connections: int = 0
    task: asyncio.Task[None] | None = None
    spawned_at: float = 0.0

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "pid": self.pid,
            "port": self.port,
            "ready": self.ready,
            "state": "stopping" if self.stopping else "ready" if self.ready else "starting",
            "restarts": self.restarts,
            "last_exit": self.last_exit,
            "connections": self.connections,
            "log": self.log,
        }

    def saved(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "revision": self.revision,
            "spec": self.spec.model_dump(mode="json"),
            "port": self.port,
            "pid": self.pid,
            "start_time": self.start_time,
            "log": self.log,
            "ready": self.ready,
            "restarts": self.restarts,
            "stopping": self.stopping,
        }


@dataclass
class Rollout:
    id: str
    image: str
    previous_image: str | None
    replicas: int
    revision: str
    spec: dict[str, Any]  # the LocalService this rollout puts in place, as JSON
    previous_spec: dict[str, Any] | None
    started_at: float  # wall clock
    deadline_s: float
    progress_at: float = 0.0  # wall clock of the last progress; the deadline counts from it
    state: str = "running"  # running | succeeded | failed | aborted
    error: str | None = None
    error_code: str | None = None
    created: list[str] = field(default_factory=list)
    ended_at: float | None = None
    abort_requested: bool = False
    task: asyncio.Task[None] | None = None

    def saved(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "image": self.image,
            "previous_image": self.previous_image,
            "replicas": self.replicas,
            "revision": self.revision,
            "spec": self.spec,
            "previous_spec": self.previous_spec,
            "started_at": self.started_at,
            "deadline_s": self.deadline_s,
            "progress_at": self.progress_at,
            "state": self.state,
            "error": self.error,
            "error_code": self.error_code,
            "created": self.created,
            "ended_at": self.ended_at,
        }


@dataclass
class Service:
    name: str
    spec: LocalService
    image: str | None = None
    instances: list[Instance] = field(default_factory=list)
    rollouts: dict[str, Rollout] = field(default_factory=dict)
    front: FrontPort | None = None
    rr: int = 0

    def active_rollout(self) -> Rollout | None:
        return next((r for r in self.rollouts.values() if r.state == "running"), None)

    def pick(self, exclude: set[str]) -> Instance | None:
        """Round-robin over the instances that are ready right now."""
        ready = [i for i in self.instances if i.ready and not i.stopping and i.id not in exclude]
        if not ready:
            return None
        self.rr = (self.rr + 1) % len(ready)
        return ready[self.rr]


# ---------------------------------------------------------------- runtime


class Runtime:
    """Everything the runtime process owns. All methods run in one event loop."""

    def __init__(self, data_dir: Path, key: str):
        self.data_dir = data_dir
        self.state_path = data_dir / "state.json"
        self.services: dict[str, Service] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.key = key
        #: `Host` header values that name this runtime; set once the port is bound.
        self.hosts: set[str] = set()

    def listening_on(self, host: str, port: int) -> None:
        names = {"127.0.0.1", "localhost", "[::1]", host if ":" not in host else f"[{host}]"}
        self.hosts = {f"{name}:{port}".lower() for name in names}

    def check_access(self, path: str, headers: dict[str, str]) -> None:
        """Refuse a foreign `Host` (DNS rebinding), then a missing or wrong key.

        Raises:
            ApiError: 403 for the host, 401 for the key; neither message echoes the key.
        """
        host = headers.get("host", "").strip().lower()
        if host not in self.hosts:
            raise ApiError(
                403,
                "forbidden_host",
                f"Host {host[:100]!r} is not this runtime's address; use one of "
                f"{', '.join(sorted(self.hosts))}",
            )
        if path == "/healthz":
            return
        if not key_matches(self.key, headers.get("authorization")):
            raise ApiError(
                401,
                "unauthorized",
                "missing or wrong runtime key: send Authorization: Bearer <key> (the key is "
                f"in {self.data_dir / 'runtime.key'} or SHIPFLOW_RUNTIME_KEY)",
            )

    # ------------------------------------------------------------ persistence

    def save(self) -> None:
        data = {
            "services": {
                s.name: {
                    "spec": s.spec.model_dump(mode="json"),
                    "image": s.image,
                    "front_port": s.front.port if s.front else s.spec.port,
                    "instances": [i.saved() for i in s.instances],
                    "rollouts": [r.saved() for r in s.rollouts.values()],
                }
                for s in self.services.values()
            }
        }
        # The specs hold the services' env, which may carry secrets: owner-only file.
        tmp = self.state_path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1)
        os.replace(tmp, self.state_path)

    async def recover(self) -> None:
        """Re-adopt what a previous runtime left running, from `state.json`."""
        if not self.state_path.exists():
            return
        data = json.loads(self.state_path.read_text())
        for name, saved in data.get("services", {}).items():
            svc = Service(name=name, spec=LocalService.model_validate(saved["spec"]), image=saved["image"])
            self.services[name] = svc
            for item in saved.get("instances", []):
                spec = LocalService.model_validate(item.get("spec") or saved["spec"])
                inst = Instance(
                    id=item["id"],
                    image=item["image"],
                    port=item["port"],
                    spec=spec,
                    revision=item.get("revision") or revision(spec, item["image"]),
                    pid=item["pid"],
                    start_time=item.get("start_time"),
                    log=item.get("log", ""),
                    restarts=item.get("restarts", 0),
                )
                alive = inst.pid > 0 and process.pid_alive(inst.pid, inst.start_time)
                if item.get("stopping"):
                    # Drained and being stopped when the runtime went down: finish the stop.
                    if alive:
                        process.signal_group(inst.pid, signal.SIGTERM)
                    continue
                if alive:
                    # Still running: adopt it. One that served before the restart and still
                    # listens stays routed while its probes start again, so a runtime
                    # restart is no outage; one that was still starting is probed afresh.
                    inst.ready = bool(item.get("ready")) and await _accepts(inst.port)
                    inst.started = inst.ready
                    log.info("adopted %s pid %s on port %s", inst.id, inst.pid, inst.port)
                else:
                    inst.pid = 0  # gone while the runtime was down: started again below
                svc.instances.append(inst)
                inst.task = asyncio.create_task(self._supervise(svc, inst, adopted=inst.pid > 0))
            for item in saved.get("rollouts", []):
                ro = Rollout(**{k: v for k, v in item.items()})
                svc.rollouts[ro.id] = ro
            try:
                await self._open_front(svc, saved.get("front_port", svc.spec.port))
            except ApiError as e:
                log.error("service %s: %s", name, e.detail)
            ro_active = svc.active_rollout()
            if ro_active is not None:
                # The runtime was down, not the service: the deadline starts over.
                ro_active.progress_at = time.time()
                ro_active.task = asyncio.create_task(self._run_rollout(svc, ro_active))
        self.save()

    # ------------------------------------------------------------ front ports

    async def _open_front(self, svc: Service, port: int) -> None:
        front = FrontPort(port, svc.pick)
        try:
            await front.start()
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ApiError(
                    409,
                    "port_in_use",
                    f"front port {port} of service {svc.name!r} is already in use by another "
                    "process; stop it or choose another port",
                ) from None
            raise ApiError(409, "port_in_use", f"cannot listen on front port {port}: {e}") from None
        old = svc.front
        svc.front = front
        if old is not None:
            await old.close()

    # ------------------------------------------------------------ instances

    def _env(self, inst: Instance) -> dict[str, str]:
        env = {**os.environ, "PORT": str(inst.port), "SHIPFLOW_IMAGE": inst.image}
        for key, value in inst.spec.env.items():
            env[key] = _fill(value, inst.image, inst.port)
        return env

    def _spawn(self, svc: Service, inst: Instance) -> None:
        inst.port = process.free_port()
        inst.ready = inst.started = False
        log_path = self.data_dir / "logs" / f"{svc.name}-{inst.id}.log"
        inst.log = str(log_path)
        try:
            inst.proc = process.spawn(
                [_fill(part, inst.image, inst.port) for part in inst.spec.command],
                cwd=inst.spec.cwd,
                env=self._env(inst),
                log_path=log_path,
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

    def start_instance(self, svc: Service, image: str, spec: LocalService) -> Instance:
        inst = Instance(
            id=uuid.uuid4().hex[:8], image=image, port=0, spec=spec, revision=revision(spec, image)
        )
        svc.instances.append(inst)
        inst.task = asyncio.create_task(self._supervise(svc, inst, adopted=False))
        return inst

    async def _supervise(self, svc: Service, inst: Instance, *, adopted: bool) -> None:
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
                await self._wait_exit(inst, 2.0)
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
        exit_task = asyncio.create_task(self._wait_exit(inst, None))
        probe_task = asyncio.create_task(self._probe(svc, inst))
        try:
            done, _ = await asyncio.wait({exit_task, probe_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            await _cancel_all(exit_task, probe_task)
        if exit_task in done:
            code = inst.proc.returncode if inst.proc is not None else None
            text = f"exited with code {code}" if code is not None else "exited"
            out = process.tail(Path(inst.log), 300)
            return text + (f"; last output: {out}" if out else "")
        return probe_task.result()

    async def _wait_exit(self, inst: Instance, timeout: float | None) -> bool:
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
            prober = probing.Prober(probes.startup, inst.port, env)
            if not await prober.run_until_decided(started):
                return f"startup probe {prober.name()} failed: {prober.last.detail}"
        inst.started = True
        readiness = asyncio.create_task(self._readiness(svc, inst, probes.readiness, env, started))
        try:
            if probes.liveness is None:
                await readiness
                return "readiness loop ended"
            prober = probing.Prober(probes.liveness, inst.port, env)
            await prober.ticks(started)
            while True:
                began = time.monotonic()
                await prober.step()
                if prober.failed():
                    return f"liveness probe {prober.name()} failed: {prober.last.detail}"
                await asyncio.sleep(max(0.0, prober.period - (time.monotonic() - began)))
        finally:
            await _cancel_all(readiness)

    async def _readiness(
        self, svc: Service, inst: Instance, probe: Probe | None, env: dict[str, str], started: float
    ) -> None:
        if probe is None:
            # No readiness probe declared: ready once the instance port accepts TCP. A
            # process that is merely running is not yet serving, and routing to it would
            # fail requests, so the port is the least evidence that counts.
            while not inst.ready:
                if await _accepts(inst.port):
                    self._set_ready(svc, inst, True)
                    break
                inst.last_problem = f"port {inst.port} does not accept connections yet"
                await asyncio.sleep(TCP_READY_PERIOD_S)
            await asyncio.Event().wait()  # stays ready; liveness and exits are watched elsewhere
            return
        prober = probing.Prober(probe, inst.port, env)
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
            await _cancel_all(inst.task)
        self.save()
        grace = inst.spec.termination_grace.total_seconds()
        deadline = time.monotonic() + grace
        await _until(lambda: inst.connections == 0, deadline)
        if inst.pid:
            process.signal_group(inst.pid, signal.SIGTERM)
            if not await self._wait_exit(inst, max(0.0, deadline - time.monotonic())):
                log.warning("%s/%s did not stop in %ss: SIGKILL", svc.name, inst.id, grace)
            process.signal_group(inst.pid, signal.SIGKILL)  # stragglers of the group
            await self._wait_exit(inst, 2.0)
        if inst in svc.instances:
            svc.instances.remove(inst)
        self.save()

    # ------------------------------------------------------------ rollouts

    async def put_rollout(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        try:
            spec = LocalService.model_validate(body.get("spec"))
        except ValidationError as e:
            raise ApiError(400, "invalid", f"invalid spec of service {name!r}: {e}") from None
        image = body.get("image")
        rollout_id = body.get("rollout_id") or uuid.uuid4().hex
        if not isinstance(image, str) or not image:
            raise ApiError(400, "invalid", "image is required")
        async with self._locks.setdefault(name, asyncio.Lock()):
            svc = self.services.get(name)
            if svc is not None and rollout_id in svc.rollouts:
                return self.rollout_status(svc, svc.rollouts[rollout_id])
            self._check_command(name, spec, image)
            if svc is None:
                svc = Service(name=name, spec=spec)
                await self._open_front(svc, spec.port)
                self.services[name] = svc
            else:
                active = svc.active_rollout()
                if active is not None:
                    raise ApiError(
                        409,
                        "conflict",
                        f"service {name!r} is being rolled out to {active.image!r} by rollout "
                        f"{active.id}; wait for it to end",
                    )
                if svc.front is None or svc.front.port != spec.port:
                    await self._open_front(svc, spec.port)
            ro = Rollout(
                id=rollout_id,
                image=image,
                previous_image=svc.image,
                replicas=spec.replicas,
                revision=revision(spec, image),
                spec=spec.model_dump(mode="json"),
                previous_spec=svc.spec.model_dump(mode="json") if svc.image is not None else None,
                started_at=time.time(),
                deadline_s=spec.progress_deadline.total_seconds(),
                progress_at=time.time(),
            )
            svc.rollouts[ro.id] = ro
            while len(svc.rollouts) > KEEP_ROLLOUTS:
                svc.rollouts.pop(next(iter(svc.rollouts)))
            self.save()
            ro.task = asyncio.create_task(self._run_rollout(svc, ro))
            return self.rollout_status(svc, ro)

    def _check_command(self, name: str, spec: LocalService, image: str) -> None:
        if spec.cwd is not None and not Path(spec.cwd).is_dir():
            raise ApiError(422, "invalid", f"service {name!r}: cwd {spec.cwd!r} is not a directory")
        argv0 = _fill(spec.command[0], image, 0)
        if process.find_command(argv0, cwd=spec.cwd, env=dict(os.environ)) is None:
            raise ApiError(
                422,
                "command_not_found",
                f"service {name!r}: command {argv0!r} not found (PATH of the runtime, cwd "
                f"{spec.cwd or os.getcwd()!r})",
            )

    def rollout_status(self, svc: Service, ro: Rollout) -> dict[str, Any]:
        new = [i for i in svc.instances if i.revision == ro.revision and not i.stopping]
        public = {k: v for k, v in ro.saved().items() if k not in ("spec", "previous_spec")}
        return {
            **public,
            "rollout_id": ro.id,
            "service": svc.name,
            "updated": len(new),
            "ready": sum(1 for i in new if i.ready),
            "total": ro.replicas,
            "instances": [i.public() for i in svc.instances],
        }

    async def abort_rollout(self, svc: Service, ro: Rollout) -> dict[str, Any]:
        if ro.state == "running":
            ro.abort_requested = True
        return self.rollout_status(svc, ro)

    async def _run_rollout(self, svc: Service, ro: Rollout) -> None:
        stops: list[asyncio.Task[None]] = []
        try:
            await self._roll(svc, ro, stops)
            await asyncio.gather(*stops)
            svc.image = ro.image
            svc.spec = LocalService.model_validate(ro.spec)
            ro.state = "succeeded"
        except RolloutAborted:
            await self._revert(svc, ro)
            ro.state, ro.error = "aborted", "rollout aborted on request; the previous version serves"
        except RolloutError as e:
            await self._revert(svc, ro)
            ro.state, ro.error, ro.error_code = "failed", str(e), "not_ready"
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug must fail the rollout visibly, not hang it
            log.exception("rollout %s crashed", ro.id)
            await self._revert(svc, ro)
            ro.state, ro.error, ro.error_code = "failed", f"runtime error: {e!r}", "internal"
        finally:
            if ro.state != "running":
                ro.ended_at = time.time()
            await asyncio.gather(*stops, return_exceptions=True)
            self.save()

    async def _roll(self, svc: Service, ro: Rollout, stops: list[asyncio.Task[None]]) -> None:
        """Surge one new instance, wait until ready, retire one old; repeat.

        Driven by the instances that exist, not by a step counter, so resuming a rollout
        (after a runtime restart) continues from where it stood and never replaces an
        instance twice. A first deploy (nothing old runs) starts all replicas at once.
        Like Kubernetes' progressDeadlineSeconds, the deadline counts from the last
        progress (an instance of the new version became ready), not from the start.
        """
        while True:
            new = [i for i in svc.instances if i.revision == ro.revision and not i.stopping]
            old = [i for i in svc.instances if i.revision != ro.revision and not i.stopping]
            ready_new = [i for i in new if i.ready]
            if len(new) > ro.replicas:
                extra = sorted(new, key=lambda i: i.ready)[: len(new) - ro.replicas]
                for inst in extra:
                    stops.append(asyncio.create_task(self.stop_instance(svc, inst)))
                continue
            if len(ready_new) == ro.replicas:
                break
            pending = [i for i in new if not i.ready]
            if not old:
                for _ in range(ro.replicas - len(new)):
                    pending.append(self._start_for(svc, ro))
            elif not pending:
                pending = [self._start_for(svc, ro)]
            for inst in pending:
                await self._wait_ready(svc, ro, inst)
                ro.progress_at = time.time()
            ready_now = sum(
                1 for i in svc.instances if i.revision == ro.revision and i.ready and not i.stopping
            )
            retire = sorted(old, key=lambda i: i.ready)
            while retire and ready_now + len(retire) > ro.replicas:
                stops.append(asyncio.create_task(self.stop_instance(svc, retire.pop(0))))
        for inst in [i for i in svc.instances if i.revision != ro.revision and not i.stopping]:
            stops.append(asyncio.create_task(self.stop_instance(svc, inst)))

    def _start_for(self, svc: Service, ro: Rollout) -> Instance:
        inst = self.start_instance(svc, ro.image, LocalService.model_validate(ro.spec))
        ro.created.append(inst.id)
        self.save()
        return inst

    async def _wait_ready(self, svc: Service, ro: Rollout, inst: Instance) -> None:
        while not inst.ready:
            if ro.abort_requested:
                raise RolloutAborted()
            if inst.stopping or inst not in svc.instances:
                raise RolloutError(f"instance {inst.id} of {svc.name!r} was stopped during the rollout")
            if inst.restarts >= CRASH_LIMIT:
                raise RolloutError(
                    f"{svc.name!r} {ro.image!r}: a new instance failed {inst.restarts} times at "
                    f"start, last: {inst.last_problem or 'exited'}; log {inst.log}"
                )
            if time.time() >= ro.progress_at + ro.deadline_s:
                raise RolloutError(
                    f"{svc.name!r} {ro.image!r} did not become ready within the progress "
                    f"deadline of {ro.deadline_s:g}s: {inst.last_problem or 'no probe passed'}"
                )
            await asyncio.sleep(TICK_S)

    async def _revert(self, svc: Service, ro: Rollout) -> None:
        """Remove what this rollout started; the old instances kept serving all along.

        New instances that became ready may already have replaced old ones; each is
        swapped back for an instance of the previous image before it is stopped, so the
        service returns to its replica count on the old version. A first deploy has no
        old version: everything it started is removed.
        """
        mine = [i for i in svc.instances if i.id in ro.created and not i.stopping]
        for inst in [i for i in mine if not i.ready]:
            await self.stop_instance(svc, inst)
        previous = ro.previous_image
        for inst in [i for i in mine if i.ready]:
            if previous is not None and ro.previous_spec is not None:
                old = self.start_instance(svc, previous, LocalService.model_validate(ro.previous_spec))
                limit = time.monotonic() + max(ro.deadline_s, 5.0)
                await _until(lambda: old.ready or old.restarts >= CRASH_LIMIT, limit)  # noqa: B023
                if not old.ready:
                    await self.stop_instance(svc, old)
                    log.error("could not restore %s %s; keeping %s", svc.name, previous, inst.id)
                    continue
            await self.stop_instance(svc, inst)

    async def delete_service(self, name: str) -> None:
        svc = self.services.get(name)
        if svc is None:
            raise ApiError(404, "not_found", f"service {name!r} does not exist")
        for ro in svc.rollouts.values():
            if ro.task is not None and not ro.task.done():
                await _cancel_all(ro.task)
        await asyncio.gather(*(self.stop_instance(svc, i) for i in list(svc.instances)))
        if svc.front is not None:
            await svc.front.close()
        self.services.pop(name, None)
        self.save()

    def service_public(self, svc: Service) -> dict[str, Any]:
        active = svc.active_rollout()
        return {
            "name": svc.name,
            "image": svc.image,
            "front_port": svc.front.port if svc.front else None,
            "replicas": svc.spec.replicas,
            "ready": sum(1 for i in svc.instances if i.ready),
            "instances": [i.public() for i in svc.instances],
            "rollout": active.id if active else None,
        }

    async def close(self) -> None:
        """Stop listening and supervising; instances keep running for the next runtime."""
        for svc in self.services.values():
            for ro in svc.rollouts.values():
                if ro.task is not None:
                    ro.task.cancel()
            for inst in svc.instances:
                if inst.task is not None:
                    inst.task.cancel()
            if svc.front is not None:
                await svc.front.close()
        self.save()

    # ------------------------------------------------------------ HTTP API

    async def handle(self, method: str, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path == "/healthz":
            return 200, {"ok": True, "pid": os.getpid()}
        if path == "/debug/tasks" and method == "GET":
            # What every task of the runtime is waiting on: for diagnosing a stuck rollout.
            out = []
            for task in asyncio.all_tasks():
                frames = task.get_stack(limit=6)
                out.append({"task": task.get_name(), "stack": [
                    f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno} {f.f_code.co_name}"
                    for f in frames
                ]})
            return 200, out
        if path == "/services" and method == "GET":
            return 200, [self.service_public(s) for s in self.services.values()]
        match = re.fullmatch(r"/services/([^/]+)(/.*)?", path)
        if not match:
            raise ApiError(404, "not_found", f"no route {method} {path}")
        name, rest = match.group(1), match.group(2) or ""
        if rest == "/rollout" and method == "PUT":
            return 200, await self.put_rollout(name, body)
        if rest == "" and method == "DELETE":
            await self.delete_service(name)
            return 200, {"deleted": name}
        svc = self.services.get(name)
        if svc is None:
            raise ApiError(404, "not_found", f"service {name!r} does not exist")
        if rest == "" and method == "GET":
            return 200, self.service_public(svc)
        ro_match = re.fullmatch(r"/rollouts/([^/]+)(/abort)?", rest)
        if ro_match:
            ro = svc.rollouts.get(ro_match.group(1))
            if ro is None:
                raise ApiError(404, "not_found", f"rollout {ro_match.group(1)} of {name!r} is unknown")
            if ro_match.group(2) and method == "POST":
                return 200, await self.abort_rollout(svc, ro)
            if not ro_match.group(2) and method == "GET":
                return 200, self.rollout_status(svc, ro)
        raise ApiError(405, "invalid", f"no route {method} {path}")

    async def serve_http(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        status, payload = 500, {"error": "internal", "detail": "no answer"}
        try:
            line = (await reader.readline()).decode("latin-1").split()
            if len(line) < 2:
                return
            method, path = line[0], line[1].split("?", 1)[0]
            headers: dict[str, str] = {}
            while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
                key, _, value = header.decode("latin-1").partition(":")
                headers[key.strip().lower()] = value.strip()
            self.check_access(path, headers)
            length = int(headers.get("content-length") or 0)
            raw = await reader.readexactly(length) if length else b""
            body = json.loads(raw) if raw else {}
            status, payload = await self.handle(method, path, body)
        except ApiError as e:
            status, payload = e.status, {"error": e.code, "detail": e.detail}
        except (json.JSONDecodeError, ValueError) as e:
            status, payload = 400, {"error": "invalid", "detail": f"bad request: {e}"}
        except Exception as e:
            log.exception("API error")
            status, payload = 500, {"error": "internal", "detail": repr(e)}
        finally:
            data = json.dumps(payload).encode()
            challenge = 'WWW-Authenticate: Bearer realm="shipflow-runtime"\r\n' if status == 401 else ""
            head = (
                f"HTTP/1.1 {status} {'OK' if status < 400 else 'Error'}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n"
                f"{challenge}Connection: close\r\n\r\n"
            )
            with contextlib.suppress(OSError):
                writer.write(head.encode() + data)
                await writer.drain()
            writer.close()


async def _cancel_all(*tasks: asyncio.Task[Any]) -> None:
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


async def _until(condition: Callable[[], bool], deadline: float) -> bool:
    """Wait until `condition()` holds (True) or the monotonic `deadline` passes (False)."""
    while True:
        if condition():
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(TICK_S)


def _fill(text: str, image: str, port: int) -> str:
    return text.replace("{image}", image).replace("{port}", str(port))


async def _accepts(port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def serve(data_dir: Path, port: int, host: str = "127.0.0.1", key: str | None = None) -> None:
    """Run the runtime until SIGTERM or SIGINT. `key` defaults to the key file's."""
    runtime = Runtime(data_dir, ensure_key(data_dir, key))
    await runtime.recover()
    server = await asyncio.start_server(runtime.serve_http, host, port, reuse_address=True)
    runtime.listening_on(host, server.sockets[0].getsockname()[1])
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    log.info("shipflow local runtime on http://%s:%s, state in %s", host, port, data_dir)
    print(f"shipflow runtime listening on http://{host}:{port}", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        await runtime.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="shipflow local runtime")
    parser.add_argument("--data-dir", type=Path, default=Path(".shipflow/runtime"))
    parser.add_argument("--port", type=int, default=7300)
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args.data_dir.mkdir(parents=True, exist_ok=True)
    try:
        key = ensure_key(args.data_dir.resolve(), os.environ.get(KEY_ENV) or None)
    except RuntimeKeyError as e:
        print(f"shipflow runtime: {e}", file=sys.stderr)
        return 2
    asyncio.run(serve(args.data_dir.resolve(), args.port, args.host, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
