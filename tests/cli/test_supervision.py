"""The embedded stack heals itself: a crashed child is restarted, a run goes on.

One stack for the module, supervised from a background thread as `shipflow dev` does in
its foreground. The first test SIGKILLs the worker in the middle of a run and the API
after it: both come back (logged, counted) and the run finishes. The last one keeps
killing the worker until the stack gives up: it stops everything and says why.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shipflow.infra.stack.embedded import EmbeddedStack
from tests.cli.test_stack import _alive, apply, cli, run_id_of, wait_state
from tests.helpers import free_ports, stack_on_free_ports, wait_until_sync

SAID: list[str] = []

FLOW = """\
apiVersion: shipflow/v1
name: NAME
stage: supervision
steps:
  - migrate: {id: before, command: ["true"]}
  - wait: {id: pause, duration: 4s}
  - migrate: {id: after, command: ["true"]}
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedStack]:
    stack = stack_on_free_ports(
        tmp_path_factory.mktemp("supervised"),
        queue="sup",
        say=SAID.append,
        max_restarts=3,
        restart_window_s=300,
        backoff_s=0.2,
    )
    stack.start()
    stack.supervise_in_background(poll_s=0.1)
    try:
        yield stack
    finally:
        stack.stop()


def _wait(check: Callable[[], object], timeout: float = 60.0) -> None:
    wait_until_sync(check, timeout=timeout, interval=0.1, what=lambda: f"the stack said: {SAID[-8:]}")


def _restarted(stack: EmbeddedStack, name: str, old_pid: int, count: int) -> bool:
    pid = stack.pids().get(name)
    return pid is not None and pid != old_pid and stack.restarts().get(name) == count


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def test_killed_worker_and_api_come_back_and_the_run_finishes(
    stack: EmbeddedStack, tmp_path: Path
) -> None:
    flow = apply(stack, tmp_path, FLOW)
    started = cli(stack, "run", flow)
    assert started.exit_code == 0, started.output
    run_id = run_id_of(started)
    wait_state(stack, run_id, "running")

    worker = stack.pids()["worker"]
    os.kill(worker, signal.SIGKILL)
    _wait(lambda: _restarted(stack, "worker", worker, 1))
    assert any(line.startswith("worker: exited with code -9; restarting") for line in SAID)

    api = stack.pids()["api"]
    os.kill(api, signal.SIGKILL)
    _wait(lambda: _restarted(stack, "api", api, 1) and _healthy(stack.api_url))

    wait_state(stack, run_id, "succeeded", timeout=90)
    status = cli(stack, "status", run_id, "--json")
    assert status.exit_code == 0, status.output
    assert stack.failure is None
    assert {n: c for n, c in stack.restarts().items() if c} == {"worker": 1, "api": 1}
    assert not _alive(worker) and not _alive(api)


def test_zz_a_child_that_keeps_crashing_stops_the_stack(stack: EmbeddedStack) -> None:
    """Runs last: the worker crashes more than `max_restarts` times; the stack gives up."""
    pids = stack.pids()
    for _ in range(stack.max_restarts + 1):
        if stack.failure is not None:
            break
        worker = stack.pids().get("worker")
        if worker is None:
            break
        os.kill(worker, signal.SIGKILL)
        _wait(
            lambda w=worker: (
                stack.failure is not None  # type: ignore[misc]
                or (stack.pids().get("worker") not in (None, w) and stack.dead_child() is None)
            )
        )
    _wait(lambda: stack.children == [] and not any(_alive(pid) for pid in pids.values()))
    assert stack.failure is not None
    assert stack.failure.startswith("worker exited with code -9 and crashed 4 times within 300s")
    assert "stopping the stack" in stack.failure
    assert any(line.startswith("error: worker exited with code -9") for line in SAID)
    # Everything else was stopped with it (waited for above); the API no longer answers.
    assert not _healthy(stack.api_url)


def test_shipflow_dev_restarts_a_killed_worker_and_still_stops_on_ctrl_c(tmp_path: Path) -> None:
    """The foreground supervision of `shipflow dev`: restart printed, Ctrl-C still stops all."""
    import subprocess
    import sys

    from shipflow.infra.stack.processes import REPO_ROOT
    from tests.cli.test_dev import _children, _stat

    api, temporal, ui, runtime, s3 = free_ports(5)
    argv = [
        sys.executable, "-m", "shipflow.infra.cli.main", "dev", "--data-dir", str(tmp_path / "data"),
        "--api-port", str(api), "--temporal-port", str(temporal), "--ui-port", str(ui),
        "--runtime-port", str(runtime), "--s3-port", str(s3), "--sink-port", "0",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPFLOW_")}
    out_path = tmp_path / "dev.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def worker_pid() -> int | None:
        for pid in _children(proc.pid):
            try:
                if b"shipflow.worker.main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    return pid
            except OSError:
                continue
        return None

    try:
        _wait(lambda: "Ctrl-C stops everything" in out_path.read_text() or proc.poll() is not None)
        assert proc.poll() is None, out_path.read_text()
        first = worker_pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        _wait(lambda: "worker: restarted (pid" in out_path.read_text() or proc.poll() is not None)
        assert proc.poll() is None, out_path.read_text()
        text = out_path.read_text()
        assert "worker: exited with code -9; restarting it in 0.5s (restart 1;" in text
        second = worker_pid()
        assert second not in (None, first)
        children = _children(proc.pid)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0, out_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert [pid for pid in children if (fields := _stat(pid)) and fields[0] != "Z"] == []
