"""PostgreSQL backups through the real activities: pg_dump -> S3 (moto over HTTP) -> pg_restore."""

from __future__ import annotations

import json
import uuid

from temporalio.exceptions import ApplicationError

from activities.backup import BackupActivities, list_backups
from activities.models.backup import BackupInput, BackupOutput, RestoreInput
from activities.models.common import StepContext
from activities.s3 import S3Client
from tests.backup.conftest import (
    TEST_PART_SIZE,
    pg_rows,
    pg_schema,
    psql,
    run_activity,
    run_failing,
)

SCHEMA = """
CREATE TABLE customers (id serial PRIMARY KEY, name text NOT NULL, email text UNIQUE,
                        created date DEFAULT '2020-01-01');
CREATE TABLE orders (id bigserial PRIMARY KEY, customer_id int REFERENCES customers(id),
                     amount numeric(10,2), payload bytea);
CREATE INDEX orders_customer ON orders (customer_id);
CREATE VIEW big_orders AS SELECT * FROM orders WHERE amount > 500;
INSERT INTO customers (name, email) SELECT 'c' || g, 'c' || g || '@example.com'
  FROM generate_series(1, 500) g;
INSERT INTO orders (customer_id, amount, payload)
  SELECT (g % 500) + 1, (g * 7 % 1000) / 1.5,
         decode(md5(g::text) || md5((g * 3)::text) || md5((g * 7)::text), 'hex')
  FROM generate_series(1, 8000) g;
"""

# A "migration" that drops and alters what the backup holds.
BREAK = """
DROP VIEW big_orders;
ALTER TABLE orders DROP COLUMN payload;
ALTER TABLE customers ADD COLUMN tier int DEFAULT 1;
ALTER TABLE customers ALTER COLUMN name DROP NOT NULL;
DELETE FROM orders WHERE id % 2 = 0;
UPDATE customers SET name = upper(name);
SELECT setval('orders_id_seq', 99999);
"""


def context(flow: str = "web", run_id: str | None = None, step: str = "db-backup") -> StepContext:
    return StepContext(
        run_id=run_id or f"run-{uuid.uuid4().hex[:8]}", flow=flow, stage="production", step_id=step
    )


def test_backup_break_restore_is_exact(
    backups: BackupActivities, s3: S3Client, bucket: str, pg_url: str
) -> None:
    psql(pg_url, SCHEMA)
    schema_before, rows_before = pg_schema(pg_url), pg_rows(pg_url)
    ctx = context()

    run = run_activity(
        backups.create, BackupInput(context=ctx, database=pg_url, to=f"s3://{bucket}/backups/")
    )
    out: BackupOutput = run.result

    assert out.key == f"backups/web/production/{ctx.run_id}/db-backup.pgdump"
    assert out.url == f"s3://{bucket}/{out.key}"
    assert out.size > 3 * TEST_PART_SIZE  # a real multipart upload
    assert len(out.sha256) == 64 and out.duration_s > 0
    upload_beats = [b for b in run.beats if b.get("upload_id")]
    assert upload_beats, run.beats
    assert upload_beats[-1]["bytes"] == out.size
    assert upload_beats[-1]["parts"] == -(-out.size // TEST_PART_SIZE)

    head = s3.head_object(Bucket=bucket, Key=out.key)
    assert head["ContentLength"] == out.size
    assert head["Metadata"]["source"] == pg_url  # no credentials in this URL to begin with
    assert head["Metadata"]["tool-version"].startswith("pg_dump (PostgreSQL)")
    assert head["Metadata"]["shipflow-version"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=out.key + ".json")["Body"].read())
    assert manifest["sha256"] == out.sha256 and manifest["size"] == out.size
    assert manifest["database"] == pg_url and manifest["run_id"] == ctx.run_id
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []

    psql(pg_url, BREAK)
    assert pg_schema(pg_url) != schema_before

    restored = run_activity(
        backups.restore,
        RestoreInput(context=ctx, database=pg_url, url=out.url, size=out.size, sha256=out.sha256),
    ).result
    assert restored.key == out.key and restored.size == out.size
    assert pg_schema(pg_url) == schema_before
    assert pg_rows(pg_url) == rows_before


def test_small_dump_is_one_put_with_checksum_metadata(
    backups: BackupActivities, s3: S3Client, bucket: str, pg_url: str
) -> None:
    psql(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'a')")
    out = run_activity(
        backups.create,
        BackupInput(
            context=context(),
            database=pg_url,
            to=f"s3://{bucket}",
            sse="AES256",
            storage_class="STANDARD_IA",
        ),
    ).result
    assert out.size < TEST_PART_SIZE
    head = s3.head_object(Bucket=bucket, Key=out.key)
    assert head["Metadata"]["sha256"] == out.sha256
    assert head["Metadata"]["size"] == str(out.size)
    assert head.get("ServerSideEncryption") == "AES256"
    assert head.get("StorageClass") == "STANDARD_IA"
    manifest = s3.head_object(Bucket=bucket, Key=out.key + ".json")
    assert manifest.get("ServerSideEncryption") == "AES256"
    assert manifest.get("StorageClass", "STANDARD") == "STANDARD"
    assert out.key.startswith("web/production/")


def test_retention_keeps_newest_of_same_flow_and_database(
    backups: BackupActivities, s3: S3Client, bucket: str, pg_url: str
) -> None:
    psql(pg_url, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    other = pg_url + "?application_name=other"  # a different database URL for the same flow
    to = f"s3://{bucket}/r/"
    first_other = run_activity(
        backups.create, BackupInput(context=context(), database=other, to=to)
    ).result
    outs = [
        run_activity(backups.create, BackupInput(context=context(), database=pg_url, to=to, keep=2))
        .result
        for _ in range(4)
    ]
    # Another flow's backups of the same database are not touched either.
    foreign = run_activity(
        backups.create, BackupInput(context=context(flow="api"), database=pg_url, to=to, keep=1)
    ).result

    listed = list_backups(s3, bucket, "r", "web")
    assert [m.key for m in listed if m.database == pg_url] == [outs[3].key, outs[2].key]
    assert [m.key for m in listed if m.database != pg_url] == [first_other.key]
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=bucket)["Contents"]}
    for gone in outs[:2]:
        assert gone.key not in keys and gone.key + ".json" not in keys
    assert {outs[2].key, outs[3].key, first_other.key, foreign.key} <= keys


def test_corrupt_or_truncated_object_is_refused_before_touching_the_db(
    backups: BackupActivities, s3: S3Client, bucket: str, pg_url: str
) -> None:
    psql(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text); "
                 "INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 2000) g")
    ctx = context()
    out = run_activity(
        backups.create, BackupInput(context=ctx, database=pg_url, to=f"s3://{bucket}/c/")
    ).result
    psql(pg_url, "DELETE FROM t WHERE id > 10; ALTER TABLE t ADD COLUMN extra int")
    broken_schema, broken_rows = pg_schema(pg_url), pg_rows(pg_url)

    data = bytearray(s3.get_object(Bucket=bucket, Key=out.key)["Body"].read())
    data[len(data) // 2] ^= 0xFF  # same size, one flipped byte
    s3.put_object(Bucket=bucket, Key=out.key, Body=bytes(data))
    request = RestoreInput(
        context=ctx, database=pg_url, url=out.url, size=out.size, sha256=out.sha256
    )
    error, _ = run_failing(backups.restore, request)
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert "sha256" in str(error) and "not touched" in str(error)

    s3.put_object(Bucket=bucket, Key=out.key, Body=bytes(data[: len(data) // 2]))
    error, _ = run_failing(backups.restore, request)
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert "size" in str(error)

    # Without size/sha256 in the input the manifest is the reference: still refused.
    error, _ = run_failing(backups.restore, RestoreInput(context=ctx, database=pg_url, url=out.url))
    assert isinstance(error, ApplicationError) and error.non_retryable

    assert pg_schema(pg_url) == broken_schema and pg_rows(pg_url) == broken_rows


def test_failed_restore_leaves_the_database_as_it_was(
    backups: BackupActivities, bucket: str, pg_url: str
) -> None:
    psql(pg_url, "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t VALUES (1, 'x')")
    ctx = context()
    out = run_activity(
        backups.create, BackupInput(context=ctx, database=pg_url, to=f"s3://{bucket}/f/")
    ).result
    # A view that depends on t makes pg_restore's DROP TABLE t fail halfway through.
    psql(pg_url, "INSERT INTO t VALUES (2, 'y'); CREATE VIEW v AS SELECT * FROM t")
    schema, rows = pg_schema(pg_url), pg_rows(pg_url)
    error, _ = run_failing(
        backups.restore,
        RestoreInput(context=ctx, database=pg_url, url=out.url, size=out.size, sha256=out.sha256),
    )
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert "pg_restore failed" in str(error)
    assert pg_schema(pg_url) == schema and pg_rows(pg_url) == rows
