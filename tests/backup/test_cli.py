"""`shipflow backup list|restore` against the real S3 endpoint and PostgreSQL."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from shipflow.activities.backup.activity import BackupActivities
from shipflow.activities.core.settings import Settings
from shipflow.activities.s3 import S3Client
from shipflow.infra.cli.backup import app
from shipflow.infra.cli.client import ApiClient
from shipflow.infra.cli.main import app as main_app
from shipflow.workflows.io.backup import BackupInput
from tests.authoring.conftest import serve
from tests.backup.conftest import pg_rows, pg_schema, psql, run_activity
from tests.backup.test_postgres import context

runner = CliRunner()


def test_list_and_restore_by_key(
    backups: BackupActivities, s3: S3Client, s3_endpoint: str, bucket: str, pg_url: str
) -> None:
    psql(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'one')")
    rows = pg_rows(pg_url)
    schema = pg_schema(pg_url)
    outs = [
        run_activity(
            backups.create, BackupInput(context=context(flow="cli"), database=pg_url, to=f"s3://{bucket}/p/")
        ).result
        for _ in range(2)
    ]

    listed = runner.invoke(
        app, ["list", "--flow", "cli", "--bucket", f"s3://{bucket}/p/", "--endpoint", s3_endpoint, "--json"]
    )
    assert listed.exit_code == 0, listed.output
    assert [m["key"] for m in json.loads(listed.stdout)] == [outs[1].key, outs[0].key]
    table = runner.invoke(
        app, ["list", "--flow", "cli", "--bucket", f"s3://{bucket}/p/", "--endpoint", s3_endpoint]
    )
    assert table.exit_code == 0 and "db-backup" in table.stdout

    psql(pg_url, "DROP TABLE t")
    restored = runner.invoke(
        app,
        ["restore", outs[0].key, "--bucket", f"s3://{bucket}", "--to", pg_url, "--endpoint", s3_endpoint, "--yes"],
    )
    assert restored.exit_code == 0, restored.output
    assert "verified" in restored.stdout
    assert pg_rows(pg_url) == rows and pg_schema(pg_url) == schema

    s3.put_object(Bucket=bucket, Key=outs[1].key, Body=b"garbage")
    refused = runner.invoke(
        app, ["restore", outs[1].url, "--to", pg_url, "--endpoint", s3_endpoint, "--yes"]
    )
    assert refused.exit_code == 1
    assert "refusing to restore" in refused.output


def test_list_asks_the_api_where_the_flow_backs_up_to(
    backups: BackupActivities, settings: Settings, s3_endpoint: str, bucket: str, pg_url: str
) -> None:
    """No --bucket, --endpoint or AWS_* on the CLI's side: the API reads the flow's S3 prefix."""
    to = f"s3://{bucket}/from-flow/"
    flow = (
        "apiVersion: shipflow/v1\nname: listed\nstage: prod\nsteps:\n"
        f'  - parallel:\n      - backup: {{id: db, database: "${{env.NOPE_DB}}", to: "{to}"}}\n'
    )
    psql(pg_url, "CREATE TABLE t (id int)")
    out = run_activity(
        backups.create, BackupInput(context=context(flow="listed"), database=pg_url, to=to)
    ).result
    with serve(settings.model_copy(update={"s3_endpoint": s3_endpoint})) as api:
        with ApiClient(api.url) as client:
            client.apply_flow(flow)
        listed = runner.invoke(main_app, ["--api", api.url, "backup", "list", "--flow", "listed", "--json"])
        assert listed.exit_code == 0, listed.output
        assert [m["url"] for m in json.loads(listed.stdout)] == [out.url]

        unknown = runner.invoke(main_app, ["--api", api.url, "backup", "list", "--flow", "nope"])
        assert unknown.exit_code == 2 and "no flow named 'nope'" in unknown.output
