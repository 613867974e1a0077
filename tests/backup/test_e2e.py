"""End to end through ReleaseWorkflow: backup -> migrate -> a failing step -> restore as compensation."""

from __future__ import annotations

import json

import pytest
from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.activities.s3 import S3Client
from tests.backup.conftest import pg_rows, pg_schema, psql
from tests.backup.test_postgres import BREAK, SCHEMA
from tests.helpers import decoded_history_text, new_worker, run_flow

FLOW = """
apiVersion: shipflow/v1
name: bk-e2e
stage: test
steps:
  - backup: {{id: db-backup, database: "${{env.BK_E2E_DATABASE}}", to: "s3://{bucket}/e2e/",
              endpoint: "{endpoint}", keep: 3}}
  - migrate: {{id: migrate, command: {migrate}, retries: 0, undo: {{restore: db-backup}}}}
  - migrate: {{id: smoke, command: [sh, -c, "echo smoke failed; exit 1"], retries: 0}}
"""


async def test_failed_release_restores_the_database(
    temporal_client: Client,
    settings: Settings,
    s3: S3Client,
    s3_endpoint: str,
    bucket: str,
    pg_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    psql(pg_url, SCHEMA)
    schema, rows = pg_schema(pg_url), pg_rows(pg_url)
    # The shared server trusts local clients, so any password works: what matters is that it
    # never shows up in Temporal history, the status or the backup's metadata.
    secret_url = pg_url.replace("postgres@", "postgres:E2eSecretPw@", 1)
    monkeypatch.setenv("BK_E2E_DATABASE", secret_url)
    migrate = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", pg_url, "-c", BREAK]
    flow = FLOW.format(bucket=bucket, endpoint=s3_endpoint, migrate=json.dumps(migrate))

    async with new_worker(temporal_client, settings):
        status = await run_flow(temporal_client, settings, flow)

    assert status.state == "rolled_back", status.model_dump_json(indent=1)
    assert status.step("migrate").state == "compensated"
    backup = status.step("db-backup")
    assert backup.state == "succeeded"
    output = backup.output or {}
    assert output["url"].startswith(f"s3://{bucket}/e2e/bk-e2e/test/")
    assert "E2eSecretPw" not in status.model_dump_json()
    # Decrypted (the raw history is ciphertext, which would hide the secret either way):
    history = await decoded_history_text(temporal_client, status.run_id)
    assert "env.BK_E2E_DATABASE" in history  # the reference travels...
    assert "E2eSecretPw" not in history  # ...the secret does not
    key = output["key"]
    assert b"E2eSecretPw" not in s3.get_object(Bucket=bucket, Key=key + ".json")["Body"].read()
    assert "E2eSecretPw" not in str(s3.head_object(Bucket=bucket, Key=key)["Metadata"])
    assert pg_schema(pg_url) == schema
    assert pg_rows(pg_url) == rows
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
