"""Orchestration overhead: ReleaseWorkflow against hand-written Temporal workflows.

The question (issue 2) is what the interpreter costs on top of Temporal itself. So both
sides call the very same no-op activity the same number of times, in one process, on one
worker, on one task queue of one fresh in-memory dev server, and the runs of the two
sides are interleaved so that drift (caches warming, the server's in-memory history
growing) hits both alike:

* the baseline is a hand-written workflow (`BaselineSequential`, `BaselineParallel`)
  that calls `notify.send` N times with the activity options the interpreter uses;
* the interpreter runs a real flow of N `notify` steps compiled by `plan_for` and started
  by `start_release` (memo, search attributes and all). The no-op is registered under
  the activity name `notify.send`, so the interpreter dispatches to it unchanged. The
  interpreter also records the run when it starts running and at the end (`records.run`,
  two more no-op local activities per run):
  that is part of its cost and is measured, not subtracted.

Choices that keep the comparison fair, each explained where it is made: the flows use
`concurrency: allow` (the baseline takes no stage lock); this module is passed through
the sandbox (a hand-written workflow module is tiny, this one carries the driver), while
`shipflow.workflows.release` is re-executed per workflow instance as in production; and bytecode
is cached (as for an installed worker) even where PYTHONDONTWRITEBYTECODE is set. Besides
wall time, each run's CPU time in this process and the history size of the last run of
each side are reported: with a shared dev server's dispatch latency in every step, CPU
and history bytes show the interpreter's own cost better than wall time does.

`python -m bench.orchestration [--steps 50 --reps 7 ...]` runs it alone; `bench.run_all`
runs it with the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from temporalio import activity, workflow
from temporalio.common import RetryPolicy

from shipflow.infra.stack import temporal_binary

# The baseline workflows below run in the workflow sandbox. The bench worker passes this
# module through (see `bench_worker`), and its imports are passed through too, so that a
# baseline run does not pay for re-executing the benchmark's driver code: a hand-written
# workflow lives in a small module whose re-execution costs well under a millisecond.
with workflow.unsafe.imports_passed_through():
    from concurrent.futures import ThreadPoolExecutor

    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client, WorkflowHandle
    from temporalio.contrib.pydantic import pydantic_data_converter
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker
    from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

    from shipflow.activities.core.client import COMMIT_KEY, FLOW_KEY, STAGE_KEY
    from shipflow.activities.core.settings import Settings
    from shipflow.activities.core.starter import plan_for, start_release
    from shipflow.workflows.io import notify as notify_io
    from shipflow.workflows.io import records as record_io
    from shipflow.workflows.io.common import StepContext
    from shipflow.workflows.release import ReleaseWorkflow
    from shipflow.workflows.spec import FlowSpec, parse_flow

#: The activity options the interpreter gives a notify step (its default timeout is 30 s).
ACTIVITY_TIMEOUT = timedelta(seconds=30)
NO_RETRY = RetryPolicy(maximum_attempts=1)
#: Targets from the issue: interpreter time / baseline time, medians.
SEQUENTIAL_TARGET = 1.15
PARALLEL_TARGET = 1.25
#: A run records itself in the runs index when it starts running and when it ends.
RECORDS_PER_RUN = 2


# ---------------------------------------------------------------------- the no-op activities


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


# ---------------------------------------------------------------------- the baseline workflows


def _note(step: int) -> notify_io.NotifyInput:
    return notify_io.NotifyInput(
        context=StepContext(
            run_id=workflow.info().workflow_id, flow="bench", stage="bench", step_id=f"n{step}"
        ),
        webhook="http://127.0.0.1:9/bench",
        message=f"step {step}",
        run_state="running",
    )


async def _send(step: int) -> notify_io.NotifyOutput:
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
            await _send(step)
        return steps


@workflow.defn(name="BenchBaselineParallel")
class BaselineParallel:
    """`steps` no-op activities all at once, written by hand."""

    @workflow.run
    async def run(self, steps: int) -> int:
        await asyncio.gather(*(_send(step) for step in range(steps)))
        return steps


# ---------------------------------------------------------------------- the interpreter's flows


def notify_flow(name: str, steps: int, *, parallel: bool) -> FlowSpec:
    """A flow of `steps` notify steps, in sequence or in one parallel group.

    `concurrency: allow`, because the baseline takes no stage lock: with the default
    `queue` the concurrent runs of one stage would wait for each other by design.
    """
    actions = [
        {"notify": {"id": f"n{i}", "webhook": "http://127.0.0.1:9/bench", "message": f"step {i}"}}
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


# ---------------------------------------------------------------------- measuring


@dataclass
class HistoryStats:
    """One run's history: what the server stores, sends to workers and replays."""

    events: int
    bytes: int
    #: Bytes of the WORKFLOW_PROPERTIES_MODIFIED events (memo upserts).
    memo_bytes: int
    #: Median time from WORKFLOW_TASK_SCHEDULED to STARTED: the server's dispatch latency.
    task_dispatch_ms: float

    def __str__(self) -> str:
        return (
            f"{self.events} events, {self.bytes / 1024:.1f} KiB "
            f"({self.memo_bytes / 1024:.1f} KiB memo), "
            f"workflow task dispatch {self.task_dispatch_ms:.1f} ms (median)"
        )


@dataclass
class Comparison:
    """Wall times (seconds) of the same work done by the baseline and by the interpreter."""

    name: str
    steps: int
    baseline_s: list[float] = field(default_factory=list)
    interpreter_s: list[float] = field(default_factory=list)
    #: CPU time of this process (worker and client, all threads) per measured run.
    baseline_cpu_s: list[float] = field(default_factory=list)
    interpreter_cpu_s: list[float] = field(default_factory=list)
    target: float | None = None
    runs: int = 1
    #: History of the last run of each side.
    baseline_history: HistoryStats | None = None
    interpreter_history: HistoryStats | None = None

    @property
    def baseline_median(self) -> float:
        return statistics.median(self.baseline_s)

    @property
    def interpreter_median(self) -> float:
        return statistics.median(self.interpreter_s)

    @property
    def ratio(self) -> float:
        return self.interpreter_median / self.baseline_median

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(self.interpreter_cpu_s) / statistics.median(self.baseline_cpu_s)

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "steps": self.steps,
            "runs": self.runs,
            "baseline_s": self.baseline_s,
            "interpreter_s": self.interpreter_s,
            "baseline_median_s": self.baseline_median,
            "interpreter_median_s": self.interpreter_median,
            "ratio": self.ratio,
            "baseline_cpu_s": self.baseline_cpu_s,
            "interpreter_cpu_s": self.interpreter_cpu_s,
            "cpu_ratio": self.cpu_ratio,
            "baseline_history": asdict(self.baseline_history) if self.baseline_history else None,
            "interpreter_history": (
                asdict(self.interpreter_history) if self.interpreter_history else None
            ),
            "target": self.target,
            "met": self.met,
        }


@dataclass
class OrchestrationReport:
    comparisons: list[Comparison]
    reps: int
    activity_calls: dict[str, int]

    def ratios(self) -> dict[str, float]:
        return {c.name: c.ratio for c in self.comparisons}

    def as_dict(self) -> dict[str, Any]:
        return {
            "reps": self.reps,
            "ratios": self.ratios(),
            "comparisons": [c.as_dict() for c in self.comparisons],
            "activity_calls": self.activity_calls,
            "markdown": self.markdown(),
        }

    def markdown(self) -> str:
        lines = [
            "## Orchestration overhead (ReleaseWorkflow vs hand-written workflow)",
            "",
            "Same no-op activity (`notify.send`), same count, same worker and task queue, one "
            "fresh in-memory Temporal dev server; baseline and interpreter runs interleaved "
            f"(order alternating), {self.reps} measured repetitions after one warm-up of each; "
            "medians of wall time from `start_workflow` to the result. The interpreter's time "
            "includes its `records.run` local activities (running, then final: two more no-op "
            "activities per run), "
            "its memo upserts and its status bookkeeping. CPU is the benchmark process's own "
            "(worker, client and the SDK's native core, all threads; the dev server runs apart).",
            "",
            "| case | baseline median | interpreter median | ratio | target | met "
            "| CPU baseline | CPU interpreter | CPU ratio |",
            "|---|---:|---:|---:|---:|:---:|---:|---:|---:|",
        ]
        for c in self.comparisons:
            target = f"<= {c.target:.2f}" if c.target is not None else "-"
            met = {None: "-", True: "yes", False: "**no**"}[c.met]
            lines.append(
                f"| {c.name} | {c.baseline_median * 1000:.0f} ms | "
                f"{c.interpreter_median * 1000:.0f} ms | {c.ratio:.2f} | {target} | {met} | "
                f"{statistics.median(c.baseline_cpu_s) * 1000:.0f} ms | "
                f"{statistics.median(c.interpreter_cpu_s) * 1000:.0f} ms | {c.cpu_ratio:.2f} |"
            )
        lines += ["", "All wall-time samples (ms, in run order):", ""]
        for c in self.comparisons:
            lines.append(
                f"- {c.name}: baseline {_ms(c.baseline_s)}; interpreter {_ms(c.interpreter_s)}"
            )
        lines += [
            "",
            "History of one run (the last of each side): events, size, of which memo "
            "upserts, and the median wait of a workflow task between scheduled and started "
            "(a latency of the server and its task queue that every sequential step pays on "
            "both sides):",
            "",
        ]
        for c in self.comparisons:
            if c.baseline_history and c.interpreter_history:
                lines.append(
                    f"- {c.name}: baseline {c.baseline_history}; "
                    f"interpreter {c.interpreter_history}"
                )
        calls = ", ".join(f"`{k}` {v}" for k, v in self.activity_calls.items())
        lines += ["", f"No-op activity calls, warm-ups included: {calls}.", ""]
        return "\n".join(lines)


def _ms(samples: list[float]) -> str:
    return ", ".join(f"{s * 1000:.0f}" for s in samples)


async def _timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    """Wall time and this process's CPU time (all threads, the SDK's core included)."""
    started, cpu = time.perf_counter(), time.process_time()
    await work()
    return time.perf_counter() - started, time.process_time() - cpu


class _Bench:
    """Starts runs of either side on one task queue and waits for their results."""

    def __init__(
        self, client: Client, task_queue: str, *, search_attributes: bool, run_timeout: float
    ):
        self.client = client
        self.task_queue = task_queue
        self.settings = Settings(task_queue=task_queue, search_attributes=search_attributes)
        self.run_timeout = run_timeout
        self.last_baseline = ""
        self.last_interpreter = ""

    async def baseline(self, steps: int, *, parallel: bool) -> None:
        run = BaselineParallel.run if parallel else BaselineSequential.run
        handle = await self.client.start_workflow(
            run, steps, id=f"bench-base-{uuid.uuid4().hex[:10]}", task_queue=self.task_queue
        )
        self.last_baseline = handle.id
        done = await self._result(handle)
        if done != steps:
            raise RuntimeError(f"baseline run {handle.id} did {done} steps, not {steps}")

    async def interpreter(self, flow: FlowSpec) -> None:
        plan = plan_for(flow, self.settings)
        handle = await start_release(
            self.client,
            self.settings,
            plan,
            run_id=f"{flow.name}-{uuid.uuid4().hex[:10]}",
            task_queue=self.task_queue,
        )
        self.last_interpreter = handle.id
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

    async def compare(
        self,
        comparison: Comparison,
        baseline: Callable[[], Awaitable[Any]],
        interpreter: Callable[[], Awaitable[Any]],
        reps: int,
    ) -> Comparison:
        await baseline()  # warm-up: sandbox imports, caches, the server's first tasks
        await interpreter()
        for rep in range(reps):
            order = ("b", "i") if rep % 2 == 0 else ("i", "b")
            for side in order:
                if side == "b":
                    wall, cpu = await _timed(baseline)
                    comparison.baseline_s.append(wall)
                    comparison.baseline_cpu_s.append(cpu)
                else:
                    wall, cpu = await _timed(interpreter)
                    comparison.interpreter_s.append(wall)
                    comparison.interpreter_cpu_s.append(cpu)
        comparison.baseline_history = await self.history_size(self.last_baseline)
        comparison.interpreter_history = await self.history_size(self.last_interpreter)
        return comparison

    async def history_size(self, workflow_id: str) -> HistoryStats:
        events = total = memo = 0
        scheduled: float | None = None
        waits: list[float] = []
        async for event in self.client.get_workflow_handle(workflow_id).fetch_history_events():
            events += 1
            size = event.ByteSize()
            total += size
            at = event.event_time.ToMicroseconds() / 1000
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_PROPERTIES_MODIFIED:
                memo += size
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_SCHEDULED:
                scheduled = at
            elif event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_STARTED and scheduled:
                waits.append(at - scheduled)
                scheduled = None
        return HistoryStats(events, total, memo, statistics.median(waits) if waits else 0.0)


#: This module's name even when it runs as `python -m bench.orchestration`.
MODULE = "bench.orchestration"


def bench_worker(client: Client, task_queue: str, noop: NoopActivities) -> Worker:
    """One worker for both sides, configured like `shipflow.worker.main.build_worker`.

    Both sides run in the same default workflow sandbox; only this module is passed
    through it (the baseline's module), while `shipflow.workflows.release` is re-executed for
    every new ReleaseWorkflow instance as in production: that cost is the interpreter's.
    """
    restrictions = SandboxRestrictions.default.with_passthrough_modules(MODULE)
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ReleaseWorkflow, BaselineSequential, BaselineParallel],
        activities=[noop.send, noop.record_run],
        workflow_runner=SandboxedWorkflowRunner(restrictions=restrictions),
        activity_executor=ThreadPoolExecutor(max_workers=32, thread_name_prefix="bench-activity"),
        max_concurrent_activities=32,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


CASES = ("sequential", "parallel", "concurrent")


async def run_orchestration(
    client: Client,
    *,
    steps: int = 50,
    reps: int = 7,
    concurrent_runs: int = 100,
    concurrent_steps: int = 10,
    concurrent_reps: int = 3,
    cases: tuple[str, ...] = CASES,
    task_queue: str | None = None,
    search_attributes: bool = True,
    run_timeout: float = 120.0,
) -> OrchestrationReport:
    """Measure both sides on `client`'s server with a worker of our own.

    Args:
        client: a client with the pydantic data converter.
        steps: activities per run in the sequential and parallel cases.
        reps: measured repetitions of each side in those cases (after one warm-up).
        concurrent_runs: runs started at once in the concurrency case.
        concurrent_steps: sequential activities in each of those runs.
        concurrent_reps: measured repetitions of the concurrency case.
        cases: which of `CASES` to run (all by default; fewer to profile one).
        task_queue: default: a fresh random one.
        search_attributes: whether the interpreter's runs set shipflow's search
            attributes (they must then be registered on the server).
        run_timeout: seconds one measured run (or batch of concurrent runs) may take.

    Raises:
        RuntimeError: a run did not succeed, or the sides did not run the same activities.
    """
    unknown = set(cases) - set(CASES)
    if unknown:
        raise ValueError(f"unknown cases {sorted(unknown)} (known: {', '.join(CASES)})")
    queue = task_queue or f"bench-{uuid.uuid4().hex[:10]}"
    bench = _Bench(client, queue, search_attributes=search_attributes, run_timeout=run_timeout)
    noop = NoopActivities()
    expected = _Expected()
    sequential = notify_flow("bench-seq", steps, parallel=False)
    parallel = notify_flow("bench-par", steps, parallel=True)
    small = notify_flow("bench-conc", concurrent_steps, parallel=False)

    async def many_baseline() -> None:
        await asyncio.gather(
            *(bench.baseline(concurrent_steps, parallel=False) for _ in range(concurrent_runs))
        )

    async def many_interpreter() -> None:
        await asyncio.gather(*(bench.interpreter(small) for _ in range(concurrent_runs)))

    comparisons: list[Comparison] = []
    async with bench_worker(client, queue, noop):
        if "sequential" in cases:
            comparisons.append(
                await bench.compare(
                    Comparison(f"{steps} sequential steps", steps, target=SEQUENTIAL_TARGET),
                    lambda: bench.baseline(steps, parallel=False),
                    lambda: bench.interpreter(sequential),
                    reps,
                )
            )
            expected.add(runs=reps + 1, steps=steps)
        if "parallel" in cases:
            comparisons.append(
                await bench.compare(
                    Comparison(f"{steps} parallel steps", steps, target=PARALLEL_TARGET),
                    lambda: bench.baseline(steps, parallel=True),
                    lambda: bench.interpreter(parallel),
                    reps,
                )
            )
            expected.add(runs=reps + 1, steps=steps)
        if "concurrent" in cases:
            comparisons.append(
                await bench.compare(
                    Comparison(
                        f"{concurrent_runs} concurrent runs of {concurrent_steps} steps (total)",
                        concurrent_steps,
                        runs=concurrent_runs,
                    ),
                    many_baseline,
                    many_interpreter,
                    concurrent_reps,
                )
            )
            expected.add(runs=(concurrent_reps + 1) * concurrent_runs, steps=concurrent_steps)
    expected.check(noop)
    return OrchestrationReport(
        comparisons=comparisons,
        reps=reps,
        activity_calls={notify_io.SEND: noop.sends, record_io.RECORD_RUN: noop.records},
    )


@dataclass
class _Expected:
    """What both sides must have called, warm-ups included: proof they did the same work."""

    sends_per_side: int = 0
    interpreter_runs: int = 0

    def add(self, *, runs: int, steps: int) -> None:
        self.sends_per_side += runs * steps
        self.interpreter_runs += runs

    def check(self, noop: NoopActivities) -> None:
        records = RECORDS_PER_RUN * self.interpreter_runs
        if noop.sends != 2 * self.sends_per_side or noop.records != records:
            raise RuntimeError(
                f"activity counts off: {noop.sends} sends (expected {2 * self.sends_per_side}), "
                f"{noop.records} run records (expected {records})"
            )


async def start_dev_server() -> WorkflowEnvironment:
    """A fresh in-memory Temporal dev server, like the tests' (search attributes registered)."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=pydantic_data_converter,
        search_attributes=[FLOW_KEY, STAGE_KEY, COMMIT_KEY],
    )



async def run_with_server(**sizes: Any) -> OrchestrationReport:
    env = await start_dev_server()
    try:
        return await run_orchestration(env.client, **sizes)
    finally:
        await env.shutdown()


def main(
    steps: int = 50,
    reps: int = 7,
    concurrent_runs: int = 100,
    concurrent_steps: int = 10,
    concurrent_reps: int = 3,
    cases: tuple[str, ...] = CASES,
) -> dict[str, Any]:
    """Run the benchmark on its own fresh dev server; print and return the results."""
    _use_bytecode_cache()
    report = asyncio.run(
        run_with_server(
            steps=steps,
            reps=reps,
            concurrent_runs=concurrent_runs,
            concurrent_steps=concurrent_steps,
            concurrent_reps=concurrent_reps,
            cases=cases,
        )
    )
    print(report.markdown())
    return report.as_dict()


def _use_bytecode_cache() -> None:
    """Let the sandbox load workflow modules from bytecode, as an installed worker does.

    The sandbox imports `shipflow.workflows.release` afresh for every new workflow instance. An
    installed package has compiled bytecode, but with PYTHONDONTWRITEBYTECODE set (this
    machine, many container images) there is none and every instance compiles the module
    from source (about 10 ms each on 2 cores). Caching bytecode in a temporary directory
    measures the installed case without writing into the source tree.
    """
    if sys.pycache_prefix is None:
        sys.pycache_prefix = str(Path(tempfile.gettempdir()) / "shipflow-bench-pycache")
    sys.dont_write_bytecode = False


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--concurrent-runs", type=int, default=100)
    parser.add_argument("--concurrent-steps", type=int, default=10)
    parser.add_argument("--concurrent-reps", type=int, default=3)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    a = parser.parse_args()
    main(
        a.steps,
        a.reps,
        a.concurrent_runs,
        a.concurrent_steps,
        a.concurrent_reps,
        tuple(a.cases),
    )
    # The SDK's native runtime can crash while Python tears down (sdk-python issue 300);
    # everything is shut down and printed by now, so leave with the real result.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    # Import ourselves by name, so that the workflows are `bench.orchestration`'s, not `__main__`'s.
    from bench.orchestration import _cli as cli

    cli()
