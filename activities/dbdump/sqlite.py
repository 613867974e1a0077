"""SQLite: a consistent snapshot with the online backup API, a check, and an atomic replace.

A snapshot copies the live database while the app writes; a restore checks the downloaded
file is a sound SQLite database, then renames it over the live file (same directory, so the
rename is atomic).
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path

from shipflow.activities.dbdump.database import DatabaseUrl, DumpError


def sqlite_version() -> str:
    return f"sqlite {sqlite3.sqlite_version}"


def sqlite_snapshot(db: DatabaseUrl, dest: Path, *, on_wait: Callable[[], None]) -> None:
    """Copy a live SQLite database into `dest` with the online backup API.

    The copy is one backup step (`pages=-1`): it reads a single consistent snapshot
    even while other connections write (a stepwise copy restarts on every foreign write
    and may never finish under a busy writer). The step runs in a helper thread, which
    releases the GIL inside SQLite, while the calling thread runs `on_wait` about every
    second (the activity heartbeats there).

    Raises:
        DumpError: the file does not exist (non-retryable) or SQLite failed (retryable).
    """
    assert db.path is not None
    if not db.path.is_file():
        raise DumpError(f"SQLite database {db.display} does not exist", retryable=False)
    failure: list[BaseException] = []

    def copy() -> None:
        try:
            src = sqlite3.connect(f"file:{db.path}?mode=ro", uri=True, timeout=30)
            try:
                dst = sqlite3.connect(dest)
                try:
                    src.backup(dst, pages=-1)
                finally:
                    dst.close()
            finally:
                src.close()
        except BaseException as e:
            failure.append(e)

    worker = threading.Thread(target=copy, name="sqlite-backup", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(timeout=1.0)
        if worker.is_alive():
            on_wait()
    if failure:
        raise DumpError(f"SQLite backup of {db.display} failed: {failure[0]}", retryable=True)


def sqlite_check(path: Path) -> None:
    """Refuse a downloaded file that is not a sound SQLite database."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = conn.execute("PRAGMA quick_check").fetchone()
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        raise DumpError(f"backup is not a SQLite database: {e}", retryable=False) from None
    if not result or result[0] != "ok":
        raise DumpError(f"backup fails SQLite's quick_check: {result}", retryable=False)


def sqlite_replace(db: DatabaseUrl, new_file: Path) -> None:
    """Atomically put `new_file` (in the same directory) in place of the live database.

    Takes `BEGIN EXCLUSIVE` on the live database first, so no connection is writing
    (or, in rollback-journal mode, reading) while the file is swapped; a held lock is a
    retryable error, so the step retries once the app has let go. The WAL is
    checkpointed and truncated first, so a stale `-wal` file can never be replayed onto
    the restored database. The file was fsynced by the caller; the directory is fsynced
    after `os.replace`, so the swap survives a power cut.

    Raises:
        DumpError: (retryable) the database is locked by another connection.
    """
    assert db.path is not None
    live = db.path
    if live.exists():
        conn = sqlite3.connect(live, timeout=0.5, isolation_level=None)
        try:
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                conn.execute("BEGIN EXCLUSIVE")
            except sqlite3.OperationalError as e:
                raise DumpError(
                    f"SQLite database {db.display} is in use ({e}): stop its writers and retry",
                    retryable=True,
                ) from None
            os.replace(new_file, live)
            conn.rollback()
        finally:
            conn.close()
        # The old connection's close may leave an empty -wal/-shm of the replaced file.
        for suffix in ("-wal", "-shm", "-journal"):
            side = Path(f"{live}{suffix}")
            if side.exists() and side.stat().st_size == 0:
                side.unlink(missing_ok=True)
    else:
        live.parent.mkdir(parents=True, exist_ok=True)
        os.replace(new_file, live)
    dir_fd = os.open(live.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
