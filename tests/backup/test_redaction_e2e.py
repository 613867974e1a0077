"""Issue #9.3: a connection string's password never leaks through a failed backup.

The repro: a backup step whose `database:` is a libpq keyword DSN (`host=… password='…'`),
which the backup cannot parse. Today's message echoed it whole into the run status,
Temporal history, the SQL database and the worker's log. The worker runs here as its own process
(`python -m shipflow.worker.main`, its real logging setup) with the log captured like
`shipflow dev` captures `worker.log`; a notify step to a webhook URL with a token also
runs, so the log would show httpx's request line if client request logging were on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sqlmodel import Session
from temporalio.client import Client

from shipflow.activities.core.db import make_engine
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.tables import Run
from tests.api.conftest import api_client
from tests.helpers import HttpSink, decoded_history_text, finish, start_flow

PASSWORD = "Redact Me 99"
TOKEN = "NotifyTok4242"

FLOW = """
apiVersion: shipflow/v1
name: bk-redact
stage: test
steps:
  - notify: {{id: hello, webhook: "{webhook}", message: "starting"}}
  - backup: {{id: db-backup, database: "${{env.BK_REDACT_DSN}}", to: "s3://{bucket}/r/",
              endpoint: "{endpoint}", retries: 0}}
"""


def start_worker(settings: Settings, log: Path, dsn: str) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SHIPFLOW_TEMPORAL_ADDRESS": settings.temporal_address,
        "SHIPFLOW_TASK_QUEUE": settings.task_queue,
        "SHIPFLOW_DATA_DIR": str(settings.data_dir),
        "SHIPFLOW_HEARTBEAT_TIMEOUT_S": str(settings.heartbeat_timeout_s),
        "BK_REDACT_DSN": dsn,
    }
    env.pop("SHIPFLOW_DATABASE_URL", None)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "shipflow.worker.main"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=Path(__file__).resolve().parents[2],
        )


async def test_unparseable_keyword_dsn_password_appears_nowhere(
    temporal_client: Client, settings: Settings, bucket: str, s3_endpoint: str, tmp_path: Path
) -> None:
    dsn = f"host=127.0.0.1 port=5432 user=postgres password='{PASSWORD}' dbname=postgres"
    log = tmp_path / "worker.log"
    worker = start_worker(settings, log, dsn)
    try:
        with HttpSink() as sink:
            flow = FLOW.format(
                webhook=f"{sink.url}/hook?token={TOKEN}", bucket=bucket, endpoint=s3_endpoint
            )
            handle = await start_flow(temporal_client, settings, flow)
            status = await finish(handle)
            assert len(sink.received) == 1  # the notify step (and so httpx) did run
        assert status.state == "failed", status.model_dump_json(indent=1)
        step = status.step("db-backup")
        assert step.state == "failed"
        assert step.error is not None
        # The error still says what is wrong, with the credential masked.
        assert "unsupported database URL" in step.error
        assert "password=***" in step.error
        assert "host=127.0.0.1" in step.error

        async with api_client(settings) as http:
            response = await http.get(f"/runs/{status.run_id}")
        assert response.status_code == 200
        assert "unsupported database URL" in response.text
        assert "Redact Me" not in response.text

        # The worker records the run (state, error) in the SQL database the API reads.
        engine = make_engine(settings.sqlalchemy_url())
        with Session(engine) as session:
            row = session.get(Run, status.run_id)
            assert row is not None and row.state == "failed"
            assert "unsupported database URL" in (row.error or ""), row.error
            assert "Redact Me" not in (row.error or "")
        engine.dispose()
        for db_file in settings.data_dir.glob("shipflow.db*"):
            assert b"Redact Me" not in db_file.read_bytes()

        # Read decrypted: the raw history is ciphertext, which would hide a password too.
        history = await decoded_history_text(temporal_client, status.run_id)
        assert "unsupported database URL" in history  # the failure is in history...
        assert "Redact Me" not in history  # ...without the password
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)

    text = log.read_text(errors="replace")
    assert "worker on" in text  # the log is the worker's real log
    assert "unsupported database URL" in text  # the activity failure is logged...
    assert "Redact Me" not in text  # ...redacted
    assert TOKEN not in text
    assert "HTTP Request" not in text  # httpx's INFO request lines are off
