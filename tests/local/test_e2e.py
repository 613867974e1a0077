"""The local target end to end: ReleaseWorkflow on a real Temporal server, real workers."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlmodel import Session, select
from temporalio.client import Client

from shipflow.activities.core.db import make_engine
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import ReleaseRecord
from shipflow.activities.targets.local.process import pid_alive
from tests.helpers import finish, free_port, new_worker, run_flow, start_flow, wait_until
from tests.local.support import ROOT, Load, RuntimeProcess, demo_service


def flow(runtime: RuntimeProcess, port: int, *, replicas: int = 2, env: dict[str, str] | None = None,
         then_fail: bool = False) -> str:
    import json

    service = demo_service(port, replicas=replicas, env=env)
    steps = ['  - deploy: {id: web, service: web, image: "${args.image}"}']
    if then_fail:
        closed = free_port()
        steps.append(
            f"  - check: {{id: smoke, tcp: {{port: {closed}}}, period: 100ms, failure_threshold: 1}}"
        )
    return "\n".join(
        [
            "apiVersion: shipflow/v1",
            "name: web-local",
            "stage: staging",
            "target:",
            "  kind: local",
            f"  runtime: {runtime.url}",
            f"  services: {{web: {json.dumps(service)}}}",
            "args: {image: {default: v1}}",
            "steps:",
            *steps,
        ]
    )


def records(settings: Settings) -> list[tuple[str, str | None, str]]:
    engine = make_engine(settings.sqlalchemy_url())
    with Session(engine) as session:
        rows = session.exec(select(ReleaseRecord).order_by(ReleaseRecord.id)).all()  # type: ignore[arg-type]
    return [(r.image, r.previous_image, r.kind) for r in rows]


async def test_deploy_then_undo_when_a_later_step_fails(
    temporal_client: Client, settings: Settings, runtime: RuntimeProcess
) -> None:
    port = free_port()
    async with new_worker(temporal_client, settings):
        first = await run_flow(temporal_client, settings, flow(runtime, port), {"image": "v1"})
        assert first.state == "succeeded", first.model_dump_json(indent=1)
        assert (first.step("web").output or {})["image"] == "v1"
        assert (await Load(port)._one()) == (True, "v1")

        failed = await run_flow(
            temporal_client, settings, flow(runtime, port, then_fail=True), {"image": "v2"}
        )
    assert failed.state == "rolled_back", failed.model_dump_json(indent=1)
    assert failed.step("web").state == "compensated"
    assert (failed.step("web").output or {})["previous_image"] == "v1"
    assert runtime.service("web")["image"] == "v1"
    assert (await Load(port)._one()) == (True, "v1")
    assert records(settings) == [("v1", None, "deploy"), ("v2", "v1", "deploy"), ("v1", "v2", "undo")]


def start_worker(settings: Settings, runtime: RuntimeProcess, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "SHIPFLOW_TEMPORAL_ADDRESS": settings.temporal_address,
        "SHIPFLOW_TASK_QUEUE": settings.task_queue,
        "SHIPFLOW_DATA_DIR": str(settings.data_dir),
        "SHIPFLOW_RUNTIME_URL": runtime.url,
        "SHIPFLOW_RUNTIME_KEY_FILE": str(runtime.key_file),
    }
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shipflow.worker.main"], cwd=ROOT, env=env, stdout=out, stderr=out
        )


async def test_worker_killed_mid_rollout_new_worker_finishes_it(
    temporal_client: Client, settings: Settings, runtime: RuntimeProcess, tmp_path: Path
) -> None:
    port = free_port()
    text = flow(runtime, port, replicas=3, env={"DEMO_STARTUP_DELAY": "0.6"})
    worker = start_worker(settings, runtime, tmp_path / "worker-1.log")
    second: subprocess.Popen[bytes] | None = None
    try:
        status = await finish(await start_flow(temporal_client, settings, text, {"image": "v1"}))
        assert status.state == "succeeded", status.model_dump_json(indent=1)
        v1 = runtime.pids("web")

        handle = await start_flow(temporal_client, settings, text, {"image": "v2"})

        def one_replaced() -> str | None:
            svc = runtime.service("web")
            if svc["rollout"] is None:
                return None
            ro = runtime.get(f"/services/web/rollouts/{svc['rollout']}")
            return svc["rollout"] if ro["ready"] >= 1 else None

        rollout_id = await wait_until(one_replaced, timeout=30, interval=0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
        assert runtime.get(f"/services/web/rollouts/{rollout_id}")["state"] == "running"
        second = start_worker(settings, runtime, tmp_path / "worker-2.log")
        status = await asyncio.wait_for(finish(handle), 120)
    finally:
        for proc in (worker, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                proc.wait(20)

    assert status.state == "succeeded", status.model_dump_json(indent=1)
    assert status.step("web").attempts == 1  # a lost worker is a resume, not a retry
    assert (status.step("web").output or {})["previous_image"] == "v1"
    ro = runtime.get(f"/services/web/rollouts/{rollout_id}")
    assert ro["state"] == "succeeded"
    assert len(ro["created"]) == 3  # each old instance replaced exactly once
    assert {i["id"] for i in runtime.service("web")["instances"]} == set(ro["created"])
    assert not any(pid_alive(pid) for pid in v1)
    assert (await Load(port)._one()) == (True, "v2")
    assert records(settings) == [("v1", None, "deploy"), ("v2", "v1", "deploy")]


async def test_cancelled_run_aborts_the_rollout_and_the_old_version_serves(
    temporal_client: Client, settings: Settings, runtime: RuntimeProcess
) -> None:
    port = free_port()
    text = flow(runtime, port, replicas=2, env={"DEMO_STARTUP_DELAY": "1.0"})
    async with new_worker(temporal_client, settings):
        first = await run_flow(temporal_client, settings, text, {"image": "v1"})
        assert first.state == "succeeded", first.model_dump_json(indent=1)
        load = Load(port)
        load.start()
        handle = await start_flow(temporal_client, settings, text, {"image": "v2"})

        def rolling() -> str | None:
            return runtime.service("web")["rollout"]

        rollout_id = await wait_until(rolling, timeout=30, interval=0.02)
        await handle.cancel()
        status = await asyncio.wait_for(finish(handle), 60)
        ended = time.monotonic()
        await wait_until(lambda: any(r[0] > ended + 0.2 for r in load.results))
        await load.stop()
    assert status.state in ("cancelled", "rolled_back"), status.model_dump_json(indent=1)
    ro = runtime.get(f"/services/web/rollouts/{rollout_id}")
    if ro["state"] == "succeeded":
        # The rollout finished just before the cancel reached it: then the run undid it.
        assert status.step("web").state == "compensated", status.model_dump_json(indent=1)
        assert records(settings) == [("v1", None, "deploy"), ("v2", "v1", "deploy"), ("v1", "v2", "undo")]
    else:
        assert ro["state"] == "aborted", ro
        assert records(settings) == [("v1", None, "deploy")]
    svc = runtime.service("web")
    assert svc["image"] == "v1"
    assert {i["image"] for i in svc["instances"]} == {"v1"}
    assert load.failures() == [], load.failures()[:5]
    # A v2 instance may have served before the cancel arrived; after the run, only v1.
    assert load.versions_after(ended) == {"v1"}
