"""The orchestration benchmark's second baseline: the same release written by hand as a
workflow that keeps shipflow's contract for a run (`BaselineDutiesSequential`,
`BaselineDutiesParallel`).

Why a second baseline (issue 12): the bare one (`orchestration_baseline`) calls the steps'
activity and does nothing else, so the interpreter's ratio over it mixes two things: what
interpreting a plan costs, and what any shipflow run must do whoever wrote it. Every run,
hand-written or not, owes its users two duties:

* the runs index: the run records its state in SQL when it starts running and when it
  ends, so that listing runs reads the database alone (issue 12, section 3, asks the
  workflow to record it);
* the status memo: the run's status is mirrored into the workflow memo, at most about
  once a second and at once at its end, so that `GET /runs/{id}`, `shipflow status` and
  the console read it with no worker up (README, "Status is kept in the workflow").

These workflows do both by hand, as cheaply as the interpreter does and the same way
(`records.run` as a local activity; the memo in the status model's layout, debounced by
the same policy as `shipflow.workflows.release_memo`, written out here rather than
imported), and nothing else: no plan, no tree walk, no attempt log, no observer, a small
result. So interpreter over this baseline is the interpreter's own overhead, and this
baseline over the bare one is what the two duties cost Temporal's machinery. The
benchmark reports both ratios; the 1.10x target applies to the first.

Started with the same start memo and search attributes as an interpreter run of the same
flow (`orchestration_runs.Bench.duties`), like the API's starter would.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import timedelta

from pydantic import BaseModel
from temporalio import workflow
from temporalio.common import RetryPolicy

with workflow.unsafe.imports_passed_through():
    from bench.orchestration_baseline import send
    from shipflow.workflows.io import records as record_io
    from shipflow.workflows.status import (
        MEMO_KEY,
        STEP_MEMO_PREFIX,
        RunState,
        RunStatus,
        StepState,
        StepStatus,
        run_memo_entry,
        step_memo_entry,
    )

#: The memo policy of `shipflow.workflows.release_memo`, by hand.
FLUSH_INTERVAL_S = 1.0
BACKSTOP_S = 1.5


class DutiesInput(BaseModel):
    """What the hand-written release needs: who it is and how many steps it runs."""

    run_id: str
    flow: str
    stage: str
    steps: int


class DutiesResult(BaseModel):
    steps: int
    state: str


class _Duties:
    """The run's status, its memo mirror and its two runs-index records, by hand."""

    def __init__(self) -> None:
        self.status = RunStatus(run_id="", flow="", stage="")
        self.flushed: dict[str, object] = {}
        self.changed: set[str] = set()
        self.dirty = False
        self.done = False

    def begin(self, input: DutiesInput) -> None:
        self.status = RunStatus(
            run_id=input.run_id,
            flow=input.flow,
            stage=input.stage,
            steps=[
                StepStatus(id=f"n{i}", kind="notify", path=f"steps[{i}]", summary=f"step {i}")
                for i in range(input.steps)
            ],
        )
        # What the starter wrote (the initial, pending status), so only changes are upserted:
        # the first flush carries the run going `running`, as the interpreter's does.
        self.flushed = {MEMO_KEY: run_memo_entry(self.status)}
        self.status.state, self.status.started_at = RunState.RUNNING, workflow.now()
        self.dirty = True

    async def step(self, index: int) -> None:
        step = self.status.steps[index]
        step.state, step.started_at, step.attempts = StepState.RUNNING, workflow.now(), 1
        self._touch(step)
        await send(index)  # the bare baseline's activity call, options and all
        step.state, step.ended_at = StepState.SUCCEEDED, workflow.now()
        self._touch(step)

    def _touch(self, step: StepStatus) -> None:
        self.changed.add(step.id)
        self.dirty = True

    async def record(self) -> None:
        await workflow.execute_local_activity(
            record_io.RECORD_RUN,
            record_io.RunRecordInput.of(self.status, trigger="api"),
            result_type=record_io.RecordOutput,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=RetryPolicy(maximum_attempts=5, maximum_interval=timedelta(seconds=5)),
            summary="record run",
        )

    async def mirror(self) -> None:
        """Upsert what changed: by the first workflow task a second after the last upsert, a
        timer 1.5 s after it when no task comes, and at once at the end."""
        last = workflow.time()
        while True:
            await workflow.wait_condition(lambda: self.dirty or self.done)
            due = last + FLUSH_INTERVAL_S
            if not self.done and workflow.time() < due:
                with contextlib.suppress(TimeoutError):
                    await workflow.wait_condition(
                        self._ready(due),
                        timeout=last + BACKSTOP_S - workflow.time(),
                        timeout_summary="memo flush",
                    )
            if self.dirty and self._upsert():
                last = workflow.time()
            if self.done and not self.dirty:
                return

    def _ready(self, due: float) -> Callable[[], bool]:
        """The run has ended, or a workflow task at or after `due` has come."""
        return lambda: self.done or workflow.time() >= due

    def _upsert(self) -> bool:
        self.dirty = False
        changed: dict[str, object] = {}
        run = run_memo_entry(self.status)
        if self.flushed.get(MEMO_KEY) != run:
            changed[MEMO_KEY] = run
        for step in self.status.steps:
            if step.id in self.changed:
                changed[STEP_MEMO_PREFIX + step.id] = step_memo_entry(step)
        self.changed.clear()
        if changed:
            workflow.upsert_memo(changed)
            self.flushed.update(changed)
        return bool(changed)

    async def run(self, input: DutiesInput, parallel: bool) -> DutiesResult:
        self.begin(input)
        mirror = asyncio.create_task(self.mirror())
        # Recorded beside the first step, as the interpreter does (its `_index_states`).
        running = asyncio.create_task(self.record())
        if parallel:
            await asyncio.gather(*(self.step(i) for i in range(input.steps)))
        else:
            for i in range(input.steps):
                await self.step(i)
        self.status.state, self.status.ended_at = RunState.SUCCEEDED, workflow.now()
        self.dirty = True
        await running
        await self.record()
        self.done = True
        await mirror
        return DutiesResult(steps=input.steps, state=self.status.state.value)


@workflow.defn(name="BenchDutiesSequential")
class BaselineDutiesSequential(_Duties):
    """`steps` no-op activities one after the other, keeping shipflow's run duties."""

    @workflow.run
    async def run_sequential(self, input: DutiesInput) -> DutiesResult:
        return await self.run(input, parallel=False)


@workflow.defn(name="BenchDutiesParallel")
class BaselineDutiesParallel(_Duties):
    """`steps` no-op activities all at once, keeping shipflow's run duties."""

    @workflow.run
    async def run_parallel(self, input: DutiesInput) -> DutiesResult:
        return await self.run(input, parallel=True)
