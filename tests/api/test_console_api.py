"""The JSON the console reads: `/stages`, `/runs/{id}/plan`, `/me`, and the HTML shell that a
browser gets for a console address, on a real worker and Temporal."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlmodel import Session
from temporalio.client import Client

from shipflow.activities.core.db import make_engine
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import ReleaseRecord
from tests.api.conftest import api_client, bearer, token_settings
from tests.api.test_runs import apply, run_state, start, step_waiting
from tests.helpers import new_worker, wait_until

FLOW = """
apiVersion: shipflow/v1
name: {name}
stage: {stage}
args:
  version: {{default: v1, pattern: "v[0-9]+", description: "the build"}}
steps:
  - migrate: {{id: prepare, command: [sh, -c, "echo preparing ${{args.version}}"],
              env: {{DSN: "${{env.CONSOLE_TEST_DSN}}"}}}}
  - parallel:
      - wait: {{id: a, duration: 10ms}}
      - sequence:
          - wait: {{id: b, duration: 10ms}}
  - approve: {{id: go-live, timeout: 2h}}
"""


async def test_stages_plan_and_me(
    temporal_client: Client, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONSOLE_TEST_DSN", "postgresql://app:hunter2@db/app")
    secured = token_settings(settings)
    name, stage = f"con-{uuid.uuid4().hex[:6]}", f"st-{uuid.uuid4().hex[:6]}"
    async with api_client(secured, headers=bearer("admin")) as http, new_worker(temporal_client, secured):
        await apply(http, FLOW.format(name=name, stage=stage))
        done = await start(http, name, args={"version": "v1"})
        await step_waiting(http, done, "go-live")
        assert (await http.post(f"/runs/{done}/approve", json={"step": "go-live"})).status_code == 200
        await run_state(http, done, "succeeded")
        engine = make_engine(secured.sqlalchemy_url())
        with Session(engine) as session:  # what a deploy step records
            session.add(ReleaseRecord(stage=stage, service="web", image="app:1", run_id=done, flow=name, step_id="x"))
            session.add(ReleaseRecord(stage=stage, service="web", image="app:2", previous_image="app:1", run_id=done, flow=name, step_id="x"))
            session.commit()
        engine.dispose()
        live = await start(http, name, args={"version": "v2"})
        await step_waiting(http, live, "go-live")

        views = (await http.get("/stages", headers=bearer("viewer"))).json()
        view = next(v for v in views if v["stage"] == stage)
        assert [(s["service"], s["image"], s["run_id"], s["triggered_by"]) for s in view["services"]] == [
            ("web", "app:2", done, "admin-bot")
        ]
        assert view["flows"][0]["name"] == name
        assert view["flows"][0]["args"]["version"]["pattern"] == "v[0-9]+"
        (running,) = view["live"]
        assert running["run_id"] == live and running["state"] == "waiting"
        assert running["current"] == ["go-live"]
        assert (running["steps_done"], running["steps_total"]) == (3, 4)
        assert [r["run_id"] for r in view["recent"]] == [live, done]
        assert (await http.get("/stages", params={"recent": 0})).status_code == 422

        plan = (await http.get(f"/runs/{done}/plan", headers=bearer("viewer"))).json()
        tree: dict[str, Any] = plan["tree"]
        assert tree["node"] == "sequence"
        assert [c["node"] for c in tree["children"]] == ["action", "parallel", "action"]
        lanes = tree["children"][1]["children"]
        assert lanes[0] == {"node": "action", "id": "a", "kind": "wait"}
        assert lanes[1]["node"] == "sequence" and lanes[1]["children"][0]["id"] == "b"
        prepare = plan["steps"]["prepare"]
        assert prepare["inputs"]["command"] == ["sh", "-c", "echo preparing v1"]
        assert prepare["inputs"]["env"] == {"DSN": "${env.CONSOLE_TEST_DSN}"}  # never a value
        assert plan["steps"]["go-live"]["timeout_s"] == 7200
        assert (await http.get("/runs/nope/plan")).status_code == 404

        me = await http.get("/me", headers=bearer("operator"))
        assert me.json() == {"name": "operator-bot", "role": "operator"}
        anonymous = await http.get("/me", headers={"Authorization": ""})
        assert anonymous.status_code == 401

        # A browser opening a run's address gets the console; its scripts read JSON.
        page = await http.get(f"/runs/{done}", headers={"Accept": "text/html", "Authorization": ""})
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'self'" in page.headers["content-security-policy"]
        data = await http.get(f"/runs/{done}", headers={"Accept": "text/html"})  # a token: JSON
        assert data.json()["run_id"] == done

        await http.post(f"/runs/{live}/cancel")

        async def cancelled() -> bool:
            return (await http.get(f"/runs/{live}")).json()["state"] in ("cancelled", "rolled_back")

        await wait_until(cancelled, timeout=30)
