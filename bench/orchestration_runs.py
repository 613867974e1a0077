"""The sides of the orchestration benchmark, run and timed: the interpreter's flows
(`notify_flow`), and `Bench`, which starts runs of each side (the bare hand-written
workflow, the hand-written one keeping shipflow's run duties, the interpreter) on one task
queue, times them against the worker process's CPU and reads the history each left."""

from __future__ import annotations

import asyncio
import builtins
import itertools
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle

from bench.orchestration_baseline import BaselineParallel, BaselineSequential
from bench.orchestration_duties import BaselineDutiesParallel, BaselineDutiesSequential, DutiesInput
from bench.orchestration_report import Comparison, HistoryStats
from bench.orchestration_worker import WorkerProcess
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import RunLook, plan_for, start_release
from shipflow.workflows.spec import FlowSpec, parse_flow
from shipflow.workflows.status import STEP_MEMO_PREFIX

#: A notify step with this timeout is not short (`step_kinds.SHORT_STEP_S`): the interpreter
#: runs it as a regular activity, like the baseline, so the two differ in orchestration only.
REGULAR_TIMEOUT = "60s"


def notify_flow(name: str, steps: int, *, parallel: bool, short: bool = False) -> FlowSpec:
    """A flow of `steps` notify steps, in sequence or in one parallel group.

    `concurrency: allow`, because the baseline takes no stage lock: with the default
    `queue` the concurrent runs of one stage would wait for each other by design.
    `short`: the steps keep notify's default timeout (30 s), so the interpreter runs them
    as local activities; otherwise they get `REGULAR_TIMEOUT` and run as regular ones.
    """
    timeout = {} if short else {"timeout": REGULAR_TIMEOUT}
    actions = [
        {
            "notify": {
                "id": f"n{i}",
                "webhook": "http://127.0.0.1:9/bench",
                "message": f"step {i}",
                **timeout,
            }
        }
        for i in range(steps)
    ]
    return parse_flow(
        {
            "apiVersion": "shipflow/v1",
            "name": name,
            "stage": "bench",
            "concurrency": "allow",
            "steps": [{"parallel": actions}] if parallel else actions,
        }
    )


class Bench:
    """Starts runs of either side on one task queue and waits for their results."""

    def __init__(
        self,
        client: Client,
        task_queue: str,
        worker: WorkerProcess | None = None,
        *,
        search_attributes: bool,
        run_timeout: float,
    ):
        self.client = client
        self.task_queue = task_queue
        self.worker = worker
        self.settings = Settings(task_queue=task_queue, search_attributes=search_attributes)
        self.run_timeout = run_timeout
        self.last: dict[str, str] = {}

    async def baseline(self, steps: int, *, parallel: bool) -> None:
        run = BaselineParallel.run if parallel else BaselineSequential.run
        handle = await self.client.start_workflow(
            run, steps, id=f"bench-base-{uuid.uuid4().hex[:10]}", task_queue=self.task_queue
        )
        self.last["baseline"] = handle.id
        done = await self._result(handle)
        if done != steps:
            raise RuntimeError(f"baseline run {handle.id} did {done} steps, not {steps}")

    async def duties(self, flow: FlowSpec, *, parallel: bool) -> None:
        """The hand-written workflow that keeps a run's duties, started as the API starts
        `flow` (the same start memo and search attributes as the interpreter's run of it)."""
        run = (
            BaselineDutiesParallel.run_parallel
            if parallel
            else BaselineDutiesSequential.run_sequential
        )
        plan = plan_for(flow, self.settings)
        run_id = f"{flow.name}-duties-{uuid.uuid4().hex[:10]}"
        look = RunLook.of(self.settings, plan, run_id, None, None, "api")
        steps = sum(key.startswith(STEP_MEMO_PREFIX) for key in look.memo)
        handle = await self.client.start_workflow(
            run,
            DutiesInput(run_id=run_id, flow=plan.flow, stage=plan.stage, steps=steps),
            id=run_id,
            task_queue=self.task_queue,
            memo=look.memo,
            search_attributes=look.search_attributes,
            static_summary=look.summary,
            static_details=look.details,
        )
        self.last["duties"] = handle.id
        result = await self._result(handle)
        if result.steps != steps or result.state != "succeeded":
            raise RuntimeError(
                f"duties run {handle.id} ended {result.state} ({result.steps} steps)"
            )

    async def interpreter(self, flow: FlowSpec) -> None:
        plan = plan_for(flow, self.settings)
        handle = await start_release(
            self.client,
            self.settings,
            plan,
            run_id=f"{flow.name}-{uuid.uuid4().hex[:10]}",
            task_queue=self.task_queue,
        )
        self.last["interpreter"] = handle.id
        result = await self._result(handle)
        if result.status.state != "succeeded":
            raise RuntimeError(f"interpreter run {handle.id} ended {result.status.state}")

    async def _result(self, handle: WorkflowHandle[Any, Any]) -> Any:
        """The run's result; a run that hangs (e.g. a failing workflow task) fails the bench."""
        try:
            return await asyncio.wait_for(handle.result(), self.run_timeout)
        except builtins.TimeoutError:
            await handle.terminate("benchmark run timed out")
            raise RuntimeError(
                f"run {handle.id} did not finish within {self.run_timeout:g}s "
                "(see the worker's log for a failing workflow task)"
            ) from None

    async def _timed(self, work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
        """Wall time, and the worker process's CPU time meanwhile."""
        if self.worker is None:
            raise RuntimeError("timing needs the worker process (the bench runs without one)")
        cpu = await self.worker.cpu()
        started = time.perf_counter()
        await work()
        wall = time.perf_counter() - started
        return wall, await self.worker.cpu() - cpu

    async def compare(
        self,
        comparison: Comparison,
        baseline: Callable[[], Awaitable[Any]],
        interpreter: Callable[[], Awaitable[Any]],
        reps: int,
        duties: Callable[[], Awaitable[Any]] | None = None,
    ) -> Comparison:
        """Run the sides interleaved after one warm-up run of each, their order cycling
        through every permutation so that no side always runs first or last."""
        sides: dict[str, Callable[[], Awaitable[Any]]] = {
            "baseline": baseline,
            "interpreter": interpreter,
        }
        if duties is not None:
            sides["duties"] = duties
        for work in sides.values():  # warm-up: imports, caches, the server's first tasks
            await work()
        orders = list(itertools.permutations(sides))
        for rep in range(reps):
            for side in orders[rep % len(orders)]:
                wall, cpu = await self._timed(sides[side])
                comparison.add(side, wall, cpu)
        for side in sides:
            comparison.history[side] = await self.history_size(self.last[side])
        return comparison

    async def history_size(self, workflow_id: str) -> HistoryStats:
        events = total = memo = markers = upserts = 0
        scheduled: float | None = None
        waits: list[float] = []
        async for event in self.client.get_workflow_handle(workflow_id).fetch_history_events():
            events += 1
            size = event.ByteSize()
            total += size
            at = event.event_time.ToMicroseconds() / 1000
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED:
                memo += size
                upserts += 1
            elif event.event_type == EventType.EVENT_TYPE_MARKER_RECORDED:
                markers += 1
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                scheduled = at
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and scheduled:
                waits.append(at - scheduled)
                scheduled = None
        return HistoryStats(
            events,
            total,
            memo,
            statistics.median(waits) if waits else 0.0,
            markers=markers,
            memo_upserts=upserts,
        )
