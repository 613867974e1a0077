"""`create_backup`: dump a database into a store under the step's key, write its manifest, apply retention.

PostgreSQL is streamed from `pg_dump` straight into the store; SQLite is copied with its
online backup API into a temporary file first (a consistent snapshot while the app
writes), then streamed the same way. What is known up front (source, versions, flow,
stage, run, step) is set as the dump object's own metadata.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from temporalio.exceptions import ApplicationError

from shipflow.activities.backup.catalog import (
    BackupManifest,
    apply_retention,
    backup_key,
    shipflow_version,
)
from shipflow.activities.backup.s3store import PART_SIZE
from shipflow.activities.backup.stores import (
    BackupProgress,
    BackupStore,
    Beat,
)
from shipflow.activities.dbdump.database import (
    DatabaseUrl,
)
from shipflow.activities.dbdump.pg_dump import PgDump, tool_version
from shipflow.activities.dbdump.sqlite import (
    sqlite_snapshot,
    sqlite_version,
)
from shipflow.workflows.io.backup import (
    BackupInput,
    BackupOutput,
)


def _ascii(value: str) -> str:
    """S3 user metadata is ASCII only: percent-encode anything else."""
    return quote(value, safe=" :/@?&=+,;()%-._~")


def create_backup(
    store: BackupStore,
    prefix: str,
    request: BackupInput,
    db: DatabaseUrl,
    *,
    beat: Beat,
    resume: dict[str, Any] | None = None,
    part_size: int = PART_SIZE,
    log: Callable[[str], None] = lambda _msg: None,
) -> BackupOutput:
    """Dump `db` into the store under the step's key, write its manifest, apply retention.

    Args:
        store: where the backup goes (`open_store(request.to)`).
        prefix: the key prefix `request.to` names in the store.
        request: the step (destination, options, run context).
        db: the parsed database URL (`${env.X}` already resolved).
        beat: heartbeat callback; gets `BackupProgress` dicts.
        resume: the previous attempt's last heartbeat, if any.
        part_size: multipart part size (S3's minimum is 5 MiB).
        log: where retention problems are reported (they do not fail the step).

    Raises:
        DumpError: the dump failed (retryable or not, per the cause).
        ApplicationError: the store failed (S3 unreachable: retryable; NoSuchBucket,
            AccessDenied: not).
    """
    started = time.monotonic()
    key = backup_key(prefix, request.context, db.kind)
    store.abort_abandoned(key, resume)

    tool = tool_version("pg_dump") if db.kind == "postgresql" else sqlite_version()
    version = shipflow_version()
    metadata = {
        "source": _ascii(db.display),
        "tool-version": _ascii(tool),
        "shipflow-version": _ascii(version),
        "flow": _ascii(request.context.flow),
        "stage": _ascii(request.context.stage),
        "run-id": _ascii(request.context.run_id),
        "step-id": _ascii(request.context.step_id),
    }
    extra: dict[str, str] = {}
    if request.sse:
        extra["ServerSideEncryption"] = request.sse
    if request.storage_class:
        extra["StorageClass"] = request.storage_class

    if db.kind == "postgresql":
        dump = PgDump(db)
        try:
            size, sha256 = store.upload(
                key,
                dump.stdout,
                finish=dump.wait,
                metadata=metadata,
                extra=extra,
                beat=beat,
                part_size=part_size,
            )
        finally:
            dump.close()
    else:
        with tempfile.TemporaryDirectory(prefix="shipflow-sqlite-") as tmp:
            snapshot = Path(tmp) / "snapshot.sqlite"
            progress = BackupProgress(phase="dump", key=key).model_dump(mode="json")
            sqlite_snapshot(db, snapshot, on_wait=lambda: beat(progress))
            with open(snapshot, "rb") as src:
                size, sha256 = store.upload(
                    key,
                    src,
                    finish=lambda: None,
                    metadata=metadata,
                    extra=extra,
                    beat=beat,
                    part_size=part_size,
                )

    duration = time.monotonic() - started
    url = store.url(key)
    manifest = BackupManifest(
        key=key,
        url=url,
        size=size,
        sha256=sha256,
        kind=db.kind,
        database=db.display,
        tool_version=tool,
        shipflow_version=version,
        flow=request.context.flow,
        stage=request.context.stage,
        run_id=request.context.run_id,
        step_id=request.context.step_id,
        created_at=datetime.now(UTC),
        duration_s=round(duration, 3),
    )
    store.put_manifest(key, manifest.model_dump_json(indent=2).encode(), extra)
    if request.keep:
        try:
            deleted = apply_retention(store, prefix, request.context.flow, db.display, request.keep)
            if deleted:
                log(f"retention keep={request.keep}: deleted {', '.join(deleted)}")
        except ApplicationError as e:
            # The backup itself is done and safe; the next backup's retention catches up.
            log(f"retention keep={request.keep} failed (backup kept): {e}")
    return BackupOutput(
        key=key, url=url, size=size, sha256=sha256, duration_s=round(time.monotonic() - started, 3)
    )
