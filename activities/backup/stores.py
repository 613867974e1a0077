"""Where backups live: the `BackupStore` protocol, and the filesystem store behind `file://`.

A backup store holds dump objects under keys, each with a JSON manifest beside it
(`<key>.json`, written last, so it marks the backup complete). Two implementations:

- S3 (`shipflow.activities.backup.s3store.S3Store`): a streamed multipart upload, for everything beyond
  one machine;
- the filesystem (`FileStore`, `file:///abs/dir/`): the embedded stack's default, so
  backups survive a restart of `shipflow dev` (moto keeps objects in memory only).

Both have the same semantics, which `shipflow.activities.backup` relies on: an upload streams
(bounded memory) and becomes visible only once complete (S3: the multipart upload is
completed; files: a temporary file in the same directory is fsynced and atomically
renamed), an abandoned attempt's leftovers are cleaned up by the next attempt on the same
key, a restore downloads and checks size and SHA-256 before anything touches the
database, listings and retention see only backups whose manifest exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from pydantic import BaseModel
from temporalio.exceptions import ApplicationError

from shipflow.activities.dbdump.database import DumpError
from shipflow.workflows.redaction import redact

MANIFEST_SUFFIX = ".json"
DOWNLOAD_CHUNK = 1024 * 1024
HEARTBEAT_EVERY_S = 1.0
#: Read size of a file store upload (it has no part-size minimum).
FILE_CHUNK = 1024 * 1024

Beat = Callable[[dict[str, Any]], None]


class BackupProgress(BaseModel):
    """What a backup or restore heartbeats, and what its next attempt reads back."""

    phase: Literal["dump", "upload", "download", "restore"]
    key: str
    upload_id: str | None = None
    bytes: int = 0
    parts: int = 0


_EOF = object()


class PartReader:
    """Reads `part_size` chunks of a stream on a thread, one chunk queued ahead.

    The producer (pg_dump) keeps writing while the previous part uploads; the queue's
    depth of one bounds memory to three parts. `stop()` unblocks the thread when the
    upload gives up.
    """

    def __init__(self, src: IO[bytes], part_size: int):
        self._src = src
        self._part_size = part_size
        self._queue: queue.Queue[object] = queue.Queue(maxsize=1)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="backup-reader", daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stopped.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            while True:
                chunk = self._src.read(self._part_size)
                if chunk and not self._put(chunk):
                    return
                if len(chunk) < self._part_size:
                    self._put(_EOF)
                    return
        except BaseException as e:
            self._put(e)

    def next(self, timeout: float) -> bytes | None:
        """The next chunk, `b""` at the end of the stream, None if nothing came in `timeout`."""
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return None
        if item is _EOF:
            return b""
        if isinstance(item, BaseException):
            raise DumpError(f"reading the dump failed: {item}", retryable=True) from item
        assert isinstance(item, bytes)
        return item

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(timeout=5)


def corrupt(url: str, message: str) -> ApplicationError:
    """A backup that must not be restored: its size or checksum is not what was recorded."""
    return ApplicationError(
        f"refusing to restore {url}: {message}; the database was not touched",
        type="BackupCorrupt",
        non_retryable=True,
    )


class BackupStore(Protocol):
    """A place for backups: keys are `/`-separated paths, `url(key)` is what users see."""

    def url(self, key: str) -> str: ...

    def abort_abandoned(self, key: str, resume: dict[str, Any] | None) -> list[str]:
        """Remove what earlier attempts on `key` left unfinished; return what was removed."""
        ...

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
        """Stream `src` to `key`; call `finish()` (raises if the producer failed) before it
        becomes visible. Returns (size, sha256 hex)."""
        ...

    def put_manifest(self, key: str, body: bytes, extra: dict[str, str]) -> None: ...

    def manifests(self, prefix: str) -> Iterator[bytes]:
        """The body of every manifest under `prefix`."""
        ...

    def get_manifest(self, key: str) -> bytes | None:
        """The manifest of the dump at `key`, or None if there is none."""
        ...

    def delete(self, key: str) -> None:
        """Delete the dump at `key` and its manifest."""
        ...

    def download_verified(
        self, key: str, dest: Path, *, size: int, sha256: str, beat: Beat
    ) -> None:
        """Copy `key` into `dest` (created, 0600, fsynced); raise unless size and sha256 match."""
        ...


# ---------------------------------------------------------------- file://


def parse_file_url(url: str) -> str:
    """`file:///abs/dir/key` -> `abs/dir/key` (the key under the filesystem root).

    Raises:
        ApplicationError: (non-retryable) not a `file:///absolute/path`, or `..` in it.
    """
    if not url.startswith("file:///") or "?" in url or "#" in url:
        raise ApplicationError(
            redact(f"not a file:///absolute/path URL: {url}"),
            type="InvalidBackupUrl",
            non_retryable=True,
        )
    path = url[len("file://") :]
    if ".." in path.split("/"):
        raise ApplicationError(
            redact(f"{url}: '..' is not allowed in a backup location"),
            type="InvalidBackupUrl",
            non_retryable=True,
        )
    return path.lstrip("/")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileStore:
    """Backups as files under the filesystem root: `file:///data/backups/<flow>/…`.

    A dump is written to a hidden temporary file in its final directory
    (`.<name>.<random>.part`), fsynced, then renamed over its final name: a reader never
    sees a partial dump, and a crash leaves only a `.part` file that the next attempt on
    the same key removes (what aborting a multipart upload is on S3). Files are created
    0600 and directories 0700: a dump holds the whole database.
    """

    def __init__(self, root: Path = Path("/")):
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key

    def url(self, key: str) -> str:
        return "file://" + str(self.path(key))

    def _error(self, what: str, e: OSError) -> ApplicationError:
        # A full disk or a permission problem: retryable, someone may fix it.
        return ApplicationError(redact(f"{what} failed: {e}"), type="BackupStoreError")

    def abort_abandoned(self, key: str, resume: dict[str, Any] | None) -> list[str]:
        final = self.path(key)
        removed: list[str] = []
        if not final.parent.is_dir():
            return removed
        for leftover in final.parent.glob(f".{final.name}.*.part"):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()
                removed.append(leftover.name)
        return removed

    def _atomic_write(self, final: Path, chunks: Iterator[bytes]) -> tuple[int, str]:
        final.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = final.parent / f".{final.name}.{uuid.uuid4().hex[:12]}.part"
        digest = hashlib.sha256()
        size = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        _fsync_dir(final.parent)
        return size, digest.hexdigest()

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
        final = self.path(key)
        reader = PartReader(src, FILE_CHUNK)
        progress = BackupProgress(phase="upload", key=key)
        written = 0

        def chunks() -> Iterator[bytes]:
            nonlocal progress, written
            last = time.monotonic()
            while True:
                chunk = reader.next(timeout=HEARTBEAT_EVERY_S)
                if chunk is None or time.monotonic() - last >= HEARTBEAT_EVERY_S:
                    beat(progress.model_dump(mode="json"))
                    last = time.monotonic()
                if chunk is None:
                    continue
                if not chunk:
                    finish()  # a failed dump raises here, before the rename
                    return
                written += len(chunk)
                progress = BackupProgress(phase="upload", key=key, bytes=written)
                yield chunk

        try:
            return self._atomic_write(final, chunks())
        except OSError as e:
            raise self._error(f"writing {self.url(key)}", e) from None
        finally:
            reader.stop()

    def put_manifest(self, key: str, body: bytes, extra: dict[str, str]) -> None:
        try:
            self._atomic_write(self.path(key + MANIFEST_SUFFIX), iter([body]))
        except OSError as e:
            raise self._error(f"writing the manifest of {self.url(key)}", e) from None

    def manifests(self, prefix: str) -> Iterator[bytes]:
        base = self.path(prefix)
        if not base.is_dir():
            return
        try:
            for path in sorted(base.rglob(f"*{MANIFEST_SUFFIX}")):
                if path.name.startswith(".") or not path.is_file():
                    continue
                with contextlib.suppress(FileNotFoundError):  # pruned meanwhile
                    yield path.read_bytes()
        except OSError as e:
            raise self._error(f"listing backups under {self.url(prefix)}", e) from None

    def get_manifest(self, key: str) -> bytes | None:
        try:
            return self.path(key + MANIFEST_SUFFIX).read_bytes()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise self._error(f"reading the manifest of {self.url(key)}", e) from None

    def delete(self, key: str) -> None:
        # The manifest first: a crash in between leaves an unlisted dump, never a
        # listed backup without its dump.
        try:
            self.path(key + MANIFEST_SUFFIX).unlink(missing_ok=True)
            self.path(key).unlink(missing_ok=True)
        except OSError as e:
            raise self._error(f"deleting {self.url(key)}", e) from None

    def download_verified(
        self, key: str, dest: Path, *, size: int, sha256: str, beat: Beat
    ) -> None:
        url = self.url(key)
        src_path = self.path(key)
        try:
            actual = src_path.stat().st_size
        except FileNotFoundError:
            raise ApplicationError(
                f"{url} does not exist: the backup was deleted or never completed",
                type="BackupNotFound",
                non_retryable=True,
            ) from None
        if actual != size:
            raise corrupt(url, f"its size is {actual} bytes, the backup recorded {size}")
        digest = hashlib.sha256()
        got = 0
        last_beat = time.monotonic()
        try:
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as out, open(src_path, "rb") as src:
                while chunk := src.read(DOWNLOAD_CHUNK):
                    digest.update(chunk)
                    got += len(chunk)
                    out.write(chunk)
                    if time.monotonic() - last_beat >= HEARTBEAT_EVERY_S:
                        last_beat = time.monotonic()
                        beat(
                            BackupProgress(phase="download", key=key, bytes=got).model_dump(
                                mode="json"
                            )
                        )
                out.flush()
                os.fsync(out.fileno())
        except OSError as e:
            raise self._error(f"reading {url}", e) from None
        if got != size:
            raise corrupt(url, f"read {got} bytes, the backup recorded {size}")
        if digest.hexdigest() != sha256:
            raise corrupt(url, f"its sha256 is {digest.hexdigest()}, the backup recorded {sha256}")
