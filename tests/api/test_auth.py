"""Bearer tokens and roles: every route x every kind of caller, and the token helpers."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from fastapi.routing import APIRoute
from pydantic import SecretStr

from shipflow.activities.core.settings import Settings
from shipflow.api.app import create_app
from shipflow.api.auth import (
    Authenticator,
    AuthError,
    Role,
    TokenEntry,
    hash_token,
    load_tokens,
    new_token,
)
from tests.api.conftest import TOKENS, api_client, bearer, token_settings

RANK = {"viewer": 0, "operator": 1, "admin": 2}
CALLERS = ["none", "bad", "viewer", "operator", "admin"]


def flow_text(name: str) -> str:
    return f"""
apiVersion: shipflow/v1
name: {name}
stage: dev
steps:
  - wait: {{id: soak, duration: 1h}}
"""


async def test_every_route_for_every_role(settings: Settings) -> None:
    """No worker runs here: started runs stay pending, which every route can still serve."""
    secured = token_settings(settings)
    name = f"roles-{uuid.uuid4().hex[:6]}"
    async with api_client(secured) as http:
        created = await http.post(
            "/flows",
            content=flow_text(name),
            headers={"Content-Type": "text/yaml", **bearer("admin")},
        )
        assert created.status_code == 201, created.text
        started = await http.post(f"/flows/{name}/runs", json={}, headers=bearer("admin"))
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        made = await http.put(
            "/groups/cfg", json={"kind": "config", "values": {"A": "1"}}, headers=bearer("admin")
        )
        assert made.status_code == 201, made.text

        # (method, path, body, least role or None when open, status when allowed)
        routes: list[tuple[str, str, Any, str | None, int]] = [
            ("GET", "/flows", None, "viewer", 200),
            ("GET", f"/flows/{name}", None, "viewer", 200),
            ("POST", "/flows", flow_text(name), "admin", 200),
            ("POST", f"/flows/{name}/runs", {"reason": "role table"}, "operator", 202),
            ("GET", "/runs", None, "viewer", 200),
            ("GET", f"/runs/{run_id}", None, "viewer", 200),
            ("POST", f"/runs/{run_id}/cancel", None, "operator", 202),
            ("POST", "/runs/no-such-run/terminate", None, "admin", 404),
            ("POST", "/runs/no-such-run/approve", {"step": "x"}, "operator", 404),
            ("POST", "/runs/no-such-run/reject", {}, "operator", 404),
            ("GET", f"/flows/{name}/schedules", None, "viewer", 200),
            ("POST", f"/flows/{name}/schedules/nope/pause", {}, "admin", 404),
            ("POST", f"/flows/{name}/schedules/nope/unpause", {}, "admin", 404),
            ("POST", f"/flows/{name}/schedules/nope/trigger", None, "admin", 404),
            ("POST", "/runs/no-such-run/rollback", {}, "operator", 404),
            ("POST", "/runs/no-such-run/retry", None, "operator", 404),
            # No local runtime runs here; the run is unknown to Temporal either way: 404.
            ("POST", "/runs/no-such-run/promote", {}, "operator", 404),
            ("GET", f"/runs/{run_id}/steps/soak/logs", None, "viewer", 200),
            ("GET", f"/runs/{run_id}/plan", None, "viewer", 200),
            ("GET", "/stages", None, "viewer", 200),
            ("GET", "/me", None, "viewer", 200),
            ("GET", "/groups", None, "viewer", 200),
            ("GET", "/groups/cfg", None, "viewer", 200),
            ("GET", "/groups/cfg/versions", None, "viewer", 200),
            ("GET", "/groups/cfg/audit", None, "operator", 200),
            ("PUT", "/groups/cfg", {"values": {"A": "2"}}, "admin", 200),
            ("DELETE", "/groups/no-such-group", None, "admin", 404),
            ("POST", "/groups/cfg/reveal", {"key": "A"}, "admin", 200),
            # No groups key in this data dir: 409 naming the setting.
            ("POST", "/groups/reseal", None, "admin", 409),
            ("GET", "/runs/no-such-run/steps/soak/logs/stream", None, "viewer", 404),
            # Webhooks authenticate by signature, not by token; no secret here: 503.
            ("POST", "/hooks/github", {}, None, 503),
            ("POST", "/hooks/gitlab", {}, None, 503),
            ("GET", "/healthz", None, None, 200),
            ("GET", "/metrics", None, None, 200),
            ("GET", "/", None, None, 200),
            ("POST", "/codec/decode", {"payloads": []}, "viewer", 200),
            ("POST", "/codec/encode", {"payloads": []}, "viewer", 200),
            ("OPTIONS", "/codec/decode", None, None, 204),  # CORS preflight: no credentials
        ]
        # The table covers every route the app serves (a new route must join it).
        app_routes = [r for r in create_app(secured).routes if isinstance(r, APIRoute)]
        for route in app_routes:
            covered = [
                path
                for method, path, *_ in routes
                if method in route.methods and route.path_regex.match(path.split("?")[0])
            ]
            assert covered, f"{route.methods} {route.path} is missing from the role table"
        seen: list[tuple[str, str, str, int]] = []
        for method, path, body, least, allowed in routes:
            for caller in CALLERS:
                headers = {}
                if caller == "bad":
                    headers = {"Authorization": "Bearer not-a-real-token"}
                elif caller != "none":
                    headers = bearer(caller)
                kwargs: dict[str, Any] = {"headers": headers}
                if isinstance(body, str):
                    kwargs["content"] = body
                    headers["Content-Type"] = "text/yaml"
                elif body is not None:
                    kwargs["json"] = body
                response = await http.request(method, path, **kwargs)
                if least is None:
                    expected = allowed
                elif caller in ("none", "bad"):
                    expected = 401
                elif RANK[caller] < RANK[least]:
                    expected = 403
                else:
                    expected = allowed
                seen.append((method, path, caller, response.status_code))
                assert response.status_code == expected, (method, path, caller, response.text)
                if expected == 401:
                    assert response.headers["WWW-Authenticate"] == "Bearer"
                    assert set(response.json()) == {"detail"}
                if expected == 403:
                    assert f"needs the {least} role" in response.json()["detail"]
                for token in TOKENS.values():
                    assert token not in response.text
                assert "not-a-real-token" not in response.text
        assert len(seen) == len(routes) * len(CALLERS)

        runs = (await http.get("/runs", params={"flow": name}, headers=bearer("viewer"))).json()
        by = {r["triggered_by"] for r in runs}
        assert by == {"admin-bot", "operator-bot"}
        basic = await http.get("/flows", headers={"Authorization": "Basic dXNlcjpwdw=="})
        assert basic.status_code == 401
        metrics = (await http.get("/metrics")).text
        for token in TOKENS.values():
            assert token not in metrics
            assert hash_token(token) not in metrics


def test_token_helpers() -> None:
    token = new_token()
    assert token.startswith("sf_") and len(token) > 40
    assert new_token() != token
    digest = hash_token(token)
    assert len(digest) == 64 and token not in digest
    auth = Authenticator([TokenEntry(name="ci", role=Role.OPERATOR, sha256=digest)])
    caller = auth.authenticate(f"Bearer {token}")
    assert (caller.name, caller.role) == ("ci", Role.OPERATOR)
    assert caller.role.allows(Role.VIEWER) and not caller.role.allows(Role.ADMIN)
    for header in (None, "", "Bearer", "Bearer wrong", f"Token {token}"):
        with pytest.raises(AuthError) as raised:
            auth.authenticate(header)
        assert token not in str(raised.value)
    assert Authenticator([]).authenticate(None).role == Role.ADMIN


def test_malformed_token_settings_fail_at_start(settings: Settings) -> None:
    secret = hash_token("do-not-print-me")
    bad_role = json.dumps([{"name": "x", "role": "root", "sha256": secret}])
    with pytest.raises(ValueError, match="malformed entry") as raised:
        create_app(settings.model_copy(update={"tokens": SecretStr(bad_role)}))
    assert secret not in str(raised.value)
    with pytest.raises(ValueError, match="not valid JSON"):
        create_app(settings.model_copy(update={"tokens": SecretStr("[{")}))
    assert load_tokens(settings.model_copy(update={"tokens": SecretStr("  ")})) == []
