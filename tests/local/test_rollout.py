"""The local target against a real runtime process, real demo instances and real sockets.

Zero downtime is measured, not assumed: clients keep opening connections through the
front port during each rollout, and every single answer counts.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.base import Invalid, RolloutFailed, Transient
from shipflow.activities.targets.local import target as local_target
from shipflow.activities.targets.local.process import pid_alive
from shipflow.activities.targets.local.target import LocalTarget, RolloutCancelled
from tests.helpers import free_port, wait_until
from tests.local.support import Beats, Load, RuntimeProcess, demo_service, make_target, request

STARTUP = {"DEMO_STARTUP_DELAY": "0.3"}


async def deploy(target: LocalTarget, service: str, image: str, **kw: str) -> Beats:
    beats = Beats()
    await asyncio.to_thread(target.rollout, request(service, image, **kw), beats)
    return beats


async def test_rolling_deploy_of_three_replicas_has_zero_downtime(runtime: RuntimeProcess) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=3, env=STARTUP)})
    assert await asyncio.to_thread(target.current_image, "web") is None
    await deploy(target, "web", "v1")
    old = runtime.pids("web")
    assert len(old) == 3
    assert await asyncio.to_thread(target.current_image, "web") == "v1"

    load = Load(port)
    load.start()
    await wait_until(lambda: len(load.results) > 20)
    beats = Beats()
    result = await asyncio.to_thread(target.rollout, request("web", "v2"), beats)
    done = time.monotonic()
    await wait_until(lambda: any(r[0] > done + 0.2 for r in load.results))
    await load.stop()

    assert load.failures() == [], load.failures()[:5]
    assert load.versions_after(done) == {"v2"}
    assert {"v1", "v2"} <= {r[2] for r in load.results}
    assert result.previous_image == "v1" and result.image == "v2"
    assert len(result.instances) == 3
    # One surge at a time: progress went 1, 2, 3 and never past the replica count.
    ready_seen = sorted({b["ready"] for b in beats.beats})
    assert ready_seen[-1] == 3 and max(b["updated"] for b in beats.beats) <= 3
    assert {b["rollout_id"] for b in beats.beats} == {beats.beats[0]["rollout_id"]}
    assert not any(pid_alive(pid) for pid in old)
    assert runtime.pids("web", "v2") == {i["pid"] for i in result.instances}
    assert await asyncio.to_thread(target.current_image, "web") == "v2"


async def test_failed_rollout_keeps_the_old_version_serving(runtime: RuntimeProcess) -> None:
    port = free_port()
    service = demo_service(port, replicas=3, env=STARTUP, deadline="1.5s")
    target = make_target(runtime, {"web": service})
    await deploy(target, "web", "v1")
    old = runtime.pids("web")

    load = Load(port)
    load.start()
    await wait_until(lambda: len(load.results) > 20)
    began = time.monotonic()
    with pytest.raises(RolloutFailed) as failed:
        await deploy(target, "web", "v2-broken")
    assert time.monotonic() - began < 6
    end = time.monotonic()
    await wait_until(lambda: any(r[0] > end + 0.2 for r in load.results))
    await load.stop()

    message = str(failed.value)
    assert "progress deadline of 1.5s" in message and "/healthz" in message and "503" in message
    assert not failed.value.retryable
    assert load.failures() == [], load.failures()[:5]
    assert {r[2] for r in load.results} == {"v1"}
    assert runtime.pids("web") == old  # the very same processes, never stopped
    assert await asyncio.to_thread(target.current_image, "web") == "v1"


async def test_instance_that_exits_at_start_fails_the_rollout(runtime: RuntimeProcess) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=2, deadline="20s")})
    await deploy(target, "web", "v1")
    old = runtime.pids("web")
    began = time.monotonic()
    with pytest.raises(RolloutFailed) as failed:
        await deploy(target, "web", "v2-crash")
    assert time.monotonic() - began < 10  # fails on the crash loop, long before the deadline
    assert "failed 3 times at start" in str(failed.value)
    assert "exited with code 1" in str(failed.value)
    assert runtime.pids("web") == old
    load = Load(port)
    ok, version = await load._one()
    assert (ok, version) == (True, "v1")


async def test_first_deploy_that_never_gets_ready_leaves_nothing_behind(
    runtime: RuntimeProcess,
) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=2, deadline="0.8s")})
    with pytest.raises(RolloutFailed):
        await deploy(target, "web", "v1-broken")
    assert runtime.service("web")["instances"] == []
    assert await asyncio.to_thread(target.current_image, "web") is None


async def test_liveness_failure_restarts_the_instance(runtime: RuntimeProcess) -> None:
    port = free_port()
    probes = {
        # The startup probe holds liveness back until the process listens, as in Kubernetes.
        "startup": {"tcp": {}, "period": "0.05s", "failure_threshold": 200},
        "readiness": {"tcp": {}, "period": "0.1s"},
        "liveness": {"http": {"path": "/healthz"}, "period": "0.1s", "failure_threshold": 2},
    }
    target = make_target(
        runtime, {"web": demo_service(port, env={"DEMO_HEALTHY_FOR": "0.8"}, probes=probes)}
    )
    await deploy(target, "web", "v1")
    (first_pid,) = runtime.pids("web")

    def restarted() -> bool:
        (inst,) = runtime.service("web")["instances"]
        return inst["restarts"] >= 1 and inst["pid"] != first_pid and inst["ready"]

    try:
        await wait_until(restarted, timeout=10)
    except AssertionError:
        print(json.dumps(runtime.get("/debug/tasks"), indent=1))
        raise
    assert not pid_alive(first_pid)
    (inst,) = runtime.service("web")["instances"]
    assert inst["image"] == "v1"
    ok, version = await Load(port)._one()
    assert (ok, version) == (True, "v1")


async def test_runtime_restart_adopts_instances_and_resumes_a_rollout(
    runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The rollout below rides over a restart; a restart takes 2 s on a quiet machine and
    # took over the default 10 s of unreachable grace on a loaded one, which is not what
    # this tests (an unreachable runtime's Transient is
    # `test_runtime_unreachable_is_retryable_and_says_how_to_start_it`).
    monkeypatch.setattr(local_target, "UNREACHABLE_GRACE_S", 60.0)
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=3, env=STARTUP)})
    await deploy(target, "web", "v1")
    v1 = runtime.pids("web")

    # A plain restart: the instances keep running and are adopted, the port serves again.
    runtime.kill(signal.SIGKILL)
    assert all(pid_alive(pid) for pid in v1)
    runtime.start()
    assert runtime.pids("web") == v1
    assert runtime.service("web")["image"] == "v1"
    assert (await Load(port)._one()) == (True, "v1")

    # A restart in the middle of a rollout: the runtime resumes it where it stood, and
    # the target following it rides over the gap.
    first = Beats()
    rollout = asyncio.create_task(asyncio.to_thread(target.rollout, request("web", "v2"), first))
    await wait_until(lambda: first.beats and first.beats[-1]["ready"] >= 1, timeout=10)
    runtime.kill(signal.SIGKILL)
    runtime.start()
    result = await rollout
    rollout_id = first.beats[-1]["rollout_id"]
    status = runtime.get(f"/services/web/rollouts/{rollout_id}")
    assert status["state"] == "succeeded"
    assert len(status["created"]) == 3  # no instance was replaced twice
    assert {i["id"] for i in result.instances} == set(status["created"])
    assert not any(pid_alive(pid) for pid in v1)
    assert (await Load(port)._one()) == (True, "v2")

    # A later attempt of the same step resumes the finished rollout: nothing restarts.
    again = Beats(resume=first.beats[-1])
    await asyncio.to_thread(target.rollout, request("web", "v2"), again)
    assert {b["rollout_id"] for b in again.beats} == {rollout_id}
    assert runtime.get(f"/services/web/rollouts/{rollout_id}")["created"] == status["created"]


async def test_a_runtime_gone_mid_rollout_fails_the_attempt_after_the_grace_and_is_resumed(
    runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime stops in the middle of a rollout and does not come back in time: the
    attempt waits out `UNREACHABLE_GRACE_S` (not less: a restart fits in it) and fails
    retryable, naming the runtime; the next attempt, once the runtime is back, resumes the
    same rollout rather than starting another."""
    monkeypatch.setattr(local_target, "UNREACHABLE_GRACE_S", 1.0)
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=3, env=STARTUP)})
    await deploy(target, "web", "v1")
    first = Beats()
    rollout = asyncio.create_task(asyncio.to_thread(target.rollout, request("web", "v2"), first))
    await wait_until(lambda: first.beats and first.beats[-1]["ready"] >= 1, timeout=10)
    runtime.kill(signal.SIGKILL)
    gone = time.monotonic()
    with pytest.raises(Transient) as failed:
        await asyncio.wait_for(rollout, 30)
    waited = time.monotonic() - gone
    assert failed.value.retryable and "unreachable" in str(failed.value)
    assert runtime.url in str(failed.value)
    assert 1.0 <= waited < 30, waited

    runtime.start()
    again = Beats(resume=first.beats[-1])
    result = await asyncio.to_thread(target.rollout, request("web", "v2"), again)
    rollout_id = first.beats[-1]["rollout_id"]
    assert {b["rollout_id"] for b in again.beats} == {rollout_id}
    status = runtime.get(f"/services/web/rollouts/{rollout_id}")
    assert status["state"] == "succeeded" and len(status["created"]) == 3
    assert {i["id"] for i in result.instances} == set(status["created"])
    assert (await Load(port)._one()) == (True, "v2")


async def test_changed_command_or_env_rolls_out_with_the_same_image(
    runtime: RuntimeProcess,
) -> None:
    port = free_port()
    await deploy(make_target(runtime, {"web": demo_service(port, replicas=2)}), "web", "v1")
    before = runtime.pids("web")
    # Same image, same spec: nothing to do, nothing restarts.
    await deploy(
        make_target(runtime, {"web": demo_service(port, replicas=2)}), "web", "v1", run="r2"
    )
    assert runtime.pids("web") == before
    changed = demo_service(port, replicas=2, env={"FEATURE": "on"})
    await deploy(make_target(runtime, {"web": changed}), "web", "v1", run="r3")
    after = runtime.pids("web")
    assert len(after) == 2 and not after & before
    assert (await Load(port)._one()) == (True, "v1")


async def test_exec_and_startup_probes_and_env_secrets(
    runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SF_TEST_SECRET", "hunter2-secret")
    port = free_port()
    connect = "import os, socket; socket.create_connection(('127.0.0.1', int(os.environ['PORT'])))"
    probes = {
        "startup": {"http": {"path": "/healthz"}, "period": "0.1s", "failure_threshold": 30},
        "readiness": {"exec": {"command": [sys.executable, "-c", connect]}, "period": "0.2s"},
    }
    service = demo_service(port, env={"DB_PASSWORD": "${env.SF_TEST_SECRET}"}, probes=probes)
    beats = await deploy(make_target(runtime, {"web": service}), "web", "v1")
    (pid,) = runtime.pids("web")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"DB_PASSWORD=hunter2-secret" in environ  # resolved on the worker side
    assert b"SHIPFLOW_IMAGE=v1" in environ
    assert (await Load(port)._one()) == (True, "v1")
    seen = json.dumps([beats.beats, runtime.get("/services"), runtime.get("/services/web")])
    assert "hunter2" not in seen
    assert (runtime.data_dir / "state.json").stat().st_mode & 0o077 == 0


async def test_cancel_aborts_the_rollout_and_keeps_the_old_version(runtime: RuntimeProcess) -> None:
    port = free_port()
    target = make_target(runtime, {"web": demo_service(port, replicas=2, env=STARTUP)})
    await deploy(target, "web", "v1")
    old = runtime.pids("web")
    beats = Beats(cancel_when=lambda b: b["updated"] >= 1)
    with pytest.raises(RolloutCancelled):
        await asyncio.to_thread(target.rollout, request("web", "v2"), beats)
    # The old version serves at full size and nothing of v2 is left. (An old instance may
    # have been drained before the cancel took effect: the abort then starts a v1 instance
    # again, so the pids may differ from before; most of the time they do not.)
    instances = runtime.service("web")["instances"]
    assert [i["image"] for i in instances] == ["v1", "v1"], instances
    assert set(runtime.pids("web")) & set(old)
    assert runtime.service("web")["image"] == "v1"
    assert (await Load(port)._one()) == (True, "v1")


async def test_bad_inputs_fail_clearly_and_the_old_version_serves(runtime: RuntimeProcess) -> None:
    port = free_port()
    good = demo_service(port, replicas=1)
    target = make_target(runtime, {"web": good})
    await deploy(target, "web", "v1")
    old = runtime.pids("web")

    # A command that does not exist.
    missing = {**good, "command": ["/no/such/server", "--port", "{port}"]}
    with pytest.raises(Invalid, match=r"command '/no/such/server' not found"):
        await deploy(make_target(runtime, {"web": missing}), "web", "v2")

    # A probe on a port the service never opens: fails at the deadline, naming the probe
    # (the instance's own address is an internal detail the message leaves out).
    never = free_port()
    probes = {"readiness": {"tcp": {"port": never}, "period": "0.1s"}}
    deaf = demo_service(port, deadline="1s", probes=probes)
    with pytest.raises(RolloutFailed, match=r"readiness probe tcp on a new instance"):
        await deploy(make_target(runtime, {"web": deaf}), "web", "v2")

    # A service the flow does not declare.
    with pytest.raises(
        Invalid, match=r"'api' is not declared in target.services \(declared: web\)"
    ):
        await deploy(target, "api", "v2")

    assert runtime.pids("web") == old
    assert (await Load(port)._one()) == (True, "v1")

    # A front port already taken by a foreign process.
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        taken = foreign.getsockname()[1]
        other = make_target(runtime, {"api": demo_service(taken)})
        with pytest.raises(
            Invalid, match=rf"front port {taken} of service 'api' is already in use"
        ):
            await deploy(other, "api", "v1")
    assert (await Load(port)._one()) == (True, "v1")


async def test_runtime_unreachable_is_retryable_and_says_how_to_start_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    target = LocalTarget({"kind": "local", "services": {}}, Settings(runtime_url=url))
    with pytest.raises(Transient) as failed:
        await asyncio.to_thread(target.current_image, "web")
    assert url in str(failed.value) and "shipflow runtime" in str(failed.value)
    assert failed.value.retryable


#: A service that prints what it was given, then serves TCP (ready by the port accepting).
PRINTS_ENV = (
    "import os, socket, time\n"
    "print('group=' + os.environ['DB_PASSWORD'] + ' ref=' + os.environ['API_TOKEN']"
    " + ' level=' + os.environ['LEVEL'], flush=True)\n"
    "s = socket.socket(); s.bind(('127.0.0.1', int(os.environ['PORT']))); s.listen()\n"
    "print('done', flush=True)\n"
    "time.sleep(600)\n"
)


async def test_secret_values_a_service_prints_are_masked_in_its_instance_log(
    runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue #16: values of secret groups (and `${env.X}`) a service prints never reach its
    log file in clear; the config values it prints stay readable. Also after the runtime
    restarted (the values to mask are kept, sealed, in state.json) and the instance crashed."""
    monkeypatch.setenv("SF_TEST_TOKEN", "tok-3141592653")
    port = free_port()
    service = {
        "command": [sys.executable, "-c", PRINTS_ENV],
        "port": port,
        "env": {"API_TOKEN": "${env.SF_TEST_TOKEN}"},
        "progress_deadline": "8s",
    }
    target = make_target(runtime, {"web": service})
    group = {"DB_PASSWORD": "hunter2-group-secret", "LEVEL": "info"}
    rollout = request("web", "v1").model_copy(
        update={"env": group, "redact": ["hunter2-group-secret"]}
    )
    await asyncio.to_thread(target.rollout, rollout, Beats())
    (inst,) = runtime.service("web")["instances"]
    log = Path(inst["log"])
    await wait_until(lambda: "done" in log.read_text())
    text = log.read_text()
    assert "group=*** ref=*** level=info" in text
    assert "hunter2" not in text and "3141592653" not in text
    assert "hunter2" not in (runtime.data_dir / "state.json").read_text()
    bad = {"spec": service | {"env": {}}, "image": "v2", "redact": "hunter2-group-secret"}
    answer = httpx.put(f"{runtime.url}/services/web/rollout", json=bad, headers=runtime.headers)
    assert answer.status_code == 400 and "redact" in answer.text and "hunter2" not in answer.text
    # A restarted runtime still masks what an instance it restarts prints.
    runtime.kill(signal.SIGKILL)
    runtime.start()
    os.kill(inst["pid"], signal.SIGKILL)
    await wait_until(lambda: log.read_text().count("done") >= 2)
    text = log.read_text()
    assert text.count("group=*** ref=*** level=info") == 2 and "hunter2" not in text


async def test_a_rejected_rollout_body_names_the_field_and_never_echoes_its_values(
    runtime: RuntimeProcess,
) -> None:
    """The runtime's 400 says where the body is wrong, not what it held: a value in the
    wrong place may be a secret (here the env of a service, which carries group values)."""
    service = demo_service(free_port(), replicas=1)
    secret = "hunter2-misplaced-secret"
    bodies = {
        "spec.env.DB_PASSWORD": {
            "spec": service | {"env": {"DB_PASSWORD": {"value": secret}}},
            "image": "v1",
        },
        "rollout_id": {"spec": service, "image": "v1", "rollout_id": {"token": secret}},
        "image": {"spec": service, "image": [secret]},
    }
    for field, body in bodies.items():
        answer = httpx.put(
            f"{runtime.url}/services/web/rollout", json=body, headers=runtime.headers
        )
        assert answer.status_code == 400, (field, answer.text)
        assert field in answer.text, (field, answer.text)
        assert secret not in answer.text, (field, answer.text)


async def test_an_exec_probe_that_prints_a_secret_is_reported_masked(
    runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """An exec probe's output is quoted in the failure (its last 200 characters): a secret
    of the service that it prints is masked there, as in the instance's log."""
    monkeypatch.setenv("SF_TEST_SECRET", "hunter2-probe-secret")
    leak = tmp_path / "leak.txt"
    leak.write_text("password is hunter2-probe-secret\n")
    prints = f"print(open({str(leak)!r}).read()); raise SystemExit(1)"
    probes = {"readiness": {"exec": {"command": [sys.executable, "-c", prints]}, "period": "0.1s"}}
    service = demo_service(
        free_port(), env={"DB_PASSWORD": "${env.SF_TEST_SECRET}"}, probes=probes, deadline="1s"
    )
    with pytest.raises(RolloutFailed) as failed:
        await deploy(make_target(runtime, {"web": service}), "web", "v1")
    assert "password is ***" in str(failed.value)
    assert "hunter2" not in str(failed.value)
    assert "hunter2" not in json.dumps(runtime.get("/services"))


async def test_instances_and_probes_never_inherit_shipflows_own_secrets(
    runtime: RuntimeProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime runs with the stack's settings in its environment (API tokens, payload
    keys, the database URL): a service it starts, and its exec probes, get the rest of the
    environment but none of those, like a flow's own commands (a deployed app is not
    trusted with the keys of the tool that deploys it)."""
    runtime.kill(signal.SIGTERM)
    monkeypatch.setenv(
        "SHIPFLOW_TOKENS", '[{"name": "a", "token": "admin-token-xyz", "role": "admin"}]'
    )
    monkeypatch.setenv("SHIPFLOW_DATABASE_URL", "postgresql://u:db-password-xyz@127.0.0.1/x")
    monkeypatch.setenv("SF_TEST_PLAIN", "plain-value")
    runtime.start()
    leaks = "import os, sys; sys.exit(any('xyz' in v for v in os.environ.values()))"
    probes = {"readiness": {"exec": {"command": [sys.executable, "-c", leaks]}, "period": "0.1s"}}
    await deploy(
        make_target(runtime, {"web": demo_service(free_port(), probes=probes)}), "web", "v1"
    )
    (pid,) = runtime.pids("web")
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert not [v for v in environ if b"xyz" in v]
    assert b"SF_TEST_PLAIN=plain-value" in environ and any(v.startswith(b"PATH=") for v in environ)
