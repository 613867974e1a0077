"""Rollouts: replace every instance of a service with the new revision, or put the old back.

A rollout runs here, in the runtime, to its end even if the worker that asked for it is
killed; it is driven by the instances that exist, not by a step counter, so a rollout
resumed after a runtime restart continues from where it stood and never replaces an
instance twice. On failure or abort the old version is put back in place (it kept
serving all along) and what the rollout started is removed.
"""

from __future__ import annotations

import asyncio
import logging
import time

from shipflow.worker.runtime.blue_green import run_blue_green
from shipflow.worker.runtime.canary import run_canary
from shipflow.worker.runtime.errors import RolloutAborted, RolloutError
from shipflow.worker.runtime.state import Instance, Rollout, Service
from shipflow.worker.runtime.supervision import TICK_S, Supervisor, until
from shipflow.workflows.spec import LocalService

log = logging.getLogger("shipflow.runtime")

#: A new instance that exits this many times during a rollout fails the rollout.
CRASH_LIMIT = 3




class Rollouts:
    """Runs rollouts of services with the instances that `supervisor` starts and stops."""

    def __init__(self, supervisor: Supervisor):
        self.sup = supervisor

    def start(self, svc: Service, ro: Rollout) -> None:
        """Run `ro` in a task of its own (a new rollout, or one resumed after a restart)."""
        ro.task = asyncio.create_task(self.run(svc, ro))

    def abort(self, ro: Rollout) -> None:
        if ro.state == "running":
            ro.abort_requested = True

    async def run(self, svc: Service, ro: Rollout) -> None:
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
            ro.state, ro.error, ro.error_code = "failed", str(e), e.code
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
            self.sup.save()

    async def _roll(self, svc: Service, ro: Rollout, stops: list[asyncio.Task[None]]) -> None:
        if ro.strategy == "recreate":
            await self._recreate(svc, ro, stops)
        elif ro.strategy == "canary":
            await run_canary(self, svc, ro, stops)
        elif ro.strategy == "blue_green":
            await run_blue_green(self, svc, ro, stops)
        else:
            await self.rolling(svc, ro, stops)

    async def rolling(self, svc: Service, ro: Rollout, stops: list[asyncio.Task[None]]) -> None:
        """Kubernetes' RollingUpdate with `ro.surge` and `ro.unavailable`, in rounds.

        Each round retires what availability allows (old instances that are not ready
        first: they serve nothing), starts as many new instances as the surge leaves room
        for, and waits until they are ready. At all times at most `replicas + surge`
        instances run and at least `replicas - unavailable` are ready. With the default
        (1, 0) that is one new instance per round, each replacing one old. A first deploy
        (nothing old runs) starts all replicas at once. Like Kubernetes'
        progressDeadlineSeconds, the deadline counts from the last progress (an instance
        of the new version became ready), not from the start.
        """
        replicas = ro.replicas
        while True:
            new = [i for i in svc.instances if i.revision == ro.revision and not i.stopping]
            old = [i for i in svc.instances if i.revision != ro.revision and not i.stopping]
            ready_new = [i for i in new if i.ready]
            if len(new) > replicas:
                extra = sorted(new, key=lambda i: i.ready)[: len(new) - replicas]
                for inst in extra:
                    self._retire(svc, inst, stops)
                continue
            if len(ready_new) == replicas:
                break
            pending = [i for i in new if not i.ready]
            started = 0
            if not old:
                started = replicas - len(new)
            else:
                available = len(ready_new) + sum(1 for i in old if i.ready)
                can_retire = max(0, available - (replicas - ro.unavailable))
                for inst in sorted(old, key=lambda i: i.ready):
                    if inst.ready:
                        if can_retire == 0:
                            continue
                        can_retire -= 1
                    self._retire(svc, inst, stops)
                    old.remove(inst)
                room = replicas + ro.surge - len(new) - len(old)
                started = max(0, min(room, replicas - len(new)))
            pending += [self.start_for(svc, ro) for _ in range(started)]
            if started:
                ro.rounds += 1
                self.sup.save()
            for inst in pending:
                await self.wait_ready(svc, ro, inst)
                ro.progress_at = time.time()
            if not pending:
                await asyncio.sleep(TICK_S)  # only retirements this round: let them start
        for inst in [i for i in svc.instances if i.revision != ro.revision and not i.stopping]:
            self._retire(svc, inst, stops)

    async def _recreate(self, svc: Service, ro: Rollout, stops: list[asyncio.Task[None]]) -> None:
        """Stop every old instance (drained, within its grace), then start the new ones.

        The gap, from the moment the last old instance leaves the front port to the first
        new one being ready, is the downtime the step reports. Its start is durable, so a
        rollout resumed after a runtime restart reports the whole gap.
        """
        old = [i for i in svc.instances if i.revision != ro.revision and not i.stopping]
        if old and ro.gap_started_at is None:
            ro.gap_started_at = time.time()
            self.sup.save()
        for inst in old:
            self._retire(svc, inst, stops)
        await asyncio.gather(*stops)
        stops.clear()
        leftover = [i for i in svc.instances if i.revision != ro.revision]
        while leftover:  # stops from before a restart, still under way
            await asyncio.sleep(TICK_S)
            leftover = [i for i in svc.instances if i.revision != ro.revision]
        new = [i for i in svc.instances if i.revision == ro.revision and not i.stopping]
        if len(new) < ro.replicas:
            new += [self.start_for(svc, ro) for _ in range(ro.replicas - len(new))]
            ro.rounds += 1
            self.sup.save()
        while not any(i.ready for i in new):
            for inst in new:
                self.check(svc, ro, inst)
            await asyncio.sleep(TICK_S)
        if ro.downtime_s is None:
            gap = time.time() - ro.gap_started_at if ro.gap_started_at is not None else 0.0
            ro.downtime_s = round(max(0.0, gap), 3)
            self.sup.save()
        for inst in new:
            await self.wait_ready(svc, ro, inst)
            ro.progress_at = time.time()

    def _retire(self, svc: Service, inst: Instance, stops: list[asyncio.Task[None]]) -> None:
        """Take `inst` out of routing now and stop it (drained) in a task of its own."""
        inst.ready = False
        inst.stopping = True
        stops.append(asyncio.create_task(self.sup.stop_instance(svc, inst)))

    def start_for(self, svc: Service, ro: Rollout) -> Instance:
        inst = self.sup.start_instance(svc, ro.image, LocalService.model_validate(ro.spec))
        ro.created.append(inst.id)
        self.sup.save()
        return inst

    async def wait_ready(self, svc: Service, ro: Rollout, inst: Instance) -> None:
        while not inst.ready:
            self.check(svc, ro, inst)
            await asyncio.sleep(TICK_S)

    def check(self, svc: Service, ro: Rollout, inst: Instance) -> None:
        """Raise if waiting for `inst` to become ready is over: aborted, crashed, too late."""
        if not inst.ready:
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

    async def _revert(self, svc: Service, ro: Rollout) -> None:
        """Remove what this rollout started; the old instances kept serving all along.

        New instances that became ready may already have replaced old ones; each is
        swapped back for an instance of the previous image before it is stopped, so the
        service returns to its replica count on the old version. A first deploy has no
        old version: everything it started is removed.
        """
        svc.canary = None  # all traffic back to the stable version at once
        if svc.preview is not None:
            await svc.preview.close()
            svc.preview = None
        mine = [i for i in svc.instances if i.id in ro.created and not i.stopping]
        if ro.strategy in ("canary", "blue_green"):
            # The old version kept all its instances: take every new one out of routing now.
            for inst in mine:
                inst.ready, inst.stopping = False, True
        for inst in [i for i in mine if not i.ready]:
            await self.sup.stop_instance(svc, inst)
        previous = ro.previous_image
        wanted = LocalService.model_validate(ro.previous_spec).replicas if ro.previous_spec else 0
        serving = sum(1 for i in svc.instances if i.id not in ro.created and not i.stopping)
        for inst in [i for i in mine if i.ready]:
            if serving >= wanted:
                # Enough of the old version still runs (a canary never replaced any).
                await self.sup.stop_instance(svc, inst)
                continue
            serving += 1
            if previous is not None and ro.previous_spec is not None:
                old = self.sup.start_instance(svc, previous, LocalService.model_validate(ro.previous_spec))
                limit = time.monotonic() + max(ro.deadline_s, 5.0)
                await until(lambda: old.ready or old.restarts >= CRASH_LIMIT, limit)  # noqa: B023
                if not old.ready:
                    await self.sup.stop_instance(svc, old)
                    log.error("could not restore %s %s; keeping %s", svc.name, previous, inst.id)
                    continue
            await self.sup.stop_instance(svc, inst)
        if ro.strategy == "recreate" and previous is not None and ro.previous_spec is not None:
            # The old instances were stopped before the new ones started: start them again.
            spec = LocalService.model_validate(ro.previous_spec)
            running = [i for i in svc.instances if i.image == previous and not i.stopping]
            for _ in range(spec.replicas - len(running)):
                self.sup.start_instance(svc, previous, spec)
