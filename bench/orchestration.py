"""Orchestration overhead: ReleaseWorkflow against hand-written Temporal workflows.

The question (issue 12) is what the interpreter costs on top of Temporal itself, and what
the dev server's configuration costs both. So both sides call the very same no-op
activity the same number of times, on one worker process, on one task queue of one fresh
in-memory dev server, and the runs of the two sides are interleaved so that drift (caches
warming, the server's in-memory history growing) hits both alike; the whole comparison
runs once per dev-server config (`CONFIGS`: Temporal's defaults, and the embedded stack's
tuned dynamic config) so that the before/after of that tuning is in the same report:

* the baseline is a hand-written workflow (`BaselineSequential`, `BaselineParallel`)
  that calls `notify.send` N times as a regular activity, with the options the
  interpreter gives a regular notify step;
* the interpreter runs a real flow of N `notify` steps compiled by `plan_for` and started
  by `start_release` (memo, search attributes and all). The no-op is registered under
  the activity name `notify.send`, so the interpreter dispatches to it unchanged. The
  interpreter also records the run when it starts running and at the end (`records.run`,
  two more no-op local activities): that is part of its cost and is measured, not subtracted.

Cases: `sequential`, `parallel` and `concurrent` give the notify steps a timeout above
`SHORT_STEP_S`, so the interpreter runs them as regular activities like the baseline: they
measure the interpreter's own overhead (target: within `WALL_TARGET`/`CPU_TARGET`).
`short` runs the same sequential flow with notify's default timeout, as local activities
(what a user gets), against the same regular-activity baseline: it must be faster.

The worker runs in a process of its own (`--serve-worker`, driven over stdin/stdout), so
that the CPU reported is the worker's alone and a profiler can attach to it (`--profile
DIR` samples it with py-spy). Choices that keep the comparison fair, each explained where
it is made: the flows use `concurrency: allow` (the baseline takes no stage lock); the
worker uses the production worker's sandbox (`shipflow.workflows.sandbox`, which passes
the interpreter's module through) and passes this module (the baseline's) through as
well; and bytecode is cached (as for an installed worker) even where
PYTHONDONTWRITEBYTECODE is set. Min and median over the repetitions are both reported, so
that one lucky run does not decide.

The module is longer than our ~400-line guide: it holds the baseline workflows (passed
through the sandbox as this module), the worker process, the driver and the report, which
share the case definitions; each part is short.

`python -m bench.orchestration [--steps 50 --reps 11 --configs tuned ...]` runs it alone;
`bench.run_all` runs it with the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import builtins
import contextlib
import json
import os
import signal
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

from tests.helpers import temporal_binary

# The baseline workflows below run in the workflow sandbox. The bench worker passes this
# module through (see `bench_worker`), and its imports are passed through too, so that a
# baseline run does not pay for re-executing the benchmark's driver code: a hand-written
# workflow lives in a small module whose re-execution costs well under a millisecond.
with workflow.unsafe.imports_passed_through():
    from concurrent.futures import ThreadPoolExecutor

    from temporalio.api.enums.v1 import EventType
    from temporalio.client import Client, WorkflowHandle
    from temporalio.testing import WorkflowEnvironment
    from temporalio.worker import Worker

    from shipflow.activities.core.client import (
        COMMIT_KEY,
        FLOW_KEY,
        STAGE_KEY,
        data_converter,
        dev_server_args,
    )
    from shipflow.activities.core.settings import Settings
    from shipflow.activities.core.starter import plan_for, start_release
    from shipflow.workflows.io import notify as notify_io
    from shipflow.workflows.io import records as record_io
    from shipflow.workflows.io.common import StepContext
    from shipflow.workflows.release import ReleaseWorkflow
    from shipflow.workflows.sandbox import workflow_runner
    from shipflow.workflows.spec import FlowSpec, parse_flow

#: The activity options the interpreter gives a notify step (its default timeout is 30 s).
ACTIVITY_TIMEOUT = timedelta(seconds=30)
NO_RETRY = RetryPolicy(maximum_attempts=1)
#: A run records itself in the runs index when it starts running and when it ends.
RECORDS_PER_RUN = 2
#: Targets from issue 12: interpreter over baseline, medians of wall time and worker CPU.
WALL_TARGET = 1.10
CPU_TARGET = 1.10
#: Short steps run as local activities must beat the hand-written regular-activity workflow.
SHORT_TARGET = 1.0

#: Dev server configs the comparison runs on, one fresh server each, in this order.
CONFIGS: dict[str, list[str]] = {
    # Temporal's defaults (updates on, as shipflow needs them for approvals).
    "default": ["--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true"],
    # What the embedded stack, the tests and the demo start (`dev_server_args()`).
    "tuned": dev_server_args(),
}
#: Cases run on the `default` config. Not the 100 concurrent runs: at Temporal's default
#: task-loading rate the single-shard dev server falls so far behind on a busy 2-core machine
#: that no-op activities hit their 30 s timeout (measured 2026-12-03, load average ~15), and
#: the per-step latency that config costs shows in the sequential cases already.
DEFAULT_CONFIG_CASES = ("sequential", "parallel", "short")
CONFIG_NOTES = {
    "default": "Temporal's dynamic config defaults",
    "tuned": "`history.transferProcessorMaxPollRPS=1000`, as `shipflow dev` starts it",
}


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


# ---------------------------------------------------------------------- the worker process


#: This module's name even when it runs as `python -m bench.orchestration`.
MODULE = "bench.orchestration"
ROOT = Path(__file__).resolve().parent.parent


def bench_worker(client: Client, task_queue: str, noop: NoopActivities) -> Worker:
    """One worker for both sides, configured like `shipflow.worker.main.build_worker`.

    Both sides run in the production worker's sandbox (`shipflow.workflows.sandbox`), which
    passes the interpreter's module through; this module (the baseline's) is passed
    through too, so that neither side is re-imported per workflow instance.
    """
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[ReleaseWorkflow, BaselineSequential, BaselineParallel],
        activities=[noop.send, noop.record_run],
        workflow_runner=workflow_runner(MODULE),
        activity_executor=ThreadPoolExecutor(max_workers=32, thread_name_prefix="bench-activity"),
        max_concurrent_activities=32,
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


async def serve_worker(address: str, namespace: str, task_queue: str) -> None:
    """The worker process: runs `bench_worker` and answers its parent on stdin/stdout.

    `cpu` -> this process's CPU seconds so far (all threads, the SDK's core included);
    `stop` (or end of input) -> shut down and print the no-op call counts as JSON.
    """
    client = await Client.connect(
        address, namespace=namespace, data_converter=data_converter(Settings())
    )
    noop = NoopActivities()
    async with bench_worker(client, task_queue, noop):
        print("ready", flush=True)
        while True:
            command = (await asyncio.to_thread(sys.stdin.readline)).strip()
            if command == "cpu":
                print(repr(time.process_time()), flush=True)
            else:
                break
    print(json.dumps({"sends": noop.sends, "records": noop.records}), flush=True)


class WorkerProcess:
    """The benchmark's worker, in a process of its own.

    So that its CPU time is the worker's alone (not the client's that starts the runs and
    waits for them), and so that a profiler can attach to it (`--profile`: py-spy).
    """

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc
        self.profiler: asyncio.subprocess.Process | None = None

    @classmethod
    async def start(cls, client: Client, task_queue: str) -> WorkerProcess:
        config = client.service_client.config
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            MODULE,
            "--serve-worker",
            config.target_host,
            client.namespace,
            task_queue,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=ROOT,
        )
        worker = cls(proc)
        line = await worker._line(120.0)
        if line != "ready":
            proc.kill()
            await proc.wait()
            raise RuntimeError(f"the bench worker did not start (said {line!r})")
        return worker

    async def _line(self, timeout: float = 30.0) -> str:
        assert self.proc.stdout is not None
        return (await asyncio.wait_for(self.proc.stdout.readline(), timeout)).decode().strip()

    async def cpu(self) -> float:
        assert self.proc.stdin is not None
        self.proc.stdin.write(b"cpu\n")
        await self.proc.stdin.drain()
        return float(await self._line())

    async def profile(self, output: Path) -> None:
        """Sample the worker with py-spy until `stop` (raw collapsed stacks in `output`)."""
        output.parent.mkdir(parents=True, exist_ok=True)
        self.profiler = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "py-spy"),
            "record",
            "--pid",
            str(self.proc.pid),
            "--format",
            "raw",
            "--nonblocking",
            "--rate",
            "200",
            "--output",
            str(output),
            stdout=asyncio.subprocess.DEVNULL,
        )

    async def stop(self) -> dict[str, int]:
        if self.profiler is not None:
            self.profiler.send_signal(signal.SIGINT)
            await self.profiler.wait()
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(b"stop\n")
            await self.proc.stdin.drain()
            line = await self._line(60.0)
        except (OSError, builtins.TimeoutError):
            line = ""
        if self.proc.returncode is None and not line:
            self.proc.kill()
        await self.proc.wait()
        try:
            counts: dict[str, int] = json.loads(line)
        except ValueError:
            raise RuntimeError(
                f"the bench worker ended without its counts (exit {self.proc.returncode})"
            ) from None
        return counts


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
    config: str = "tuned"
    baseline_s: list[float] = field(default_factory=list)
    interpreter_s: list[float] = field(default_factory=list)
    #: CPU time of the worker process (all threads) per measured run.
    baseline_cpu_s: list[float] = field(default_factory=list)
    interpreter_cpu_s: list[float] = field(default_factory=list)
    target: float | None = WALL_TARGET
    cpu_target: float | None = CPU_TARGET
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
        """Interpreter over baseline, medians of wall time."""
        return self.interpreter_median / self.baseline_median

    @property
    def min_ratio(self) -> float:
        """Interpreter over baseline, best runs: what each side can do on a quiet machine."""
        return min(self.interpreter_s) / min(self.baseline_s)

    @property
    def cpu_ratio(self) -> float:
        return statistics.median(self.interpreter_cpu_s) / statistics.median(self.baseline_cpu_s)

    def cpu_per_step_ms(self, samples: list[float]) -> float:
        return statistics.median(samples) * 1000 / (self.steps * self.runs)

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.ratio <= self.target

    @property
    def cpu_met(self) -> bool | None:
        return None if self.cpu_target is None else self.cpu_ratio <= self.cpu_target

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config,
            "steps": self.steps,
            "runs": self.runs,
            "baseline_s": self.baseline_s,
            "interpreter_s": self.interpreter_s,
            "baseline_median_s": self.baseline_median,
            "interpreter_median_s": self.interpreter_median,
            "baseline_min_s": min(self.baseline_s),
            "interpreter_min_s": min(self.interpreter_s),
            "ratio": self.ratio,
            "min_ratio": self.min_ratio,
            "baseline_cpu_s": self.baseline_cpu_s,
            "interpreter_cpu_s": self.interpreter_cpu_s,
            "cpu_ratio": self.cpu_ratio,
            "baseline_history": asdict(self.baseline_history) if self.baseline_history else None,
            "interpreter_history": (
                asdict(self.interpreter_history) if self.interpreter_history else None
            ),
            "target": self.target,
            "met": self.met,
            "cpu_target": self.cpu_target,
            "cpu_met": self.cpu_met,
        }


def _yes(met: bool | None) -> str:
    return {None: "-", True: "yes", False: "**no**"}[met]


@dataclass
class OrchestrationReport:
    comparisons: list[Comparison]
    reps: int
    activity_calls: dict[str, int]

    def ratios(self) -> dict[str, float]:
        return {f"{c.config}: {c.name}": c.ratio for c in self.comparisons}

    def configs(self) -> list[str]:
        return list(dict.fromkeys(c.config for c in self.comparisons))

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
            "Same no-op activity (`notify.send`), same count, one worker process for both "
            "sides on one task queue of a fresh in-memory Temporal dev server per config; "
            "baseline and interpreter runs interleaved (order alternating), "
            f"{self.reps} measured repetitions after one warm-up of each (fewer for the "
            "concurrent case, see the samples); wall time from `start_workflow` to the result. "
            "The baseline calls the activity as a regular activity; the interpreter runs the "
            "flow as a user would get it (local activities where it chooses them, its memo, "
            "search attributes, status bookkeeping and its two `records.run` calls: running, then final). "
            "CPU is the worker process's own (all threads, the SDK's native core included); "
            "the client and the dev server run apart. On the `default` config only the "
            "cases in `DEFAULT_CONFIG_CASES` run (see there why). Dev server configs: "
            + "; ".join(f"`{name}`: {CONFIG_NOTES[name]}" for name in self.configs() if name in CONFIG_NOTES)
            + ".",
            "",
        ]
        if len(self.configs()) > 1:
            lines += self._side_by_side()
        for config in self.configs():
            lines += self._config_table(config)
        lines += [
            "History of one run (the last of each side): events, size, of which memo "
            "upserts, and the median wait of a workflow task between scheduled and started:",
            "",
        ]
        for c in self.comparisons:
            if c.baseline_history and c.interpreter_history:
                lines.append(
                    f"- {c.config}, {c.name}: baseline {c.baseline_history}; "
                    f"interpreter {c.interpreter_history}"
                )
        calls = ", ".join(f"`{k}` {v}" for k, v in self.activity_calls.items())
        lines += ["", f"No-op activity calls, warm-ups included: {calls}.", ""]
        return "\n".join(lines)

    def _side_by_side(self) -> list[str]:
        configs = self.configs()
        head = " | ".join(f"{c}: baseline | {c}: interpreter" for c in configs)
        lines = [
            "### Dev server config before/after (median wall time; per step for one run)",
            "",
            f"| case | {head} |",
            "|---|" + "---:|" * (2 * len(configs)),
        ]
        names = list(dict.fromkeys(c.name for c in self.comparisons))
        for name in names:
            cells = []
            for config in configs:
                match = [c for c in self.comparisons if c.name == name and c.config == config]
                if not match:
                    cells += ["-", "-"]
                    continue
                c = match[0]
                for median in (c.baseline_median, c.interpreter_median):
                    per_step = median * 1000 / c.steps if c.runs == 1 else None
                    each = f" ({per_step:.1f} ms/step)" if per_step is not None else ""
                    cells.append(f"{median * 1000:.0f} ms{each}")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return [*lines, ""]

    def _config_table(self, config: str) -> list[str]:
        lines = [
            f"### Dev server `{config}`",
            "",
            "| case | baseline min / median | interpreter min / median | ratio (median) "
            "| ratio (min) | target | met | worker CPU/step baseline | interpreter "
            "| CPU ratio | target | met |",
            "|---|---:|---:|---:|---:|---:|:---:|---:|---:|---:|---:|:---:|",
        ]
        mine = [c for c in self.comparisons if c.config == config]
        for c in mine:
            target = f"<= {c.target:.2f}" if c.target is not None else "-"
            cpu_target = f"<= {c.cpu_target:.2f}" if c.cpu_target is not None else "-"
            lines.append(
                f"| {c.name} | {min(c.baseline_s) * 1000:.0f} / {c.baseline_median * 1000:.0f} ms "
                f"| {min(c.interpreter_s) * 1000:.0f} / {c.interpreter_median * 1000:.0f} ms "
                f"| {c.ratio:.2f} | {c.min_ratio:.2f} | {target} | {_yes(c.met)} "
                f"| {c.cpu_per_step_ms(c.baseline_cpu_s):.2f} ms "
                f"| {c.cpu_per_step_ms(c.interpreter_cpu_s):.2f} ms "
                f"| {c.cpu_ratio:.2f} | {cpu_target} | {_yes(c.cpu_met)} |"
            )
        lines += ["", f"Wall-time samples (ms, in run order), `{config}`:", ""]
        for c in mine:
            lines.append(
                f"- {c.name}: baseline {_ms(c.baseline_s)}; interpreter {_ms(c.interpreter_s)}"
            )
        return [*lines, ""]


def _ms(samples: list[float]) -> str:
    return ", ".join(f"{s * 1000:.0f}" for s in samples)


class _Bench:
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
    ) -> Comparison:
        await baseline()  # warm-up: sandbox imports, caches, the server's first tasks
        await interpreter()
        for rep in range(reps):
            order = ("b", "i") if rep % 2 == 0 else ("i", "b")
            for side in order:
                if side == "b":
                    wall, cpu = await self._timed(baseline)
                    comparison.baseline_s.append(wall)
                    comparison.baseline_cpu_s.append(cpu)
                else:
                    wall, cpu = await self._timed(interpreter)
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


CASES = ("sequential", "parallel", "concurrent", "short")


async def run_orchestration(
    client: Client,
    *,
    config: str = "tuned",
    steps: int = 50,
    reps: int = 11,
    concurrent_runs: int = 100,
    concurrent_steps: int = 10,
    concurrent_reps: int = 5,
    cases: tuple[str, ...] = CASES,
    task_queue: str | None = None,
    search_attributes: bool = True,
    run_timeout: float = 120.0,
    profile: Path | None = None,
) -> OrchestrationReport:
    """Measure both sides on `client`'s server with a worker process of our own.

    Args:
        client: a client with shipflow's data converter (`data_converter(Settings())`:
            the worker process builds the same one from the same environment).
        config: the name of the server's dev-server config, for the report.
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
        profile: a file for py-spy's raw stacks of the worker process over the whole run.

    Raises:
        RuntimeError: a run did not succeed, or the sides did not run the same activities.
    """
    unknown = set(cases) - set(CASES)
    if unknown:
        raise ValueError(f"unknown cases {sorted(unknown)} (known: {', '.join(CASES)})")
    queue = task_queue or f"bench-{uuid.uuid4().hex[:10]}"
    expected = _Expected()
    sequential = notify_flow("bench-seq", steps, parallel=False)
    parallel = notify_flow("bench-par", steps, parallel=True)
    small = notify_flow("bench-conc", concurrent_steps, parallel=False)
    short = notify_flow("bench-short", steps, parallel=False, short=True)
    comparisons: list[Comparison] = []
    worker = await WorkerProcess.start(client, queue)
    try:
        if profile is not None:
            await worker.profile(profile)
        bench = _Bench(
            client, queue, worker, search_attributes=search_attributes, run_timeout=run_timeout
        )

        async def many_baseline() -> None:
            await asyncio.gather(
                *(bench.baseline(concurrent_steps, parallel=False) for _ in range(concurrent_runs))
            )

        async def many_interpreter() -> None:
            await asyncio.gather(*(bench.interpreter(small) for _ in range(concurrent_runs)))

        if "sequential" in cases:
            comparisons.append(
                await bench.compare(
                    Comparison(f"{steps} sequential steps", steps, config),
                    lambda: bench.baseline(steps, parallel=False),
                    lambda: bench.interpreter(sequential),
                    reps,
                )
            )
            expected.add(runs=reps + 1, steps=steps)
        if "parallel" in cases:
            comparisons.append(
                await bench.compare(
                    Comparison(f"{steps} parallel steps", steps, config),
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
                        config,
                        runs=concurrent_runs,
                    ),
                    many_baseline,
                    many_interpreter,
                    concurrent_reps,
                )
            )
            expected.add(runs=(concurrent_reps + 1) * concurrent_runs, steps=concurrent_steps)
        if "short" in cases:
            comparisons.append(
                await bench.compare(
                    Comparison(
                        f"{steps} sequential short steps (local activities)",
                        steps,
                        config,
                        target=SHORT_TARGET,
                        cpu_target=None,
                    ),
                    lambda: bench.baseline(steps, parallel=False),
                    lambda: bench.interpreter(short),
                    reps,
                )
            )
            expected.add(runs=reps + 1, steps=steps)
    except BaseException:
        with contextlib.suppress(Exception):  # the benchmark's own error is the one to see
            await worker.stop()
        raise
    counts = await worker.stop()
    expected.check(counts)
    return OrchestrationReport(
        comparisons=comparisons,
        reps=reps,
        activity_calls={
            notify_io.SEND: counts["sends"],
            record_io.RECORD_RUN: counts["records"],
        },
    )


@dataclass
class _Expected:
    """What both sides must have called, warm-ups included: proof they did the same work."""

    sends_per_side: int = 0
    interpreter_runs: int = 0

    def add(self, *, runs: int, steps: int) -> None:
        self.sends_per_side += runs * steps
        self.interpreter_runs += runs

    def check(self, counts: dict[str, int]) -> None:
        sends, records = counts["sends"], counts["records"]
        if sends != 2 * self.sends_per_side or records != RECORDS_PER_RUN * self.interpreter_runs:
            raise RuntimeError(
                f"activity counts off: {sends} sends (expected {2 * self.sends_per_side}), "
                f"{records} run records (expected {RECORDS_PER_RUN * self.interpreter_runs})"
            )


async def start_dev_server(config: str) -> WorkflowEnvironment:
    """A fresh in-memory Temporal dev server, like the tests' (search attributes registered)."""
    return await WorkflowEnvironment.start_local(
        dev_server_existing_path=temporal_binary(),
        data_converter=data_converter(Settings()),
        search_attributes=[FLOW_KEY, STAGE_KEY, COMMIT_KEY],
        dev_server_extra_args=CONFIGS[config],
    )


async def run_with_servers(
    configs: tuple[str, ...], profile: Path | None = None, **sizes: Any
) -> OrchestrationReport:
    """The benchmark on a fresh dev server per config, one after the other; one report."""
    reports: list[OrchestrationReport] = []
    cases: tuple[str, ...] = sizes.pop("cases", CASES)
    for config in configs:
        env = await start_dev_server(config)
        try:
            out = profile / f"worker-{config}.txt" if profile is not None else None
            mine = tuple(c for c in cases if config != "default" or c in DEFAULT_CONFIG_CASES)
            reports.append(
                await run_orchestration(
                    env.client, config=config, profile=out, cases=mine, **sizes
                )
            )
        finally:
            await env.shutdown()
    calls: dict[str, int] = {}
    for report in reports:
        for name, count in report.activity_calls.items():
            calls[name] = calls.get(name, 0) + count
    return OrchestrationReport(
        comparisons=[c for r in reports for c in r.comparisons],
        reps=reports[0].reps,
        activity_calls=calls,
    )


def main(
    steps: int = 50,
    reps: int = 11,
    concurrent_runs: int = 100,
    concurrent_steps: int = 10,
    concurrent_reps: int = 5,
    cases: tuple[str, ...] = CASES,
    configs: tuple[str, ...] = tuple(CONFIGS),
    profile: Path | None = None,
) -> dict[str, Any]:
    """Run the benchmark on fresh dev servers, one per config; print and return the results."""
    report = asyncio.run(
        run_with_servers(
            configs,
            profile,
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
    if len(sys.argv) == 5 and sys.argv[1] == "--serve-worker":
        _use_bytecode_cache()
        asyncio.run(serve_worker(*sys.argv[2:5]))
        sys.stdout.flush()
        os._exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--reps", type=int, default=11)
    parser.add_argument("--concurrent-runs", type=int, default=100)
    parser.add_argument("--concurrent-steps", type=int, default=10)
    parser.add_argument("--concurrent-reps", type=int, default=5)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument(
        "--profile", type=Path, help="directory for py-spy stacks of the worker, per config"
    )
    a = parser.parse_args()
    main(
        a.steps,
        a.reps,
        a.concurrent_runs,
        a.concurrent_steps,
        a.concurrent_reps,
        tuple(a.cases),
        tuple(a.configs),
        a.profile,
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
