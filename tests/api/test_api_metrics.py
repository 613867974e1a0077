"""What the API counts on `/metrics`: runs it started, by trigger, and git webhook deliveries
by result (accepted, unauthorized, invalid)."""

from __future__ import annotations

import uuid

from pydantic import SecretStr

from shipflow.activities.core.settings import Settings
from tests.api.conftest import api_client
from tests.triggers.payloads import encode, github_headers


async def test_webhook_deliveries_by_result_and_runs_by_trigger(settings: Settings) -> None:
    name = f"hooked-{uuid.uuid4().hex[:6]}"
    flow = (
        f"apiVersion: shipflow/v1\nname: {name}\nstage: dev\n"
        "steps: [{wait: {id: w, duration: 1h}}]\n"
    )
    secret = "s3cret-hook"
    async with api_client(settings.model_copy(update={"github_secret": SecretStr(secret)})) as http:
        assert (await http.post("/flows", content=flow)).status_code == 201
        run = await http.post(f"/flows/{name}/runs", json={})
        assert run.status_code == 202
        assert (await http.post(f"/runs/{run.json()['run_id']}/cancel")).status_code == 202
        body = encode({"zen": "hi"})
        ping = await http.post("/hooks/github", content=body, headers=github_headers(body, secret, event="ping"))
        assert ping.status_code < 300
        forged = await http.post("/hooks/github", content=body, headers=github_headers(body, "wrong"))
        assert forged.status_code == 401
        garbage = b"{not json"
        bad = await http.post("/hooks/github", content=garbage, headers=github_headers(garbage, secret))
        assert bad.status_code == 400
        text = (await http.get("/metrics")).text
    assert f'shipflow_runs_started_total{{flow="{name}",trigger="api"}} 1.0' in text
    for result in ("accepted", "unauthorized", "invalid"):
        line = f'shipflow_webhook_deliveries_total{{provider="github",result="{result}"}} 1.0'
        assert line in text, text
    assert 'result="error"' not in text
