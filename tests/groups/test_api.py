"""`/groups` through the real app: roles, bad input, secret values never shown, audit,
and a flow's group selection checked at apply time."""

from __future__ import annotations

import json
from typing import Any

import pytest

from shipflow.activities.core import group_crypto
from shipflow.activities.core.settings import Settings
from shipflow.api.app import create_app
from tests.api.conftest import api_client, bearer, token_settings

SECRET = "pa55-w0rd-never-shown"


def _flow(name: str, extra: str = "", service_extra: str = "", migrate_extra: str = "") -> str:
    return f"""
apiVersion: shipflow/v1
name: {name}
stage: staging
{extra}
target:
  kind: local
  services:
    web: {{command: [python, -c, "1"], port: 18999{service_extra}}}
steps:
  - migrate: {{id: m, command: [python, -c, "1"]{migrate_extra}}}
"""


async def test_roles_values_and_audit(settings: Settings) -> None:
    group_crypto.ensure_groups_key(group_crypto.key_file(settings))
    async with api_client(token_settings(settings)) as http:
        made = await http.put(
            "/groups/db",
            json={"kind": "secret", "values": {"DB_PASSWORD": SECRET}, "tags": ["web"]},
            headers=bearer("admin"),
        )
        assert made.status_code == 201, made.text
        assert made.json()["keys"] == ["DB_PASSWORD"] and made.json()["values"] is None
        cfg = await http.put(
            "/groups/flags",
            json={"kind": "config", "values": {"MODE": "fast"}},
            headers=bearer("admin"),
        )
        assert cfg.status_code == 201
        for role in ("viewer", "operator"):
            denied = await http.put("/groups/db", json={"values": {"X": "1"}}, headers=bearer(role))
            assert denied.status_code == 403
            denied = await http.post(
                "/groups/db/reveal", json={"key": "DB_PASSWORD"}, headers=bearer(role)
            )
            assert denied.status_code == 403 and SECRET not in denied.text
        seen: list[str] = []
        for role in ("viewer", "operator", "admin"):
            for path in ("/groups", "/groups/db", "/groups/db/versions", "/groups/db?version=1"):
                answer = await http.get(path, headers=bearer(role))
                assert answer.status_code == 200, answer.text
                seen.append(answer.text)
            flags = (await http.get("/groups/flags", headers=bearer(role))).json()
            assert flags["values"] == {"MODE": "fast"}  # config values are for everyone
        assert all(SECRET not in text and "DB_PASSWORD" in text for text in seen)
        assert (await http.get("/groups/db/audit", headers=bearer("viewer"))).status_code == 403
        revealed = await http.post(
            "/groups/db/reveal", json={"key": "DB_PASSWORD"}, headers=bearer("admin")
        )
        assert revealed.json() == {
            "group": "db",
            "version": 1,
            "key": "DB_PASSWORD",
            "value": SECRET,
        }
        audit = await http.get("/groups/db/audit", headers=bearer("operator"))
        assert [(a["action"], a["keys"], a["actor"]) for a in audit.json()] == [
            ("reveal", ["DB_PASSWORD"], "admin-bot"),
            ("create", ["DB_PASSWORD"], "admin-bot"),
        ]
        assert SECRET not in audit.text
        resealed = await http.post("/groups/reseal", headers=bearer("admin"))
        assert resealed.json() == {"resealed": 0}
        gone = await http.delete("/groups/flags", headers=bearer("admin"))
        assert gone.json()["deleted"] is True
        assert [
            g["name"] for g in (await http.get("/groups", headers=bearer("viewer"))).json()
        ] == ["db"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"kind": "secret", "values": {"1BAD": "x"}}, "values.1BAD"),
        ({"kind": "secret", "values": {"BIG": "x" * 40000}}, "values.BIG"),
        ({"kind": "other", "values": {}}, "kind"),
        ({"kind": "config", "tags": ["Not Ok"]}, "tags[0]"),
        ({"kind": "config", "stages": ["UP"]}, "stages[0]"),
        ({"kind": "config", "values": {"A": 1}}, "values.A"),
        ({"kind": "config", "surprise": 1}, "surprise"),
        ({"values": {"A": "1"}}, "kind"),
        ({"kind": "config", "unset": ["NOPE"]}, "unset.NOPE"),
    ],
)
async def test_bad_input_is_422_naming_the_field(
    settings: Settings, body: dict[str, Any], field: str
) -> None:
    group_crypto.ensure_groups_key(group_crypto.key_file(settings))
    async with api_client(settings) as http:
        answer = await http.put("/groups/g1", json=body)
        assert answer.status_code == 422, answer.text
        assert field in json.dumps(answer.json()["detail"])
        assert (await http.get("/groups/g1")).status_code == 404  # nothing half-applied
        bad_name = await http.put("/groups/Bad_Name", json={"kind": "config"})
        assert bad_name.status_code == 422 and "name" in bad_name.text


async def test_a_group_body_over_one_mib_is_413_before_it_is_read(settings: Settings) -> None:
    group_crypto.ensure_groups_key(group_crypto.key_file(settings))
    # Many keys each under the 32 KiB value cap: only the body's size is wrong.
    big = {"kind": "config", "values": {f"K{i}": "x" * 30000 for i in range(40)}}
    raw = json.dumps(big).encode()
    assert len(raw) > 1024 * 1024

    async def chunked() -> Any:  # no Content-Length: refused as it passes the limit
        for start in range(0, len(raw), 64 * 1024):
            yield raw[start : start + 64 * 1024]

    async with api_client(token_settings(settings)) as http:
        declared = await http.put("/groups/huge", content=raw, headers=bearer("admin"))
        assert declared.status_code == 413, declared.text
        assert "at most 1 MiB" in declared.json()["detail"]
        streamed = await http.put(
            "/groups/huge",
            content=chunked(),
            headers={**bearer("admin"), "Content-Type": "application/json"},
        )
        assert streamed.status_code == 413 and "1 MiB" in streamed.text
        assert "content-length" not in streamed.request.headers
        bad = await http.put(
            "/groups/huge", content=b"{}", headers={**bearer("admin"), "Content-Length": "x"}
        )
        assert bad.status_code == 400 and "Content-Length" in bad.text
        assert (await http.get("/groups/huge", headers=bearer("admin"))).status_code == 404
        # Within the limit it is an ordinary write.
        small = {"kind": "config", "values": {f"K{i}": "x" * 30000 for i in range(30)}}
        made = await http.put("/groups/huge", json=small, headers=bearer("admin"))
        assert made.status_code == 201, made.text
        # Other routes are not capped by it (a flow has its own limit).
        assert (await http.get("/groups", headers=bearer("viewer"))).status_code == 200


async def test_missing_key(settings: Settings) -> None:
    async with api_client(settings) as http:
        answer = await http.put("/groups/db", json={"kind": "secret", "values": {"P": "x"}})
        assert answer.status_code == 409
        assert "SHIPFLOW_GROUPS_KEY_FILE" in answer.json()["detail"]
    broken = settings.model_copy(update={"groups_key_file": settings.data_dir / "absent"})
    with pytest.raises(ValueError, match="does not exist"):
        create_app(broken)


async def test_apply_checks_group_selection(settings: Settings) -> None:
    group_crypto.ensure_groups_key(group_crypto.key_file(settings))
    async with api_client(settings) as http:
        yaml = {"Content-Type": "text/yaml"}
        await http.put("/groups/a", json={"kind": "config", "values": {"X": "a"}, "tags": ["t"]})
        await http.put("/groups/b", json={"kind": "config", "values": {"X": "b"}, "tags": ["t"]})
        await http.put(
            "/groups/prod", json={"kind": "secret", "values": {"P": "1"}, "stages": ["production"]}
        )
        cases = [
            (
                _flow("f1", service_extra=", env_from: [ghost]"),
                "target.services.web.env_from[0]",
                "no group 'ghost'",
            ),
            (
                _flow("f2", "tags: [t]"),
                "target.services.web",
                "key X is in both group 'a' and group 'b'",
            ),
            (
                _flow("f3", migrate_extra=", env_from: [prod]"),
                "steps[0].migrate.env_from[0]",
                "restricted to stages production",
            ),
            (_flow("f4", "env_order: [ghost]"), "env_order[0]", "no group 'ghost'"),
        ]
        for text, loc, msg in cases:
            answer = await http.post("/flows", content=text, headers=yaml)
            assert answer.status_code == 422, answer.text
            problems = answer.json()["detail"]
            assert any(p["loc"].startswith(loc) and msg in p["msg"] for p in problems), problems
        k8s = """
apiVersion: shipflow/v1
name: f6
stage: staging
tags: [t]
target: {kind: kubernetes, namespace: web}
steps:
  - deploy: {id: api, service: api, image: "app:1"}
"""
        answer = await http.post("/flows", content=k8s, headers=yaml)
        assert answer.status_code == 422 and "key X is in both" in answer.text
        assert answer.json()["detail"][0]["loc"].startswith("steps[0].deploy")
        fixed = k8s.replace("tags: [t]", "tags: [t]\nenv_order: [a, b]")
        assert (await http.post("/flows", content=fixed, headers=yaml)).status_code == 201
        ok = await http.post(
            "/flows", content=_flow("f5", "tags: [t]\nenv_order: [a, b]"), headers=yaml
        )
        assert ok.status_code == 201, ok.text
