"""A local command step runs at most once per attempt, whatever happens to its worker.

A worker (a real `shipflow.worker.main` process) is SIGKILLed (or stopped with SIGTERM) early in a
command; a new worker resumes the step after the heartbeat timeout (3 s in tests), or
after the stopped worker's grace period (10 s). The command's side effect,
a line appended to a counter file, must happen exactly once, the step must show one
attempt, and its output must be the command's real output.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.workflows.status import RunStatus
from tests.helpers import finish, new_worker, start_flow, wait_until
from tests.workflows.test_durability import spawn_worker


def command_flow(name: str, counter: Path, marker: Path, seconds: int) -> str:
    script = (
        f"echo ran >> {counter}; echo begun > {marker}; echo migrating; "
        f"sleep {seconds}; echo migrated-after-{seconds}s"
    )
    return f"""
apiVersion: shipflow/v1
name: {name}
stage: test
steps:
  - migrate: {{id: migrate, command: [sh, -c, '{script}']}}
  - migrate: {{id: after, command: [sh, -c, 'echo after >> {counter}.after']}}
"""


async def _kill_worker_early_in_command(
    temporal_client: Client, settings: Settings, tmp_path: Path, seconds: int
) -> tuple[Path, RunStatus]:
    counter, marker = tmp_path / "counter", tmp_path / "begun"
    worker = spawn_worker(settings, tmp_path / "worker.log")
    try:
        handle = await start_flow(
            temporal_client, settings, command_flow(f"once-{seconds}", counter, marker, seconds)
        )
        # The command has begun (well under 0.5 s in): kill the worker there.
        await wait_until(marker.exists, timeout=30, interval=0.02)
        worker.send_signal(signal.SIGKILL)
        await asyncio.to_thread(worker.wait, 10)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    async with new_worker(temporal_client, settings):
        status = await asyncio.wait_for(finish(handle), timeout=seconds + 60)
    return counter, status


async def test_command_that_ended_while_its_worker_was_dead_is_not_run_again(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    # 2 s command, heartbeat timeout 3 s: it has finished when the step is resumed.
    counter, status = await _kill_worker_early_in_command(temporal_client, settings, tmp_path, 2)
    assert status.state == "succeeded", status
    assert counter.read_text() == "ran\n", "the command ran a second time"
    step = status.step("migrate")
    assert step.attempts == 1
    assert step.output is not None and step.output["exit_code"] == 0
    assert step.output["output"] == "migrating\nmigrated-after-2s\n"
    assert step.output["duration_s"] >= 2.0
    assert Path(f"{counter}.after").read_text() == "after\n"


async def test_resumed_step_waits_for_a_command_that_still_runs(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    # 10 s command, heartbeat timeout 3 s: still running when the step is resumed; the
    # resumed execution must wait for it, neither kill it nor start it over.
    counter, status = await _kill_worker_early_in_command(temporal_client, settings, tmp_path, 10)
    assert status.state == "succeeded", status
    assert counter.read_text() == "ran\n", "the command was started over"
    step = status.step("migrate")
    assert step.attempts == 1
    assert step.output is not None
    assert step.output["output"] == "migrating\nmigrated-after-10s\n"  # not killed midway
    assert step.output["duration_s"] >= 10.0


async def test_a_worker_stopped_gracefully_leaves_its_command_to_the_next_one(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    """SIGTERM (a worker being redeployed): the command is not killed and not run twice."""
    counter, marker = tmp_path / "counter", tmp_path / "begun"
    worker = spawn_worker(settings, tmp_path / "worker.log")
    try:
        handle = await start_flow(
            temporal_client, settings, command_flow("once-term", counter, marker, 14)
        )
        await wait_until(marker.exists, timeout=30, interval=0.02)
        worker.send_signal(signal.SIGTERM)
        await asyncio.to_thread(worker.wait, 30)
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
    async with new_worker(temporal_client, settings):
        status = await asyncio.wait_for(finish(handle), timeout=80)
    step = status.step("migrate")
    assert status.state == "succeeded", (step.error, (tmp_path / "worker.log").read_text()[-1500:])
    assert counter.read_text() == "ran\n"
    assert step.attempts == 1
    assert step.output is not None and step.output["output"] == "migrating\nmigrated-after-14s\n"
