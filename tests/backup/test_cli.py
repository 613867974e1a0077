"""`shipflow backup list|restore` against the real S3 endpoint and PostgreSQL."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shipflow.activities.backup import BackupActivities
from shipflow.activities.s3 import S3Client
from shipflow.infra.cli.backup import app
from shipflow.workflows.io.backup import BackupInput
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


def test_list_finds_the_bucket_from_the_applied_flow(
    backups: BackupActivities,
    s3_endpoint: str,
    bucket: str,
    pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from sqlmodel import Session

    from shipflow.activities.core.db import make_engine
    from shipflow.activities.core.settings import Settings, get_settings
    from shipflow.activities.core.tables import Flow

    to = f"s3://{bucket}/from-flow/"
    monkeypatch.setenv("SHIPFLOW_DATA_DIR", str(tmp_path / "api"))
    monkeypatch.delenv("SHIPFLOW_DATABASE_URL", raising=False)
    get_settings.cache_clear()
    try:
        engine = make_engine(Settings().sqlalchemy_url())
        spec = {"name": "listed", "stage": "prod",
                "steps": [{"parallel": [{"backup": {"id": "db", "database": "x", "to": to}}]}]}
        with Session(engine) as session:
            session.add(Flow(name="listed", stage="prod", source="", spec=spec))
            session.commit()
        engine.dispose()
        psql(pg_url, "CREATE TABLE t (id int)")
        out = run_activity(
            backups.create, BackupInput(context=context(flow="listed"), database=pg_url, to=to)
        ).result

        listed = runner.invoke(app, ["list", "--flow", "listed", "--endpoint", s3_endpoint, "--json"])
        assert listed.exit_code == 0, listed.output
        assert [m["url"] for m in json.loads(listed.stdout)] == [out.url]

        unknown = runner.invoke(app, ["list", "--flow", "nope", "--endpoint", s3_endpoint])
        assert unknown.exit_code == 1 and "--bucket" in unknown.output
    finally:
        get_settings.cache_clear()
