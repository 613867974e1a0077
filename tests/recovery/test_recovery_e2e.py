"""Rollback to a run two releases back and retry from the failed step, over the HTTP API,
with real deploys on the local runtime and real backups in S3."""

from __future__ import annotations

import json
import sqlite3
import sys
from pathlib import Path

import httpx
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from tests.api.conftest import api_client
from tests.helpers import free_port, new_worker, wait_until
from tests.local.support import ROOT, RuntimeProcess, demo_service

MIGRATE = str(ROOT / "infra" / "demo" / "migrate.py")


def release_flow(runtime: RuntimeProcess, port: int, db: Path, bucket: str, endpoint: str) -> str:
    service = demo_service(port, replicas=1)
    return "\n".join(
        [
            "apiVersion: shipflow/v1",
            "name: shop",
            "stage: prod",
            "target:",
            "  kind: local",
            f"  runtime: {runtime.url}",
            f"  services: {{web: {json.dumps(service)}}}",
            "args: {image: {default: v1}}",
            "steps:",
            f"  - backup: {{id: db-backup, database: 'sqlite:///{db}', to: 's3://{bucket}/bk/', endpoint: '{endpoint}'}}",
            f"  - migrate: {{id: migrate, command: ['{sys.executable}', '{MIGRATE}', --db, '{db}', --to, '${{args.image}}']}}",
            '  - deploy: {id: web, service: web, image: "${args.image}"}',
        ]
    )


def schema(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT version FROM schema_version").fetchone()[0])


async def run_to_end(http: httpx.AsyncClient, url: str) -> dict:  # type: ignore[type-arg]
    async def done() -> dict | None:  # type: ignore[type-arg]
        body = (await http.get(url)).json()
        return (
            body
            if body["state"]
            in ("succeeded", "failed", "rolled_back", "rollback_failed", "cancelled")
            else None
        )

    return await wait_until(done, timeout=90, interval=0.2)


async def test_rollback_two_releases_back_images_always_data_only_when_asked(
    temporal_client: Client,
    settings: Settings,
    runtime: RuntimeProcess,
    bucket: str,
    s3_endpoint: str,
    tmp_path: Path,
) -> None:
    db, port = tmp_path / "shop.db", free_port()
    with sqlite3.connect(db) as conn:  # the app's database exists before its first release
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (0)")
    async with new_worker(temporal_client, settings), api_client(settings) as http:
        assert (
            await http.post(
                "/flows",
                content=release_flow(runtime, port, db, bucket, s3_endpoint),
                headers={"content-type": "application/yaml"},
            )
        ).status_code == 201
        runs = []
        for image in ("v1", "v2", "v3"):
            started = (await http.post("/flows/shop/runs", json={"args": {"image": image}})).json()
            status = await run_to_end(http, started["status_url"])
            assert status["state"] == "succeeded", status
            runs.append(started["run_id"])
        assert runtime.service("web")["image"] == "v3" and schema(db) == 3

        preview = await http.post(f"/runs/{runs[0]}/rollback", params={"dry_run": "true"})
        assert preview.status_code == 202 and preview.json()["dry_run"] is True
        assert [(p["step"], p["image"]) for p in preview.json()["plan"]] == [("rollback-web", "v1")]
        assert runtime.service("web")["image"] == "v3", "a dry run changed something"

        rollback = (await http.post(f"/runs/{runs[0]}/rollback", json={})).json()
        status = await run_to_end(http, rollback["status_url"])
        assert status["state"] == "succeeded", status
        assert runtime.service("web")["image"] == "v1"
        assert schema(db) == 3, "data was changed although nobody asked"

        # Now the data too: back to what release 1 left (the backup release 2 took first).
        with_data = (
            await http.post(f"/runs/{runs[0]}/rollback", json={"restore_data": True})
        ).json()
        status = await run_to_end(http, with_data["status_url"])
        assert status["state"] == "succeeded", status
        assert [s["id"] for s in status["steps"]] == ["restore-db-backup"]
        assert schema(db) == 1
        again = await http.post(f"/runs/{runs[2]}/rollback", json={"restore_data": True})
        assert again.status_code == 409 and "no run took a backup" in again.json()["detail"]


async def test_retry_starts_at_the_failed_step(
    temporal_client: Client, settings: Settings, tmp_path: Path
) -> None:
    log, gate = tmp_path / "log", tmp_path / "gate"
    text = f"""
apiVersion: shipflow/v1
name: flaky-release
stage: retry
steps:
  - migrate: {{id: prepare, command: [sh, -c, 'echo prepare >> {log}']}}
  - migrate: {{id: fragile, command: [sh, -c, 'echo fragile >> {log}; test -e {gate}']}}
  - migrate: {{id: finish, command: [sh, -c, 'echo finish >> {log}']}}
"""
    async with new_worker(temporal_client, settings), api_client(settings) as http:
        await http.post("/flows", content=text, headers={"content-type": "application/yaml"})
        first = (await http.post("/flows/flaky-release/runs", json={})).json()
        failed = await run_to_end(http, first["status_url"])
        assert failed["state"] == "failed" and failed["failed_step"] == "fragile"
        gate.touch()
        retried = (await http.post(f"/runs/{first['run_id']}/retry")).json()
        status = await run_to_end(http, retried["status_url"])
        assert status["state"] == "succeeded", status
        states = {s["id"]: s["state"] for s in status["steps"]}
        assert states == {"prepare": "skipped", "fragile": "succeeded", "finish": "succeeded"}
        done = await http.post(f"/runs/{retried['run_id']}/retry")
        assert done.status_code == 409 and "nothing to retry" in done.json()["detail"]
    assert log.read_text().count("prepare") == 1


async def test_forbid_answers_409_naming_the_running_release(
    temporal_client: Client, settings: Settings
) -> None:
    text = "apiVersion: shipflow/v1\nname: {n}\nstage: locked-api\nconcurrency: forbid\nsteps:\n  - wait: {{id: soak, duration: 1h}}\n"
    async with new_worker(temporal_client, settings), api_client(settings) as http:
        for name in ("one", "two"):
            await http.post(
                "/flows", content=text.format(n=name), headers={"content-type": "application/yaml"}
            )
        first = (await http.post("/flows/one/runs", json={})).json()
        await wait_until(lambda: _running(http, first["status_url"]))
        refused = await http.post("/flows/two/runs", json={})
        assert refused.status_code == 409
        assert first["run_id"] in refused.json()["detail"]
        # Nothing is lost: the refused run is on record.
        listed = (await http.get("/runs", params={"flow": "two"})).json()
        assert [r["state"] for r in listed] == ["failed"]
        await http.post(f"/runs/{first['run_id']}/cancel")


async def _running(http: httpx.AsyncClient, url: str) -> bool:
    return (await http.get(url)).json()["state"] == "running"
