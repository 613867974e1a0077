"""SQLite backups: an online-backup snapshot while a writer keeps inserting, atomic restore."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from temporalio.exceptions import ApplicationError

from shipflow.activities.backup.activity import BackupActivities
from shipflow.activities.s3 import S3Client
from shipflow.workflows.io.backup import BackupInput, RestoreInput
from tests.backup.conftest import TEST_PART_SIZE, run_activity, run_failing
from tests.backup.test_postgres import context
from tests.helpers import wait_until_sync


def dump(path: Path) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


class Writer(threading.Thread):
    """Inserts an order and its line in one transaction, as fast as it can, until stopped."""

    def __init__(self, path: Path):
        super().__init__(daemon=True)
        self.path = path
        self.stop = threading.Event()
        self.inserted = 0
        self.errors: list[BaseException] = []

    def run(self) -> None:
        conn = sqlite3.connect(self.path, timeout=10)
        try:
            while not self.stop.is_set():
                with conn:
                    cur = conn.execute("INSERT INTO orders (note) VALUES (hex(randomblob(64)))")
                    conn.execute("INSERT INTO lines (order_id) VALUES (?)", (cur.lastrowid,))
                self.inserted += 1
        except BaseException as e:
            self.errors.append(e)
        finally:
            conn.close()


def make_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(
        """
        CREATE TABLE orders (id INTEGER PRIMARY KEY, note TEXT NOT NULL);
        CREATE TABLE lines (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL REFERENCES orders(id));
        CREATE INDEX lines_order ON lines (order_id);
        WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000)
        INSERT INTO orders (note) SELECT hex(randomblob(64)) FROM n;
        INSERT INTO lines (order_id) SELECT id FROM orders;
        """
    )
    conn.commit()
    conn.close()


def test_sqlite_backup_during_writes_then_restore(
    backups: BackupActivities, s3: S3Client, bucket: str, tmp_path: Path
) -> None:
    live = tmp_path / "app" / "app.db"
    live.parent.mkdir()
    make_db(live)
    url = f"sqlite:///{live}"
    writer = Writer(live)
    writer.start()
    try:
        wait_until_sync(lambda: writer.inserted >= 50)
        before = writer.inserted
        ctx = context(step="sqlite-backup")
        out = run_activity(
            backups.create, BackupInput(context=ctx, database=url, to=f"s3://{bucket}/s/")
        ).result
        wait_until_sync(lambda: writer.inserted >= before + 50)  # it kept writing throughout
    finally:
        writer.stop.set()
        writer.join(timeout=10)
    assert not writer.errors, writer.errors
    assert out.key.endswith("/sqlite-backup.sqlite") and out.size > 3 * TEST_PART_SIZE

    snapshot = tmp_path / "snapshot.db"
    snapshot.write_bytes(s3.get_object(Bucket=bucket, Key=out.key)["Body"].read())
    conn = sqlite3.connect(snapshot)
    orders, lines, top = conn.execute(
        "SELECT (SELECT count(*) FROM orders), (SELECT count(*) FROM lines), (SELECT max(id) FROM orders)"
    ).fetchone()
    conn.close()
    # A consistent snapshot: every order has its line, ids have no holes, taken mid-writes.
    assert orders == lines == top
    assert 3000 + before <= orders < 3000 + writer.inserted

    broken = sqlite3.connect(live)
    broken.executescript("DROP TABLE lines; DELETE FROM orders WHERE id > 10; ALTER TABLE orders ADD x")
    broken.close()

    result = run_activity(
        backups.restore,
        RestoreInput(context=ctx, database=url, url=out.url, size=out.size, sha256=out.sha256),
    ).result
    assert result.size == out.size
    assert dump(live) == dump(snapshot)
    leftovers = [p.name for p in live.parent.iterdir() if p.name.startswith(".shipflow-restore")]
    assert leftovers == []


def test_sqlite_restore_refuses_while_a_writer_holds_the_database(
    backups: BackupActivities, bucket: str, tmp_path: Path
) -> None:
    live = tmp_path / "app.db"
    make_db(live)
    url = f"sqlite:///{live}"
    ctx = context(step="sqlite-backup")
    out = run_activity(backups.create, BackupInput(context=ctx, database=url, to=f"s3://{bucket}/")).result
    holder = sqlite3.connect(live, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    holder.execute("DELETE FROM lines")
    try:
        error, _ = run_failing(
            backups.restore,
            RestoreInput(context=ctx, database=url, url=out.url, size=out.size, sha256=out.sha256),
        )
    finally:
        holder.execute("COMMIT")
        holder.close()
    assert isinstance(error, ApplicationError) and not error.non_retryable
    assert "in use" in str(error)
    conn = sqlite3.connect(live)
    assert conn.execute("SELECT count(*) FROM lines").fetchone() == (0,)  # untouched
    conn.close()

    # Once the writer let go, the retry succeeds.
    run_activity(
        backups.restore,
        RestoreInput(context=ctx, database=url, url=out.url, size=out.size, sha256=out.sha256),
    )
    conn = sqlite3.connect(live)
    assert conn.execute("SELECT count(*) FROM lines").fetchone() == (3000,)
    conn.close()


def test_sqlite_backup_cannot_restore_into_postgres(
    backups: BackupActivities, bucket: str, tmp_path: Path, pg_url: str
) -> None:
    live = tmp_path / "app.db"
    make_db(live)
    ctx = context()
    out = run_activity(
        backups.create, BackupInput(context=ctx, database=f"sqlite:///{live}", to=f"s3://{bucket}/")
    ).result
    error, _ = run_failing(
        backups.restore, RestoreInput(context=ctx, database=pg_url, url=out.url)
    )
    assert isinstance(error, ApplicationError) and error.non_retryable
    assert "sqlite backup" in str(error)
