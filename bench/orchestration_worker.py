"""The orchestration benchmark's worker: one worker for both sides, in a process of its own
(`python -m bench.orchestration --serve-worker ...`), driven over stdin/stdout.

So that the CPU reported is the worker's alone (not the client's that starts the runs and
waits for them), and so that a profiler can attach to it (`--profile`: py-spy).
"""

from __future__ import annotations

import asyncio
import builtins
import json
import signal
import sys
import time
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.worker import Worker

from bench.orchestration_baseline import BaselineParallel, BaselineSequential, NoopActivities
from bench.orchestration_duties import BaselineDutiesParallel, BaselineDutiesSequential
from shipflow.activities.core.client import data_converter, transport_options
from shipflow.activities.core.settings import Settings
from shipflow.worker.main import activity_capacity
from shipflow.workflows.release import ReleaseWorkflow
from shipflow.workflows.sandbox import workflow_runner

#: The module the worker process runs as (`python -m`): its `--serve-worker` mode.
MAIN = "bench.orchestration"
#: The baselines' modules, passed through the sandbox.
BASELINES = ("bench.orchestration_baseline", "bench.orchestration_duties")
ROOT = Path(__file__).resolve().parent.parent


def bench_worker(
    client: Client, task_queue: str, noop: NoopActivities, *, sandboxed: bool = False
) -> Worker:
    """One worker for all sides, configured like `shipflow.worker.main.build_worker`.

    Both sides run with the production worker's runner (`shipflow.workflows.sandbox`):
    outside Temporal's sandbox by default. With `sandboxed`, in it, where the interpreter's
    module is passed through and the baselines' modules too, so that no side is
    re-imported per workflow instance.
    """
    return Worker(
        client,
        task_queue=task_queue,
        workflows=[
            ReleaseWorkflow,
            BaselineSequential,
            BaselineParallel,
            BaselineDutiesSequential,
            BaselineDutiesParallel,
        ],
        activities=[noop.send, noop.record_run],
        workflow_runner=workflow_runner(sandboxed, *BASELINES),
        **activity_capacity(Settings().worker_activity_slots, "bench-activity"),
        graceful_shutdown_timeout=timedelta(seconds=10),
    )


async def serve_worker(
    address: str, namespace: str, task_queue: str, *, sandboxed: bool = False
) -> None:
    """The worker process: runs `bench_worker` and answers its parent on stdin/stdout.

    `cpu` -> this process's CPU seconds so far (all threads, the SDK's core included);
    `stop` (or end of input) -> shut down and print the no-op call counts as JSON.
    """
    settings = Settings(temporal_address=address)
    client = await Client.connect(
        address,
        namespace=namespace,
        data_converter=data_converter(settings),
        **transport_options(settings),
    )
    noop = NoopActivities()
    async with bench_worker(client, task_queue, noop, sandboxed=sandboxed):
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
    async def start(
        cls,
        client: Client,
        task_queue: str,
        *,
        sandboxed: bool = False,
        main: str = MAIN,
        variant: str = "",
    ) -> WorkerProcess:
        """`main`'s `--serve-worker` mode in a process of its own (`variant`: what
        `bench.orchestration_ablation` switches off in it)."""
        config = client.service_client.config
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            main,
            "--serve-worker",
            config.target_host,
            client.namespace,
            task_queue,
            "sandbox" if sandboxed else "plain",
            *((variant,) if variant else ()),
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
