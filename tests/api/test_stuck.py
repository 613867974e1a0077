"""A run whose workflow task fails forever: shown as stuck, refused a cancel it cannot
carry out, and terminated from the API and from the CLI.

The worker here serves a workflow registered under ReleaseWorkflow's name whose code
raises a plain exception: for Temporal that is a failed workflow task, retried forever,
exactly what a bug or a non-deterministic change in the interpreter does to a real run.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx
from temporalio import workflow
from temporalio.client import Client, WorkflowExecutionStatus
from temporalio.worker import Worker
from typer.testing import CliRunner

from shipflow.activities.core.settings import Settings
from shipflow.infra.cli.main import app as cli
from tests.api.conftest import TOKENS, bearer, token_settings
from tests.api.served import served_in_process
from tests.helpers import wait_until

BUG = "interpreter bug: cannot read the plan"


@workflow.defn(name="ReleaseWorkflow", sandboxed=False)
class BrokenRelease:
    @workflow.run
    async def run(self, _input: Any) -> None:
        raise RuntimeError(BUG)


def flow_text(name: str) -> str:
    return f"""
apiVersion: shipflow/v1
name: {name}
stage: {name}
concurrency: allow
steps:
  - wait: {{id: soak, duration: 1s}}
"""


async def start_stuck_run(http: httpx.AsyncClient, name: str) -> str:
    started = await http.post(f"/flows/{name}/runs", json={}, headers=bearer("operator"))
    assert started.status_code == 202, started.text
    run_id: str = started.json()["run_id"]

    async def stuck() -> dict[str, Any] | None:
        body: dict[str, Any] = (await http.get(f"/runs/{run_id}", headers=bearer("viewer"))).json()
        return body if body.get("stuck") else None

    body = await wait_until(stuck, timeout=30, interval=0.2)
    assert body["state"] in ("pending", "running")
    assert BUG in body["stuck"]["reason"]
    assert body["stuck"]["attempts"] >= 2
    assert body["stuck"]["since"]
    return run_id


async def test_stuck_run_is_shown_and_terminated_from_api_and_cli(
    settings: Settings, temporal_client: Client
) -> None:
    secured = token_settings(settings)
    name = f"stuck-{uuid.uuid4().hex[:6]}"
    worker = Worker(temporal_client, task_queue=settings.task_queue, workflows=[BrokenRelease])
    async with worker, served_in_process(secured) as http:
        applied = await http.post(
            "/flows",
            content=flow_text(name),
            headers={"content-type": "application/yaml", **bearer("admin")},
        )
        assert applied.status_code == 201, applied.text
        run_id = await start_stuck_run(http, name)

        # A cancel would only be recorded, never carried out: refused, saying why.
        cancel = await http.post(f"/runs/{run_id}/cancel", headers=bearer("operator"))
        assert cancel.status_code == 409, cancel.text
        assert "stuck" in cancel.json()["detail"] and "terminate" in cancel.json()["detail"]

        # Terminating skips compensation: admin only.
        refused = await http.post(f"/runs/{run_id}/terminate", headers=bearer("operator"))
        assert refused.status_code == 403
        done = await http.post(
            f"/runs/{run_id}/terminate", json={"reason": "bad deploy"}, headers=bearer("admin")
        )
        assert done.status_code == 202, done.text
        assert done.json()["run_id"] == run_id
        description = await temporal_client.get_workflow_handle(run_id).describe()
        assert description.status == WorkflowExecutionStatus.TERMINATED
        after = (await http.get(f"/runs/{run_id}", headers=bearer("viewer"))).json()
        assert after["state"] == "failed"
        assert after["error"] == "terminated by admin-bot: bad deploy"
        assert after["stuck"] is None
        listed = (await http.get("/runs", params={"flow": name}, headers=bearer("viewer"))).json()
        assert [(r["run_id"], r["state"]) for r in listed] == [(run_id, "failed")]
        again = await http.post(f"/runs/{run_id}/terminate", headers=bearer("admin"))
        assert again.status_code == 409
        missing = await http.post("/runs/no-such-run/terminate", headers=bearer("admin"))
        assert missing.status_code == 404

        # The CLI: `shipflow terminate RUN`.
        second = await start_stuck_run(http, name)
        base = str(http.base_url).rstrip("/")

        def invoke(*args: str) -> Any:
            return CliRunner().invoke(
                cli, ["--api", base, "--token", TOKENS["admin"], *args], catch_exceptions=False
            )

        shown_stuck = await asyncio.to_thread(invoke, "status", second)
        assert shown_stuck.exit_code == 0, shown_stuck.output
        text = " ".join(shown_stuck.output.split())
        assert "stuck after" in text and BUG in text and "shipflow terminate" in text

        result = await asyncio.to_thread(invoke, "terminate", second, "--reason", "stuck")
        assert result.exit_code == 0, result.output
        assert f"terminated {second}" in result.output
        shown = (await http.get(f"/runs/{second}", headers=bearer("viewer"))).json()
        assert (shown["state"], shown["error"]) == ("failed", "terminated by admin-bot: stuck")
        over = await asyncio.to_thread(invoke, "terminate", second)
        assert over.exit_code == 2  # 409: the run is over
        assert "already ended (failed)" in over.output
