"""A worker SIGKILLed in the middle of a run: a new worker finishes the run, no step that
had succeeded runs again, and the interrupted command is waited for, not run again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from tests.helpers import finish, new_worker, start_flow, wait_until


def spawn_worker(settings: Settings, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SHIPFLOW_TEMPORAL_ADDRESS": settings.temporal_address,
        "SHIPFLOW_TASK_QUEUE": settings.task_queue,
        "SHIPFLOW_DATA_DIR": str(settings.data_dir),
        "SHIPFLOW_STICKY_TIMEOUT_S": str(settings.sticky_timeout_s),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "shipflow.worker.main"],
        env=env,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        cwd=Path(__file__).resolve().parents[2],
    )


async def test_sigkilled_worker_loses_nothing(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    first, second, third = (tmp_path / n for n in ("first", "second", "third"))
    pidfile = tmp_path / "pid"
    text = f"""
apiVersion: shipflow/v1
name: crash
stage: test
steps:
  - migrate: {{id: one, command: [sh, -c, 'echo ran >> {first}']}}
  - migrate: {{id: two, command: [sh, -c, 'echo ran >> {second}; echo $$ > {pidfile}; sleep 4; echo slept']}}
  - migrate: {{id: three, command: [sh, -c, 'echo ran >> {third}']}}
"""
    worker = spawn_worker(settings, tmp_path / "worker.log")
    try:
        handle = await start_flow(temporal_client, settings, text)
        await wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), timeout=30)
        orphan = int(pidfile.read_text())
        os.killpg(orphan, 0)  # running, and sleeps on for a few seconds
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
    finally:
        if worker.poll() is None:
            worker.kill()
    # The command outlives its worker; the resumed step waits for it and takes its result.
    async with new_worker(temporal_client, settings):
        status = await finish(handle)
    assert status.state == "succeeded", status
    assert first.read_text() == "ran\n", "a succeeded step ran again"
    assert third.read_text() == "ran\n"
    # Step two was interrupted, not failed: its command ran once, and the loss of a worker
    # is not an attempt.
    assert second.read_text() == "ran\n"
    assert status.step("two").attempts == 1
    output = status.step("two").output
    assert output is not None and output["exit_code"] == 0 and output["output"] == "slept\n"
    try:
        os.killpg(orphan, 0)
        alive = True
    except ProcessLookupError:
        alive = False
    assert not alive, "the command's process group outlived the step"
