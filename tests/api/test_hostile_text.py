"""Text no database can store (NUL, unpaired surrogates) answers 4xx naming the field.

Found by the schemathesis run: on PostgreSQL each of these was a 500.
"""

from __future__ import annotations

import json
import uuid

from pydantic import SecretStr

from shipflow.activities.core.settings import Settings
from shipflow.api.hostile import find_bad_text
from tests.api.conftest import api_client
from tests.triggers.payloads import gitlab_headers, gitlab_push

FLOW = """
apiVersion: shipflow/v1
name: {name}
stage: {name}
args: {{image: {{default: "app:1"}}}}
steps:
  - wait: {{id: soak, duration: 1h}}
"""


def test_find_bad_text_names_the_path() -> None:
    assert find_bad_text({"args": {"a": "ok", "b": ["x", "y\x00"]}}) == (
        "args.b[1]",
        "contains a NUL character",
    )
    assert find_bad_text({"reason": "\ud800"}) == (
        "reason",
        "contains an unpaired surrogate (not valid Unicode)",
    )
    assert find_bad_text({"ok": ["fine", 1, None, {"deep": "😀"}]}) is None


async def test_unstorable_text_is_a_4xx_on_postgres(settings: Settings, pg_url: str) -> None:
    pg = settings.model_copy(
        update={"database_url": SecretStr(pg_url), "gitlab_token": SecretStr("t")}
    )
    name = f"text-{uuid.uuid4().hex[:6]}"
    async with api_client(pg) as http:
        applied = await http.post(
            "/flows", content=FLOW.format(name=name), headers={"content-type": "application/yaml"}
        )
        assert applied.status_code == 201, applied.text

        nul = await http.post(f"/flows/{name}/runs", json={"reason": "a\x00b"})
        assert nul.status_code == 422, nul.text
        assert nul.json() == {"detail": [{"loc": "reason", "msg": "contains a NUL character"}]}
        surrogate = await http.post(
            f"/flows/{name}/runs",
            content=b'{"args": {"image": "\\ud800"}}',
            headers={"content-type": "application/json"},
        )
        assert surrogate.status_code == 422, surrogate.text
        assert surrogate.json()["detail"][0]["loc"] == "args.image"
        assert (await http.get("/runs", params={"flow": "a\x00"})).status_code == 400
        assert (await http.get("/flows/a%00b")).status_code == 400

        # A YAML flow can carry a surrogate escape: the database refuses it, the API says 422.
        yaml_surrogate = FLOW.format(name=f"{name}-s").replace('"app:1"', '"\\ud800"')
        stored = await http.post(
            "/flows", content=yaml_surrogate, headers={"content-type": "application/yaml"}
        )
        assert stored.status_code == 422, stored.text
        assert stored.json()["detail"][0]["loc"] == "body"

        payload = gitlab_push(repo="org/app")
        payload["project"]["path_with_namespace"] = "org/\x00app"
        body = json.dumps(payload).encode()
        hook = await http.post("/hooks/gitlab", content=body, headers=gitlab_headers("t"))
        assert hook.status_code == 400, hook.text
        assert "project.path_with_namespace" in hook.json()["detail"]
        assert "NUL" in hook.json()["detail"]
