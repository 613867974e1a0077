"""The stack as a user runs it: `shipflow dev` stopped with Ctrl-C, a piece that dies, `shipflow demo`.

Each test starts its own stack (the costly part), so there are few of them.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from shipflow.infra.cli.main import app
from shipflow.infra.demo_driver import SCENARIOS
from shipflow.infra.stack.embedded import EmbeddedStack
from shipflow.infra.stack.ports import port_is_free
from shipflow.infra.stack.processes import REPO_ROOT, Child, StackError
from tests.helpers import free_ports, wait_until_sync


def _stat(pid: int) -> list[str] | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _children(ppid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and int(fields[1]) == ppid and fields[0] != "Z":
                out.append(int(entry.name))
    return out


def _in_groups(groups: set[int]) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields and fields[0] != "Z" and int(fields[2]) in groups:
                out.append(int(entry.name))
    return out


def test_dev_serves_until_ctrl_c_and_leaves_nothing_behind(tmp_path: Path) -> None:
    api, temporal, ui, runtime, s3, sink, metrics = free_ports(7)
    argv = [
        sys.executable, "-m", "shipflow.infra.cli.main", "dev", "--data-dir", str(tmp_path / "data"),
        "--api-port", str(api), "--temporal-port", str(temporal), "--ui-port", str(ui),
        "--runtime-port", str(runtime), "--s3-port", str(s3), "--sink-port", str(sink),
        "--metrics-port", str(metrics),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPFLOW_")}
    out_path = tmp_path / "dev.out"
    with open(out_path, "wb") as out:
        proc = subprocess.Popen(argv, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)

    def says(text: str) -> bool:
        said = out_path.read_text()
        assert proc.poll() is None, said
        return text in said

    try:
        wait_until_sync(lambda: says("Ctrl-C stops everything"), timeout=90, interval=0.1,
                        what=lambda: out_path.read_text())  # fmt: skip
        text = out_path.read_text()
        assert f"http://127.0.0.1:{api}" in text and f"http://127.0.0.1:{ui}" in text
        assert httpx.get(f"http://127.0.0.1:{api}/healthz").status_code == 200
        # The worker serves its Prometheus metrics (the Temporal SDK's among them).
        assert f"http://127.0.0.1:{metrics}/metrics" in text
        scraped = httpx.get(f"http://127.0.0.1:{metrics}/metrics")
        assert scraped.status_code == 200 and "temporal_worker_task_slots_available" in scraped.text
        # The webhook inbox prints what notify steps send it.
        note = {"flow": "f", "step": "tell", "run_id": "r1", "message": "hello from a test"}
        assert httpx.post(f"http://127.0.0.1:{sink}/notify", json=note).status_code == 204
        wait_until_sync(lambda: says("hello from a test"), timeout=30, what=lambda: out_path.read_text())
        assert "webhook f/tell (r1): hello from a test" in out_path.read_text()
        children = _children(proc.pid)
        assert len(children) == 5, children  # temporal, runtime, s3, worker, api

        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=60) == 0, out_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "stopping" in out_path.read_text()
    assert [pid for pid in children if (fields := _stat(pid)) and fields[0] != "Z"] == []
    # The children had their own process groups (s3 shares ours, and is gone above).
    groups = {pid for pid in children if pid != proc.pid}
    assert _in_groups(groups) == []
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{api}/healthz")


def test_a_piece_that_dies_at_start_is_reported_and_everything_is_stopped(tmp_path: Path) -> None:
    api, temporal, ui, runtime, s3 = free_ports(5)
    stack = EmbeddedStack(
        tmp_path,
        api_port=api,
        temporal_port=temporal,
        ui_port=ui,
        runtime_port=runtime,
        s3_port=s3,
        say=lambda _line: None,
        # The worker's settings cannot be read: it exits at once.
        extra_env={"SHIPFLOW_HEARTBEAT_TIMEOUT_S": "soon"},
    )
    started: dict[str, int] = {}
    original = stack._spawn

    def spawn(name: str, argv: list[str], **kwargs: Any) -> Child:
        child = original(name, argv, **kwargs)
        started[name] = child.proc.pid
        return child

    stack._spawn = spawn  # type: ignore[method-assign]
    with pytest.raises(StackError) as caught:
        stack.start()
    message = str(caught.value)
    assert message.startswith("worker exited with code 1 while waiting for the worker to poll")
    assert "heartbeat_timeout_s" in message  # the tail of its log says why
    assert stack.children == []
    assert {"temporal", "runtime", "worker"} <= set(started)
    assert [name for name, pid in started.items() if (f := _stat(pid)) and f[0] != "Z"] == []
    assert _in_groups(set(started.values())) == []
    assert port_is_free(temporal) and port_is_free(runtime) and port_is_free(s3)


def test_demo_end_to_end_through_the_cli() -> None:
    """`shipflow demo` (what `make demo` runs): free ports, a temporary dir, exit 0."""
    result = CliRunner().invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    text = result.output
    assert text.count("as expected") == len(SCENARIOS), text
    assert "demo passed" in text, text
    assert "rolled_back as expected" in text, text
    assert "Temporal UI: http://127.0.0.1:" in text, text
    assert "generated (admin; not shown)" in text, text
    match = re.search(r"data dir\s*│\s*(\S+)", text)
    assert match, text
    assert not Path(match.group(1)).exists()  # removed after a demo that passed
    assert not re.search(r"sf_[A-Za-z0-9_-]{20,}", text)  # the admin token is never printed


@pytest.mark.parametrize(
    ("command", "option", "value"),
    [("dev", "--api-port", "70000"), ("dev", "--s3-port", "-1"), ("demo", "--ui-port", "65536")],
)
def test_a_port_out_of_range_is_refused_naming_the_option(
    command: str, option: str, value: str
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "shipflow.infra.cli.main", command, option, value],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done
    assert f"Invalid value for '{option}'" in done.stderr and "Traceback" not in done.stderr
