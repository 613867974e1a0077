"""A canary release on a `kubernetes` target through ReleaseWorkflow, with the worker that
runs it SIGKILLed in a pause: the next worker goes on at the durable step (the canary
Deployment's annotation), analysis not run again, the canary created once."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import uvicorn
from kubernetes import client, config
from temporalio.client import Client
from temporalio.worker import Replayer
from typer.testing import CliRunner

from shipflow.activities.core.client import make_data_converter
from shipflow.activities.core.codec import parse_keys
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.starter import plan_for, read_status, start_release
from shipflow.activities.targets.k8s_progressive import PAUSED, PROMOTE, STATE
from shipflow.activities.targets.local.process import free_port
from shipflow.api.app import create_app
from shipflow.infra.cli.main import app as cli
from shipflow.workflows.release import ReleaseWorkflow
from shipflow.workflows.spec import load_flow_text
from tests.analysis.prometheus_stub import PrometheusStub, vector
from tests.api.conftest import TOKENS, api_client, bearer, token_settings
from tests.conftest import TEST_PAYLOAD_KEYS
from tests.helpers import finish, new_worker, start_flow, wait_until
from tests.k8s.emulator import KubeEmulator
from tests.k8s.test_release_k8s import REPO, k8s_flow, ns


async def test_worker_killed_in_a_canary_pause_resumes_there(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str, tmp_path: Path
) -> None:
    # A worker process of its own starts (imports, connection) on a machine busy with the
    # rest of the suite: 3 s of heartbeat timeout failed its first attempt there once. The
    # lost worker is noticed after this timeout, so it is also what the test waits for.
    settings = settings.model_copy(update={"heartbeat_timeout_s": 10.0})
    space = ns()
    emulator.add_deployment(space, "api", "api:1", replicas=3)
    with PrometheusStub(lambda q: vector("0.999")) as prom:
        strategy = {"canary": {"steps": [
            {"set_weight": 25},
            {"analysis": {"prometheus": {"url": prom.url, "query": "ok", "success_condition": "result[0] > 0.99"},
                          "interval": "50ms", "count": 2}},
            {"pause": {}},
            {"set_weight": 50},
        ]}}
        text = k8s_flow("k8s-canary", "production", space, kubeconfig,
                        f"  - deploy: {{id: api, service: api, image: 'api:2', strategy: {json.dumps(strategy)}}}\n")
        env = {
            **os.environ,
            "KUBECONFIG": os.environ["KUBECONFIG"],
            "SHIPFLOW_TEMPORAL_ADDRESS": settings.temporal_address,
            "SHIPFLOW_TASK_QUEUE": settings.task_queue,
            "SHIPFLOW_DATA_DIR": str(settings.data_dir),
            "SHIPFLOW_HEARTBEAT_TIMEOUT_S": str(settings.heartbeat_timeout_s),
            "PYTHONPATH": str(REPO),
        }
        log = (tmp_path / "worker.log").open("wb")
        proc = subprocess.Popen([sys.executable, "-m", "shipflow.worker.main"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)

        def paused() -> bool:
            canary = emulator.get("deployments", space, "api-canary")
            return bool(canary and canary["metadata"].get("annotations", {}).get(PAUSED) == "2")

        try:
            handle = await start_flow(temporal_client, settings, text)
            await wait_until(paused, timeout=60)
            proc.send_signal(signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            log.close()
        canary = emulator.get("deployments", space, "api-canary")
        state = json.loads(canary["metadata"]["annotations"][STATE])
        assert (state["index"], state["weight"], canary["spec"]["replicas"]) == (2, 25, 1)
        assert len(prom.queries) == 2
        async with new_worker(temporal_client, settings):
            # What `kubectl annotate deployment api-canary shipflow/promote=2` sends.
            api = config.new_client_from_config(os.environ["KUBECONFIG"], context=kubeconfig, persist_config=False)
            client.AppsV1Api(api).patch_namespaced_deployment(
                "api-canary", space, {"metadata": {"annotations": {PROMOTE: "2"}}}
            )
            api.close()
            status = await asyncio.wait_for(finish(handle), timeout=60)
        assert len(prom.queries) == 2  # the finished analysis did not run again
    assert status.state == "succeeded", (status, (tmp_path / "worker.log").read_text()[-3000:])
    step = status.step("api")
    assert step.attempts == 1 and step.output is not None
    assert (step.output["strategy"], step.output["previous_image"], step.output["image"]) == ("canary", "api:1", "api:2")
    creates = [r for r in emulator.requests if r == ("create", f"/apis/apps/v1/namespaces/{space}/deployments")]
    assert len(creates) == 1  # the canary, once across both workers
    assert emulator.image_patches(space, "api") == ["api:2"]  # the stable, at promotion only
    assert emulator.get("deployments", space, "api-canary") is None
    stable = emulator.get("deployments", space, "api")
    assert stable["spec"]["replicas"] == 3 and stable["status"]["updatedReplicas"] == 3


async def test_a_later_failure_undoes_a_finished_canary_with_a_plain_rollout(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str
) -> None:
    """The undo of a canary deploy goes straight back to the previous image: no second
    canary, no pause waiting for an operator in the middle of a compensation."""
    space = ns()
    emulator.add_deployment(space, "api", "api:1", replicas=2)
    strategy = {"canary": {"steps": [{"set_weight": 50}, {"pause": {"duration": "100ms"}}]}}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    text = k8s_flow("k8s-canary-undo", "production", space, kubeconfig, (
        f"  - deploy: {{id: api, service: api, image: 'api:2', strategy: {json.dumps(strategy)}}}\n"
        f"  - check: {{id: smoke, tcp: {{port: {closed}}}, period: 100ms, failure_threshold: 1}}\n"
    ))
    async with new_worker(temporal_client, settings):
        status = await asyncio.wait_for(finish(await start_flow(temporal_client, settings, text)), timeout=60)
    assert status.state == "rolled_back", status
    assert status.step("api").state == "compensated"
    assert emulator.image_patches(space, "api") == ["api:2", "api:1"]
    creates = [r for r in emulator.requests if r == ("create", f"/apis/apps/v1/namespaces/{space}/deployments")]
    assert len(creates) == 1  # the deploy's canary; the undo made none
    assert emulator.get("deployments", space, "api-canary") is None


async def test_promote_through_the_api_reaches_a_kubernetes_canary_through_the_run(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str
) -> None:
    """The API has no cluster credentials: it asks the run, whose worker sets the annotation."""
    space = ns()
    emulator.add_deployment(space, "api", "api:1", replicas=2)
    strategy = {"canary": {"steps": [{"set_weight": 50}, {"pause": {}}, {"pause": {}}]}}
    text = k8s_flow("k8s-canary-promote", "production", space, kubeconfig,
                    f"  - deploy: {{id: api, service: api, image: 'api:2', strategy: {json.dumps(strategy)}}}\n")
    api_settings = token_settings(settings.model_copy(update={"runtime_url": "http://127.0.0.1:9"}))
    async with new_worker(temporal_client, settings), api_client(api_settings) as http:
        handle = await start_flow(temporal_client, settings, text)

        def paused(at: str) -> bool:
            canary = emulator.get("deployments", space, "api-canary")
            return bool(canary and canary["metadata"].get("annotations", {}).get(PAUSED) == at)

        await wait_until(lambda: paused("1"), timeout=30)
        refused = await http.post(f"/runs/{handle.id}/promote", json={"step": "nope"}, headers=bearer("operator"))
        assert refused.status_code == 503  # nothing of the run to promote there, and no local runtime to ask
        done = await http.post(f"/runs/{handle.id}/promote", json={}, headers=bearer("operator"))
        assert done.status_code == 200, done.text
        assert done.json() | {"run_id": ""} == {"run_id": "", "step": "api", "service": "api",
                                                 "rollout_id": "api-canary", "weight": None, "canary_step": 2}
        await wait_until(lambda: paused("2"), timeout=30)
        # The CLI, against the same API on a real port.
        api_port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(api_settings), port=api_port, log_level="warning"))
        serving = asyncio.create_task(server.serve())
        try:
            await wait_until(lambda: server.started, timeout=30)
            argv = ["--api", f"http://127.0.0.1:{api_port}", "--token", TOKENS["operator"], "promote", handle.id]
            said = await asyncio.to_thread(CliRunner().invoke, cli, argv)
        finally:
            server.should_exit = True
            await serving
        assert said.exit_code == 0, said.output
        assert f"promoted api (api of {handle.id}): api-canary goes on" in said.output
        status = await asyncio.wait_for(finish(handle), timeout=60)
        again = await http.post(f"/runs/{handle.id}/promote", json={}, headers=bearer("operator"))
        assert again.status_code == 503  # the run is over; the (absent) runtime is the only other place
    assert status.state == "succeeded", status
    assert emulator.image_patches(space, "api") == ["api:2"]
    assert emulator.get("deployments", space, "api-canary") is None


def _blip_flow(space: str, kubeconfig: str, prom_url: str) -> str:
    strategy = {"canary": {"steps": [
        {"set_weight": 25},
        {"analysis": {"prometheus": {"url": prom_url, "query": "ok", "success_condition": "result[0] >= 1"},
                      "interval": "50ms", "count": 2}},
        {"set_weight": 50},
    ]}}
    return k8s_flow("k8s-canary-blip", "production", space, kubeconfig,
                    f"  - deploy: {{id: api, service: api, image: 'api:2', retries: 1, "
                    f"strategy: {json.dumps(strategy)}}}\n")


async def test_an_api_blip_mid_canary_is_retried_from_where_it_was(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str
) -> None:
    """The step's second attempt resumes the canary at 50%: the analysis is not run again."""
    space = ns()
    emulator.add_deployment(space, "api", "api:1", replicas=4)

    def answer(query: str) -> object:
        if len(prom.queries) == 2:  # analysis done; the stable's scale-down to 50% fails 4 times
            emulator.fail("patch", rf"/namespaces/{space}/deployments/api$", 503, times=4)
        return vector("1")

    with PrometheusStub(answer) as prom:
        async with new_worker(temporal_client, settings):
            handle = await start_flow(temporal_client, settings, _blip_flow(space, kubeconfig, prom.url))
            status = await asyncio.wait_for(finish(handle), timeout=60)
        assert len(prom.queries) == 2  # not again on the second attempt
    assert status.state == "succeeded", status
    step = status.step("api")
    assert step.attempts == 2 and step.output is not None
    assert step.attempt_log is not None and "canary kept at canary step 2 (weight 50%)" in str(step.attempt_log[0].error)
    assert (step.output["previous_image"], step.output["image"]) == ("api:1", "api:2")
    assert emulator.get("deployments", space, "api-canary") is None
    creates = [r for r in emulator.requests if r == ("create", f"/apis/apps/v1/namespaces/{space}/deployments")]
    assert len(creates) == 1  # the canary, once across both attempts
    stable = emulator.get("deployments", space, "api")
    assert stable["spec"]["replicas"] == 4 and stable["spec"]["template"]["spec"]["containers"][0]["image"] == "api:2"


async def test_an_api_outage_through_the_last_attempt_aborts_the_canary(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str
) -> None:
    """Kept after the first attempt, aborted by the last one: all traffic on the stable."""
    space = ns()
    emulator.add_deployment(space, "api", "api:1", replicas=4)

    def answer(query: str) -> object:
        if len(prom.queries) == 2:  # every try of both attempts fails
            emulator.fail("patch", rf"/namespaces/{space}/deployments/api$", 503, times=8)
        return vector("1")

    with PrometheusStub(answer) as prom:
        async with new_worker(temporal_client, settings):
            handle = await start_flow(temporal_client, settings, _blip_flow(space, kubeconfig, prom.url))
            status = await asyncio.wait_for(finish(handle), timeout=60)
        assert len(prom.queries) == 2
    assert status.state == "failed", status
    step = status.step("api")
    assert step.attempts == 2 and step.error is not None
    assert "canary aborted: all traffic is on the stable version (api:1)" in step.error
    assert emulator.get("deployments", space, "api-canary") is None
    stable = emulator.get("deployments", space, "api")
    assert stable["spec"]["replicas"] == 4 and stable["spec"]["template"]["spec"]["containers"][0]["image"] == "api:1"


async def test_a_cancel_while_the_step_waits_to_retry_aborts_the_kept_canary(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str
) -> None:
    """No next attempt will come: the canary kept for it is aborted, not left with its
    share of the traffic; and the run's history replays."""
    space = ns()
    emulator.add_deployment(space, "api", "api:1", replicas=4)

    def answer(query: str) -> object:
        if len(prom.queries) == 2:
            emulator.fail("patch", rf"/namespaces/{space}/deployments/api$", 503, times=4)
        return vector("1")

    with PrometheusStub(answer) as prom:
        plan = plan_for(load_flow_text(_blip_flow(space, kubeconfig, prom.url)), settings)
        for action in plan.actions():
            action.retry.initial_interval_s = 600.0  # the cancel comes well inside the back-off
        async with new_worker(temporal_client, settings):
            handle = await start_release(temporal_client, settings, plan, run_id=f"blip-cancel-{ns()}")

            async def retrying() -> bool:
                return (await read_status(temporal_client, handle.id)).step("api").state == "retrying"

            await wait_until(retrying, timeout=60)
            canary = emulator.get("deployments", space, "api-canary")
            assert canary is not None and canary["spec"]["replicas"] == 2  # kept at 50%
            await handle.cancel()
            status = await asyncio.wait_for(finish(handle), timeout=60)
    assert status.state == "cancelled", status
    step = status.step("api")
    assert step.state == "cancelled" and step.attempts == 1
    assert emulator.get("deployments", space, "api-canary") is None
    stable = emulator.get("deployments", space, "api")
    assert stable["spec"]["replicas"] == 4 and stable["spec"]["template"]["spec"]["containers"][0]["image"] == "api:1"
    history = await temporal_client.get_workflow_handle(handle.id).fetch_history()
    converter = make_data_converter(parse_keys(TEST_PAYLOAD_KEYS, source="tests"))
    replayed = await Replayer(workflows=[ReleaseWorkflow], data_converter=converter).replay_workflow(history)
    assert replayed.replay_failure is None
