"""`StageLockWorkflow`: one release at a time per stage, across flows, API restarts and workers.

One long-lived workflow per stage holds the lock. Runs ask for it with an update (made
atomic with the lock's creation by update-with-start, from an activity); the workflow
answers from its own state, so 20 simultaneous starts are simply 20 updates in order.
Releases arrive as signals from the finishing runs. A holder that ended without
releasing (terminated from outside) is found by a periodic check and released.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.io.locks import (
        CLOSED_RUNS,
        AcquireInput,
        AcquireOutput,
        ClosedRunsInput,
        ClosedRunsOutput,
    )

GRANTED_SIGNAL = "lock_granted"
POSITION_SIGNAL = "lock_position"
RELEASE_SIGNAL = "release"
REAP_INTERVAL_S = 10.0
#: Patch id: the reaper asks which runs ended without holding the mutex (`_reap`).
REAP_OUTSIDE_MUTEX = "reap-outside-mutex"


def lock_id(stage: str, task_queue: str) -> str:
    """One lock per stage of one shipflow deployment (its workers share a task queue)."""
    return f"shipflow-stage-{task_queue}-{stage}"


class Waiter(BaseModel):
    run_id: str
    policy: str


class StageLockInput(BaseModel):
    stage: str
    holder: str | None = None
    queue: list[Waiter] = []


class StageLockState(BaseModel):
    stage: str
    holder: str | None
    queue: list[str]


@workflow.defn(name="StageLockWorkflow")
class StageLockWorkflow:
    @workflow.init
    def __init__(self, input: StageLockInput) -> None:
        self._stage = input.stage
        self._holder = input.holder
        self._queue = list(input.queue)
        self._changed = False
        # Handlers await (cancels, signals); one at a time keeps holder and queue consistent.
        self._mutex = asyncio.Lock()

    @workflow.run
    async def run(self, input: StageLockInput) -> None:
        while True:
            busy = self._holder is not None or bool(self._queue)
            try:
                await workflow.wait_condition(
                    lambda: self._changed, timeout=REAP_INTERVAL_S if busy else None
                )
            except TimeoutError:
                if workflow.patched(REAP_OUTSIDE_MUTEX):
                    await self._reap()
                else:
                    async with self._mutex:
                        await self._apply_closed(await self._closed_runs())
            self._changed = False
            if workflow.info().is_continue_as_new_suggested() and workflow.all_handlers_finished():
                workflow.continue_as_new(
                    StageLockInput(stage=self._stage, holder=self._holder, queue=self._queue)
                )

    @workflow.query
    def state(self) -> StageLockState:
        return StageLockState(
            stage=self._stage, holder=self._holder, queue=[w.run_id for w in self._queue]
        )

    @workflow.update
    async def acquire(self, request: AcquireInput) -> AcquireOutput:
        async with self._mutex:
            return await self._acquire(request)

    async def _acquire(self, request: AcquireInput) -> AcquireOutput:
        run_id = request.run_id
        self._changed = True
        if self._holder == run_id:
            return AcquireOutput(granted=True, holder=run_id)
        for index, waiter in enumerate(self._queue):
            if waiter.run_id == run_id:
                return AcquireOutput(granted=False, position=index + 1, holder=self._holder)
        if self._holder is None:
            self._holder = run_id
            return AcquireOutput(granted=True, holder=run_id)
        if request.policy == "forbid":
            return AcquireOutput(granted=False, refused=True, holder=self._holder)
        if request.policy == "cancel-previous":
            superseded = [self._holder] + [w.run_id for w in self._queue]
            for other in superseded:
                try:
                    await workflow.get_external_workflow_handle(other).cancel()
                except Exception as e:  # it ended meanwhile: its release signal is on its way
                    workflow.logger.info("could not cancel %s: %s", other, e)
            self._queue.insert(0, Waiter(run_id=run_id, policy=request.policy))
            await self._tell_positions()
            return AcquireOutput(granted=False, position=1, holder=self._holder)
        self._queue.append(Waiter(run_id=run_id, policy=request.policy))
        return AcquireOutput(granted=False, position=len(self._queue), holder=self._holder)

    @workflow.signal(name=RELEASE_SIGNAL)
    async def release(self, run_id: str) -> None:
        async with self._mutex:
            await self._release(run_id)

    async def _release(self, run_id: str) -> None:
        self._changed = True
        if self._holder == run_id:
            await self._grant_next()
        else:
            before = len(self._queue)
            self._queue = [w for w in self._queue if w.run_id != run_id]
            if len(self._queue) != before:
                await self._tell_positions()

    async def _grant_next(self) -> None:
        self._holder = None
        if self._queue:
            nxt = self._queue.pop(0)
            self._holder = nxt.run_id
            try:
                await workflow.get_external_workflow_handle(nxt.run_id).signal(GRANTED_SIGNAL)
            except Exception as e:  # it is gone: give the lock to the one after it
                workflow.logger.warning("could not grant %s: %s", nxt.run_id, e)
                await self._grant_next()
                return
            await self._tell_positions()

    async def _tell_positions(self) -> None:
        for index, waiter in enumerate(self._queue):
            try:
                await workflow.get_external_workflow_handle(waiter.run_id).signal(
                    POSITION_SIGNAL, index + 1
                )
            except Exception as e:  # the reaper will drop it
                workflow.logger.info("could not tell %s its position: %s", waiter.run_id, e)

    async def _reap(self) -> None:
        """Release runs that ended without saying so (terminated, timed out).

        The question goes to an activity without holding the mutex: while it waits for a
        worker's activity slot (a burst of runs can fill them all with `acquire`s, which
        wait on this very workflow), acquires and releases go on being answered.
        """
        closed = await self._closed_runs()
        async with self._mutex:
            await self._apply_closed(closed)

    async def _closed_runs(self) -> set[str]:
        watched = ([self._holder] if self._holder else []) + [w.run_id for w in self._queue]
        if not watched:
            return set()
        result = await workflow.execute_activity(
            CLOSED_RUNS,
            ClosedRunsInput(run_ids=watched),
            result_type=ClosedRunsOutput,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=3),
            summary="find ended runs",
        )
        return set(result.closed)

    async def _apply_closed(self, closed: set[str]) -> None:
        if not closed:
            return
        self._queue = [w for w in self._queue if w.run_id not in closed]
        if self._holder in closed:
            workflow.logger.warning(
                "stage %s: holder %s ended without release", self._stage, self._holder
            )
            await self._grant_next()
        elif closed:
            await self._tell_positions()
