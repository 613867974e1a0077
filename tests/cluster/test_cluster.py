"""Cluster mode: two workers and two APIs, each its own process, against one Temporal
server and one PostgreSQL database, as a team outgrowing one machine runs shipflow.

Releases started through either API run on either worker; the stage lock keeps one run
at a time in the stage across all of them; both APIs list the same runs from the shared
index, and the CLI pages through it with `--all`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import httpx
from temporalio.api.enums.v1 import EventType, TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client
from typer.testing import CliRunner

from shipflow.activities.core.settings import Settings
from shipflow.infra.cli.main import app as cli
from tests.api.served import ApiProcess
from tests.conftest import TEST_PAYLOAD_KEYS
from tests.helpers import wait_until

REPO = Path(__file__).resolve().parents[2]
RUNS_PER_API = 3


def _env(settings: Settings, pg_url: str, data_dir: Path) -> dict[str, str]:
    """What every process of one deployment shares (each keeps its own data dir)."""
    return {
        "SHIPFLOW_TEMPORAL_ADDRESS": settings.temporal_address,
        "SHIPFLOW_TASK_QUEUE": settings.task_queue,
        "SHIPFLOW_DATABASE_URL": pg_url,
        "SHIPFLOW_PAYLOAD_KEYS": TEST_PAYLOAD_KEYS,
        "SHIPFLOW_OPEN_DEV_INSTANCE": "true",
        "SHIPFLOW_DATA_DIR": str(data_dir),
    }


def _worker(settings: Settings, pg_url: str, home: Path) -> subprocess.Popen[bytes]:
    home.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHIPFLOW_")}
    env.update(_env(settings, pg_url, home / "data"))
    return subprocess.Popen(
        [sys.executable, "-m", "shipflow.worker.main"],
        env=env,
        cwd=REPO,
        stdout=(home / "worker.log").open("wb"),
        stderr=subprocess.STDOUT,
    )


async def _pollers(client: Client, queue: str) -> set[str]:
    response = await client.workflow_service.describe_task_queue(
        DescribeTaskQueueRequest(
            namespace=client.namespace,
            task_queue=TaskQueue(name=queue),
            task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_ACTIVITY,
        )
    )
    return {p.identity for p in response.pollers}


async def _identities(client: Client, run_id: str) -> set[str]:
    """The workers that ran this run's activities."""
    history = await client.get_workflow_handle(run_id).fetch_history()
    return {
        e.activity_task_started_event_attributes.identity
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
    }


async def test_two_workers_and_two_apis_share_one_temporal_and_postgres(
    temporal_client: Client, settings: Settings, pg_url: str, tmp_path: Path
) -> None:
    stage = f"cluster-{uuid.uuid4().hex[:6]}"
    flow = f"""
apiVersion: shipflow/v1
name: {stage}
stage: {stage}
concurrency: queue
steps:
  - migrate: {{id: one, command: ["true"]}}
  - migrate: {{id: two, command: ["true"]}}
"""
    workers = [_worker(settings, pg_url, tmp_path / f"worker-{i}") for i in (1, 2)]
    apis = [
        ApiProcess(_env(settings, pg_url, tmp_path / f"api-{i}" / "data"), tmp_path / f"api-{i}" / "data")
        for i in (1, 2)
    ]
    try:
        for api in apis:
            await asyncio.to_thread(api.wait_ready, 60)
        polling = await wait_until(
            lambda: _pollers_two(temporal_client, settings.task_queue), timeout=60, interval=0.2
        )
        assert len(polling) >= 2
        async with httpx.AsyncClient(base_url=apis[0].url, timeout=30) as first, httpx.AsyncClient(
            base_url=apis[1].url, timeout=30
        ) as second:
            applied = await first.post("/flows", content=flow, headers={"Content-Type": "text/yaml"})
            assert applied.status_code == 201, applied.text
            # The flow applied through one API is there for the other (one database).
            assert (await second.get(f"/flows/{stage}")).status_code == 200

            async def start(http: httpx.AsyncClient) -> str:
                response = await http.post(f"/flows/{stage}/runs", json={})
                assert response.status_code == 202, response.text
                run_id: str = response.json()["run_id"]
                return run_id

            run_ids = list(
                await asyncio.gather(
                    *(start(http) for http in (first, second) for _ in range(RUNS_PER_API))
                )
            )

            async def all_succeeded() -> list[dict[str, Any]] | None:
                rows = (await second.get("/runs", params={"flow": stage})).json()
                done = [r for r in rows if r["state"] == "succeeded"]
                failed = [r for r in rows if r["state"] not in ("succeeded", "running", "queued", "pending")]
                assert not failed, failed
                return rows if len(done) == len(run_ids) else None

            rows = await wait_until(all_succeeded, timeout=90, interval=0.5)
            assert {r["run_id"] for r in rows} == set(run_ids)
            assert (await first.get("/runs", params={"flow": stage})).json() == rows

            # One run at a time in the stage, across both APIs and both workers.
            spans = []
            for run_id in run_ids:
                detail = (await first.get(f"/runs/{run_id}")).json()
                steps = {s["id"]: s for s in detail["steps"]}
                spans.append((steps["one"]["started_at"], steps["two"]["ended_at"], run_id))
            spans.sort()
            for (_, ended, before), (started, _, after) in itertools.pairwise(spans):
                assert ended <= started, f"{before} and {after} overlapped in {stage}"

        # Both workers took part (each polls with its own identity).
        ran = set().union(*[await _identities(temporal_client, r) for r in run_ids])
        assert len(ran) == 2, ran

        # The CLI pages through one API's index with --all.
        result = await asyncio.to_thread(
            CliRunner().invoke,
            cli,
            ["--api", apis[1].url, "runs", "--flow", stage, "--limit", "2", "--all", "--json"],
        )
        assert result.exit_code == 0, result.output
        assert [r["run_id"] for r in json.loads(result.stdout)] == [r["run_id"] for r in rows]
    finally:
        for api in apis:
            api.close()
        for worker in workers:
            worker.terminate()
        for worker in workers:
            try:
                worker.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()


async def _pollers_two(client: Client, queue: str) -> set[str] | None:
    found = await _pollers(client, queue)
    return found if len(found) >= 2 else None
