"""Failure paths of the backup activities: S3 away, abandoned uploads, bad URLs and credentials."""

from __future__ import annotations

import subprocess
from typing import Any
from urllib.parse import urlsplit

import pytest
from temporalio.exceptions import ApplicationError

from shipflow.activities.backup.activity import BackupActivities
from shipflow.activities.core.settings import Settings
from shipflow.activities.dbdump.database import redact_url
from shipflow.activities.s3 import S3Client, S3Factory
from shipflow.workflows.io.backup import BackupInput, RestoreInput
from tests.backup.conftest import (
    TEST_PART_SIZE,
    ScramPg,
    psql,
    run_activity,
    run_failing,
)
from tests.backup.proxy import TcpProxy
from tests.backup.test_postgres import context

BIG = """
CREATE TABLE blobs (id int PRIMARY KEY, data bytea);
INSERT INTO blobs SELECT g, decode(md5(g::text) || md5((g + 1)::text) || md5((g + 2)::text), 'hex')
  FROM generate_series(1, 12000) g;
"""


def uploads(s3: S3Client, bucket: str) -> list[dict[str, Any]]:
    return list(s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def objects(s3: S3Client, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", []))


def test_s3_unreachable_mid_upload_then_retry_leaves_no_orphan(
    s3: S3Client, s3_endpoint: str, bucket: str, pg_url: str, bk_settings: Settings
) -> None:
    psql(pg_url, BIG)
    proxy = TcpProxy(int(urlsplit(s3_endpoint).port or 0)).start()
    try:
        backups = BackupActivities(S3Factory(bk_settings), bk_settings, part_size=TEST_PART_SIZE)
        request = BackupInput(
            context=context(), database=pg_url, to=f"s3://{bucket}/u/", endpoint=proxy.url
        )

        def cut_after_first_part(beat: dict[str, Any]) -> None:
            if beat.get("parts", 0) >= 1:
                proxy.stop()

        error, beats = run_failing(backups.create, request, on_heartbeat=cut_after_first_part)
        assert isinstance(error, ApplicationError), error
        assert not error.non_retryable
        assert f"S3 endpoint {proxy.url} unreachable" in str(error)
        # The abort could not reach S3 either: the abandoned upload is still there...
        left = uploads(s3, bucket)
        assert [u["UploadId"] for u in left] == [beats[-1]["upload_id"]]

        # ...while S3 stays away, every attempt fails the same clear, retryable way.
        error, _ = run_failing(backups.create, request)
        assert isinstance(error, ApplicationError) and not error.non_retryable
        assert "unreachable" in str(error)

        # S3 is back: the retry (with the last heartbeat) aborts it and completes.
        proxy.start()
        out = run_activity(backups.create, request, heartbeat_details=[beats[-1]]).result
        assert uploads(s3, bucket) == []
        assert objects(s3, bucket) == [out.key, out.key + ".json"]
        body = s3.get_object(Bucket=bucket, Key=out.key)["Body"].read()
        assert len(body) == out.size > 3 * TEST_PART_SIZE
    finally:
        proxy.stop()


def test_retry_after_abandoned_upload_completes_with_one_object(
    backups: BackupActivities, s3: S3Client, bucket: str, pg_url: str
) -> None:
    psql(pg_url, BIG)
    ctx = context()
    request = BackupInput(context=ctx, database=pg_url, to=f"s3://{bucket}/a/")
    key = f"a/web/production/{ctx.run_id}/db-backup.pgdump"
    # What a worker that crashed mid-backup leaves: an upload with parts, and its heartbeat;
    # plus one from an attempt that died before its first heartbeat.
    heartbeated = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    s3.upload_part(Bucket=bucket, Key=key, UploadId=heartbeated, PartNumber=1, Body=b"x" * TEST_PART_SIZE)
    silent = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    other_key = s3.create_multipart_upload(Bucket=bucket, Key="a/unrelated")["UploadId"]
    details = {"phase": "upload", "key": key, "upload_id": heartbeated, "bytes": TEST_PART_SIZE, "parts": 1}

    out = run_activity(backups.create, request, heartbeat_details=[details]).result

    assert out.key == key
    assert [u["UploadId"] for u in uploads(s3, bucket)] == [other_key]
    assert silent != heartbeated
    assert objects(s3, bucket) == [key, key + ".json"]

    # The same through `resume` (the interpreter's hand-over after a lost worker).
    again = s3.create_multipart_upload(Bucket=bucket, Key=key)["UploadId"]
    resumed = request.model_copy(update={"resume": {**details, "upload_id": again}})
    run_activity(backups.create, resumed)
    assert [u["UploadId"] for u in uploads(s3, bucket)] == [other_key]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://postgres:Sup3rSecretPw@127.0.0.1:5432/no_such_db_bk", "does not exist"),
        ("postgresql://nobody_bk:Sup3rSecretPw@127.0.0.1:5432/postgres", "does not exist"),
        ("mysql://root:Sup3rSecretPw@127.0.0.1/app", "unsupported database URL"),
        ("postgresql://postgres:Sup3rSecretPw@127.0.0.1:notaport/db", "bad port"),
        ("sqlite:///nonexistent/dir/app.db", "does not exist"),
    ],
)
def test_bad_database_url_is_permanent_and_redacted(
    backups: BackupActivities, s3: S3Client, bucket: str, url: str, expected: str
) -> None:
    error, _ = run_failing(
        backups.create, BackupInput(context=context(), database=url, to=f"s3://{bucket}/b/")
    )
    assert isinstance(error, ApplicationError), error
    assert error.non_retryable
    assert expected in str(error)
    assert "Sup3rSecretPw" not in str(error)
    assert objects(s3, bucket) == [] and uploads(s3, bucket) == []


def test_wrong_password_is_permanent_and_never_shown(
    backups: BackupActivities, s3: S3Client, bucket: str, scram_pg: ScramPg
) -> None:
    wrong = scram_pg.url("Wr0ngPassw0rdXYZ")
    error, _ = run_failing(
        backups.create, BackupInput(context=context(), database=wrong, to=f"s3://{bucket}/w/")
    )
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert "password authentication failed" in str(error)
    assert "Wr0ngPassw0rdXYZ" not in str(error)
    assert redact_url(wrong) in str(error)
    assert objects(s3, bucket) == []

    # The right password, given through ${env.X}, works: PGPASSWORD reaches pg_dump.
    right = scram_pg.url(scram_pg.password)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BK_TEST_DB_URL", right)
        out = run_activity(
            backups.create,
            BackupInput(context=context(), database="${env.BK_TEST_DB_URL}", to=f"s3://{bucket}/w/"),
        ).result
    head = s3.head_object(Bucket=bucket, Key=out.key)
    assert scram_pg.password not in str(head["Metadata"])
    manifest = s3.get_object(Bucket=bucket, Key=out.key + ".json")["Body"].read().decode()
    assert scram_pg.password not in manifest and redact_url(right) in manifest


def test_password_is_not_on_the_command_line(scram_pg: ScramPg) -> None:
    from shipflow.activities.dbdump.database import parse_database
    from shipflow.activities.dbdump.pg_dump import PgDump

    dump = PgDump(parse_database(scram_pg.url(scram_pg.password)))
    try:
        args = subprocess.run(
            ["ps", "-o", "args=", "-p", str(dump.proc.pid)], capture_output=True, text=True
        ).stdout
        assert scram_pg.password not in args
        assert str(dump.proc.args).count(scram_pg.password) == 0
        dump.stdout.read()
        dump.wait()
    finally:
        dump.close()


def test_missing_env_var_is_permanent(backups: BackupActivities, bucket: str) -> None:
    error, _ = run_failing(
        backups.create,
        BackupInput(context=context(), database="${env.BK_NOT_SET_ANYWHERE}", to=f"s3://{bucket}/"),
    )
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert "BK_NOT_SET_ANYWHERE" in str(error)


def test_no_such_bucket_is_permanent_and_leaves_nothing(
    backups: BackupActivities, s3: S3Client, pg_url: str
) -> None:
    psql(pg_url, "CREATE TABLE t (id int)")
    error, _ = run_failing(
        backups.create,
        BackupInput(context=context(), database=pg_url, to="s3://bk-no-such-bucket-here/"),
    )
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert "NoSuchBucket" in str(error)


def test_restore_of_a_missing_backup_is_permanent(
    backups: BackupActivities, bucket: str, pg_url: str
) -> None:
    error, _ = run_failing(
        backups.restore,
        RestoreInput(context=context(), database=pg_url, url=f"s3://{bucket}/nope.pgdump"),
    )
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert "no manifest" in str(error)


def test_unreachable_s3_at_start_is_retryable(backups: BackupActivities, pg_url: str) -> None:
    from tests.helpers import free_port

    dead = f"http://127.0.0.1:{free_port()}"
    error, _ = run_failing(
        backups.create,
        BackupInput(context=context(), database=pg_url, to="s3://any/", endpoint=dead),
    )
    assert isinstance(error, ApplicationError) and not error.non_retryable
    assert f"S3 endpoint {dead} unreachable" in str(error)


def test_redact_url() -> None:
    assert redact_url("postgresql://u:p%40ss@h:5/db?sslmode=require") == "postgresql://u@h:5/db?sslmode=require"
    assert redact_url("postgresql://h/db?password=x&user=u") == "postgresql://h/db?user=u"
    assert redact_url("postgresql://:pw@h/db") == "postgresql://h/db"
    assert redact_url("sqlite:////tmp/a.db") == "sqlite:////tmp/a.db"
    assert redact_url("sqlite:///rel/a.db") == "sqlite:///rel/a.db"
    assert redact_url("postgresql://u:pw@h") == "postgresql://u@h"


def test_pg_dump_dying_mid_dump_leaves_no_object_and_no_upload(
    backups: BackupActivities, s3: S3Client, bucket: str, pg_url: str
) -> None:
    import psycopg

    psql(pg_url, BIG)
    name = urlsplit(pg_url).path.lstrip("/")
    admin = pg_url.rsplit("/", 1)[0] + "/postgres"

    def kill_dump(beat: dict[str, Any]) -> None:
        # pg_dump waits for the lock below, and the activity heartbeats meanwhile.
        if beat.get("phase") == "dump":
            psql(
                admin,
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{name}' AND application_name = 'pg_dump'",
            )

    with psycopg.connect(pg_url) as locker:
        locker.execute("LOCK TABLE blobs IN ACCESS EXCLUSIVE MODE")
        error, beats = run_failing(
            backups.create,
            BackupInput(context=context(), database=pg_url, to=f"s3://{bucket}/k/"),
            on_heartbeat=kill_dump,
        )
        locker.rollback()
    assert beats and beats[0]["phase"] == "dump"
    assert isinstance(error, ApplicationError) and not error.non_retryable, error
    assert "pg_dump failed" in str(error)
    assert uploads(s3, bucket) == [] and objects(s3, bucket) == []


def test_cancelled_backup_aborts_its_upload(
    backups: BackupActivities, s3: S3Client, bucket: str, pg_url: str
) -> None:
    from temporalio.exceptions import CancelledError
    from temporalio.testing import ActivityEnvironment

    psql(pg_url, BIG)
    env = ActivityEnvironment()
    seen: list[dict[str, Any]] = []

    def cancel_after_first_part(beat: dict[str, Any]) -> None:
        seen.append(beat)
        if beat.get("parts", 0) >= 1:
            env.cancel()

    env.on_heartbeat = cancel_after_first_part
    with pytest.raises(CancelledError):
        env.run(backups.create, BackupInput(context=context(), database=pg_url, to=f"s3://{bucket}/x/"))
    assert any(b.get("upload_id") for b in seen)
    assert uploads(s3, bucket) == [] and objects(s3, bucket) == []


@pytest.mark.parametrize(
    ("code", "permanent"),
    [("AccessDenied", True), ("NoSuchBucket", True), ("InternalError", False), ("SlowDown", False)],
)
def test_s3_client_errors_map_to_retry_semantics(
    s3: S3Client, code: str, permanent: bool
) -> None:
    from botocore.exceptions import ClientError

    from shipflow.activities.s3 import raise_s3_error

    failure = ClientError({"Error": {"Code": code, "Message": "nope"}}, "PutObject")
    with pytest.raises(ApplicationError) as info:
        raise_s3_error(failure, s3, "uploading s3://b/k")
    assert info.value.non_retryable is permanent
    assert code in str(info.value) and "uploading s3://b/k" in str(info.value)


def test_database_down_is_retryable_and_redacted(backups: BackupActivities, bucket: str) -> None:
    from tests.helpers import free_port

    url = f"postgresql://postgres:Sup3rSecretPw@127.0.0.1:{free_port()}/app"
    error, _ = run_failing(
        backups.create, BackupInput(context=context(), database=url, to=f"s3://{bucket}/d/")
    )
    assert isinstance(error, ApplicationError) and not error.non_retryable
    assert "Connection refused" in str(error) and redact_url(url) in str(error)
    assert "Sup3rSecretPw" not in str(error)
