"""`BackupActivities`: the `backup` step and `undo: {restore}` as Temporal activities.

The activities resolve `${env.X}` references, open the store the URL names, heartbeat
progress (a cancelled activity stops the work from inside its heartbeat, so it leaves
neither parts in S3 nor a half-restored database), write progress to the step's log, and
turn dump failures into `ApplicationError`s with every secret masked. The work itself is in
`create.py` and `restore.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from shipflow.activities.backup.catalog import open_store
from shipflow.activities.backup.create import create_backup
from shipflow.activities.backup.restore import restore_backup
from shipflow.activities.backup.s3store import PART_SIZE
from shipflow.activities.backup.stores import (
    Beat,
    FileStore,
)
from shipflow.activities.core.settings import Settings
from shipflow.activities.core.steplogs import StepLogWriter
from shipflow.activities.dbdump.database import (
    DatabaseUrl,
    DumpError,
    parse_database,
)
from shipflow.activities.envrefs import resolve_env, secret_values
from shipflow.activities.progress import ActivityProgress
from shipflow.activities.s3 import S3Client
from shipflow.workflows.io.backup import (
    CREATE,
    RESTORE,
    BackupInput,
    BackupOutput,
    RestoreInput,
    RestoreOutput,
)
from shipflow.workflows.redaction import redact


def _application_error(e: DumpError, db_secrets: list[str]) -> ApplicationError:
    return ApplicationError(
        redact(str(e), db_secrets),
        type="BackupFailed" if e.retryable else "BackupFailedPermanently",
        non_retryable=not e.retryable,
    )


class _BackupLog:
    """Backup/restore progress as log lines: each phase once, then bytes and rate every 2 s."""

    EVERY_S = 2.0

    def __init__(self, log: StepLogWriter, clock: Callable[[], float] = time.monotonic):
        self._log = log
        self._clock = clock
        self._started = clock()
        self._phase: str | None = None
        self._at = 0.0

    def __call__(self, details: dict[str, Any]) -> None:
        phase = str(details.get("phase", ""))
        now = self._clock()
        if phase == self._phase and now - self._at < self.EVERY_S:
            return
        self._phase, self._at = phase, now
        size = int(details.get("bytes") or 0)
        rate = size / max(now - self._started, 1e-3)
        parts = f", {details['parts']} part(s)" if details.get("parts") else ""
        self._log.write(f"{phase}: {_mib(size)} MiB{parts}, {_mib(rate)} MiB/s")


def _mib(n: float) -> str:
    return f"{n / 1048576:.1f}"


def _beat_or_cancel(progress: ActivityProgress, log: _BackupLog | None = None) -> Beat:
    """Heartbeat, and stop the work once Temporal cancelled the activity or the worker stops.

    Raising from the heartbeat unwinds through the upload (aborted), pg_dump, and
    pg_restore and psql (killed before the COMMIT: the restore's transaction rolls
    back), so a cancelled step leaves neither parts in S3 nor a half-restored database.
    """

    def beat(details: dict[str, Any]) -> None:
        progress.beat(details)
        if log is not None:
            log(details)
        if progress.cancelled():
            raise CancelledError("backup/restore cancelled")

    return beat


class BackupActivities:
    """The backup and restore activities, given their S3 clients.

    Args:
        s3_factory: `endpoint or None -> S3 client` (`shipflow.activities.s3.S3Factory`).
        settings: the worker's settings.
        part_size: multipart part size; tests use small parts.
    """

    def __init__(
        self,
        s3_factory: Callable[[str | None], S3Client],
        settings: Settings,
        *,
        part_size: int = PART_SIZE,
        logs: Engine | None = None,
    ):
        self.s3_factory = s3_factory
        self.settings = settings
        self.part_size = part_size
        self._logs = logs

    @activity.defn(name=CREATE)
    def create(self, input: BackupInput) -> BackupOutput:
        """Back the step's database up to S3 or a directory (see the module docstring)."""
        progress = ActivityProgress(input.resume)
        log = StepLogWriter(
            self._logs, input.context.run_id, input.context.step_id, secret_values(input.database)
        )
        beat = _beat_or_cancel(progress, _BackupLog(log))
        db = self._database(input.database)
        to = resolve_env(input.to)
        store, prefix = open_store(to, self.s3_factory, input.endpoint)
        s3_only = [name for name in ("endpoint", "sse", "storage_class") if getattr(input, name)]
        if isinstance(store, FileStore) and s3_only:
            raise ApplicationError(
                f"backup.{', backup.'.join(s3_only)}: only for s3:// destinations, "
                f"not {redact(to)}",
                type="BackupFailedPermanently",
                non_retryable=True,
            )
        activity.logger.info("backing up %s to %s", db.display, redact(to))
        log.write(f"backing up {db.display} to {redact(to)} (attempt {activity.info().attempt})")
        try:
            out = create_backup(
                store,
                prefix,
                input,
                db,
                beat=beat,
                resume=progress.resume,
                part_size=self.part_size,
                log=activity.logger.warning,
            )
        except DumpError as e:
            log.write(f"backup failed: {redact(str(e), db.secrets)}")
            raise _application_error(e, db.secrets) from None
        log.write(f"backup done: {out.url} ({_mib(out.size)} MiB) in {out.duration_s:.1f}s")
        return out

    @activity.defn(name=RESTORE)
    def restore(self, input: RestoreInput) -> RestoreOutput:
        """Verify a backup and restore it into the step's database."""
        log = StepLogWriter(
            self._logs, input.context.run_id, input.context.step_id, secret_values(input.database)
        )
        beat = _beat_or_cancel(ActivityProgress(input.resume), _BackupLog(log))
        db = self._database(input.database)
        store, key = open_store(input.url, self.s3_factory, input.endpoint)
        activity.logger.info("restoring %s into %s", redact(input.url), db.display)
        log.write(f"restoring {redact(input.url)} into {db.display}")
        try:
            return restore_backup(
                store,
                key,
                db,
                size=input.size,
                sha256=input.sha256,
                beat=beat,
                owners=input.owners,
            )
        except DumpError as e:
            raise _application_error(e, db.secrets) from None

    @staticmethod
    def _database(database: str) -> DatabaseUrl:
        try:
            return parse_database(resolve_env(database))
        except DumpError as e:
            # `from None`: the cause's traceback would carry the raw text into history.
            raise ApplicationError(
                redact(str(e), secret_values(database)),
                type="BackupFailedPermanently",
                non_retryable=True,
            ) from None
