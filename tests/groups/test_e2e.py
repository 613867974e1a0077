"""Groups end to end on the embedded stack (Temporal, runtime, worker, API as processes).

One test that checks several things on one stack (the stack is the expensive part):
a config change rolls out (same image) with zero failed requests and the service sees the
new value; a secret change rolls out; a group restricted to another stage never reaches
this one; a rollback restores the group versions the earlier run used (and its dry run
lists them); and the secret values appear nowhere: not in API answers, the stack's logs,
Temporal history (raw, and decoded with the payload keys), the database file or the
runtime's state file.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from pathlib import Path
from typing import Any

import httpx

from shipflow.activities.core.client import connect
from shipflow.activities.core.settings import Settings
from tests.helpers import decoded_history_text, free_ports, stack_on_free_ports, wait_until
from tests.local.support import Load

SECRET_1 = "first-Secret-" + uuid.uuid4().hex
SECRET_2 = "second-Secret-" + uuid.uuid4().hex
APP = Path(__file__).with_name("envapp.py")

FLOW = """\
apiVersion: shipflow/v1
name: groups-e2e
stage: e2e-staging
tags: [web-e2e]
args: {image: {default: "v1"}}
target:
  kind: local
  services:
    web:
      command: [python, "APP", --port, "{port}"]
      port: FRONT
      env_from: [app-secret]
      probes:
        readiness: {http: {path: /healthz}, period: 100ms, failure_threshold: 50}
      termination_grace: 5s
steps:
  - migrate:
      id: check-env
      env_from: [app-secret]
      command: [python, -c, "import os, hashlib; print('sha', hashlib.sha256(os.environ['DB_PASSWORD'].encode()).hexdigest()[:16], os.environ['MODE'], 'echo=' + os.environ['DB_PASSWORD'])"]
  - deploy: {id: web, service: web, image: "${args.image}"}
"""


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()[:16]


async def test_groups_roll_out_roll_back_and_never_leak(tmp_path: Path) -> None:
    stack = stack_on_free_ports(tmp_path / "stack", queue="groups", say=lambda _line: None)
    [front] = free_ports(1)
    answers: list[str] = []
    await asyncio.to_thread(stack.start)
    try:
        assert stack.groups_key_file.stat().st_mode & 0o077 == 0  # generated, 0600
        async with httpx.AsyncClient(
            base_url=stack.api_url,
            headers={"Authorization": f"Bearer {stack.token}"},
            timeout=30,
        ) as api:

            async def call(method: str, path: str, **kwargs: Any) -> Any:
                answer = await api.request(method, path, **kwargs)
                answers.append(answer.text)
                assert answer.status_code < 300, (method, path, answer.text)
                return answer.json()

            async def run(path: str, **kwargs: Any) -> dict[str, Any]:
                started = await call("POST", path, **kwargs)
                run_id = started["run_id"]

                async def final() -> bool:
                    status = await call("GET", f"/runs/{run_id}")
                    return status["state"] not in ("pending", "queued", "running")

                await wait_until(final, timeout=60, interval=0.2)
                status: dict[str, Any] = await call("GET", f"/runs/{run_id}")
                assert status["state"] == "succeeded", status
                return status

            def step(status: dict[str, Any], step_id: str) -> dict[str, Any]:
                (found,) = [s for s in status["steps"] if s["id"] == step_id]
                return found

            async def config() -> dict[str, Any]:
                async with httpx.AsyncClient() as plain:
                    answer = await plain.get(f"http://127.0.0.1:{front}/config")
                    return dict(answer.json())

            await call(
                "PUT",
                "/groups/app-config",
                json={"kind": "config", "values": {"MODE": "one"}, "tags": ["web-e2e"]},
            )
            await call(
                "PUT",
                "/groups/app-secret",
                json={"kind": "secret", "values": {"DB_PASSWORD": SECRET_1}},
            )
            await call(
                "PUT",
                "/groups/prod-only",
                json={
                    "kind": "config",
                    "values": {"PROD_ONLY": "yes"},
                    "tags": ["web-e2e"],
                    "stages": ["production"],
                },
            )
            text = FLOW.replace("APP", str(APP)).replace("FRONT", str(front))
            await call("POST", "/flows", content=text, headers={"Content-Type": "text/yaml"})

            first = await run("/flows/groups-e2e/runs", json={"args": {"image": "v1"}})
            web = step(first, "web")["output"]
            assert web["groups"] == {"app-config": 1, "app-secret": 1}
            assert step(first, "check-env")["output"]["groups"] == web["groups"]
            printed = step(first, "check-env")["output"]["output"]
            assert f"sha {sha(SECRET_1)} one echo=***" in printed  # it printed the secret
            jobs = [p for p in (stack.data_dir / "jobs").rglob("output.log")]
            assert jobs and all(b"echo=***" in p.read_bytes() for p in jobs)
            # The service printed it too: masked in its instance log (issue #16).
            instance_logs = list((stack.data_dir / "runtime" / "logs").glob("web-*.log"))
            assert instance_logs and all(b"echo=***" in p.read_bytes() for p in instance_logs)
            seen = await config()
            assert (seen["mode"], seen["secret_sha"], seen["prod_only"]) == (
                "one",
                sha(SECRET_1),
                None,
            )

            # A config change, same image: a real, health-probed rollout under load.
            load = Load(front)
            load.start(clients=3)
            await call("PUT", "/groups/app-config", json={"values": {"MODE": "two"}})
            changed_at = asyncio.get_running_loop().time()
            second = await run("/flows/groups-e2e/runs", json={"args": {"image": "v1"}})
            await wait_until(lambda: "two" in load.versions_after(changed_at), timeout=10)
            await load.stop()
            assert load.failures() == [], load.failures()[:5]
            assert step(second, "web")["output"]["groups"] == {"app-config": 2, "app-secret": 1}
            after = await config()
            assert after["mode"] == "two" and after["pid"] != seen["pid"]

            # A secret change rolls out and the service sees it.
            await call("PUT", "/groups/app-secret", json={"values": {"DB_PASSWORD": SECRET_2}})
            third = await run("/flows/groups-e2e/runs", json={"args": {"image": "v1"}})
            assert step(third, "web")["output"]["groups"] == {"app-config": 2, "app-secret": 2}
            assert (await config())["secret_sha"] == sha(SECRET_2)

            # Rollback to the first run: its group versions come back with its image.
            first_id = first["run_id"]
            dry = await call("POST", f"/runs/{first_id}/rollback", params={"dry_run": "true"})
            (planned,) = dry["plan"]
            assert planned["groups"] == {"app-config": 1, "app-secret": 1}
            assert "app-config v1, app-secret v1" in planned["summary"]
            back = await run(f"/runs/{first_id}/rollback", json={})
            assert step(back, "rollback-web")["output"]["groups"] == {
                "app-config": 1,
                "app-secret": 1,
            }
            restored = await config()
            assert (restored["mode"], restored["secret_sha"]) == ("one", sha(SECRET_1))

            # Each secret read by the worker is in the group's audit trail: which keys
            # (never a value) went to which run's step; config groups are not recorded.
            trail = await call("GET", "/groups/app-secret/audit")
            injected = {(e["version"], e["actor"]) for e in trail if e["action"] == "inject"}
            assert {
                (1, f"run {first_id} step check-env (migrate)"),
                (1, f"run {first_id} step web (deploy)"),
                (1, f"run {second['run_id']} step web (deploy)"),
                (2, f"run {third['run_id']} step web (deploy)"),
                (1, f"run {back['run_id']} step rollback-web (deploy)"),
            } <= injected, injected
            assert all(e["keys"] == ["DB_PASSWORD"] for e in trail if e["action"] == "inject")
            config_trail = await call("GET", "/groups/app-config/audit")
            assert not [e for e in config_trail if e["action"] == "inject"]

            for run_id in (first_id, second["run_id"], third["run_id"], back["run_id"]):
                for step_id in ("check-env", "web", "rollback-web"):
                    logs = await api.get(f"/runs/{run_id}/steps/{step_id}/logs")
                    answers.append(logs.text)
            run_ids = [first_id, second["run_id"], third["run_id"], back["run_id"]]

        # Nowhere in clear: API answers, Temporal history, logs, database, runtime state.
        client = await connect(
            Settings(
                temporal_address=stack.temporal_address,
                payload_keys=None,  # the stack's own key file, not the test session's keys
                payload_key_file=stack.payload_key_file,
            )
        )
        history = ""
        for run_id in run_ids:
            handle = client.get_workflow_handle(run_id)
            history += (await handle.fetch_history()).to_json()
            history += await decoded_history_text(client, run_id)
        assert "app-config" in history  # the decoded history does name the groups
        files = [
            *stack.logs_dir.rglob("*"),
            *(stack.data_dir / "runtime").rglob("*"),
            *(stack.data_dir / "jobs").rglob("*"),  # the command printed it: masked on disk
            *stack.data_dir.glob("shipflow.db*"),
        ]
        on_disk = b"".join(p.read_bytes() for p in files if p.is_file())
        assert (stack.data_dir / "runtime" / "state.json").exists()
        for secret in (SECRET_1, SECRET_2):
            assert all(secret not in text for text in answers)
            assert secret not in history
            assert secret.encode() not in on_disk
    finally:
        await asyncio.to_thread(stack.stop)
