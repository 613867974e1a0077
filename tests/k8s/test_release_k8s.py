"""Release flows on a `kubernetes` target, end to end: ReleaseWorkflow on a real Temporal
dev server, real workers (one of them a subprocess that gets SIGKILLed), the official
client, and the API emulator standing in for the cluster."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from tests.helpers import finish, new_worker, run_flow, start_flow, wait_until
from tests.k8s.emulator import KubeEmulator

REPO = Path(__file__).resolve().parents[2]


def k8s_flow(name: str, stage: str, namespace: str, context: str, steps: str) -> str:
    return (
        f"apiVersion: shipflow/v1\nname: {name}\nstage: {stage}\n"
        f"target: {{kind: kubernetes, namespace: {namespace}, context: {context}}}\n"
        f"steps:\n{steps}"
    )


def ns() -> str:
    return f"e2e-{uuid.uuid4().hex[:8]}"


async def test_full_flow_migrates_deploys_and_promotes(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str
) -> None:
    staging, prod = ns(), ns()
    emulator.add_deployment(staging, "worker", "worker:8")
    emulator.add_deployment(prod, "api", "api:1", replicas=3)
    emulator.add_deployment(prod, "worker", "worker:1")
    emulator.add_deployment(prod, "web", "web:1")
    emulator.job_outcome("sf-", log="applying 0042_add_column\nmigrated\n")
    staging_flow = k8s_flow("k8s-staging", "staging", staging, kubeconfig,
                            "  - deploy: {id: worker, service: worker, image: 'worker:9'}\n")
    prod_flow = k8s_flow("k8s-prod", "production", prod, kubeconfig, """\
  - migrate: {id: migrate, command: [alembic, upgrade, head], image: "api:2", timeout: 1m}
  - parallel:
      - deploy: {id: api, service: api, image: "api:2",
                 probes: {readiness: {http: {path: /healthz, port: 8080}, period: 1s}}}
      - deploy: {id: web, service: web, image: "web:2"}
      - promote: {id: worker, service: worker, from: staging}
""")
    async with new_worker(temporal_client, settings):
        first = await run_flow(temporal_client, settings, staging_flow)
        assert first.state == "succeeded", first
        status = await run_flow(temporal_client, settings, prod_flow)
    assert status.state == "succeeded", status
    assert "migrated" in status.step("migrate").output["output"]  # type: ignore[index]
    assert status.step("api").output["previous_image"] == "api:1"  # type: ignore[index]
    assert status.step("worker").output["image"] == "worker:9"  # type: ignore[index]
    assert emulator.image_patches(prod, "api") == ["api:2"]
    assert emulator.image_patches(prod, "worker") == ["worker:9"]
    assert emulator.image_patches(prod, "web") == ["web:2"]
    assert emulator.image_patches(staging, "worker") == ["worker:9"]
    api = emulator.get("deployments", prod, "api")
    assert api is not None
    assert api["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["status"]["updatedReplicas"] == 3
    # the migration ran once, as a Job that was deleted with its pod afterwards
    (job_delete,) = [d for d in emulator.deletes if d["resource"] == "jobs"]
    assert job_delete["namespace"] == prod and job_delete["policy"] == "Background"
    assert not [p for (n, _), p in emulator.objects["pods"].items() if n == prod]


async def test_stalled_rollout_fails_and_compensation_rolls_images_back(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str
) -> None:
    space = ns()
    emulator.never_ready = lambda image: "broken" in image
    emulator.add_deployment(space, "api", "api:1")
    emulator.add_deployment(space, "web", "web:1")
    text = k8s_flow("k8s-stall", "production", space, kubeconfig, """\
  - deploy: {id: api, service: api, image: "api:2"}
  - deploy: {id: web, service: web, image: "web:2-broken", progress_deadline: 1s}
""")
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    assert status.state == "rolled_back", status
    assert status.failed_step == "web"
    assert "progress deadline" in (status.step("web").error or "")
    assert status.step("api").state == "compensated"
    # api: deployed, then patched back by the compensation; web: set back by the target
    assert emulator.image_patches(space, "api") == ["api:2", "api:1"]
    assert emulator.image_patches(space, "web") == ["web:2-broken", "web:1"]
    for name in ("api", "web"):
        dep = emulator.get("deployments", space, name)
        assert dep is not None and dep["spec"]["template"]["spec"]["containers"][0]["image"] == f"{name}:1"


async def test_run_cancelled_mid_rollout(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str
) -> None:
    space = ns()
    emulator.never_ready = lambda image: "slow" in image
    emulator.add_deployment(space, "api", "api:1")
    emulator.add_deployment(space, "web", "web:1")
    text = k8s_flow("k8s-cancel", "production", space, kubeconfig, """\
  - deploy: {id: api, service: api, image: "api:2"}
  - deploy: {id: web, service: web, image: "web:2-slow"}
""")
    async with new_worker(temporal_client, settings):
        handle = await start_flow(temporal_client, settings, text)
        await wait_until(lambda: emulator.image_patches(space, "web"), timeout=30)
        await handle.cancel()
        status = await finish(handle)
    assert status.step("web").state == "cancelled", status
    assert status.state in ("rolled_back", "cancelled"), status
    assert status.step("api").state == "compensated"
    assert emulator.image_patches(space, "api") == ["api:2", "api:1"]
    # the cancelled rollout was set back to the image it had before
    assert emulator.image_patches(space, "web") == ["web:2-slow", "web:1"]


async def test_worker_killed_mid_watch_resumes_and_patches_once(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str, tmp_path: Path
) -> None:
    space = ns()
    stuck = {"on": True}
    emulator.never_ready = lambda image: image == "api:2" and stuck["on"]
    emulator.add_deployment(space, "api", "api:1", replicas=2)
    text = k8s_flow("k8s-crash", "production", space, kubeconfig,
                    "  - deploy: {id: api, service: api, image: 'api:2'}\n")
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
    try:
        handle = await start_flow(temporal_client, settings, text)
        # the subprocess patched the image and is now watching the stuck rollout
        await wait_until(lambda: emulator.image_patches(space, "api"), timeout=60)
        await wait_until(lambda: _watching(emulator, space), timeout=30)
        proc.send_signal(signal.SIGKILL)
        seen_at_kill = len(emulator.requests)
        await asyncio.to_thread(proc.wait, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    stuck["on"] = False  # the new pods can get ready now
    async with new_worker(temporal_client, settings):
        status = await asyncio.wait_for(finish(handle), timeout=60)
    assert status.state == "succeeded", (status, (tmp_path / "worker.log").read_text()[-3000:])
    assert emulator.image_patches(space, "api") == ["api:2"]  # exactly once, across both workers
    step = status.step("api")
    assert step.output is not None and step.output["previous_image"] == "api:1"
    assert step.output["image"] == "api:2"
    # the second worker resumed the watch: it read the Deployment, and did not patch it
    after = emulator.requests[seen_at_kill:]
    assert ("list", f"/apis/apps/v1/namespaces/{space}/deployments") in after
    assert not [r for r in after if r[0] == "patch"]


def _watching(emulator: KubeEmulator, namespace: str) -> bool:
    path = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    with emulator.cond:
        return any(verb == "watch" and p == path for verb, p in emulator.requests)


async def test_failing_migration_fails_the_run_with_its_log(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str
) -> None:
    space = ns()
    emulator.add_deployment(space, "api", "api:1")
    emulator.job_outcome("sf-", exit_code=2, log="applying 0043\nERROR: column exists\n")
    text = k8s_flow("k8s-badmig", "production", space, kubeconfig, """\
  - migrate: {id: migrate, command: [alembic, upgrade, head], image: "api:2", retries: 2}
  - deploy: {id: api, service: api, image: "api:2"}
""")
    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, text)
    assert status.state in ("failed", "rolled_back"), status
    step = status.step("migrate")
    assert step.state == "failed"
    assert "exit code 2" in (step.error or "") and "BackoffLimitExceeded" in (step.error or "")
    assert "ERROR: column exists" in (step.error or "")  # the log's last lines, in the run's status
    assert step.attempts == 1  # Kubernetes retried (backoffLimit 2): the step does not again
    pods = [e for e in emulator.events
            if e[1] == "pods" and e[2] == "ADDED" and e[3]["metadata"]["namespace"] == space]
    assert len(pods) == 3
    assert status.step("api").state == "skipped"
    assert emulator.image_patches(space, "api") == []


async def test_worker_killed_mid_job_reattaches_to_it_and_creates_no_second_job(
    temporal_client: Client, settings: Settings, emulator: KubeEmulator, kubeconfig: str, tmp_path: Path
) -> None:
    """The Job lives in the cluster: the resumed step adopts it by name, never makes another."""
    space = ns()
    emulator.job_outcome("sf-", log="applying 0042\nmigrated once\n", duration_s=5.0)
    text = k8s_flow("k8s-job-crash", "production", space, kubeconfig, """\
  - migrate: {id: migrate, command: [alembic, upgrade, head], image: "api:2", timeout: 2m}
""")
    jobs_path = f"/apis/batch/v1/namespaces/{space}/jobs"
    env = {
        **os.environ,
        "KUBECONFIG": os.environ["KUBECONFIG"],
        "SHIPFLOW_TEMPORAL_ADDRESS": settings.temporal_address,
        "SHIPFLOW_TASK_QUEUE": settings.task_queue,
        "SHIPFLOW_DATA_DIR": str(settings.data_dir),
        "PYTHONPATH": str(REPO),
    }
    log = (tmp_path / "worker.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "shipflow.worker.main"], cwd=REPO, env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        handle = await start_flow(temporal_client, settings, text)
        # the subprocess created the Job and is following it
        await wait_until(lambda: _job_names(emulator, space), timeout=60)
        proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(proc.wait, 10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        log.close()
    assert _job_names(emulator, space) != [], "the Job must still run when the worker is gone"
    async with new_worker(temporal_client, settings):
        status = await asyncio.wait_for(finish(handle), timeout=60)
    assert status.state == "succeeded", (status, (tmp_path / "worker.log").read_text()[-3000:])
    step = status.step("migrate")
    assert step.attempts == 1
    assert step.output is not None and "migrated once" in step.output["output"]
    with emulator.cond:
        creates = [r for r in emulator.requests if r == ("create", jobs_path)]
    assert len(creates) >= 2  # the resumed execution asked too, and was told it exists (409)
    created = [e for e in emulator.events
               if e[1] == "jobs" and e[2] == "ADDED" and e[3]["metadata"]["namespace"] == space]
    assert len(created) == 1, created  # exactly one Job ever existed
    pods = [e for e in emulator.events
            if e[1] == "pods" and e[2] == "ADDED" and e[3]["metadata"]["namespace"] == space]
    assert len(pods) == 1  # and it ran its command once


def _job_names(emulator: KubeEmulator, namespace: str) -> list[str]:
    with emulator.cond:
        return [n for (ns_, n) in emulator.objects["jobs"] if ns_ == namespace]
