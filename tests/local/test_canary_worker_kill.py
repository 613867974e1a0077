"""A Temporal worker SIGKILLed mid-canary on the local target: the next worker resumes the
same canary at its durable weight and step, without running a finished phase again."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.activities.targets.local.process import free_port
from shipflow.activities.targets.local.runtime_client import RuntimeClient
from tests.helpers import finish, new_worker, start_flow, wait_until
from tests.local.support import Load, RuntimeProcess, demo_service
from tests.local.test_e2e import records, start_worker


def canary_flow(runtime: RuntimeProcess, port: int) -> str:
    strategy = {"canary": {"steps": [
        {"set_weight": 30},
        {"analysis": {"http": {"url": f"http://127.0.0.1:{port}/healthz"}, "interval": "100ms", "count": 2}},
        {"pause": {}},
    ]}}
    return "\n".join([
        "apiVersion: shipflow/v1",
        "name: web-canary-kill",
        "stage: staging",
        "target:",
        "  kind: local",
        f"  runtime: {runtime.url}",
        f"  services: {{web: {json.dumps(demo_service(port, replicas=2))}}}",
        "args: {image: {default: v1}}",
        "steps:",
        f'  - deploy: {{id: web, service: web, image: "${{args.image}}", strategy: {json.dumps(strategy)}}}',
    ])


async def test_worker_killed_mid_canary_resumes_at_the_durable_weight(
    temporal_client: Client, settings: Settings, runtime: RuntimeProcess, tmp_path: Path
) -> None:
    port = free_port()
    text = canary_flow(runtime, port)
    client = RuntimeClient(runtime.url, runtime.settings())
    worker = start_worker(settings, runtime, tmp_path / "worker-1.log")
    try:
        status = await finish(await start_flow(temporal_client, settings, text, {"image": "v1"}))
        assert status.state == "succeeded", status.model_dump_json(indent=1)

        handle = await start_flow(temporal_client, settings, text, {"image": "v2"})

        def paused() -> str | None:
            rid = runtime.service("web")["rollout"]
            return rid if rid and client.rollout("web", rid).paused else None

        rid = await wait_until(paused, timeout=60)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.send_signal(signal.SIGTERM)
            worker.wait(20)
    before = client.rollout("web", rid)
    assert (before.state, before.weight, before.step_index, len(before.analysis)) == ("running", 30, 2, 2)
    canary_pids = runtime.pids("web", "v2")
    assert len(canary_pids) == 1

    async with new_worker(temporal_client, settings):  # the next worker, in this process
        # The lost attempt times out on its heartbeat; the new one follows the same rollout:
        # still paused at the same step and weight, traffic still split.
        load = Load(port)
        answers = [await load._one() for _ in range(40)]
        assert all(ok for ok, _ in answers) and {v for _, v in answers} <= {"v1", "v2"}
        await wait_until(lambda: client.rollout("web", rid).paused, timeout=30)
        after = client.rollout("web", rid)
        assert (after.weight, after.step_index, len(after.analysis)) == (30, 2, 2)
        assert runtime.pids("web", "v2") == canary_pids  # the canary instance was not restarted
        client.promote("web", rid)
        status = await asyncio.wait_for(finish(handle), 120)

    assert status.state == "succeeded", status.model_dump_json(indent=1)
    assert status.step("web").attempts == 1  # a lost worker is a resume, not a retry
    done = client.rollout("web", rid)
    assert done.state == "succeeded" and len(done.analysis) == 2  # the analysis ran once
    assert [m["measurement"] for m in done.analysis] == [1, 2]
    assert (await Load(port)._one()) == (True, "v2")
    assert records(settings) == [("v1", None, "deploy"), ("v2", "v1", "deploy")]
