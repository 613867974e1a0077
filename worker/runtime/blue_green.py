"""The blue-green strategy: the new version in full beside the old one, then one switch.

All replicas of the new revision start while the old ones keep serving; they are
reachable on the preview port (when one is set) before any user traffic reaches them.
Promotion (`shipflow promote`, or `auto_promote_after`) sends every new request to the
new version at once (the canary machinery at weight 100); the old instances keep
running for `scale_down_delay`, so that an abort in that time switches back at once,
and are then drained and stopped. Whether the switch happened and when the delay ends
are durable (`step_index`, `pause_until`), so a restarted runtime resumes the phase.
"""

from __future__ import annotations

import asyncio
import errno
import time
from typing import TYPE_CHECKING, Any

from shipflow.worker.runtime.errors import RolloutAborted, RolloutError
from shipflow.worker.runtime.proxy import FrontPort
from shipflow.worker.runtime.state import Instance, Rollout, Service
from shipflow.workflows.spec import LocalService

if TYPE_CHECKING:
    from shipflow.worker.runtime.rollout import Rollouts

TICK_S = 0.05


class PreviewRouter:
    """Routes the preview port to the ready instances of one revision only."""

    def __init__(self, svc: Service, revision: str):
        self.svc = svc
        self.revision = revision
        self.instances = svc.instances
        self._rr = 0

    def pick(self, exclude: set[str]) -> Instance | None:
        ready = [
            i for i in self.svc.instances
            if i.revision == self.revision and i.ready and not i.stopping and i.id not in exclude
        ]
        if not ready:
            return None
        self._rr = (self._rr + 1) % len(ready)
        return ready[self._rr]

    def per_request(self) -> bool:
        return False

    def pick_request(self, exclude: set[str]) -> Instance | None:
        return self.pick(exclude)

    def record(self, backend: Any, seconds: float, ok: bool) -> None:
        return None


async def run_blue_green(rollouts: Rollouts, svc: Service, ro: Rollout, stops: list[asyncio.Task[None]]) -> None:
    spec = LocalService.model_validate(ro.spec)
    assert spec.strategy is not None and spec.strategy.blue_green is not None
    bg = spec.strategy.blue_green
    old = [i for i in svc.instances if i.revision != ro.revision and not i.stopping]
    if not old and ro.step_index == 0:
        await rollouts.rolling(svc, ro, stops)  # a first deploy: nothing to switch from
        return
    if ro.weight is None:
        ro.weight = 0
    svc.canary = ro
    if ro.step_index == 0:
        new = [i for i in svc.instances if i.revision == ro.revision and not i.stopping]
        new += [rollouts.start_for(svc, ro) for _ in range(ro.replicas - len(new))]
        ro.rounds = max(ro.rounds, 1)
        rollouts.sup.save()
        for inst in new:
            await rollouts.wait_ready(svc, ro, inst)
        ro.progress_at = time.time()
        if bg.preview_port is not None and svc.preview is None:
            svc.preview = await _open_preview(svc, ro, bg.preview_port)
        # Wait for the promotion (or the auto-promotion's durable deadline).
        if bg.auto_promote_after is not None and ro.pause_until is None:
            ro.pause_until = time.time() + bg.auto_promote_after.total_seconds()
        ro.paused = True
        rollouts.sup.save()
        while not ro.promote_requested and (ro.pause_until is None or time.time() < ro.pause_until):
            _interrupted(ro)
            await asyncio.sleep(TICK_S)
        ro.weight, ro.step_index, ro.paused, ro.promote_requested = 100, 1, False, False
        ro.pause_until = time.time() + bg.scale_down_delay.total_seconds()
        ro.progress_at = time.time()
        rollouts.sup.save()
    # Switched: the old version waits out the scale-down delay, ready to take over again.
    while ro.pause_until is not None and time.time() < ro.pause_until:
        _interrupted(ro)
        await asyncio.sleep(TICK_S)
    if svc.preview is not None:
        await svc.preview.close()
        svc.preview = None
    await rollouts.rolling(svc, ro, stops)  # every new instance is ready: retires the old ones
    svc.canary = None


def _interrupted(ro: Rollout) -> None:
    if ro.abort_requested:
        raise RolloutAborted()


async def _open_preview(svc: Service, ro: Rollout, port: int) -> FrontPort:
    front = FrontPort(port, PreviewRouter(svc, ro.revision))
    try:
        await front.start()
    except OSError as e:
        taken = "is already in use" if e.errno == errno.EADDRINUSE else f"cannot be bound ({e})"
        raise RolloutError(f"preview port {port} of {svc.name!r} {taken}", code="port_in_use") from None
    return front
