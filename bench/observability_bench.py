"""What metrics and logging cost a run: the 50-step orchestration benchmark, with and without.

Issue 15 asks that release metrics and structured logs cost at most 3% of a run. Both sides
run the same flow (`bench.orchestration.notify_flow`: N sequential `notify` steps on the
same no-op activity) through `ReleaseWorkflow`, on one fresh dev server, in one process,
with runs of the two sides interleaved so that drift hits both alike:

* **off**: a worker whose client has an SDK runtime of its own without a metrics exporter
  (the workflow and activity meters are no-ops) and logging left unconfigured (root at
  WARNING: the per-step INFO lines are dropped before they are formatted);
* **on**: a worker whose client has the production runtime (`shipflow.worker.telemetry`,
  Prometheus endpoint on a free port, scraped after each run as Prometheus would, outside
  the timing), with `StepContextInterceptor`, and `configure_logging(INFO)` writing JSON
  lines to a file, as `shipflow worker` does with its stdout redirected.

Each side has its own runtime and client (its own core threads and connection), so that
what differs between them is the exporter and the logging, not the plumbing.

`python -m bench.observability_bench [--steps 50 --reps 9]`; `bench.run_all` runs it too.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
from temporalio.client import Client
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.runtime import Runtime, TelemetryConfig
from temporalio.worker import Interceptor, Worker

from bench.orchestration import _use_bytecode_cache, start_dev_server
from bench.orchestration_baseline import NoopActivities
from bench.orchestration_runs import Bench, notify_flow
from shipflow.activities.core.logs import StepContextInterceptor, configure_logging
from shipflow.activities.core.settings import Settings
from shipflow.worker.main import activity_capacity
from shipflow.worker.telemetry import metrics_runtime
from shipflow.workflows.release import ReleaseWorkflow
from tests.helpers import free_port

#: The issue's target: on / off, medians.
TARGET = 1.03


def _worker(
    client: Client, queue: str, noop: NoopActivities, interceptors: list[Interceptor]
) -> Worker:
    """Configured like `shipflow.worker.main.build_worker` (what matters for the cost)."""
    return Worker(
        client,
        task_queue=queue,
        workflows=[ReleaseWorkflow],
        activities=[noop.send, noop.record_run],
        **activity_capacity(Settings().worker_activity_slots, "bench-activity"),
        graceful_shutdown_timeout=timedelta(seconds=10),
        interceptors=interceptors,
    )


def _logging_off() -> None:
    root = logging.getLogger()
    for handler in list(root.handlers):
        if type(handler).__name__ == "_ShipflowHandler":
            root.removeHandler(handler)
    root.setLevel(logging.WARNING)


async def _timed(work: Callable[[], Awaitable[Any]]) -> tuple[float, float]:
    started, cpu = time.perf_counter(), time.process_time()
    await work()
    return time.perf_counter() - started, time.process_time() - cpu


async def run_observability(
    steps: int = 50, reps: int = 9, *, target: str | None = None
) -> dict[str, Any]:
    """Measure both sides; on a fresh dev server, or on the one at `target` (host:port)."""
    env = await start_dev_server() if target is None else None
    log_path = Path(tempfile.mkdtemp(prefix="shipflow-bench-")) / "worker.log"
    port = free_port()
    lines = 0
    try:
        if env is not None:
            target = env.client.service_client.config.target_host
        assert target is not None
        measured = await Client.connect(
            target, data_converter=pydantic_data_converter, runtime=metrics_runtime(f"127.0.0.1:{port}")
        )
        plain = await Client.connect(
            target, data_converter=pydantic_data_converter, runtime=Runtime(telemetry=TelemetryConfig())
        )
        off_queue, on_queue = (f"bench-obs-{side}-{uuid.uuid4().hex[:6]}" for side in ("off", "on"))
        off = Bench(plain, off_queue, search_attributes=True, run_timeout=120)
        on = Bench(measured, on_queue, search_attributes=True, run_timeout=120)
        flow = notify_flow("bench-obs", steps, parallel=False)
        noop = NoopActivities()
        samples: dict[str, list[tuple[float, float]]] = {"off": [], "on": []}
        with log_path.open("w") as log_file:
            scrapes = httpx.AsyncClient()

            async def run_off() -> None:
                _logging_off()
                await off.interpreter(flow)

            async def run_on() -> None:
                configure_logging(logging.INFO, stream=log_file, fmt="json")
                await on.interpreter(flow)

            async with (
                _worker(plain, off_queue, noop, []),
                _worker(measured, on_queue, noop, [StepContextInterceptor()]),
            ):
                await run_off()  # warm-up
                await run_on()
                for rep in range(reps):
                    for side in ("off", "on") if rep % 2 == 0 else ("on", "off"):
                        sample = await _timed(run_off if side == "off" else run_on)
                        samples[side].append(sample)
                        if side == "on":
                            await scrapes.get(f"http://127.0.0.1:{port}/metrics")
            await scrapes.aclose()
            _logging_off()
        lines = sum(1 for _ in log_path.open())
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        if env is not None:
            await env.shutdown()
    wall = {k: statistics.median(s[0] for s in v) for k, v in samples.items()}
    cpu = {k: statistics.median(s[1] for s in v) for k, v in samples.items()}
    ratio, cpu_ratio = wall["on"] / wall["off"], cpu["on"] / cpu["off"]
    runs_counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith("shipflow_release_runs_ended_total{")
    )
    markdown = "\n".join(
        [
            f"### Metrics and logging cost ({steps} sequential steps, {reps} runs a side, medians)",
            "",
            "| side | wall per run | CPU per run (this process) |",
            "|---|---|---|",
            f"| off (no exporter, logging unconfigured) | {wall['off'] * 1000:.0f} ms | {cpu['off'] * 1000:.0f} ms |",
            f"| on (Prometheus runtime, JSON logs, step context) | {wall['on'] * 1000:.0f} ms | {cpu['on'] * 1000:.0f} ms |",
            f"| **on / off** | **{ratio:.3f}** (target ≤ {TARGET}) | {cpu_ratio:.3f} |",
            "",
            f"The measured side wrote {lines} JSON log lines and counted {runs_counted:.0f} ended runs "
            f"on its endpoint ({reps + 1} runs, warm-up included).",
        ]
    )
    return {
        "steps": steps,
        "reps": reps,
        "wall_ms": {k: round(v * 1000, 1) for k, v in wall.items()},
        "cpu_ms": {k: round(v * 1000, 1) for k, v in cpu.items()},
        "ratio": round(ratio, 4),
        "cpu_ratio": round(cpu_ratio, 4),
        "met": ratio <= TARGET,
        "log_lines": lines,
        "runs_counted": runs_counted,
        "markdown": markdown,
    }


def main(steps: int = 50, reps: int = 9) -> dict[str, Any]:
    _use_bytecode_cache()
    result = asyncio.run(run_observability(steps, reps))
    print(result["markdown"])
    return result


def _cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--reps", type=int, default=9)
    a = parser.parse_args()
    main(a.steps, a.reps)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # sdk-python issue 300: leave with the real result


if __name__ == "__main__":
    _cli()
