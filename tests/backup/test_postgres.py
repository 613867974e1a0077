"""PostgreSQL backups through the real activities: pg_dump -> S3 (moto over HTTP) -> pg_restore | psql."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import psycopg
import pytest
from temporalio.exceptions import ApplicationError

from shipflow.activities.backup.activity import BackupActivities
from shipflow.activities.backup.catalog import list_backups
from shipflow.activities.backup.s3store import S3Store
from shipflow.activities.dbdump.database import DumpError, parse_database, redact_url
from shipflow.activities.dbdump.pg_dump import PgDump
from shipflow.activities.dbdump.pg_restore import pg_restore
from shipflow.activities.s3 import S3Client
from shipflow.workflows.io.backup import BackupInput, BackupOutput, RestoreInput
from shipflow.workflows.io.common import StepContext
from tests.backup.conftest import (
    TEST_PART_SIZE,
    ScramPg,
    free_port,
    pg_rows,
    pg_schema,
    psql,
    run_activity,
    run_failing,
)
from tests.helpers import wait_until_sync

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

    listed = list_backups(S3Store(s3, bucket), "r", "web")
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


# What the backed-up database also has: an extension in `public`, one in its own schema,
# a schema with a table using both, a large object.
EXTRAS = """
CREATE EXTENSION pgcrypto;
CREATE SCHEMA ext;
CREATE EXTENSION hstore SCHEMA ext;
CREATE SCHEMA archive;
CREATE TABLE archive.old_orders (id int PRIMARY KEY, attrs ext.hstore,
                                 token text DEFAULT encode(gen_random_bytes(8), 'hex'));
INSERT INTO archive.old_orders (id, attrs) SELECT g, ext.hstore('k', g::text)
  FROM generate_series(1, 50) g;
SELECT lo_from_bytea(0, 'kept');
"""

# A migration that creates what the backup does not have (and changes what it has).
MIGRATION = """
CREATE TABLE audit (id serial PRIMARY KEY, at timestamptz DEFAULT now());
INSERT INTO audit DEFAULT VALUES;
CREATE VIEW customer_names AS SELECT id, name FROM customers;
CREATE MATERIALIZED VIEW order_totals AS SELECT customer_id, sum(amount) FROM orders GROUP BY 1;
CREATE SEQUENCE invoice_no START 1000;
SELECT nextval('invoice_no');
CREATE TYPE status AS ENUM ('new', 'paid');
ALTER TABLE orders ADD COLUMN status status DEFAULT 'new';
CREATE DOMAIN positive AS numeric CHECK (VALUE > 0);
CREATE TYPE money_pair AS (amount positive, currency char(3));
CREATE FUNCTION order_count(c int) RETURNS bigint LANGUAGE sql
  AS 'SELECT count(*) FROM orders WHERE customer_id = c';
CREATE PROCEDURE noop() LANGUAGE plpgsql AS $$BEGIN END$$;
CREATE AGGREGATE total(numeric) (sfunc = numeric_add, stype = numeric);
CREATE CAST (text AS status) WITH INOUT;
CREATE TEXT SEARCH CONFIGURATION simple_en (COPY = english);
CREATE FOREIGN DATA WRAPPER dummy_fdw;
CREATE SERVER dummy_server FOREIGN DATA WRAPPER dummy_fdw;
CREATE FOREIGN TABLE remote_orders (id int) SERVER dummy_server;
CREATE SCHEMA reporting;
CREATE TABLE reporting.daily (day date PRIMARY KEY, total numeric);
INSERT INTO reporting.daily VALUES ('2020-01-01', 1);
CREATE EXTENSION citext;
CREATE TABLE reporting.tags (tag citext);
ALTER TABLE customers ALTER COLUMN email TYPE varchar(200);
ALTER TABLE customers RENAME COLUMN created TO created_on;
DELETE FROM orders WHERE id % 3 = 0;
UPDATE archive.old_orders SET attrs = ext.hstore('k', 'changed');
ALTER TABLE archive.old_orders ADD COLUMN note text;
SELECT lo_from_bytea(0, 'added later');
"""


def test_restore_drops_what_a_migration_created(
    backups: BackupActivities, bucket: str, pg_url: str
) -> None:
    psql(pg_url, SCHEMA + EXTRAS)
    schema_before, rows_before = pg_schema(pg_url), pg_rows(pg_url)
    ctx = context()
    out = run_activity(
        backups.create, BackupInput(context=ctx, database=pg_url, to=f"s3://{bucket}/m/")
    ).result

    psql(pg_url, MIGRATION)
    migrated = pg_schema(pg_url)
    for created in ("audit", "customer_names", "order_totals", "invoice_no", "status",
                    "positive", "order_count", "noop", "total", "simple_en", "dummy_server",
                    "remote_orders", "reporting", "citext"):
        assert created in migrated and created not in schema_before, created

    restored = run_activity(
        backups.restore,
        RestoreInput(context=ctx, database=pg_url, url=out.url, size=out.size, sha256=out.sha256),
    )
    assert restored.result.key == out.key
    assert any(b.get("phase") == "restore" for b in restored.beats)
    assert pg_schema(pg_url) == schema_before
    assert pg_rows(pg_url) == rows_before
    with psycopg.connect(pg_url) as conn:
        extensions = [r[0] for r in conn.execute("SELECT extname FROM pg_extension ORDER BY 1")]
        # The kept extensions still work (pgcrypto's function is a column default).
        conn.execute("INSERT INTO archive.old_orders (id) VALUES (1000)")
    assert extensions == ["hstore", "pgcrypto", "plpgsql"]

    # Restoring the same backup again (a retried compensation) changes nothing more.
    psql(pg_url, "DELETE FROM archive.old_orders WHERE id = 1000")
    run_activity(
        backups.restore,
        RestoreInput(context=ctx, database=pg_url, url=out.url, size=out.size, sha256=out.sha256),
    )
    assert pg_schema(pg_url) == schema_before and pg_rows(pg_url) == rows_before


def test_failed_restore_leaves_the_database_as_it_was(
    backups: BackupActivities, bucket: str, pg_url: str
) -> None:
    # The backup grants on a role that is gone when it is restored: the GRANT, near the end
    # of the script, fails after the prelude dropped everything and the data was loaded.
    role = f"bk_reader_{uuid.uuid4().hex[:8]}"
    psql(pg_url, SCHEMA + EXTRAS)
    psql(pg_url, f"CREATE ROLE {role}; GRANT SELECT ON customers TO {role}")
    try:
        schema_at_backup, rows_at_backup = pg_schema(pg_url), pg_rows(pg_url)
        ctx = context()
        out = run_activity(
            backups.create, BackupInput(context=ctx, database=pg_url, to=f"s3://{bucket}/f/")
        ).result
        psql(pg_url, MIGRATION)
        psql(pg_url, f"REVOKE ALL ON customers FROM {role}; DROP ROLE {role}")
        schema, rows = pg_schema(pg_url), pg_rows(pg_url)
        request = RestoreInput(
            context=ctx, database=pg_url, url=out.url, size=out.size, sha256=out.sha256
        )

        error, _ = run_failing(backups.restore, request)
        assert isinstance(error, ApplicationError) and error.non_retryable, error
        assert "psql failed" in str(error) and f'role "{role}" does not exist' in str(error)
        assert "rolled back" in str(error)
        assert pg_schema(pg_url) == schema and pg_rows(pg_url) == rows

        # With the role back, the same backup restores exactly.
        psql(pg_url, f"CREATE ROLE {role}")
        run_activity(backups.restore, request)
        assert pg_schema(pg_url) == schema_at_backup and pg_rows(pg_url) == rows_at_backup
    finally:
        if _role_exists(pg_url, role):  # roles are cluster-wide: never leave one behind
            psql(pg_url, f"DROP OWNED BY {role}; DROP ROLE {role}")


def _role_exists(url: str, role: str) -> bool:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is not None


def test_dump_breaking_off_midway_changes_nothing(tmp_path: Path, pg_url: str) -> None:
    # The archive's last data is a large object of 300 KiB of random (incompressible) bytes;
    # the dump is cut inside it. pg_restore then emits the schema, every table's data and
    # complete `lowrite` statements for part of the object, and fails: its script breaks
    # off between two statements, so only withholding the COMMIT and killing psql (not the
    # end of psql's input) keeps the half-restored database from being committed.
    psql(pg_url, SCHEMA + EXTRAS)
    psql(pg_url, "SELECT lo_from_bytea(0, (SELECT string_agg(gen_random_bytes(1024), ''::bytea) "
                 "FROM generate_series(1, 300)))")
    db = parse_database(pg_url)
    dump = PgDump(db)
    try:
        data = dump.stdout.read()
        dump.wait()
    finally:
        dump.close()
    whole = tmp_path / "whole.pgdump"
    whole.write_bytes(data)
    truncated = tmp_path / "truncated.pgdump"
    truncated.write_bytes(data[:-100_000])
    psql(pg_url, MIGRATION)
    schema, rows = pg_schema(pg_url), pg_rows(pg_url)

    with pytest.raises(DumpError) as info:
        pg_restore(db, truncated)
    assert "pg_restore failed" in str(info.value) and not info.value.retryable
    assert "rolled back" in str(info.value)
    assert pg_schema(pg_url) == schema and pg_rows(pg_url) == rows

    # Not a dump at all: refused before the database is touched.
    garbage = tmp_path / "garbage.pgdump"
    garbage.write_bytes(b"PGDMP" + b"\0" * 100)
    with pytest.raises(DumpError) as info:
        pg_restore(db, garbage)
    assert "not touched" in str(info.value) and not info.value.retryable
    assert pg_schema(pg_url) == schema and pg_rows(pg_url) == rows

    pg_restore(db, whole)
    assert "audit" not in pg_schema(pg_url)


def test_cancelled_restore_rolls_back(backups: BackupActivities, bucket: str, pg_url: str) -> None:
    from temporalio.exceptions import CancelledError
    from temporalio.testing import ActivityEnvironment

    psql(pg_url, SCHEMA + EXTRAS)
    ctx = context()
    out = run_activity(
        backups.create, BackupInput(context=ctx, database=pg_url, to=f"s3://{bucket}/x/")
    ).result
    psql(pg_url, MIGRATION)
    schema, rows = pg_schema(pg_url), pg_rows(pg_url)
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shipflow-restore' "
        "AND datname = current_database() AND wait_event_type = 'Lock'"
    )
    env = ActivityEnvironment()
    seen: list[dict[str, Any]] = []
    with psycopg.connect(pg_url) as locker, psycopg.connect(pg_url, autocommit=True) as watcher:
        # An open reader of `orders` blocks the prelude's DROP: the restore waits, heartbeating.
        locker.execute("SELECT 1 FROM orders LIMIT 1")

        def cancel_once_blocked(beat: dict[str, Any]) -> None:
            seen.append(beat)
            row = watcher.execute(waiting).fetchone()
            if beat.get("phase") == "restore" and row and row[0] > 0:
                env.cancel()

        env.on_heartbeat = cancel_once_blocked
        with pytest.raises(CancelledError):
            env.run(
                backups.restore,
                RestoreInput(
                    context=ctx, database=pg_url, url=out.url, size=out.size, sha256=out.sha256
                ),
            )
        locker.rollback()
        # The killed psql's backend finds its client gone once its lock wait ends, and aborts.
        gone = (
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'shipflow-restore' "
            "AND datname = current_database()"
        )
        wait_until_sync(
            lambda: (row := watcher.execute(gone).fetchone()) is None or row[0] == 0,
            timeout=20,
            what="the cancelled restore's backend to go",
        )
    assert any(b.get("phase") == "restore" for b in seen)
    assert pg_schema(pg_url) == schema and pg_rows(pg_url) == rows


def test_restore_with_password_wrong_password_and_database_down(
    backups: BackupActivities, bucket: str, scram_pg: ScramPg
) -> None:
    name = f"bk_pw_{uuid.uuid4().hex[:8]}"
    psql(scram_pg.url(scram_pg.password), f'CREATE DATABASE "{name}"')
    right = scram_pg.url(scram_pg.password).rsplit("/", 1)[0] + f"/{name}"
    wrong = right.replace(scram_pg.password, "Wr0ngPassw0rdXYZ")
    try:
        psql(right, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        schema_before, rows_before = pg_schema(right), pg_rows(right)
        ctx = context()
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("BK_RESTORE_DB_URL", right)
            out = run_activity(
                backups.create,
                BackupInput(context=ctx, database="${env.BK_RESTORE_DB_URL}", to=f"s3://{bucket}/p/"),
            ).result
            psql(right, "CREATE TABLE later (id int); DELETE FROM t")
            changed_schema, changed_rows = pg_schema(right), pg_rows(right)

            def restore(database: str) -> RestoreInput:
                return RestoreInput(
                    context=ctx, database=database, url=out.url, size=out.size, sha256=out.sha256
                )

            # A wrong password: permanent, never shown, nothing changed.
            error, _ = run_failing(backups.restore, restore(wrong))
            assert isinstance(error, ApplicationError) and error.non_retryable, error
            assert "password authentication failed" in str(error)
            assert "Wr0ngPassw0rdXYZ" not in str(error) and redact_url(wrong) in str(error)
            assert pg_schema(right) == changed_schema and pg_rows(right) == changed_rows

            # The server is down: retryable.
            down = f"postgresql://postgres:Sup3rSecretPw@127.0.0.1:{free_port()}/app"
            error, _ = run_failing(backups.restore, restore(down))
            assert isinstance(error, ApplicationError) and not error.non_retryable, error
            assert "Connection refused" in str(error) and "Sup3rSecretPw" not in str(error)

            # The right one, through ${env.X}: PGPASSWORD reaches psql.
            run_activity(backups.restore, restore("${env.BK_RESTORE_DB_URL}"))
        assert pg_schema(right) == schema_before and pg_rows(right) == rows_before
    finally:
        psql(scram_pg.url(scram_pg.password), f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
