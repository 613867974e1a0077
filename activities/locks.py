"""Stage-lock activities: the bridge from a run to its stage's lock workflow.

Workflow code cannot start another workflow and update it atomically; a client can,
with update-with-start. So asking for the lock is an activity that holds a client.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from temporalio import activity
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.service import RPCError, RPCStatusCode

from shipflow.workflows.io.locks import (
    ACQUIRE,
    CLOSED_RUNS,
    AcquireInput,
    AcquireOutput,
    ClosedRunsInput,
    ClosedRunsOutput,
)
from shipflow.workflows.stage_lock import StageLockInput, StageLockWorkflow, lock_id

#: Temporal refuses more than 10 updates in flight per workflow (`history.maxInFlightUpdates`):
#: a burst of runs for one stage would be refused (ResourceExhausted) and each refused
#: acquire would wait out its timeout before retrying. Each worker keeps at most this many
#: acquires in flight per stage; the others wait their turn here, which costs them nothing
#: since the lock answers them in order anyway. Two workers stay under the server's limit.
ACQUIRES_IN_FLIGHT_PER_STAGE = 5


class LockActivities:
    """Given a Temporal client and the task queue the lock workflows run on."""

    def __init__(self, client: Client, task_queue: str):
        self._client = client
        self._task_queue = task_queue
        self._gates: defaultdict[str, asyncio.Semaphore] = defaultdict(
            lambda: asyncio.Semaphore(ACQUIRES_IN_FLIGHT_PER_STAGE)
        )

    @activity.defn(name=ACQUIRE)
    async def acquire(self, input: AcquireInput) -> AcquireOutput:
        start = WithStartWorkflowOperation(
            StageLockWorkflow.run,
            StageLockInput(stage=input.stage),
            id=lock_id(input.stage, self._task_queue),
            task_queue=self._task_queue,
            id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
            static_summary=f"release lock of stage {input.stage}",
        )
        async with self._gates[input.stage]:
            result: AcquireOutput = await self._client.execute_update_with_start_workflow(
                StageLockWorkflow.acquire, input, start_workflow_operation=start
            )
        return result

    @activity.defn(name=CLOSED_RUNS)
    async def closed_runs(self, input: ClosedRunsInput) -> ClosedRunsOutput:
        closed: list[str] = []
        for run_id in input.run_ids:
            try:
                description = await self._client.get_workflow_handle(run_id).describe()
            except RPCError as e:
                if e.status == RPCStatusCode.NOT_FOUND:
                    closed.append(run_id)
                    continue
                raise
            if description.close_time is not None:
                closed.append(run_id)
        return ClosedRunsOutput(closed=closed)
