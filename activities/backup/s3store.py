"""`S3Store`: the `BackupStore` on an S3 bucket, a streamed multipart upload and a verified download.

An upload cuts the dump's stream into parts of `part_size` bytes (8 MiB) with at most three
parts in memory and no temporary file; a dump smaller than one part is a single PUT. A
retried attempt first aborts the multipart uploads left on its key
(`abort_abandoned_uploads`). A download hashes while it writes and refuses a truncated or
corrupt object (`download_verified`). The file store with the same semantics is
`stores.FileStore`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from botocore.exceptions import BotoCoreError, ClientError
from pydantic import ValidationError
from temporalio.exceptions import ApplicationError

from shipflow.activities.backup.stores import (
    DOWNLOAD_CHUNK,
    HEARTBEAT_EVERY_S,
    MANIFEST_SUFFIX,
    BackupProgress,
    Beat,
    PartReader,
    corrupt,
)
from shipflow.activities.s3 import S3Client, raise_s3_error

PART_SIZE = 8 * 1024 * 1024


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
