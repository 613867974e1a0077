"""`POST /flows` refuses exactly what `shipflow flow validate` reports, with the same positions."""

from __future__ import annotations

import json

from shipflow.activities.core.settings import Settings
from shipflow.workflows.validation import validate_text
from tests.api.conftest import api_client
from tests.authoring.test_corpus import FLOWS


async def test_every_corpus_flow_gets_the_same_problems_from_the_api(settings: Settings) -> None:
    async with api_client(settings) as http:
        for path in FLOWS:
            text = path.read_text()
            response = await http.post(
                "/flows", content=text, headers={"Content-Type": "application/yaml"}
            )
            assert response.status_code == 422, (path.name, response.text)
            expected = [p.as_detail() for p in validate_text(text).problems]
            assert response.json()["detail"] == expected, path.name
            assert all("line" in item for item in expected), path.name
        assert (await http.get("/flows")).json() == []


async def test_a_json_body_gets_positions_too(settings: Settings) -> None:
    flow = {
        "apiVersion": "shipflow/v1",
        "name": "json-flow",
        "stage": "dev",
        "steps": [{"wiat": {"id": "soak", "duration": "1s"}}],
    }
    text = json.dumps(flow, indent=2)
    async with api_client(settings) as http:
        response = await http.post(
            "/flows", content=text, headers={"Content-Type": "application/json"}
        )
    assert response.status_code == 422, response.text
    (problem,) = response.json()["detail"]
    assert problem["loc"] == "steps[0]"
    assert problem["suggestion"] == "wait"
    assert (problem["line"], problem["column"]) == (6, 5)
