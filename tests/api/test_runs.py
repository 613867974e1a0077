"""`/runs` end to end: runs started over HTTP, executed by a real worker on a real
Temporal server, followed, approved, rejected, cancelled and listed over HTTP."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlmodel import Session
from temporalio.client import Client

from shipflow.activities.core.db import make_engine
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import Run
from shipflow.api.routes import runs as runs_routes
from tests.api.conftest import Hooks, api_client
from tests.helpers import new_worker, wait_until

FULL = """
apiVersion: shipflow/v1
name: {name}
stage: {stage}
args:
  word: {{default: hello}}
steps:
  - migrate: {{id: migrate, command: [sh, -c, "echo migrating ${{args.word}}"]}}
  - parallel:
      - wait: {{id: soak, duration: 200ms}}
      - check: {{id: db-up, tcp: {{port: 5432}}, period: 100ms, success_threshold: 2}}
      - migrate: {{id: flaky, command: [sh, -c, "test -f {marker} || {{ touch {marker}; exit 1; }}"],
                  retries: 2}}
  - notify: {{id: tell, webhook: "{hook}", message: "released ${{args.word}}"}}
"""

GATED = """
apiVersion: shipflow/v1
name: {name}
stage: prod
steps:
  - migrate: {{id: prepare, command: ["true"], undo: {{command: ["true"]}}}}
  - approve: {{id: go-live}}
  - approve: {{id: second}}
  - migrate: {{id: after, command: ["true"]}}
"""

LONG = """
apiVersion: shipflow/v1
name: {name}
stage: dev
steps:
  - migrate: {{id: first, command: ["true"]}}
  - wait: {{id: soak, duration: 1h}}
"""


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


async def apply(http: httpx.AsyncClient, text: str) -> None:
    response = await http.post("/flows", content=text, headers={"Content-Type": "text/yaml"})
    assert response.status_code in (200, 201), response.text


async def start(http: httpx.AsyncClient, flow: str, **body: Any) -> str:
    response = await http.post(f"/flows/{flow}/runs", json=body)
    assert response.status_code == 202, response.text
    run_id: str = response.json()["run_id"]
    return run_id


async def run_state(
    http: httpx.AsyncClient, run_id: str, state: str, timeout: float = 30
) -> dict[str, Any]:
    """Poll GET /runs/{id} until the run is in `state`; on timeout, show what it was."""
    last: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal last
        response = await http.get(f"/runs/{run_id}")
        assert response.status_code == 200, response.text
        last = response.json()
        return last["state"] == state

    try:
        await wait_until(reached, timeout=timeout, interval=0.1)
    except AssertionError:
        steps = {s["id"]: s["state"] for s in last.get("steps", [])}
        raise AssertionError(f"run {run_id} is {last.get('state')} {steps}, not {state}") from None
    return last


async def step_waiting(http: httpx.AsyncClient, run_id: str, step: str) -> None:
    last: dict[str, Any] = {}

    async def waiting() -> bool:
        nonlocal last
        last = (await http.get(f"/runs/{run_id}")).json()
        return any(s["id"] == step and s["state"] == "waiting" for s in last["steps"])

    try:
        await wait_until(waiting, timeout=30, interval=0.1)
    except AssertionError:
        steps = {s["id"]: s["state"] for s in last.get("steps", [])}
        raise AssertionError(
            f"{step} of {run_id} never waited: {last.get('state')} {steps}"
        ) from None


async def soaking(http: httpx.AsyncClient, run_id: str) -> None:
    """Wait until the LONG flow sits in its 1h `wait` step.

    Cancelling only then keeps these tests about the API: a cancel that lands while an
    activity is finishing is the interpreter's concern (see tests/workflows).
    """

    async def in_soak() -> bool:
        body = (await http.get(f"/runs/{run_id}")).json()
        return any(s["id"] == "soak" and s["state"] == "running" for s in body["steps"])

    await wait_until(in_soak, timeout=30, interval=0.1)


async def test_full_run_over_http(
    temporal_client: Client, db_settings: Settings, hooks: Hooks, tmp_path: Any
) -> None:
    name = unique("web")
    text = FULL.format(name=name, stage="staging", hook=hooks.url, marker=tmp_path / "flaky-once")
    async with api_client(db_settings) as http, new_worker(temporal_client, db_settings):
        await apply(http, text)
        started = await http.post(
            f"/flows/{name}/runs", json={"args": {"word": 42}, "reason": "ship it"}
        )
        assert started.status_code == 202, started.text
        accepted = started.json()
        run_id = accepted["run_id"]
        assert accepted["status_url"] == f"http://shipflow.test/runs/{run_id}"
        assert accepted["ui_url"].endswith(f"/namespaces/default/workflows/{run_id}")

        final = await run_state(http, run_id, "succeeded")
        steps = {s["id"]: s for s in final["steps"]}
        assert list(steps) == ["migrate", "soak", "db-up", "flaky", "tell"]
        assert all(s["state"] == "succeeded" for s in steps.values())
        assert "migrating 42" in steps["migrate"]["output"]["output"]
        assert steps["migrate"]["output"]["exit_code"] == 0
        assert steps["flaky"]["attempts"] == 2
        assert steps["flaky"]["max_attempts"] == 3
        assert steps["db-up"]["output"]["successes"] == 2
        assert steps["soak"]["parent"] == steps["flaky"]["parent"] is not None
        for step in steps.values():
            assert step["started_at"] <= step["ended_at"]
        assert final["args"] == {"word": "42"}
        assert final["reason"] == "ship it"
        assert final["triggered_by"] == "anonymous"
        assert final["trigger"] == "api"
        assert final["ui_url"] == accepted["ui_url"]
        assert final["started_at"] and final["ended_at"]
        assert hooks.received and hooks.received[-1]["message"] == "released 42"

        listed = (await http.get("/runs", params={"flow": name})).json()
        assert [(r["run_id"], r["state"], r["trigger"]) for r in listed] == [
            (run_id, "succeeded", "api")
        ]
        assert listed[0]["args"] == {"word": "42"}

    # The index row was written by the API and kept up to date.
    engine = make_engine(db_settings.sqlalchemy_url())
    try:
        with Session(engine) as session:
            row = session.get(Run, run_id)
            assert row is not None
            assert (row.state, row.triggered_by, row.reason) == (
                "succeeded",
                "anonymous",
                "ship it",
            )
            assert row.ended_at is not None
    finally:
        engine.dispose()


async def test_run_args_are_checked(settings: Settings) -> None:
    name = unique("argy")
    text = f"""
apiVersion: shipflow/v1
name: {name}
stage: dev
args: {{ticket: {{description: required}}, image: "demo:1"}}
steps:
  - migrate: {{id: m, command: [echo, "${{args.ticket}}", "${{args.image}}"]}}
"""
    async with api_client(settings) as http:
        await apply(http, text)
        undeclared = await http.post(
            f"/flows/{name}/runs", json={"args": {"ticket": "T-1", "colour": "red"}}
        )
        assert undeclared.status_code == 422
        assert undeclared.json()["detail"] == [
            {"loc": "args.colour", "msg": "undeclared argument (declared: image, ticket)"}
        ]
        missing = await http.post(f"/flows/{name}/runs", json={"args": {}})
        assert missing.status_code == 422
        assert missing.json()["detail"] == [
            {"loc": "args.ticket", "msg": "required argument not given"}
        ]
        no_body = await http.post(f"/flows/{name}/runs")
        assert no_body.status_code == 422
        assert no_body.json()["detail"][0]["loc"] == "args.ticket"
        wrong_type = await http.post(
            f"/flows/{name}/runs", json={"args": {"ticket": [1]}, "extra": 1}
        )
        assert wrong_type.status_code == 422
        locs = {p["loc"] for p in wrong_type.json()["detail"]}
        assert "extra" in locs
        assert any(loc.startswith("args.ticket") for loc in locs)
        assert (await http.get("/runs", params={"flow": name})).json() == []


async def test_approve_unblocks_and_bad_decisions_are_409(
    temporal_client: Client, settings: Settings
) -> None:
    name = unique("gated")
    async with api_client(settings) as http, new_worker(temporal_client, settings):
        await apply(http, GATED.format(name=name))
        run_id = await start(http, name)
        await step_waiting(http, run_id, "go-live")
        assert (await http.get(f"/runs/{run_id}")).json()["state"] == "waiting"

        not_waiting = await http.post(f"/runs/{run_id}/approve", json={"step": "second"})
        assert not_waiting.status_code == 409
        assert not_waiting.json() == {
            "detail": "step 'second' is not waiting for approval (it is pending)"
        }
        unknown = await http.post(f"/runs/{run_id}/approve", json={"step": "nope"})
        assert unknown.status_code == 409
        assert unknown.json() == {"detail": "unknown step 'nope'"}
        not_approval = await http.post(f"/runs/{run_id}/approve", json={"step": "prepare"})
        assert not_approval.status_code == 409
        assert "not an approval" in not_approval.json()["detail"]
        no_step = await http.post(f"/runs/{run_id}/approve", json={"comment": "x"})
        assert no_step.status_code == 422
        assert no_step.json()["detail"] == [{"loc": "step", "msg": "field required"}]

        approved = await http.post(
            f"/runs/{run_id}/approve", json={"step": "go-live", "comment": "looks good"}
        )
        assert approved.status_code == 200, approved.text
        assert approved.json()["id"] == "go-live"
        await step_waiting(http, run_id, "second")
        again = await http.post(f"/runs/{run_id}/approve", json={"step": "go-live"})
        assert again.status_code == 409
        assert "it is succeeded" in again.json()["detail"]

        assert (
            await http.post(f"/runs/{run_id}/approve", json={"step": "second"})
        ).status_code == 200
        final = await run_state(http, run_id, "succeeded")
        gate = next(s for s in final["steps"] if s["id"] == "go-live")
        assert gate["approval"]["by"] == "anonymous"
        assert gate["approval"]["comment"] == "looks good"
        assert gate["output"]["approved_by"] == "anonymous"

        finished = await http.post(f"/runs/{run_id}/cancel")
        assert finished.status_code == 409
        assert finished.json() == {
            "detail": f"run {run_id!r} has already ended (succeeded): only a run that is "
            "still going can be cancelled, approved or rejected"
        }
        late = await http.post(f"/runs/{run_id}/approve", json={"step": "second"})
        assert late.status_code == 409
        assert late.json() == {
            "detail": f"run {run_id!r} has already ended (succeeded): only a run that is "
            "still going can be cancelled, approved or rejected"
        }
        assert (await http.post("/runs/no-such-run/approve", json={"step": "x"})).status_code == 404
        assert (await http.post("/runs/no-such-run/reject", json={})).status_code == 404


async def test_decision_with_no_worker_is_504_and_applies_later(
    temporal_client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no worker to take it, an approval times out (504) but is not lost."""
    monkeypatch.setattr(runs_routes, "UPDATE_TIMEOUT", timedelta(seconds=1))
    name = unique("noworker")
    async with api_client(settings) as http:
        async with new_worker(temporal_client, settings):
            await apply(http, GATED.format(name=name))
            run_id = await start(http, name)
            await step_waiting(http, run_id, "go-live")
        response = await http.post(f"/runs/{run_id}/approve", json={"step": "go-live"})
        assert response.status_code == 504
        assert "no worker took the decision within 1s" in response.json()["detail"]
        async with new_worker(temporal_client, settings):
            await step_waiting(http, run_id, "second")
            again = await http.post(f"/runs/{run_id}/approve", json={"step": "go-live"})
            assert again.status_code == 409
            assert "it is succeeded" in again.json()["detail"]
            assert (await http.post(f"/runs/{run_id}/cancel")).status_code == 202
            await run_state(http, run_id, "rolled_back")


async def test_reject_fails_the_run_and_compensates(
    temporal_client: Client, settings: Settings
) -> None:
    name = unique("rejected")
    async with api_client(settings) as http, new_worker(temporal_client, settings):
        await apply(http, GATED.format(name=name))
        run_id = await start(http, name)
        await step_waiting(http, run_id, "go-live")
        rejected = await http.post(f"/runs/{run_id}/reject", json={"comment": "not today"})
        assert rejected.status_code == 200, rejected.text
        assert rejected.json()["id"] == "go-live"
        final = await run_state(http, run_id, "rolled_back")
        steps = {s["id"]: s for s in final["steps"]}
        assert steps["go-live"]["state"] == "failed"
        assert steps["go-live"]["error"] == "rejected by anonymous: not today"
        assert steps["prepare"]["state"] == "compensated"
        assert steps["second"]["state"] == steps["after"]["state"] == "skipped"
        assert final["failed_step"] == "go-live"
        listed = (await http.get("/runs", params={"flow": name, "status": "rolled_back"})).json()
        assert [r["run_id"] for r in listed] == [run_id]


async def test_cancel_running_run_then_409(temporal_client: Client, settings: Settings) -> None:
    name = unique("long")
    async with api_client(settings) as http, new_worker(temporal_client, settings):
        await apply(http, LONG.format(name=name))
        run_id = await start(http, name)

        await soaking(http, run_id)
        cancelled = await http.post(f"/runs/{run_id}/cancel")
        assert cancelled.status_code == 202, cancelled.text
        assert cancelled.json()["run_id"] == run_id
        final = await run_state(http, run_id, "cancelled")
        assert {s["id"]: s["state"] for s in final["steps"]} == {
            "first": "succeeded",
            "soak": "cancelled",
        }
        again = await http.post(f"/runs/{run_id}/cancel")
        assert again.status_code == 409
        assert again.json() == {
            "detail": f"run {run_id!r} has already ended (cancelled): only a run that is "
            "still going can be cancelled, approved or rejected"
        }
        assert (await http.post("/runs/no-such-run/cancel")).status_code == 404
        unknown = await http.get("/runs/no-such-run")
        assert unknown.status_code == 404
        assert unknown.json() == {"detail": "no run 'no-such-run'"}


async def test_list_runs_filters(temporal_client: Client, db_settings: Settings) -> None:
    quick, slow = unique("quick"), unique("slow")
    quick_flow = f"""
apiVersion: shipflow/v1
name: {quick}
stage: qa
steps: [{{migrate: {{id: m, command: ["true"]}}}}]
"""
    async with api_client(db_settings) as http, new_worker(temporal_client, db_settings):
        await apply(http, quick_flow)
        await apply(http, LONG.format(name=slow))
        first = await start(http, quick)
        await run_state(http, first, "succeeded")
        second = await start(http, quick)
        await run_state(http, second, "succeeded")
        waiting = await start(http, slow)

        by_flow = (await http.get("/runs", params={"flow": quick})).json()
        assert [r["run_id"] for r in by_flow] == [second, first]  # newest first
        assert [
            r["run_id"]
            for r in (await http.get("/runs", params={"flow": quick, "limit": 1})).json()
        ] == [second]
        assert {r["run_id"] for r in (await http.get("/runs", params={"stage": "qa"})).json()} >= {
            first,
            second,
        }
        assert waiting not in {
            r["run_id"] for r in (await http.get("/runs", params={"stage": "qa"})).json()
        }

        # The slow run's row says pending; listing by `running` reads its real state.
        async def running() -> list[Any]:
            rows = (await http.get("/runs", params={"flow": slow, "status": "running"})).json()
            return [r["run_id"] for r in rows]

        assert await wait_until(running, timeout=20, interval=0.1) == [waiting]
        done = (await http.get("/runs", params={"status": "succeeded", "flow": slow})).json()
        assert done == []
        bad = await http.get("/runs", params={"status": "nope"})
        assert bad.status_code == 422
        assert bad.json()["detail"][0]["loc"] == "status"
        too_many = await http.get("/runs", params={"limit": 0})
        assert too_many.status_code == 422
        assert too_many.json()["detail"][0]["loc"] == "limit"
        await soaking(http, waiting)
        assert (await http.post(f"/runs/{waiting}/cancel")).status_code == 202
        await run_state(http, waiting, "cancelled")


async def test_failed_start_is_recorded(settings: Settings) -> None:
    """A run Temporal refused to start still has its row, marked failed, and reads back."""
    broken = settings.model_copy(update={"temporal_namespace": f"missing-{uuid.uuid4().hex[:6]}"})
    name = unique("nostart")
    async with api_client(broken) as http:
        await apply(http, LONG.format(name=name))
        response = await http.post(f"/flows/{name}/runs", json={})
        assert response.status_code == 503
        assert "could not start the run" in response.json()["detail"]
        (row,) = (await http.get("/runs", params={"flow": name})).json()
        assert row["state"] == "failed"
        assert "could not start the run" in row["error"]
        detail = await http.get(f"/runs/{row['run_id']}")
        assert detail.status_code == 200, detail.text
        assert detail.json()["state"] == "failed"
        assert detail.json()["trigger"] == "api"


# ---------------------------------------------------------------- issue #9: args are data


class Listener:
    """A loopback HTTP server that records every request line, header block and body."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        listener = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self, status: int) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length).decode("utf-8", "replace")
                listener.seen.append(f"{self.requestline}\n{self.headers}\n{body}")
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_GET(self) -> None:
                self._record(200)

            def do_POST(self) -> None:
                self._record(204)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    server = Listener()
    try:
        yield server
    finally:
        server.close()


LEAKY = """
apiVersion: shipflow/v1
name: {name}
stage: dev
args:
  sink: {{default: "127.0.0.1:1", pattern: "[^ ]+"}}   # the author allowed any host here
  note: {{default: "x"}}
steps:
  - migrate: {{id: m, command: [cat, "{printed}"]}}
  - check: {{id: c, http: {{url: "http://${{args.sink}}/check"}}, failure_threshold: 1}}
  - notify: {{id: n, webhook: "http://${{args.sink}}/notify",
             message: "note=${{args.note}} out=${{steps.m.output}}"}}
"""


async def test_the_issue_repro_an_operator_cannot_read_the_workers_secret(
    temporal_client: Client,
    settings: Settings,
    listener: Listener,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Args and step outputs that say `${env.X}` reach the listener as those characters."""
    secret = "postgresql://app:Leaked-Pa55word@db/app"
    monkeypatch.setenv("SHIPFLOW_LEAK_SECRET", secret)
    printed = tmp_path / "printed.txt"
    printed.write_text("${env.SHIPFLOW_LEAK_SECRET}")
    name = unique("leaky")
    leak = f"{listener.address}/leak?db=${{env.SHIPFLOW_LEAK_SECRET}}&q="
    async with api_client(settings) as http, new_worker(temporal_client, settings):
        await apply(http, LEAKY.format(name=name, printed=printed))
        run_id = await start(http, name, args={"sink": leak, "note": "${env.SHIPFLOW_LEAK_SECRET}"})
        final = await run_state(http, run_id, "succeeded")
        assert final["args"]["note"] == "${env.SHIPFLOW_LEAK_SECRET}"
    seen = "\n".join(listener.seen)
    assert len(listener.seen) == 2, listener.seen
    assert listener.seen[0].startswith("GET /leak?db=")
    assert listener.seen[1].startswith("POST /leak?db=")
    assert "SHIPFLOW_LEAK_SECRET" in seen  # the reference's text arrived, as data
    assert secret not in seen and "Leaked-Pa55word" not in seen
    body = listener.seen[1].split("\n\n", 1)[1]
    assert "note=${env.SHIPFLOW_LEAK_SECRET} out=${env.SHIPFLOW_LEAK_SECRET}" in body
    assert "Leaked-Pa55word" not in str(final)


async def test_the_demo_flow_refuses_the_leak_arg(settings: Settings, listener: Listener) -> None:
    demo = (Path(__file__).resolve().parents[2] / "infra" / "flows" / "demo.yaml").read_text()
    async with api_client(settings) as http:
        await apply(http, demo)
        leak = f"{listener.address}/leak?db=${{env.DATABASE_URL}}&q="
        refused = await http.post("/flows/demo/runs", json={"args": {"sink": leak}})
        assert refused.status_code == 422, refused.text
        (problem,) = refused.json()["detail"]
        assert problem["loc"] == "args.sink"
        assert "does not match the pattern" in problem["msg"]
        option = await http.post("/flows/demo/runs", json={"args": {"version": "--help"}})
        assert option.status_code == 422
        assert option.json()["detail"][0]["loc"] == "args.version"
        assert (await http.get("/runs", params={"flow": "demo"})).json() == []
    assert listener.seen == []


CONSTRAINED = """
apiVersion: shipflow/v1
name: {name}
stage: dev
args:
  replicas: {{type: integer, default: 1}}
  colour: {{enum: [red, green], default: red}}
  ticket: {{pattern: "[A-Z]+-[0-9]+"}}
  version: {{default: v1}}
steps:
  - migrate: {{id: m, command: [echo, "${{args.version}}", "${{args.ticket}}", "${{args.replicas}}",
                               "${{args.colour}}"]}}
"""


async def test_run_args_breaking_a_constraint_are_422_naming_the_arg(settings: Settings) -> None:
    name = unique("constrained")
    async with api_client(settings) as http:
        await apply(http, CONSTRAINED.format(name=name))
        cases = [
            ({"ticket": "nope"}, "args.ticket", "does not match the pattern"),
            ({"ticket": "OPS-1", "replicas": "3; reboot"}, "args.replicas", "not an integer"),
            ({"ticket": "OPS-1", "colour": "blue"}, "args.colour", "not one of: red, green"),
            ({"ticket": "OPS-1", "version": "--force"}, "args.version", "starts with '-'"),
        ]
        for args, loc, message in cases:
            response = await http.post(f"/flows/{name}/runs", json={"args": args})
            assert response.status_code == 422, (args, response.text)
            (problem,) = response.json()["detail"]
            assert problem["loc"] == loc and message in problem["msg"], problem
        assert (await http.get("/runs", params={"flow": name})).json() == []
