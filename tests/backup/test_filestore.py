"""Issue #10.4: `file://` backups, with the S3 store's semantics, that survive a restart.

The embedded stack's default destination is a directory under its data dir: a backup is
a temp file fsynced and renamed into place, with its manifest beside it; a restore
checks size and sha256 first; retention, `backup list` and `backup restore` work the
same as with S3, and a new store on the same directory (a restarted stack) sees them.
"""

from __future__ import annotations

import json
import sqlite3
import stat
from pathlib import Path

import pytest
from temporalio.exceptions import ApplicationError
from typer.testing import CliRunner

from shipflow.activities.backup.activity import BackupActivities
from shipflow.activities.backup.catalog import list_backups
from shipflow.activities.backup.stores import FileStore
from shipflow.infra.cli.backup import app
from shipflow.workflows.io.backup import BackupInput, BackupOutput, RestoreInput
from tests.backup.conftest import pg_rows, pg_schema, psql, run_activity, run_failing
from tests.backup.test_postgres import BREAK, SCHEMA, context
from tests.backup.test_sqlite import dump, make_db


def backup(
    backups: BackupActivities, db: str, to: str, flow: str = "web", keep: int | None = None
) -> BackupOutput:
    request = BackupInput(context=context(flow=flow), database=db, to=to, keep=keep)
    out: BackupOutput = run_activity(backups.create, request).result
    return out


def restore_input(db: str, out: BackupOutput, **kw: object) -> RestoreInput:
    return RestoreInput(context=context(), database=db, url=out.url, **kw)  # type: ignore[arg-type]


def test_postgres_round_trip_through_a_directory(
    backups: BackupActivities, pg_url: str, tmp_path: Path
) -> None:
    psql(pg_url, SCHEMA)
    schema, rows = pg_schema(pg_url), pg_rows(pg_url)
    store_dir = tmp_path / "backups"
    out = backup(backups, pg_url, f"file://{store_dir}/")

    dump_file = Path(out.url[len("file://") :])
    assert out.url.startswith(f"file://{store_dir}/web/production/")
    assert dump_file.is_file() and dump_file.stat().st_size == out.size
    assert stat.S_IMODE(dump_file.stat().st_mode) == 0o600
    manifest = json.loads(Path(f"{dump_file}.json").read_text())
    assert manifest["sha256"] == out.sha256 and manifest["url"] == out.url
    assert not list(dump_file.parent.glob(".*.part"))  # no temp file left behind

    psql(pg_url, BREAK)
    run_activity(backups.restore, restore_input(pg_url, out, size=out.size, sha256=out.sha256))
    assert pg_schema(pg_url) == schema
    assert pg_rows(pg_url) == rows


@pytest.fixture
def sqlite_db(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "app.db"
    make_db(path)
    return path, f"sqlite:///{path}"


def test_corrupt_and_truncated_backups_are_refused(
    backups: BackupActivities, sqlite_db: tuple[Path, str], tmp_path: Path
) -> None:
    path, url = sqlite_db
    out = backup(backups, url, f"file://{tmp_path}/bk/")
    dump_file = Path(out.url[len("file://") :])
    original = dump_file.read_bytes()
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM lines")
    before = dump(path)

    flipped = bytearray(original)
    flipped[len(flipped) // 2] ^= 0xFF
    dump_file.write_bytes(bytes(flipped))  # same size, different bytes
    error, _ = run_failing(backups.restore, restore_input(url, out))  # sha256 from the manifest
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert error.type == "BackupCorrupt" and "sha256" in str(error)
    assert dump(path) == before

    dump_file.write_bytes(original[: len(original) // 2])
    error, _ = run_failing(
        backups.restore, restore_input(url, out, size=out.size, sha256=out.sha256)
    )
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert error.type == "BackupCorrupt" and "size" in str(error)
    assert dump(path) == before

    dump_file.unlink()
    error, _ = run_failing(
        backups.restore, restore_input(url, out, size=out.size, sha256=out.sha256)
    )
    assert isinstance(error, ApplicationError) and error.type == "BackupNotFound"

    dump_file.write_bytes(original)  # put back as it was: restorable again
    run_activity(backups.restore, restore_input(url, out))
    assert dump(path) != before


def test_retention_list_and_a_restarted_store(
    backups: BackupActivities, sqlite_db: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = sqlite_db
    to = f"file://{tmp_path}/bk/"
    outs = [backup(backups, url, to, flow="ret", keep=2) for _ in range(3)]
    other = backup(backups, url, to, flow="other", keep=1)  # another flow: never pruned by "ret"

    # A store object made afresh (what a restarted stack has) sees what is on disk.
    listed = list_backups(FileStore(), str(tmp_path / "bk").lstrip("/"), "ret")
    assert [m.url for m in listed] == [outs[2].url, outs[1].url]
    assert not Path(outs[0].url[len("file://") :]).exists()
    assert not Path(outs[0].url[len("file://") :] + ".json").exists()
    assert Path(other.url[len("file://") :]).exists()

    # A dump without a manifest (an attempt that died before writing it) is not listed.
    orphan = tmp_path / "bk" / "ret" / "production" / "run-x" / "db-backup.sqlite"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"half")
    assert len(list_backups(FileStore(), str(tmp_path / "bk").lstrip("/"), "ret")) == 2


def test_a_retried_backup_removes_the_abandoned_temp_file(
    backups: BackupActivities, sqlite_db: tuple[Path, str], tmp_path: Path
) -> None:
    _, url = sqlite_db
    ctx = context()
    folder = tmp_path / "bk" / ctx.flow / ctx.stage / ctx.run_id
    folder.mkdir(parents=True)
    leftover = folder / ".db-backup.sqlite.0123456789ab.part"
    leftover.write_bytes(b"what a killed attempt wrote")
    request = BackupInput(context=ctx, database=url, to=f"file://{tmp_path}/bk/")
    out: BackupOutput = run_activity(backups.create, request).result
    assert not leftover.exists()
    assert sorted(p.name for p in folder.iterdir()) == ["db-backup.sqlite", "db-backup.sqlite.json"]
    assert out.url == f"file://{folder}/db-backup.sqlite"


def test_env_reference_in_to_and_bad_urls(
    backups: BackupActivities,
    sqlite_db: tuple[Path, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _, url = sqlite_db
    monkeypatch.setenv("BK_FILE_DIR", str(tmp_path / "data"))
    out = backup(backups, url, "file://${env.BK_FILE_DIR}/backups/")
    assert out.url.startswith(f"file://{tmp_path}/data/backups/web/")
    s3_only = BackupInput(context=context(), database=url, to=f"file://{tmp_path}/", sse="AES256")
    error, _ = run_failing(backups.create, s3_only)
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert "backup.sse: only for s3:// destinations" in str(error)
    for bad in ("file://relative/dir/", f"file://{tmp_path}/../x/"):
        request = BackupInput(context=context(), database=url, to=bad)
        error, _ = run_failing(backups.create, request)
        assert isinstance(error, ApplicationError) and error.non_retryable
        assert error.type == "InvalidBackupUrl"


def test_cli_lists_and_restores_file_backups(
    backups: BackupActivities, sqlite_db: tuple[Path, str], tmp_path: Path
) -> None:
    path, url = sqlite_db
    to = f"file://{tmp_path}/bk/"
    out = backup(backups, url, to, flow="cli")
    want = dump(path)
    with sqlite3.connect(path) as conn:
        conn.execute("DELETE FROM lines")

    runner = CliRunner()
    listed = runner.invoke(app, ["list", "--flow", "cli", "--bucket", to, "--json"])
    assert listed.exit_code == 0, listed.output
    assert [m["url"] for m in json.loads(listed.stdout)] == [out.url]

    restored = runner.invoke(app, ["restore", out.url, "--to", url, "--yes"])
    assert restored.exit_code == 0, restored.output
    assert "verified" in restored.stdout
    assert dump(path) == want
