"""The shipflow worker: registers ReleaseWorkflow and every activity, runs until stopped.

`python -m shipflow.worker.main` (or `shipflow worker`). SIGINT/SIGTERM shut it down cleanly, so
running activities get their cancellation and the process exits with the real status.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

from temporalio.client import Client
from temporalio.worker import Worker

from shipflow.activities.core.client import connect
from shipflow.activities.core.db import make_engine
from shipflow.activities.core.logs import StepContextInterceptor, configure_logging
from shipflow.activities.core.settings import Settings, get_settings
from shipflow.activities.core.tracing import setup_tracing, temporal_interceptors
from shipflow.activities.targets import preload_targets
from shipflow.worker.activities import build_activities
from shipflow.worker.telemetry import worker_runtime
from shipflow.workflows.release import ReleaseWorkflow
from shipflow.workflows.sandbox import workflow_runner
from shipflow.workflows.stage_lock import StageLockWorkflow

log = logging.getLogger("shipflow.worker")


#: Local activities one worker runs at once (Temporal's default): the runs-index records,
#: the promotion lookup, notify and check calls.
LOCAL_ACTIVITY_SLOTS = 100


def activity_capacity(slots: int, thread_prefix: str) -> dict[str, Any]:
    """`Worker` options: `slots` regular activities, `LOCAL_ACTIVITY_SLOTS` local ones, and
    the thread pool that runs the non-async ones of both.

    The pool has a thread for every slot of either kind. A local activity holds its run's
    workflow task open until it returns, so it must never queue for a thread behind
    regular activities that run for minutes (rollouts, jobs, backups): with a pool only
    as large as the regular slots, a worker running that many of them stalled every other
    run on it (tests/worker/test_activity_slots.py). Threads start only when needed.
    """
    return {
        "max_concurrent_activities": slots,
        "max_concurrent_local_activities": LOCAL_ACTIVITY_SLOTS,
        "activity_executor": ThreadPoolExecutor(
            max_workers=slots + LOCAL_ACTIVITY_SLOTS, thread_name_prefix=thread_prefix
        ),
    }


def build_worker(client: Client, settings: Settings, *, task_queue: str | None = None) -> Worker:
    """A worker for `task_queue` (default: settings) with every workflow and activity."""
    engine = make_engine(settings.sqlalchemy_url())
    queue = task_queue or settings.task_queue
    return Worker(
        client,
        task_queue=queue,
        workflows=[ReleaseWorkflow, StageLockWorkflow],
        workflow_runner=workflow_runner(settings.workflow_sandbox),
        activities=build_activities(settings, engine, client, queue),
        # Log lines and trace spans of an activity name its run and step.
        interceptors=[StepContextInterceptor()],
        **activity_capacity(settings.worker_activity_slots, "shipflow-activity"),
        graceful_shutdown_timeout=timedelta(seconds=10),
        # Cancellation reaches an activity only with a heartbeat response: heartbeat at
        # least every second so a cancelled run stops its commands promptly.
        max_heartbeat_throttle_interval=timedelta(seconds=1),
        sticky_queue_schedule_to_start_timeout=timedelta(seconds=settings.sticky_timeout_s),
        default_heartbeat_throttle_interval=timedelta(seconds=1),
    )


async def run_worker(settings: Settings) -> None:
    preload_targets()
    tracer = setup_tracing("shipflow-worker")
    runtime = worker_runtime(settings)
    client = await connect(settings, runtime=runtime, interceptors=temporal_interceptors(tracer))
    worker = build_worker(client, settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("worker on %s, task queue %s", settings.temporal_address, settings.task_queue)
    if settings.worker_metrics_address:
        log.info("metrics on http://%s/metrics", settings.worker_metrics_address)
    async with worker:
        await stop.wait()
    log.info("worker stopped")


def main() -> None:
    settings = get_settings()
    configure_logging(logging.INFO, fmt=settings.log_format)
    asyncio.run(run_worker(settings))


if __name__ == "__main__":
    main()
