"""The runtime's services: what it owns, how it starts again, and the operations on them.

`Runtime` holds every service with its instances, front port and recent rollouts, all in
one event loop. A restarted runtime re-adopts, from `state.json`, the instances whose pid
still runs (same kernel start time, so a reused pid is not mistaken) and whose port still
answers, binds the front ports again, and resumes the rollouts that were running. The
HTTP face (`app`) calls the operations here; supervision and rollouts do the work.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
import time
import uuid
from pathlib import Path

from shipflow.activities.targets.local import process
from shipflow.activities.targets.local.runtime_client import RolloutBody, RolloutView, ServiceView
from shipflow.worker.runtime.proxy import FrontPort
from shipflow.worker.runtime.rollout import Rollouts
from shipflow.worker.runtime.state import (
    ApiError,
    Instance,
    Rollout,
    Service,
    StateFile,
    restored_masked,
    revision,
)
from shipflow.worker.runtime.supervision import Supervisor, accepts, cancel_all, fill
from shipflow.workflows.spec import LocalService, RollingStrategy, Strategy

log = logging.getLogger("shipflow.runtime")


class Runtime:
    """Everything the runtime process owns. All methods run in one event loop."""

    def __init__(self, data_dir: Path, key: str):
        self.data_dir = data_dir
        self.key = key
        self.state = StateFile(data_dir / "state.json", key)
        self.services: dict[str, Service] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.supervisor = Supervisor(data_dir, self.save)
        self.rollouts = Rollouts(self.supervisor)

    def save(self) -> None:
        self.state.write(self.services)

    async def recover(self) -> None:
        """Re-adopt what a previous runtime left running, from `state.json`."""
        for name, saved in self.state.read().items():
            svc = Service(name=name, spec=LocalService.model_validate(saved["spec"]), image=saved["image"])
            svc.masked = restored_masked(saved)
            self.services[name] = svc
            for item in saved.get("instances", []):
                inst = Instance.restored(item, saved["spec"])
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
                    inst.ready = bool(item.get("ready")) and await accepts(inst.port)
                    inst.started = inst.ready
                    log.info("adopted %s pid %s on port %s", inst.id, inst.pid, inst.port)
                else:
                    inst.pid = 0  # gone while the runtime was down: started again below
                self.supervisor.adopt(svc, inst)
            for item in saved.get("rollouts", []):
                ro = Rollout.restored(item)
                svc.rollouts[ro.id] = ro
            try:
                await self._open_front(svc, saved.get("front_port", svc.spec.port))
            except ApiError as e:
                log.error("service %s: %s", name, e.detail)
            active = svc.active_rollout()
            if active is not None:
                # The runtime was down, not the service: the deadline starts over.
                active.progress_at = time.time()
                self.rollouts.start(svc, active)
        self.save()

    async def _open_front(self, svc: Service, port: int) -> None:
        front = FrontPort(port, svc)
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

    def service(self, name: str) -> Service:
        svc = self.services.get(name)
        if svc is None:
            raise ApiError(404, "not_found", f"service {name!r} does not exist")
        return svc

    def rollout(self, name: str, rollout_id: str) -> tuple[Service, Rollout]:
        svc = self.service(name)
        ro = svc.rollouts.get(rollout_id)
        if ro is None:
            raise ApiError(404, "not_found", f"rollout {rollout_id} of {name!r} is unknown")
        return svc, ro

    async def put_rollout(self, name: str, body: RolloutBody) -> RolloutView:
        """Start a rollout of `name`, or answer the one with the same id (a resumed attempt).

        Raises:
            ApiError: 409 `conflict` (another rollout runs) or `port_in_use`; 422 when the
                command or cwd does not exist.
        """
        spec, image = body.spec, body.image
        strategy = spec.strategy or Strategy(rolling=RollingStrategy())
        # A canary's final promotion replaces the stable instances one at a time (1, 0).
        surge, unavailable = strategy.rolling.resolved(spec.replicas) if strategy.rolling else (1, 0)
        rollout_id = body.rollout_id or uuid.uuid4().hex
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
            svc.add_masked(body.redact)
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
                strategy=strategy.kind,
                run_id=body.run_id,
                step_id=body.step_id,
                surge=surge,
                unavailable=unavailable,
            )
            svc.add_rollout(ro)
            self.save()
            self.rollouts.start(svc, ro)
            return self.rollout_status(svc, ro)

    def _check_command(self, name: str, spec: LocalService, image: str) -> None:
        if spec.cwd is not None and not Path(spec.cwd).is_dir():
            raise ApiError(422, "invalid", f"service {name!r}: cwd {spec.cwd!r} is not a directory")
        argv0 = fill(spec.command[0], image, 0)
        if process.find_command(argv0, cwd=spec.cwd, env=dict(os.environ)) is None:
            raise ApiError(
                422,
                "command_not_found",
                f"service {name!r}: command {argv0!r} not found (PATH of the runtime, cwd "
                f"{spec.cwd or os.getcwd()!r})",
            )

    def rollout_status(self, svc: Service, ro: Rollout) -> RolloutView:
        new = [i for i in svc.instances if i.revision == ro.revision and not i.stopping]
        hidden = ("spec", "previous_spec", "gap_started_at", "pause_until", "promote_requested")
        public = {k: v for k, v in ro.saved().items() if k not in hidden}
        return RolloutView(
            **public,
            rollout_id=ro.id,
            service=svc.name,
            updated=len(new),
            ready=sum(1 for i in new if i.ready),
            total=ro.replicas,
            instances=[i.public() for i in svc.instances],
        )

    def promote_rollout(self, name: str, rollout_id: str) -> RolloutView:
        """End the current pause of a canary (an indefinite one waits for exactly this).

        Raises:
            ApiError: 409 `conflict` when the rollout is not a running canary.
        """
        svc, ro = self.rollout(name, rollout_id)
        if ro.state != "running" or ro.strategy not in ("canary", "blue_green"):
            raise ApiError(
                409, "conflict", f"rollout {rollout_id} of {name!r} is not a running canary ({ro.state})"
            )
        ro.promote_requested = True
        self.save()
        return self.rollout_status(svc, ro)

    def abort_rollout(self, name: str, rollout_id: str) -> RolloutView:
        svc, ro = self.rollout(name, rollout_id)
        self.rollouts.abort(ro)
        return self.rollout_status(svc, ro)

    async def delete_service(self, name: str) -> None:
        svc = self.service(name)
        for ro in svc.rollouts.values():
            if ro.task is not None and not ro.task.done():
                await cancel_all(ro.task)
        await asyncio.gather(*(self.supervisor.stop_instance(svc, i) for i in list(svc.instances)))
        if svc.front is not None:
            await svc.front.close()
        self.services.pop(name, None)
        self.save()

    def service_public(self, svc: Service) -> ServiceView:
        active = svc.active_rollout()
        return ServiceView(
            name=svc.name,
            image=svc.image,
            front_port=svc.front.port if svc.front else None,
            replicas=svc.spec.replicas,
            ready=sum(1 for i in svc.instances if i.ready),
            instances=[i.public() for i in svc.instances],
            rollout=active.id if active else None,
        )

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
