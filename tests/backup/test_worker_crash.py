"""A worker SIGKILLed in the middle of a backup: the retried backup completes, one object."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from temporalio.client import Client

from shipflow.activities.core.settings import Settings
from shipflow.activities.s3 import S3Client
from tests.backup.conftest import psql
from tests.helpers import finish, new_worker, start_flow, wait_until

ROOT = Path(__file__).resolve().parents[2]

FLOW = """
apiVersion: shipflow/v1
name: bk-crash
stage: test
concurrency: allow
steps:
  - backup: {{id: db-backup, database: "{url}", to: "s3://{bucket}/crash/", endpoint: "{endpoint}"}}
"""


async def test_worker_killed_mid_backup(
    temporal_client: Client,
    settings: Settings,
    s3: S3Client,
    s3_endpoint: str,
    bucket: str,
    pg_url: str,
    tmp_path: Path,
) -> None:
    # ~100 MB of incompressible rows: long enough a dump to kill its worker in the middle.
    psql(
        pg_url,
        "CREATE TABLE blob (id int PRIMARY KEY, data bytea NOT NULL);"
        "INSERT INTO blob SELECT g, decode(string_agg(md5(random()::text || g || i), ''), 'hex')"
        " FROM generate_series(1, 50000) g, generate_series(1, 64) i GROUP BY g;",
    )
    env = {
        **os.environ,
        "SHIPFLOW_TEMPORAL_ADDRESS": settings.temporal_address,
        "SHIPFLOW_TASK_QUEUE": settings.task_queue,
        "SHIPFLOW_DATA_DIR": str(settings.data_dir),
        "SHIPFLOW_STICKY_TIMEOUT_S": str(settings.sticky_timeout_s),
        "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
    }
    log = (tmp_path / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "shipflow.worker.main"],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        handle = await start_flow(
            temporal_client, settings, FLOW.format(url=pg_url, bucket=bucket, endpoint=s3_endpoint)
        )
        # The dump is streaming once its multipart upload exists.
        await wait_until(
            lambda: s3.list_multipart_uploads(Bucket=bucket).get("Uploads"),
            timeout=60,
            interval=0.02,
        )
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    finally:
        if worker.poll() is None:
            worker.kill()
        log.close()
    # Killed mid-stream: its upload is abandoned, unfinished.
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads")
    async with new_worker(temporal_client, settings):
        status = await finish(handle)
    assert status.state == "succeeded", status.model_dump_json(indent=1)
    assert status.step("db-backup").attempts == 1  # a lost worker is not an attempt
    objects = [
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="crash/").get("Contents", [])
    ]
    dumps = [k for k in objects if k.endswith(".pgdump")]
    assert len(dumps) == 1, objects
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    assert (status.step("db-backup").output or {})["size"] > 50_000_000
