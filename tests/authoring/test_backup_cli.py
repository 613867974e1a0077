"""`shipflow backup list --flow F` asks the API where F's backups live: no bucket, endpoint or AWS_*.

Repro of issue 14: `backup list --flow demo` said the flow had no backup step (the CLI
read its own, empty, database) and with `--bucket` failed on missing AWS credentials.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from temporalio.testing import ActivityEnvironment

from shipflow.activities.backup.activity import BackupActivities
from shipflow.activities.s3 import S3Factory
from shipflow.workflows.io.backup import BackupInput
from shipflow.workflows.io.common import StepContext
from tests.authoring.conftest import Served, write


def test_list_through_the_api_then_restore_by_the_listed_url(
    served: Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SF_TEST_BACKUPS", str(tmp_path / "backups"))  # the API's environment
    db = tmp_path / "app.db"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE t (v TEXT)")
        conn.execute("INSERT INTO t VALUES ('before')")
    name = f"demo-{uuid.uuid4().hex[:6]}"
    flow = (
        f"apiVersion: shipflow/v1\nname: {name}\nstage: demo\nsteps:\n"
        f'  - backup: {{id: db-backup, database: "sqlite:///{db}", '
        'to: "file://${env.SF_TEST_BACKUPS}/"}\n'
        "  - wait: {id: soak, duration: 1s}\n"
    )
    assert served.run("flow", "apply", str(write(tmp_path, "f.yaml", flow))).exit_code == 0
    empty = served.run("backup", "list", "--flow", name)
    assert empty.exit_code == 0, empty.output
    assert empty.stdout.strip() == f"no backups of flow {name} yet"

    backups = BackupActivities(S3Factory(served.settings), served.settings)
    urls = []
    for _ in range(2):
        context = StepContext(
            run_id=f"{name}-run-{uuid.uuid4().hex[:6]}", flow=name, stage="demo", step_id="db-backup"
        )
        request = BackupInput(
            context=context, database=f"sqlite:///{db}", to=f"file://{tmp_path}/backups/"
        )
        urls.append(ActivityEnvironment().run(backups.create, request).url)

    listed = served.run("backup", "list", "--flow", name, "--json")
    assert listed.exit_code == 0, listed.output
    assert [m["url"] for m in json.loads(listed.stdout)] == urls[::-1]
    for columns in (80, 200):
        table = served.cli("backup", "list", "--flow", name, columns=columns)
        assert table.returncode == 0, table.stderr
        # Each URL whole on one line, wider than 80 columns or not: it is what restore takes.
        lines = table.stdout.splitlines()
        assert all(any(url in line for line in lines) for url in urls), table.stdout

    with sqlite3.connect(db) as conn:
        conn.execute("DELETE FROM t")
    restored = served.run("backup", "restore", urls[0], "--to", f"sqlite:///{db}", "--yes")
    assert restored.exit_code == 0, restored.output
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT v FROM t").fetchall() == [("before",)]

    unknown = served.run("backup", "list", "--flow", "nope")
    assert unknown.exit_code == 2
    assert "error: no flow named 'nope'" in unknown.stderr


def test_bucket_without_aws_credentials_says_what_to_set() -> None:
    """Repro: `--bucket` failed with botocore's "Unable to locate credentials" and nothing more."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SHIPFLOW_"))}
    env.update(
        AWS_CONFIG_FILE="/nonexistent",
        AWS_SHARED_CREDENTIALS_FILE="/nonexistent",
        AWS_EC2_METADATA_DISABLED="true",
    )
    argv = ["backup", "list", "--flow", "x", "--bucket", "s3://b/p/", "--endpoint", "http://127.0.0.1:1"]
    result = subprocess.run(
        [sys.executable, "-m", "shipflow.infra.cli.main", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "error: cannot read s3://b/p/: there are no AWS credentials on this machine",
        "hint: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or leave out "
        "--bucket to let the API list the backups",
    ]
