"""`restore_backup`: verify a backup (size and sha256), then restore it into a database.

Nothing touches the database before the whole object was downloaded and matched both. A
PostgreSQL restore is exact and atomic (`shipflow.activities.dbdump.pg_restore`); a SQLite
restore replaces the file atomically.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from temporalio.exceptions import ApplicationError

from shipflow.activities.backup.catalog import read_manifest
from shipflow.activities.backup.stores import (
    BackupProgress,
    BackupStore,
    Beat,
)
from shipflow.activities.dbdump.database import (
    SUFFIXES,
    DatabaseKind,
    DatabaseUrl,
)
from shipflow.activities.dbdump.pg_restore import Owners, pg_restore
from shipflow.activities.dbdump.sqlite import (
    sqlite_check,
    sqlite_replace,
)
from shipflow.workflows.io.backup import (
    RestoreOutput,
)


def _kind_of_key(key: str) -> DatabaseKind | None:
    for kind, suffix in SUFFIXES.items():
        if key.endswith(suffix):
            return kind
    return None


def restore_backup(
    store: BackupStore,
    key: str,
    db: DatabaseUrl,
    *,
    size: int | None,
    sha256: str | None,
    beat: Beat,
    owners: Owners = "keep",
) -> RestoreOutput:
    """Verify the backup at `key` in `store`, then restore it into `db`.

    Size and sha256 come from the caller (the backup step's output) or, when not
    given, from the backup's manifest. Nothing touches the database before the whole
    object was downloaded and matched both. PostgreSQL ends up exactly as it was at
    backup time, objects created since then dropped (see `shipflow.activities.dbdump.pg_restore`).

    Raises:
        ApplicationError: missing, corrupt or mismatched backup (non-retryable); S3 failures.
        DumpError: the PostgreSQL restore failed and was rolled back, or the SQLite
            database is in use (retryable).
    """
    started = time.monotonic()
    url = store.url(key)
    kind = _kind_of_key(key)
    if size is None or sha256 is None:
        manifest = read_manifest(store, key)
        size = manifest.size if size is None else size
        sha256 = manifest.sha256 if sha256 is None else sha256
        kind = manifest.kind
    if kind is not None and kind != db.kind:
        raise ApplicationError(
            f"{url} is a {kind} backup and cannot be restored into {db.display}",
            type="BackupMismatch",
            non_retryable=True,
        )
    # SQLite: download next to the live file, so the final os.replace is atomic.
    tmp_parent = db.path.parent if db.kind == "sqlite" and db.path is not None else None
    if tmp_parent is not None:
        tmp_parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".shipflow-restore-", dir=tmp_parent) as tmp:
        dump = Path(tmp) / f"restore{SUFFIXES[db.kind]}"
        store.download_verified(key, dump, size=size, sha256=sha256, beat=beat)
        restoring = BackupProgress(phase="restore", key=key, bytes=size).model_dump(mode="json")
        beat(restoring)
        if db.kind == "postgresql":
            pg_restore(db, dump, owners=owners, on_wait=lambda: beat(restoring))
        else:
            sqlite_check(dump)
            sqlite_replace(db, dump)
    return RestoreOutput(key=key, size=size, duration_s=round(time.monotonic() - started, 3))


# ---------------------------------------------------------------- activities
