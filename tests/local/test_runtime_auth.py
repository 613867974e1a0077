"""The local runtime's control port answers only its key, and only under its own address.

Every refusal is checked against a real runtime process over real HTTP, with a request
that would start a process (a service whose command touches a file) so that a refusal
that still acted would show.
"""

from __future__ import annotations

import asyncio
import socket
import stat
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.base import TargetError
from shipflow.activities.targets.local.runtime_key import ensure_key, read_key_file
from shipflow.activities.targets.local.target import LocalTarget
from tests.helpers import free_port
from tests.local.support import ROOT, Load, RuntimeProcess, demo_service, make_target, request

WRONG = "not-the-key-" + "x" * 20


def touching_service(marker: Path) -> dict[str, Any]:
    """A service whose instances, if ever started, leave `marker` behind."""
    code = f"import pathlib,time; pathlib.Path({str(marker)!r}).touch(); time.sleep(60)"
    return {"command": [sys.executable, "-c", code], "port": free_port(), "replicas": 1}


def control_calls(marker: Path) -> list[tuple[str, str, Any]]:
    body = {"spec": touching_service(marker), "image": "v1", "rollout_id": "r1"}
    return [
        ("PUT", "/services/evil/rollout", body),
        ("GET", "/services", None),
        ("GET", "/services/evil", None),
        ("DELETE", "/services/evil", None),
        ("GET", "/debug/tasks", None),
        ("POST", "/services/evil/rollouts/r1/abort", None),
    ]


def call(
    runtime: RuntimeProcess, method: str, path: str, body: Any, headers: dict[str, str]
) -> httpx.Response:
    return httpx.request(method, runtime.url + path, json=body, headers=headers, timeout=5)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": f"Bearer {WRONG}"},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic c2hpcGZsb3c6eA=="},
    ],
    ids=["no-key", "wrong-key", "empty-key", "other-scheme"],
)
def test_control_calls_without_the_key_are_refused_and_do_nothing(
    runtime: RuntimeProcess, tmp_path: Path, headers: dict[str, str]
) -> None:
    marker = tmp_path / "started"
    for method, path, body in control_calls(marker):
        answer = call(runtime, method, path, body, headers)
        assert answer.status_code == 401, (method, path, answer.text)
        assert answer.json()["error"] == "unauthorized"
        assert "runtime key" in answer.json()["detail"]
        assert runtime.key not in answer.text
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    # Nothing was started, nothing exists.
    assert runtime.get("/services") == []
    assert not marker.exists()


def test_a_foreign_host_is_refused_even_with_the_key(runtime: RuntimeProcess, tmp_path: Path) -> None:
    """DNS rebinding: a page on attacker.example resolved to 127.0.0.1 sends its own Host."""
    marker = tmp_path / "started"
    for host in ("attacker.example", f"attacker.example:{runtime.port}", "127.0.0.1:1"):
        for method, path, body in control_calls(marker):
            answer = call(runtime, method, path, body, {**runtime.headers, "Host": host})
            assert answer.status_code == 403, (host, method, path, answer.text)
            assert answer.json()["error"] == "forbidden_host"
        health = call(runtime, "GET", "/healthz", None, {"Host": host})
        assert health.status_code == 403
    # No Host header at all (HTTP/1.0 style) is no better.
    with socket.create_connection(("127.0.0.1", runtime.port), timeout=5) as sock:
        sock.sendall(f"GET /services HTTP/1.0\r\nAuthorization: Bearer {runtime.key}\r\n\r\n".encode())
        head = sock.makefile("rb").readline()
    assert b" 403 " in head, head
    assert runtime.get("/services") == []
    assert not marker.exists()


def test_the_key_and_own_host_are_accepted(runtime: RuntimeProcess) -> None:
    for host in (f"127.0.0.1:{runtime.port}", f"localhost:{runtime.port}", f"LOCALHOST:{runtime.port}"):
        answer = call(runtime, "GET", "/debug/tasks", None, {**runtime.headers, "Host": host})
        assert answer.status_code == 200, answer.text
        assert isinstance(answer.json(), list)
    # /healthz is the one open route: a liveness check says nothing and does nothing.
    assert call(runtime, "GET", "/healthz", None, {}).json()["ok"] is True


def test_key_file_is_generated_owner_only_and_kept_across_restarts(runtime: RuntimeProcess) -> None:
    mode = stat.S_IMODE(runtime.key_file.stat().st_mode)
    assert mode == 0o600, oct(mode)
    key = runtime.key
    assert len(key) >= 32
    runtime.kill()
    runtime.start()
    assert runtime.key == key
    assert call(runtime, "GET", "/services", None, runtime.headers).status_code == 200


def test_a_key_given_by_setting_is_used_and_no_file_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = "given-key-" + "k" * 30
    monkeypatch.setenv("SHIPFLOW_RUNTIME_KEY", given)
    runtime = RuntimeProcess(tmp_path / "given")
    runtime.start()
    try:
        assert not runtime.key_file.exists()
        ok = call(runtime, "GET", "/services", None, {"Authorization": f"Bearer {given}"})
        assert ok.status_code == 200
        assert call(runtime, "GET", "/services", None, {}).status_code == 401
        # the worker takes the same setting
        target = LocalTarget({"kind": "local", "services": {}}, Settings(runtime_url=runtime.url))
        assert target.current_image("web") is None
    finally:
        runtime.kill()


async def test_front_ports_stay_open_without_the_key(runtime: RuntimeProcess) -> None:
    """The services' own traffic is not the control port's: it is served to anyone."""
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port)})
    await asyncio.to_thread(target.rollout, request("web", "v1"), _NoProgress())
    assert (await Load(port)._one()) == (True, "v1")
    answer = httpx.get(f"http://127.0.0.1:{port}/version", headers={"Host": "attacker.example"})
    assert answer.status_code == 200 and answer.json()["version"] == "v1"


def test_a_worker_with_the_wrong_key_fails_clearly_without_the_key(runtime: RuntimeProcess) -> None:
    settings = Settings(runtime_url=runtime.url, runtime_key=SecretStr(WRONG))
    target = LocalTarget({"kind": "local", "services": {}}, settings)
    with pytest.raises(TargetError) as failed:
        target.current_image("web")
    assert not failed.value.retryable
    assert "refused" in str(failed.value) and "SHIPFLOW_RUNTIME_KEY" in str(failed.value)
    assert WRONG not in str(failed.value) and runtime.key not in str(failed.value)


class _NoProgress:
    resume = None

    def beat(self, details: dict[str, Any]) -> None:
        pass

    def cancelled(self) -> bool:
        return False


def test_a_start_that_could_not_write_its_key_leaves_no_empty_key_file(tmp_path: Path) -> None:
    # A full disk (or a crash) while the first start writes its key must not leave an
    # empty runtime.key behind: every later start would refuse it for good.
    data = tmp_path / "runtime"
    data.mkdir()
    disk_full = (
        "import resource, sys; from pathlib import Path;"
        "from shipflow.activities.targets.local.runtime_key import ensure_key;"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0));"  # every write fails: EFBIG
        "ensure_key(Path(sys.argv[1]))"
    )
    failed = subprocess.run(
        [sys.executable, "-c", disk_full, str(data)], cwd=ROOT, capture_output=True, timeout=30
    )
    assert failed.returncode != 0 and b"File too large" in failed.stderr, failed.stderr[-500:]
    assert list(data.iterdir()) == [], "a partial key (or its temporary file) was left behind"
    runtime = RuntimeProcess(data)
    runtime.start()
    try:
        assert len(runtime.key) >= 32
        assert stat.S_IMODE(runtime.key_file.stat().st_mode) == 0o600
        assert call(runtime, "GET", "/services", None, runtime.headers).status_code == 200
    finally:
        runtime.kill()


def test_starts_racing_for_the_first_key_all_get_the_one_in_the_file(tmp_path: Path) -> None:
    with ThreadPoolExecutor(8) as pool:
        keys = set(pool.map(lambda _: ensure_key(tmp_path), range(16)))
    assert keys == {read_key_file(tmp_path / "runtime.key")}
    assert [p.name for p in tmp_path.iterdir()] == ["runtime.key"]
