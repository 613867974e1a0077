"""Database backups to S3 (or a `file://` directory) and verified restores: the `backup`
step and `undo: {restore}`.

The functions here work on a `BackupStore` (`shipflow.activities.stores`): `S3Store` below, or
`FileStore` for `file:///abs/dir/`, with the same layout, manifest, retention and
verification; `open_store(url)` picks one. What follows describes S3; the file store
writes a temporary file and renames it into place instead of a multipart upload.

A backup streams the dump straight into S3: `pg_dump --format=custom`'s stdout is cut
into parts of `part_size` bytes (8 MiB) by a reader thread and uploaded as an S3
multipart upload while pg_dump keeps writing, with at most three parts in memory (one
being read, one queued, one uploading) and no temporary file. A dump smaller than one
part is a single `put_object`. SQLite is copied with its online backup API into a
temporary file first (a consistent snapshot while the app writes), then streamed the
same way.

Object layout: `<prefix>/<flow>/<stage>/<run_id>/<step_id>.pgdump` (or `.sqlite`) and,
next to it, a manifest `<key>.json` (`BackupManifest`) with size, sha256, the source
database without credentials, tool and shipflow versions. Why a sidecar manifest rather
than rewriting the object's metadata with `copy_object` once the upload completes: a
self-copy is limited to 5 GiB (bigger dumps would need a multipart copy), costs a full
server-side copy of the dump, and must repeat encryption and storage-class options; a
manifest is one small PUT, and because it is written only after the dump object is
complete it doubles as the "this backup is complete" marker that listings and
retention rely on. What is known up front (source, versions, flow, stage, run, step)
is also set as the dump object's own metadata, and a single-PUT dump carries its size
and sha256 there too.

A retried backup (Temporal retry, or a new execution after a lost worker, which gets
the last heartbeat as `resume`) first aborts the multipart uploads left on its key,
so abandoned parts never accumulate. A restore downloads the object to a temporary
file while hashing it and refuses a truncated or corrupt object before it touches the
database. A PostgreSQL restore is exact: in one transaction it drops every user object
the database has now (what a migration created after the backup included), then
recreates everything from the dump (`shipflow.activities.dbdump.pg_restore`); a failure rolls all
of it back. By default it restores the dump's owners and grants too (`owners="keep"`;
`"drop"` gives every object to the restoring user, see `shipflow.activities.dbdump.pg_restore`).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import BaseModel, ValidationError
from sqlalchemy import Engine
from temporalio import activity
from temporalio.exceptions import ApplicationError, CancelledError

from shipflow.activities.core.settings import Settings
from shipflow.activities.core.steplogs import StepLogWriter
from shipflow.activities.dbdump import (
    SUFFIXES,
    DatabaseKind,
    DatabaseUrl,
    DumpError,
    Owners,
    PgDump,
    parse_database,
    pg_restore,
    redact_url,
    sqlite_check,
    sqlite_replace,
    sqlite_snapshot,
    sqlite_version,
    tool_version,
)
from shipflow.activities.envrefs import resolve_env, secret_values
from shipflow.activities.progress import ActivityProgress
from shipflow.activities.s3 import S3Client, parse_s3_url, raise_s3_error
from shipflow.activities.stores import (
    DOWNLOAD_CHUNK,
    HEARTBEAT_EVERY_S,
    MANIFEST_SUFFIX,
    BackupProgress,
    BackupStore,
    Beat,
    FileStore,
    PartReader,
    corrupt,
    parse_file_url,
)
from shipflow.workflows.io.backup import (
    CREATE,
    RESTORE,
    BackupInput,
    BackupOutput,
    RestoreInput,
    RestoreOutput,
)
from shipflow.workflows.io.common import StepContext
from shipflow.workflows.redaction import redact

PART_SIZE = 8 * 1024 * 1024


class BackupManifest(BaseModel):
    """The sidecar `<key>.json` written once the dump object is complete."""

    key: str
    url: str
    size: int
    sha256: str
    kind: DatabaseKind
    database: str
    tool_version: str
    shipflow_version: str
    flow: str
    stage: str
    run_id: str
    step_id: str
    created_at: datetime
    duration_s: float


def shipflow_version() -> str:
    try:
        return importlib_metadata.version("shipflow")
    except importlib_metadata.PackageNotFoundError:
        return "0.1.0+src"


def backup_key(prefix: str, context: StepContext, kind: DatabaseKind) -> str:
    """`<prefix>/<flow>/<stage>/<run_id>/<step_id><suffix>`: one object per run and step.

    A retry of the same step writes the same key, so retries never leave extra backups.
    """
    parts = [prefix.strip("/"), context.flow, context.stage, context.run_id]
    return "/".join(p for p in parts if p) + f"/{context.step_id}{SUFFIXES[kind]}"


def flow_prefix(prefix: str, flow: str) -> str:
    """The key prefix under which every backup of `flow` lives (ends with `/`)."""
    return "/".join(p for p in (prefix.strip("/"), flow) if p) + "/"


def _ascii(value: str) -> str:
    """S3 user metadata is ASCII only: percent-encode anything else."""
    return quote(value, safe=" :/@?&=+,;()%-._~")


# ---------------------------------------------------------------- streaming upload


def _s3(client: S3Client, what: str, call: Callable[..., Any], **kwargs: Any) -> Any:
    try:
        return call(**kwargs)
    except (BotoCoreError, ClientError) as e:
        raise_s3_error(e, client, what)


def abort_abandoned_uploads(
    client: S3Client, bucket: str, key: str, resume: dict[str, Any] | None
) -> list[str]:
    """Abort the multipart uploads an earlier attempt left on `key`.

    The heartbeated upload id is aborted first; then every other in-progress upload on
    exactly this key, which covers an attempt that died before its first heartbeat.
    The key is unique to the run and step, so these uploads can only be ours.

    Returns:
        The aborted upload ids.
    """
    ids: list[str] = []
    if resume:
        try:
            old = BackupProgress.model_validate(resume)
        except ValidationError:
            old = None
        if old is not None and old.upload_id and old.key == key:
            ids.append(old.upload_id)
    listing = _s3(
        client,
        f"listing multipart uploads on s3://{bucket}/{key}",
        client.list_multipart_uploads,
        Bucket=bucket,
        Prefix=key,
    )
    ids += [u["UploadId"] for u in listing.get("Uploads", []) if u["Key"] == key]
    aborted: list[str] = []
    for upload_id in dict.fromkeys(ids):
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
            aborted.append(upload_id)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                raise_s3_error(e, client, f"aborting abandoned upload on s3://{bucket}/{key}")
        except BotoCoreError as e:
            raise_s3_error(e, client, f"aborting abandoned upload on s3://{bucket}/{key}")
    return aborted


def stream_upload(
    client: S3Client,
    bucket: str,
    key: str,
    src: IO[bytes],
    *,
    finish: Callable[[], None],
    metadata: dict[str, str],
    extra: dict[str, str],
    beat: Beat,
    part_size: int = PART_SIZE,
) -> tuple[int, str]:
    """Upload everything `src` yields to `s3://bucket/key`, hashing on the way.

    `finish()` is called at the end of the stream, before the object is completed: it
    raises if the producer failed (pg_dump's exit status), so a failed dump never
    becomes an object. Any failure aborts the multipart upload (best effort: when S3
    itself is unreachable the next attempt aborts it, see `abort_abandoned_uploads`).

    Returns:
        (size, sha256 hex) of the uploaded object.
    """
    reader = PartReader(src, part_size)
    digest = hashlib.sha256()
    size = 0
    progress = BackupProgress(phase="dump", key=key)
    upload_id: str | None = None
    try:

        def next_chunk() -> bytes:
            while True:
                chunk = reader.next(timeout=HEARTBEAT_EVERY_S)
                if chunk is not None:
                    return chunk
                beat(progress.model_dump(mode="json"))

        chunk = next_chunk()
        if len(chunk) < part_size:
            # The whole dump fits in one part: one PUT, size and sha256 known up front.
            finish()
            digest.update(chunk)
            meta = {**metadata, "sha256": digest.hexdigest(), "size": str(len(chunk))}
            _s3(
                client,
                f"uploading s3://{bucket}/{key}",
                client.put_object,
                Bucket=bucket,
                Key=key,
                Body=chunk,
                Metadata=meta,
                ContentType="application/octet-stream",
                **extra,
            )
            return len(chunk), digest.hexdigest()

        created = _s3(
            client,
            f"starting the upload of s3://{bucket}/{key}",
            client.create_multipart_upload,
            Bucket=bucket,
            Key=key,
            Metadata=metadata,
            ContentType="application/octet-stream",
            **extra,
        )
        upload_id = str(created["UploadId"])
        progress = BackupProgress(phase="upload", key=key, upload_id=upload_id)
        beat(progress.model_dump(mode="json"))
        parts: list[dict[str, Any]] = []
        while chunk:
            digest.update(chunk)
            size += len(chunk)
            number = len(parts) + 1
            uploaded = _s3(
                client,
                f"uploading part {number} of s3://{bucket}/{key}",
                client.upload_part,
                Bucket=bucket,
                Key=key,
                UploadId=upload_id,
                PartNumber=number,
                Body=chunk,
            )
            parts.append({"ETag": uploaded["ETag"], "PartNumber": number})
            progress = BackupProgress(
                phase="upload", key=key, upload_id=upload_id, bytes=size, parts=number
            )
            beat(progress.model_dump(mode="json"))
            del chunk
            chunk = next_chunk()
        finish()
        _s3(
            client,
            f"completing the upload of s3://{bucket}/{key}",
            client.complete_multipart_upload,
            Bucket=bucket,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
        )
        upload_id = None
        return size, digest.hexdigest()
    except BaseException:
        if upload_id is not None:
            # Best effort: when S3 is unreachable, the next attempt aborts it.
            with contextlib.suppress(Exception):
                client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
        raise
    finally:
        reader.stop()


# ---------------------------------------------------------------- backup


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


def list_backups(store: BackupStore, prefix: str, flow: str) -> list[BackupManifest]:
    """Every complete backup of `flow` under `prefix` in `store`, newest first.

    Complete means "has a manifest": a dump whose manifest was never written (the
    attempt died in between) is not listed and not restorable by key alone.
    """
    found: list[BackupManifest] = []
    for body in store.manifests(flow_prefix(prefix, flow)):
        try:
            found.append(BackupManifest.model_validate_json(body))
        except ValidationError:
            continue
    found.sort(key=lambda m: (m.created_at, m.key), reverse=True)
    return found


def apply_retention(
    store: BackupStore, prefix: str, flow: str, database: str, keep: int
) -> list[str]:
    """Delete all but the newest `keep` backups of `flow` taken from `database`.

    `database` is the credential-free URL, so two flows' databases, or two databases
    of one flow, never prune each other's backups.

    Returns:
        The deleted dump keys.
    """
    same = [m for m in list_backups(store, prefix, flow) if m.database == database]
    deleted: list[str] = []
    for m in same[keep:]:
        store.delete(m.key)
        deleted.append(m.key)
    return deleted


def read_manifest(store: BackupStore, key: str) -> BackupManifest:
    """The manifest of the dump at `key`.

    Raises:
        ApplicationError: (non-retryable) no manifest, or not a shipflow manifest.
    """
    url = store.url(key)
    body = store.get_manifest(key)
    if body is None:
        raise ApplicationError(
            f"{url} has no manifest ({key}{MANIFEST_SUFFIX}): the backup never "
            "completed or is not a shipflow backup, so it cannot be verified",
            type="BackupNotFound",
            non_retryable=True,
        )
    try:
        return BackupManifest.model_validate_json(body)
    except ValidationError as e:
        raise ApplicationError(
            f"{url}{MANIFEST_SUFFIX} is not a valid manifest: {e}",
            type="BackupNotFound",
            non_retryable=True,
        ) from None


# ---------------------------------------------------------------- restore


def _kind_of_key(key: str) -> DatabaseKind | None:
    for kind, suffix in SUFFIXES.items():
        if key.endswith(suffix):
            return kind
    return None


def download_verified(
    client: S3Client, bucket: str, key: str, dest: Path, *, size: int, sha256: str, beat: Beat
) -> None:
    """Stream the object into `dest` (created, 0600), hashing; raise unless size and sha256 match.

    The file is fsynced, so an atomic rename of it is durable.

    Raises:
        ApplicationError: corrupt or truncated (non-retryable), or S3 failures.
    """
    url = f"s3://{bucket}/{key}"
    head = _s3(client, f"reading {url}", client.head_object, Bucket=bucket, Key=key)
    if int(head["ContentLength"]) != size:
        raise corrupt(url, f"its size is {head['ContentLength']} bytes, the backup recorded {size}")
    digest = hashlib.sha256()
    got = 0
    last_beat = time.monotonic()
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(DOWNLOAD_CHUNK):
                digest.update(chunk)
                got += len(chunk)
                out.write(chunk)
                if time.monotonic() - last_beat >= HEARTBEAT_EVERY_S:
                    last_beat = time.monotonic()
                    beat(
                        BackupProgress(phase="download", key=key, bytes=got).model_dump(mode="json")
                    )
        except (BotoCoreError, ClientError) as e:
            raise_s3_error(e, client, f"downloading {url}")
        except OSError as e:
            raise ApplicationError(f"downloading {url} failed: {e}", type="S3Unreachable") from e
        out.flush()
        os.fsync(out.fileno())
    if got != size:
        raise corrupt(url, f"downloaded {got} bytes, the backup recorded {size}")
    if digest.hexdigest() != sha256:
        raise corrupt(url, f"its sha256 is {digest.hexdigest()}, the backup recorded {sha256}")


class S3Store:
    """`BackupStore` on one S3 bucket: streamed multipart uploads, `s3://bucket/key` URLs."""

    def __init__(self, client: S3Client, bucket: str):
        self.client = client
        self.bucket = bucket

    def url(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def abort_abandoned(self, key: str, resume: dict[str, Any] | None) -> list[str]:
        return abort_abandoned_uploads(self.client, self.bucket, key, resume)

    def upload(
        self,
        key: str,
        src: IO[bytes],
        *,
        finish: Callable[[], None],
        metadata: dict[str, str],
        extra: dict[str, str],
        beat: Beat,
        part_size: int,
    ) -> tuple[int, str]:
        return stream_upload(
            self.client,
            self.bucket,
            key,
            src,
            finish=finish,
            metadata=metadata,
            extra=extra,
            beat=beat,
            part_size=part_size,
        )

    def put_manifest(self, key: str, body: bytes, extra: dict[str, str]) -> None:
        _s3(
            self.client,
            f"writing the manifest of {self.url(key)}",
            self.client.put_object,
            Bucket=self.bucket,
            Key=key + MANIFEST_SUFFIX,
            Body=body,
            ContentType="application/json",
            # Encrypted like the dump, but never in a cold storage class: listings read it.
            **{k: v for k, v in extra.items() if k != "StorageClass"},
        )

    def manifests(self, prefix: str) -> Iterator[bytes]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                for obj in page.get("Contents", []):
                    name = obj["Key"]
                    if name.endswith(MANIFEST_SUFFIX):
                        yield self.client.get_object(Bucket=self.bucket, Key=name)["Body"].read()
        except (BotoCoreError, ClientError) as e:
            raise_s3_error(e, self.client, f"listing backups under {self.url(prefix)}")

    def get_manifest(self, key: str) -> bytes | None:
        try:
            body = self.client.get_object(Bucket=self.bucket, Key=key + MANIFEST_SUFFIX)["Body"]
            return bytes(body.read())
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise_s3_error(e, self.client, f"reading the manifest of {self.url(key)}")
        except BotoCoreError as e:
            raise_s3_error(e, self.client, f"reading the manifest of {self.url(key)}")

    def delete(self, key: str) -> None:
        _s3(
            self.client,
            f"deleting old backup {self.url(key)}",
            self.client.delete_objects,
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": key + MANIFEST_SUFFIX}, {"Key": key}], "Quiet": True},
        )

    def download_verified(
        self, key: str, dest: Path, *, size: int, sha256: str, beat: Beat
    ) -> None:
        download_verified(self.client, self.bucket, key, dest, size=size, sha256=sha256, beat=beat)


def open_store(
    url: str, s3_factory: Callable[[str | None], S3Client], endpoint: str | None = None
) -> tuple[BackupStore, str]:
    """The store a backup URL names, and the key (or prefix) inside it.

    `s3://bucket/prefix/` -> (S3Store on bucket, `prefix/`); `file:///abs/dir/` ->
    (FileStore on the filesystem root, `abs/dir/`).

    Raises:
        ApplicationError: (non-retryable) neither an s3:// nor a file:/// URL.
    """
    if url.startswith("file:"):
        return FileStore(), parse_file_url(url)
    bucket, key = parse_s3_url(url)
    return S3Store(s3_factory(endpoint), bucket), key


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


__all__ = [
    "PART_SIZE",
    "BackupActivities",
    "BackupManifest",
    "BackupProgress",
    "BackupStore",
    "FileStore",
    "S3Store",
    "abort_abandoned_uploads",
    "apply_retention",
    "create_backup",
    "list_backups",
    "open_store",
    "read_manifest",
    "redact_url",
    "restore_backup",
]
