"""The hand-written side of the orchestration benchmark (`bench.orchestration`): Temporal
workflows that call the same no-op activity the interpreter's flows call, and the no-op
activities both sides dispatch to.

Under config `sandbox` this module runs in the workflow sandbox. The bench worker passes it
through there (`orchestration_worker.bench_worker`), and its imports are passed through
too, so that a baseline run does not pay for re-executing benchmark code: a hand-written
workflow lives in a small module whose re-execution costs well under a millisecond.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from shipflow.workflows.io import notify as notify_io
    from shipflow.workflows.io import records as record_io
    from shipflow.workflows.io.common import StepContext

#: The activity options the interpreter gives a notify step (its default timeout is 30 s).
ACTIVITY_TIMEOUT = timedelta(seconds=30)
NO_RETRY = RetryPolicy(maximum_attempts=1)


class NoopActivities:
    """Do-nothing stand-ins registered under the real activity names.

    Both sides dispatch to these, so what differs between them is orchestration only.
    They count their calls so that the benchmark can check that both sides really ran
    the same number of activities.
    """

    def __init__(self) -> None:
        self.sends = 0
        self.records = 0

    @activity.defn(name=notify_io.SEND)
    async def send(self, input: notify_io.NotifyInput) -> notify_io.NotifyOutput:
        self.sends += 1
        return notify_io.NotifyOutput(status_code=204)

    @activity.defn(name=record_io.RECORD_RUN)
    async def record_run(self, input: record_io.RunRecordInput) -> record_io.RecordOutput:
        self.records += 1
        return record_io.RecordOutput()


def _note(step: int) -> notify_io.NotifyInput:
    return notify_io.NotifyInput(
        context=StepContext(
            run_id=workflow.info().workflow_id, flow="bench", stage="bench", step_id=f"n{step}"
        ),
        webhook="http://127.0.0.1:9/bench",
        message=f"step {step}",
        run_state="running",
    )


async def send(step: int) -> notify_io.NotifyOutput:
    return await workflow.execute_activity(
        notify_io.SEND,
        _note(step),
        result_type=notify_io.NotifyOutput,
        start_to_close_timeout=ACTIVITY_TIMEOUT,
        retry_policy=NO_RETRY,
        cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
        summary="notify",
    )


@workflow.defn(name="BenchBaselineSequential")
class BaselineSequential:
    """`steps` no-op activities one after the other, written by hand."""

    @workflow.run
    async def run(self, steps: int) -> int:
        for step in range(steps):
            await send(step)
        return steps


@workflow.defn(name="BenchBaselineParallel")
class BaselineParallel:
    """`steps` no-op activities all at once, written by hand."""

    @workflow.run
    async def run(self, steps: int) -> int:
        await asyncio.gather(*(send(step) for step in range(steps)))
        return steps
