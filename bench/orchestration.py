"""Orchestration overhead: ReleaseWorkflow against hand-written Temporal workflows.

The question (issue 12) is what the interpreter costs on top of Temporal itself, and what
the dev server's configuration costs both. So both sides call the very same no-op
activity the same number of times, on one worker process, on one task queue of one fresh
in-memory dev server, and the runs of the two sides are interleaved so that drift (caches
warming, the server's in-memory history growing) hits both alike; the whole comparison
runs once per dev-server config (`CONFIGS`: Temporal's defaults, the embedded stack's
tuned dynamic config without eager activity execution, and with it) so that the
before/after of each tuning is in the same report (and once more with the worker in
Temporal's workflow sandbox, as it ran before it left it: config `sandbox`):

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
worker runs both sides with the production worker's runner (`shipflow.workflows.sandbox`:
outside the sandbox; in it for config `sandbox`, passing the interpreter's module and the
baseline's through); and bytecode is cached (as for an installed worker) even where
PYTHONDONTWRITEBYTECODE is set. Min and median over the repetitions are both reported, so
that one lucky run does not decide.

Its parts: orchestration_baseline.py (the hand-written workflows and the no-op activities,
the module the sandbox passes through), orchestration_runs.py (the interpreter's flows;
starting, timing and reading runs of both sides), orchestration_worker.py (the worker
process) and orchestration_report.py (measurements, targets, the report); this module
holds the cases, the dev servers, the driver and the command line.

`python -m bench.orchestration [--steps 50 --reps 11 --configs tuned ...]` runs it alone;
`bench.run_all` runs it with the other benchmarks.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from bench.orchestration_report import (
    SHORT_TARGET,
    Comparison,
    OrchestrationReport,
)
from bench.orchestration_runs import Bench, notify_flow
from bench.orchestration_worker import WorkerProcess, serve_worker
from shipflow.activities.core.client import (
    COMMIT_KEY,
    DEV_SERVER_DYNAMIC_CONFIG,
    EAGER_ACTIVITIES,
    FLOW_KEY,
    STAGE_KEY,
    data_converter,
    dev_server_args,
)
from shipflow.activities.core.settings import Settings
from shipflow.workflows.io import notify as notify_io
from shipflow.workflows.io import records as record_io
from tests.helpers import temporal_binary

#: A run records itself in the runs index when it starts running and when it ends.
RECORDS_PER_RUN = 2

#: Dev server configs the comparison runs on, one fresh server each, in this order.
CONFIGS: dict[str, list[str]] = {
    # Temporal's defaults (updates on, as shipflow needs them for approvals).
    "default": ["--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true"],
    # What the embedded stack, the tests and the demo start (`dev_server_args()`).
    # The embedded stack's config with eager activity execution turned off (as on a Temporal
    # cluster by default; `temporal server start-dev` turns it on by itself): the report
    # shows what eager execution is worth, on the same machine and run.
    "no-eager": [
        arg
        for key, value in {**DEV_SERVER_DYNAMIC_CONFIG, EAGER_ACTIVITIES: "false"}.items()
        for arg in ("--dynamic-config-value", f"{key}={value}")
    ],
    # The embedded stack's config with the worker in Temporal's workflow sandbox (as the
    # worker ran before this change; `SHIPFLOW_WORKFLOW_SANDBOX=true`): what leaving the
    # sandbox is worth, on the same machine and run (see shipflow.workflows.sandbox).
    "sandbox": dev_server_args(),
    # What the embedded stack, the tests and the demo start (`dev_server_args()`).
    "tuned": dev_server_args(),
}
#: Configs whose worker runs the workflows in the sandbox (the others run them outside it,
#: as the production worker does by default).
SANDBOXED_CONFIGS = frozenset({"sandbox"})
#: Cases run on the configs other than `tuned` and `sandbox`. Not the 100 concurrent runs: at Temporal's
#: default task-loading rate the single-shard dev server falls so far behind on a busy 2-core
#: machine that no-op activities hit their 30 s timeout (measured 2026-12-03, load average
#: ~15), and the per-step latency a config costs shows in the sequential cases already.
DEFAULT_CONFIG_CASES = ("sequential", "parallel", "short")


CASES = ("sequential", "parallel", "concurrent", "short")
#: Configs on which the duties side runs too (`run_orchestration(duties=...)`): the one the
#: targets are read on. The others compare the interpreter with the bare baseline only, to
#: show what each server setting is worth, and stay as short as they were.
DUTIES_CONFIGS = frozenset({"tuned"})


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
    duties: bool = True,
) -> OrchestrationReport:
    """Measure the sides on `client`'s server with a worker process of our own.

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
        duties: also run the hand-written workflow that keeps a run's duties
            (`bench.orchestration_duties`) in the sequential, parallel and concurrent cases,
            the side the targets compare the interpreter with.

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
    worker = await WorkerProcess.start(client, queue, sandboxed=config in SANDBOXED_CONFIGS)
    try:
        if profile is not None:
            await worker.profile(profile)
        bench = Bench(
            client, queue, worker, search_attributes=search_attributes, run_timeout=run_timeout
        )

        async def many_baseline() -> None:
            await asyncio.gather(
                *(bench.baseline(concurrent_steps, parallel=False) for _ in range(concurrent_runs))
            )

        async def many_interpreter() -> None:
            await asyncio.gather(*(bench.interpreter(small) for _ in range(concurrent_runs)))

        async def many_duties() -> None:
            await asyncio.gather(
                *(bench.duties(small, parallel=False) for _ in range(concurrent_runs))
            )

        if "sequential" in cases:
            comparisons.append(
                await bench.compare(
                    Comparison(f"{steps} sequential steps", steps, config),
                    lambda: bench.baseline(steps, parallel=False),
                    lambda: bench.interpreter(sequential),
                    reps,
                    (lambda: bench.duties(sequential, parallel=False)) if duties else None,
                )
            )
            expected.add(runs=reps + 1, steps=steps, duties=duties)
        if "parallel" in cases:
            comparisons.append(
                await bench.compare(
                    Comparison(f"{steps} parallel steps", steps, config),
                    lambda: bench.baseline(steps, parallel=True),
                    lambda: bench.interpreter(parallel),
                    reps,
                    (lambda: bench.duties(parallel, parallel=True)) if duties else None,
                )
            )
            expected.add(runs=reps + 1, steps=steps, duties=duties)
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
                    many_duties if duties else None,
                )
            )
            expected.add(
                runs=(concurrent_reps + 1) * concurrent_runs, steps=concurrent_steps, duties=duties
            )
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
    """What the sides must have called, warm-ups included: proof they did the same work."""

    sends: int = 0
    records: int = 0

    def add(self, *, runs: int, steps: int, duties: bool = False) -> None:
        """`runs` runs of `steps` steps by each side; the interpreter's runs and the duties
        side's record themselves."""
        sides = 3 if duties else 2
        self.sends += sides * runs * steps
        self.records += (2 if duties else 1) * RECORDS_PER_RUN * runs

    def check(self, counts: dict[str, int]) -> None:
        sends, records = counts["sends"], counts["records"]
        if sends != self.sends or records != self.records:
            raise RuntimeError(
                f"activity counts off: {sends} sends (expected {self.sends}), "
                f"{records} run records (expected {self.records})"
            )


async def start_dev_server(config: str = "tuned") -> WorkflowEnvironment:
    """A fresh in-memory Temporal dev server, like the tests' (search attributes registered).

    `config`: one of `CONFIGS`; the tuned one by default, as the other benchmarks start it.
    """
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
            everything = config in ("tuned", "sandbox")
            mine = tuple(c for c in cases if everything or c in DEFAULT_CONFIG_CASES)
            reports.append(
                await run_orchestration(
                    env.client,
                    config=config,
                    profile=out,
                    cases=mine,
                    duties=config in DUTIES_CONFIGS,
                    **sizes,
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
    if len(sys.argv) == 6 and sys.argv[1] == "--serve-worker":
        _use_bytecode_cache()
        address, namespace, task_queue, sandboxed = sys.argv[2:6]
        asyncio.run(serve_worker(address, namespace, task_queue, sandboxed=sandboxed == "sandbox"))
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
    # Import ourselves by name, so that there is one copy of this module, not a `__main__` too.
    from bench.orchestration import _cli as cli

    cli()
